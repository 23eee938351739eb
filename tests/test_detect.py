"""The Detect rules as pure functions of events, messages and a clock the test drives.

Each rule fires at its threshold and not one below it, forgets what left its window, and keeps
one identity's (or address's) count apart from another's. Events are what
:class:`~testbed.csf.brokerlog.BrokerLogParser` makes of a broker's log; time is the events'
own stamps, and for :meth:`Detector.tick` and :meth:`Detector.on_message` the injected clock.
The end-to-end attacks on real brokers are in tests/test_attacks.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from testbed.core.payloads import Message
from testbed.core.topology import load_topology
from testbed.csf.brokerlog import BrokerEvent
from testbed.csf.detect import Alert, Detector, Thresholds

S = 10**9  # ns in a second
T0 = 1_700_000_000 * S
METER_TOPIC = "fmb/metermodule/MeterReadingProfile/meter-1"


class Clock:
    """Nanoseconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> int:
        self.now += int(seconds * S)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def detector(clock: Clock, **thresholds: Any) -> Detector:
    return Detector(load_topology(), Thresholds(**thresholds), clock=clock)


def event(clock: Clock, kind: str, broker: str = "field-delivery", **fields: Any) -> BrokerEvent:
    fields.setdefault("detail", {})
    return BrokerEvent(kind, broker, clock(), f"{kind} line", **fields)


def kinds(alerts: list[Alert]) -> list[str]:
    return [a.kind for a in alerts]


def reading(volts: float, seq: int = 1, source: str = "meter-1") -> Message:
    return Message("MeterReadingProfile", source, seq, T0, {"voltage_v": volts, "reason": "periodic"})


# -- connection flood: > connect_attempts from one address in connect_window_s ----------------


def test_connection_flood_fires_above_its_threshold_not_at_it(clock: Clock) -> None:
    d = detector(clock, connect_attempts=5, connect_window_s=10)
    quiet = [d.on_event(event(clock, "connection", address="10.0.0.9")) for _ in range(5)]
    assert quiet == [[]] * 5
    (alert,) = d.on_event(event(clock, "connection", address="10.0.0.9"))
    assert alert.kind == "connection_flood" and alert.subject == "10.0.0.9" and alert.address == "10.0.0.9"
    assert alert.evidence["connections"] == 6 and alert.time_ns == clock()


def test_connection_flood_window_expires(clock: Clock) -> None:
    d = detector(clock, connect_attempts=5, connect_window_s=10)
    for _ in range(5):
        d.on_event(event(clock, "connection", address="10.0.0.9"))
    clock.advance(10.5)  # the five fall out of the window: the sixth is the first of a new count
    assert d.on_event(event(clock, "connection", address="10.0.0.9")) == []


def test_connection_flood_counts_each_address_apart(clock: Clock) -> None:
    d = detector(clock, connect_attempts=5, connect_window_s=10)
    for _ in range(5):
        assert d.on_event(event(clock, "connection", address="10.0.0.9")) == []
    assert d.on_event(event(clock, "connection", address="10.0.0.10")) == []
    assert kinds(d.on_event(event(clock, "connection", address="10.0.0.9"))) == ["connection_flood"]


# -- TLS and certificate failures: >= tls_failures / auth_failures from one address -----------


def test_tls_failures_fire_at_their_threshold(clock: Clock) -> None:
    d = detector(clock, tls_failures=3, failure_window_s=60)
    fail = {"reason": "wrong version number"}  # not TLS at all: a plaintext client
    assert d.on_event(event(clock, "tls_failure", address="10.0.0.9", detail=fail)) == []
    assert d.on_event(event(clock, "tls_failure", address="10.0.0.9", detail=fail)) == []
    (alert,) = d.on_event(event(clock, "tls_failure", address="10.0.0.9", detail=fail))
    assert alert.kind == "tls_failures" and alert.evidence["failures"] == 3
    assert alert.evidence["reasons"] == ["wrong version number"]


def test_certificate_refusals_are_auth_failures_counted_apart_from_tls_failures(clock: Clock) -> None:
    d = detector(clock, tls_failures=3, auth_failures=2, failure_window_s=60)
    tls, auth = {"reason": "wrong version number"}, {"reason": "certificate verify failed"}
    assert d.on_event(event(clock, "tls_failure", address="10.0.0.9", detail=tls)) == []
    assert d.on_event(event(clock, "tls_failure", address="10.0.0.9", detail=auth)) == []
    assert d.on_event(event(clock, "tls_failure", address="10.0.0.9", detail=tls)) == []
    (alert,) = d.on_event(event(clock, "tls_failure", address="10.0.0.9", detail=auth))
    assert alert.kind == "auth_failures" and alert.evidence["failures"] == 2


def test_tls_failures_window_expires_and_addresses_are_apart(clock: Clock) -> None:
    d = detector(clock, tls_failures=3, failure_window_s=60)
    fail = {"reason": "wrong version number"}
    d.on_event(event(clock, "tls_failure", address="10.0.0.9", detail=fail))
    d.on_event(event(clock, "tls_failure", address="10.0.0.9", detail=fail))
    assert d.on_event(event(clock, "tls_failure", address="10.0.0.10", detail=fail)) == []
    clock.advance(61)
    assert d.on_event(event(clock, "tls_failure", address="10.0.0.9", detail=fail)) == []


# -- topic scan: one identity denied on >= scan_topics distinct topics in scan_window_s -------


def denied(clock: Clock, identity: str, topic: str) -> BrokerEvent:
    return event(clock, "denied", "field-control", client_id=f"{identity}-c", identity=identity,
                 address="10.0.0.9", detail={"packet": "PUBLISH", "topic": topic})


def test_topic_scan_fires_at_its_threshold_of_distinct_topics(clock: Clock) -> None:
    d = detector(clock, scan_topics=3, scan_window_s=60)
    assert d.on_event(denied(clock, "meter-1", "fmb/a/A/x")) == []
    assert d.on_event(denied(clock, "meter-1", "fmb/a/A/x")) == []  # the same topic again: still one
    assert d.on_event(denied(clock, "meter-1", "fmb/b/B/x")) == []
    (alert,) = d.on_event(denied(clock, "meter-1", "fmb/c/C/x"))
    assert alert.kind == "topic_scan" and alert.identity == "meter-1" and alert.subject == "meter-1"
    assert alert.evidence["distinct_topics"] == 3 and alert.evidence["topics"] == ["fmb/a/A/x", "fmb/b/B/x",
                                                                                    "fmb/c/C/x"]


def test_topic_scan_window_expires_and_identities_are_apart(clock: Clock) -> None:
    d = detector(clock, scan_topics=3, scan_window_s=60)
    d.on_event(denied(clock, "meter-1", "fmb/a/A/x"))
    d.on_event(denied(clock, "meter-1", "fmb/b/B/x"))
    assert d.on_event(denied(clock, "supply-1", "fmb/c/C/x")) == []  # another identity's denial
    clock.advance(61)
    assert d.on_event(denied(clock, "meter-1", "fmb/c/C/x")) == []


def test_a_subscription_outside_the_acl_counts_towards_a_scan_one_inside_does_not(clock: Clock) -> None:
    d = detector(clock, scan_topics=2, scan_window_s=60)
    d.on_event(event(clock, "connected", "dc-delivery", client_id="dms-c", identity="dms-1", detail={}))

    def subscribe(flt: str) -> list[Alert]:
        return d.on_event(event(clock, "subscribe", "dc-delivery", client_id="dms-c", identity="dms-1",
                                detail={"filter": flt, "qos": 1}))

    assert subscribe("fmb/metermodule/MeterReadingProfile/+") == []  # what the DMS reads
    assert subscribe("fmb/#") == []
    assert kinds(subscribe("fmb/hmimodule/#")) == ["topic_scan"]


# -- undeliverable: >= undeliverable messages on a topic nobody (but observers) reads ----------


def test_undeliverable_fires_at_its_threshold_until_someone_reads(clock: Clock) -> None:
    d = detector(clock, undeliverable=3, undeliverable_window_s=30)
    # On the data-centre delivery broker only the DMS reads meter readings, and it has not subscribed.
    assert d.on_message("dc-delivery", METER_TOPIC, reading(120.0, 1), False) == []
    assert d.on_message("dc-delivery", METER_TOPIC, reading(120.0, 2), False) == []
    (alert,) = d.on_message("dc-delivery", METER_TOPIC, reading(120.0, 3), False)
    assert alert.kind == "undeliverable" and alert.evidence == {"topic": METER_TOPIC, "messages": 3, "window_s": 30}
    assert alert.time_ns == clock()  # on_message without `now` asks the injected clock

    read = detector(clock, undeliverable=3, undeliverable_window_s=30)
    read.on_event(event(clock, "connected", "dc-delivery", client_id="dms-c", identity="dms-1", detail={}))
    read.on_event(event(clock, "subscribe", "dc-delivery", client_id="dms-c", identity="dms-1",
                        detail={"filter": "fmb/metermodule/MeterReadingProfile/+", "qos": 1}))
    assert [read.on_message("dc-delivery", METER_TOPIC, reading(120.0, n), False) for n in range(5)] == [[]] * 5


def test_undeliverable_window_expires_and_an_observer_is_no_reader(clock: Clock) -> None:
    d = detector(clock, undeliverable=3, undeliverable_window_s=30)
    d.on_event(event(clock, "connected", "dc-delivery", client_id="rec", identity="recorder", detail={}))
    d.on_event(event(clock, "subscribe", "dc-delivery", client_id="rec", identity="recorder",
                     detail={"filter": "fmb/#", "qos": 1}))
    d.on_message("dc-delivery", METER_TOPIC, reading(120.0, 1), False)
    d.on_message("dc-delivery", METER_TOPIC, reading(120.0, 2), False)
    clock.advance(31)
    assert d.on_message("dc-delivery", METER_TOPIC, reading(120.0, 3), False) == []
    assert d.on_message("dc-delivery", METER_TOPIC, reading(120.0, 4), False) == []
    assert kinds(d.on_message("dc-delivery", METER_TOPIC, reading(120.0, 5), False)) == ["undeliverable"]


# -- idle client: connected idle_s without sending anything --------------------------------------


def test_idle_unknown_client_fires_once_idle_s_has_passed_by_the_clock(clock: Clock) -> None:
    d = detector(clock, idle_s=30)
    d.on_event(event(clock, "connected", "field-control", client_id="x1", identity="stranger",
                     address="10.0.0.9", detail={}))
    clock.advance(29.9)
    assert d.tick() == []
    clock.advance(0.1)
    (alert,) = d.tick()
    assert alert.kind == "idle_client" and alert.identity == "stranger" and alert.address == "10.0.0.9"
    assert alert.evidence["why"] == "identity unknown to the topology" and alert.evidence["connected_s"] == 30.0
    clock.advance(60)
    assert d.tick() == []  # one alert per connection


def test_idle_publisher_fires_unless_it_published(clock: Clock) -> None:
    d = detector(clock, idle_s=30)
    for cid, who in (("m1", "meter-1"), ("s1", "supply-1")):
        d.on_event(event(clock, "connected", "field-delivery", client_id=cid, identity=who, detail={}))
    clock.advance(5)
    d.on_message("field-delivery", METER_TOPIC, reading(120.0), False)  # the meter did its job; the supply did not
    clock.advance(25)
    assert [(a.kind, a.identity) for a in d.tick()] == [("idle_client", "supply-1")]


# -- abnormal termination, malformed packets, rejected commands: one event each -----------------


def test_a_disconnect_without_disconnect_packet_is_abnormal_a_clean_one_is_not(clock: Clock) -> None:
    d = detector(clock)
    d.on_event(event(clock, "connected", client_id="m1", identity="meter-1", address="10.0.0.9", detail={}))
    assert d.on_event(event(clock, "disconnected", client_id="m1", identity="meter-1",
                            detail={"clean": True, "reason": "DISCONNECT"})) == []
    (alert,) = d.on_event(event(clock, "disconnected", client_id="m2", identity="meter-1",
                                detail={"clean": False, "reason": "keepalive timeout"}))
    assert alert.kind == "abnormal_termination" and alert.evidence["client_id"] == "m2"


def test_malformed_packets_fire_on_each_kind_of_evidence(clock: Clock) -> None:
    d = detector(clock)
    gone = event(clock, "disconnected", client_id="m1", identity="meter-1",
                 detail={"clean": False, "reason": "malformed packet", "malformed": True})
    assert kinds(d.on_event(gone)) == ["abnormal_termination", "malformed_packet"]
    assert kinds(d.on_event(event(clock, "malformed", client_id="m2", identity="meter-1",
                                  detail={"reason": "invalid topic in PUBLISH"}))) == ["malformed_packet"]
    (big,) = d.on_event(event(clock, "oversize", client_id="m3", identity="meter-1",
                              detail={"packet": "PUBLISH", "topic": METER_TOPIC, "bytes": 300_000}))
    assert big.kind == "malformed_packet" and "300000 bytes" in big.evidence["reason"]


def test_rejected_command_fires_with_the_claimed_signer(clock: Clock) -> None:
    d = detector(clock)
    (alert,) = d.on_event(event(clock, "command_rejected", "capbank-1", identity="dms-1",
                                detail={"actuator": "capbank-1", "reason": "bad signature"}))
    assert alert.kind == "command_rejected" and alert.subject == "dms-1"
    assert alert.evidence["actuator"] == "capbank-1"


# -- a burst of rejected payloads: >= payload_rejects from one sender in payload_reject_window_s ------

SUPPLY_COMMAND = "fmb/supplymodule/SupplyControlProfile/supply-1"


def rejected(clock: Clock, receiver: str = "dms-1", topic: str = METER_TOPIC,
             claimed: str | None = None) -> BrokerEvent:
    return event(clock, "payload_rejected", receiver, detail={"receiver": receiver, "topic": topic,
                                                              "reason": "not JSON", "claimed": claimed})


def test_rejected_payload_burst_fires_at_its_threshold_on_the_sender_the_topic_authenticates(clock: Clock) -> None:
    d = detector(clock, payload_rejects=3, payload_reject_window_s=10)
    assert d.on_event(rejected(clock)) == []
    assert d.on_event(rejected(clock, claimed="supply-1")) == []  # a claim in the payload changes nothing
    (alert,) = d.on_event(rejected(clock, "tablet-1"))  # the receivers' rejections add up
    assert alert.kind == "payload_rejected_burst" and alert.identity == alert.subject == "meter-1"
    assert alert.evidence["rejections"] == 3 and alert.evidence["receivers"] == ["dms-1", "tablet-1"]
    assert alert.evidence["topics"] == [METER_TOPIC] and alert.evidence["sender_from"] == "topic (ACL-enforced)"
    assert alert.time_ns == clock()


def test_rejected_payload_burst_window_expires_and_senders_are_apart(clock: Clock) -> None:
    d = detector(clock, payload_rejects=3, payload_reject_window_s=10)
    supply = "fmb/supplymodule/SupplyStatusProfile/supply-1"
    d.on_event(rejected(clock))
    d.on_event(rejected(clock))
    assert d.on_event(rejected(clock, topic=supply)) == []  # another sender: its own count
    clock.advance(10.5)  # the meter's two fall out of the window
    assert d.on_event(rejected(clock)) == []
    assert d.on_event(rejected(clock)) == []
    assert kinds(d.on_event(rejected(clock))) == ["payload_rejected_burst"]


def test_a_command_burst_names_the_claimed_sender_but_gives_a_response_nothing_to_act_on(clock: Clock) -> None:
    """A command's topic names its target, not its sender: what the payload claims is not proof."""
    d = detector(clock, payload_rejects=2)
    d.on_event(rejected(clock, "supply-1", SUPPLY_COMMAND, claimed="tablet-1"))
    (alert,) = d.on_event(rejected(clock, "supply-1", SUPPLY_COMMAND, claimed="tablet-1"))
    assert alert.identity == "tablet-1" and alert.subject == ""
    assert alert.evidence["sender_from"].startswith("payload claim")
    d.on_event(rejected(clock, "supply-1", SUPPLY_COMMAND))
    (unknown,) = d.on_event(rejected(clock, "supply-1", SUPPLY_COMMAND))
    assert unknown.identity is None and unknown.subject == "" and unknown.evidence["rejections"] == 2


def test_device_log_lines_of_rejected_payloads_are_events() -> None:
    from testbed.csf.brokerlog import device_log_event

    line = (f"2024-01-01 00:00:00,000 dms.dms-1 ERROR rejected payload on {METER_TOPIC} from meter-1: not valid "
            "JSON (rejected so far: 4; set aside as a dead letter)")
    ev = device_log_event("dms-1", line, now_ns=T0)
    assert ev is not None and ev.kind == "payload_rejected" and ev.time_ns == T0
    assert ev.detail["topic"] == METER_TOPIC and ev.detail["claimed"] is None and ev.identity is None
    contained = (f"guard ERROR contained a failure of supply-1-control handling a message on {SUPPLY_COMMAND} "
                 "from supply-1 (payload source 'tablet-1') (12 bytes): handler failed: KeyError: 'x'")
    ev = device_log_event("supply-1", contained, now_ns=T0)
    assert ev is not None and ev.detail["topic"] == SUPPLY_COMMAND and ev.detail["claimed"] == "tablet-1"
    assert device_log_event("dms-1", "dms.dms-1 INFO ready (delivery ...)") is None


# -- session cap: one identity holding more than max_sessions sessions on one broker -----------------


def session(clock: Clock, kind: str, cid: str, identity: str = "meter-1", broker: str = "field-delivery",
            replay: bool = False) -> BrokerEvent:
    return BrokerEvent(kind, broker, clock(), f"{kind} {cid}", client_id=cid, identity=identity,
                       address="10.0.0.9", detail={"clean_start": True, "clean": True}, replay=replay)


def test_session_cap_fires_above_max_sessions_of_one_identity_on_one_broker(clock: Clock) -> None:
    d = detector(clock, max_sessions=2)
    assert d.on_event(session(clock, "connected", "meter-1-delivery")) == []
    assert d.on_event(session(clock, "connected", "x1")) == []
    assert d.on_event(session(clock, "connected", "x1")) == []  # the same client id again: one session
    assert d.on_event(session(clock, "connected", "x2", broker="field-control")) == []  # another broker
    assert d.on_event(session(clock, "connected", "x3", identity="supply-1")) == []  # another identity
    (alert,) = d.on_event(session(clock, "connected", "x4"))
    assert alert.kind == "session_cap" and alert.identity == alert.subject == "meter-1"
    assert alert.broker == "field-delivery" and alert.evidence["sessions"] == 3
    assert alert.evidence["client_ids"] == ["meter-1-delivery", "x1", "x4"]


def test_session_cap_counts_live_sessions_only_and_spares_the_harness(clock: Clock) -> None:
    d = detector(clock, max_sessions=2, repeat_s=0.001)
    for cid in ("old-1", "old-2", "old-3"):  # replayed from the log: state, no alert
        assert d.on_event(session(clock, "connected", cid, replay=True)) == []
    d.on_event(session(clock, "disconnected", "old-1"))
    d.on_event(session(clock, "evicted", "old-2"))
    assert d.on_event(session(clock, "connected", "new-1")) == []  # old-3 and new-1: two
    clock.advance(1)
    assert kinds(d.on_event(session(clock, "connected", "new-2"))) == ["session_cap"]
    d.on_event(BrokerEvent("restarted", "field-delivery", clock(), "mosquitto version 2.0.11 starting"))
    assert d.on_event(session(clock, "connected", "new-3")) == []  # a restarted broker holds nothing
    assert [d.on_event(session(clock, "connected", f"rec-{i}", identity="recorder")) for i in range(9)] == [[]] * 9


def test_events_replayed_from_an_old_log_raise_nothing(clock: Clock) -> None:
    d = detector(clock, connect_attempts=1)
    replayed = [BrokerEvent("connection", "field-delivery", clock(), "l", address="10.0.0.9", replay=True)
                for _ in range(3)]
    assert [d.on_event(e) for e in replayed] == [[]] * 3


# -- rate anomaly: one publisher's delivery-plane messages in one second ------------------------


def test_rate_anomaly_fires_above_the_rate_within_one_second_per_publisher(clock: Clock) -> None:
    d = detector(clock, rate_msgs_per_s=10, undeliverable=10**6)
    clock.now = T0 + S // 10  # early in a second
    supply = "fmb/supplymodule/SupplyStatusProfile/supply-1"
    assert [d.on_message("field-delivery", METER_TOPIC, None, False) for _ in range(10)] == [[]] * 10
    assert d.on_message("field-delivery", supply, None, False) == []  # another publisher: its own count
    (alert,) = d.on_message("field-delivery", METER_TOPIC, None, False)
    assert alert.kind == "rate_anomaly" and alert.identity == "meter-1"
    assert alert.evidence["messages_this_second"] == 11 and alert.evidence["limit_per_s"] == 10
    clock.advance(1)  # a new second: the count starts again
    assert d.on_message("field-delivery", supply, None, False) == []
    assert [d.on_message("field-delivery", METER_TOPIC, None, False) for _ in range(10)] == [[]] * 10
    # Nothing of the kind on the control plane, whatever the rate.
    assert all(d.on_message("field-control", METER_TOPIC, None, False) == [] for _ in range(50))


# -- implausible reading: what the feeder's supply and cap bank cannot explain ------------------


def test_implausible_reading_without_a_supply_status_uses_the_bounds(clock: Clock) -> None:
    d = detector(clock, voltage_min_v=100.5, voltage_max_v=130.0)
    assert d.on_message("field-delivery", METER_TOPIC, reading(100.5), False) == []  # at the bound
    assert d.on_message("field-delivery", METER_TOPIC, reading(130.0), False) == []
    (alert,) = d.on_message("field-delivery", METER_TOPIC, reading(130.1), False)
    assert alert.kind == "implausible_reading" and alert.evidence["expected_v"] is None


def test_implausible_reading_against_the_supply_after_the_grace_time(clock: Clock) -> None:
    d = detector(clock, voltage_tolerance_v=3.0, voltage_grace_s=2.0)
    status = Message("SupplyStatusProfile", "supply-1", 1, T0, {"output_v": 120.0})
    d.on_message("field-delivery", "fmb/supplymodule/SupplyStatusProfile/supply-1", status, False)
    # Expected at the meter: 120 V less the feeder's 1.2 V line drop (cap bank not known closed).
    clock.advance(1)
    assert d.on_message("field-delivery", METER_TOPIC, reading(110.0, 1), False) == []  # within the grace
    clock.advance(2)
    assert d.on_message("field-delivery", METER_TOPIC, reading(121.8, 2), False) == []  # 3.0 V off: tolerated
    # Held for the grace time (a status explaining it may be on its way), then reported.
    assert d.on_message("field-delivery", METER_TOPIC, reading(110.0, 3), False) == []
    clock.advance(1.9)
    assert d.tick() == []
    clock.advance(0.2)
    (alert,) = d.tick()
    assert alert.kind == "implausible_reading" and alert.evidence["expected_v"] == 118.8
    assert alert.evidence["voltage_v"] == 110.0 and alert.evidence["seq"] == 3
    assert d.tick() == []  # once


def test_a_reading_that_overtakes_the_status_explaining_it_is_not_an_alert(clock: Clock) -> None:
    """The meter and the supply publish independently: the meter's reading of the supply's new voltage
    may reach the monitor before the supply's status does (seen: 16 ms ahead)."""
    d = detector(clock, voltage_tolerance_v=3.0, voltage_grace_s=2.0)
    supply_topic = "fmb/supplymodule/SupplyStatusProfile/supply-1"
    d.on_message("field-delivery", supply_topic, Message("SupplyStatusProfile", "supply-1", 1, T0,
                                                         {"output_v": 120.0}), False)
    clock.advance(10)
    assert d.on_message("field-delivery", METER_TOPIC, reading(112.8, 1), False) == []  # 114 V less 1.2 V
    clock.advance(0.016)
    assert d.on_message("field-delivery", supply_topic, Message("SupplyStatusProfile", "supply-1", 2, T0,
                                                                {"output_v": 114.0}), False) == []
    clock.advance(5)
    assert d.tick() == []
    # But a forged reading followed by the true meter's is reported: the true one explains nothing.
    assert d.on_message("field-delivery", METER_TOPIC, reading(100.0, 2), False) == []
    clock.advance(0.5)
    assert d.on_message("field-delivery", METER_TOPIC, reading(112.8, 3), False) == []
    clock.advance(2)
    (alert,) = d.tick()
    assert (alert.kind, alert.evidence["voltage_v"], alert.evidence["seq"]) == ("implausible_reading", 100.0, 2)


# -- one alert per kind and subject per repeat_s --------------------------------------------------


def test_the_same_alert_is_repeated_only_after_repeat_s(clock: Clock) -> None:
    d = detector(clock, repeat_s=30)
    gone = {"clean": False, "reason": "socket error"}
    assert len(d.on_event(event(clock, "disconnected", client_id="m1", detail=gone))) == 1
    clock.advance(29)
    assert d.on_event(event(clock, "disconnected", client_id="m1", detail=gone)) == []
    assert len(d.on_event(event(clock, "disconnected", client_id="m2", detail=gone))) == 1  # another subject
    clock.advance(1)
    assert len(d.on_event(event(clock, "disconnected", client_id="m1", detail=gone))) == 1


def test_the_detector_reads_the_real_clock_by_default() -> None:
    import time

    d = Detector(load_topology(), Thresholds(undeliverable=1))
    before = time.time_ns()
    (alert,) = d.on_message("dc-delivery", METER_TOPIC, reading(120.0), False)
    assert before <= alert.time_ns <= time.time_ns()
