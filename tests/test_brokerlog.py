"""The broker-log parser on Mosquitto 2.0 log lines: which events, with whose identity and address.

The lines are Mosquitto 2.0.11's own (``log_type all``, ``log_timestamp true``), as it wrote them
for mutual-TLS clients of the testbed's PKI: a denied publish and a subscription (logged at debug
level and at subscribe level), clean and unclean disconnections, handshakes that failed, and
the lines around them that are no security event. One parser per broker, fed in log order,
as the monitor does.
"""

from __future__ import annotations

import pytest

from testbed.csf.brokerlog import BrokerEvent, BrokerLogParser, device_log_event

NOW = 1_796_030_087_000_000_000


def parse_all(lines: list[str], parser: BrokerLogParser | None = None) -> list[BrokerEvent]:
    parser = parser or BrokerLogParser("field-control")
    return [e for e in (parser.parse(line, NOW) for line in lines) if e is not None]


SESSION = [
    "1796030087: New connection from 127.0.0.1:33912 on port 52849.",
    "1796030087: New client connected from 127.0.0.1:33912 as meter-1-probe (p5, c1, k60, u'meter-1').",
    "1796030087: No will message specified.",
    "1796030087: Sending CONNACK to meter-1-probe (0, 0)",
    "1796030087: Denied PUBLISH from meter-1-probe (d0, q1, r0, m1, 'fmb/dms/x', ... (2 bytes))",
    "1796030087: Sending PUBACK to meter-1-probe (m1, rc135)",
    "1796030087: Received SUBSCRIBE from meter-1-probe",
    "1796030087: \tfmb/dms/# (QoS 1)",
    "1796030087: meter-1-probe 1 fmb/dms/#",
    "1796030087: Sending SUBACK to meter-1-probe",
    "1796030088: Received DISCONNECT from meter-1-probe",
    "1796030088: Client meter-1-probe disconnected.",
]


def test_a_session_gives_connection_connected_denied_subscribe_disconnected() -> None:
    events = parse_all(SESSION)
    assert [e.kind for e in events] == ["connection", "connected", "denied", "subscribe", "disconnected"]
    connection, connected, denied, subscribe, gone = events
    assert connection.address == "127.0.0.1" and connection.client_id is None and connection.identity is None
    # The CN (Mosquitto's username) and the address stick to the client id from here on.
    assert (connected.client_id, connected.identity, connected.address) == ("meter-1-probe", "meter-1", "127.0.0.1")
    assert connected.detail == {"keepalive_s": 60, "clean_start": True}
    assert (denied.identity, denied.address) == ("meter-1", "127.0.0.1")
    assert denied.detail == {"packet": "PUBLISH", "topic": "fmb/dms/x", "bytes": 2}
    # Mosquitto 2.0 logs a subscription its ACL refuses like any other (the SUBACK says no): the
    # Detector compares the filter with the identity's rights.
    assert (subscribe.identity, subscribe.detail) == ("meter-1", {"filter": "fmb/dms/#", "qos": 1})
    assert gone.identity == "meter-1" and gone.detail["clean"] is True and gone.detail["reason"] == "DISCONNECT"
    assert all(e.source == "field-control" and e.time_ns == NOW and not e.replay for e in events)
    assert denied.line == "Denied PUBLISH from meter-1-probe (d0, q1, r0, m1, 'fmb/dms/x', ... (2 bytes))"


def test_a_client_without_a_username_and_a_persistent_session() -> None:
    (event,) = parse_all(["1796030087: New client connected from 10.1.2.3:40000 as dms-1-delivery (p5, c0, k30)."])
    assert (event.identity, event.address, event.detail) == (None, "10.1.2.3", {"keepalive_s": 30,
                                                                                "clean_start": False})


@pytest.mark.parametrize(("line", "clean", "reason", "malformed"), [
    ("Client meter-1-probe closed its connection.", False, "socket closed without DISCONNECT", False),
    ("Client meter-1-probe has exceeded timeout, disconnecting.", False, "keepalive timeout", False),
    ("Client meter-1-probe disconnected due to malformed packet.", False, "malformed packet", True),
    ("Client meter-1-probe disconnected due to protocol error.", False, "protocol error", True),
    ("Client meter-1-probe disconnected, not authorised.", False, "not authorised", False),
])
def test_unclean_disconnections(line: str, clean: bool, reason: str, malformed: bool) -> None:
    parser = BrokerLogParser("field-control")
    *_, gone = parse_all(SESSION[:2] + [f"1796030090: {line}"], parser)
    assert gone.kind == "disconnected" and gone.identity == "meter-1" and gone.address == "127.0.0.1"
    assert gone.detail == {"clean": clean, "reason": reason, "malformed": malformed}
    assert "meter-1-probe" not in parser.clients  # forgotten: a later line of that id is not its


def test_an_evicted_client() -> None:
    *_, gone = parse_all(SESSION[:2] + ["Client meter-1-probe been disconnected by administrative action."])
    assert gone.kind == "evicted" and gone.identity == "meter-1"


@pytest.mark.parametrize(("failure", "reason"), [
    ("OpenSSL Error[0]: error:0A00010B:SSL routines::wrong version number", "wrong version number"),
    ("OpenSSL Error[0]: error:0A0000C7:SSL routines::peer did not return a certificate",
     "peer did not return a certificate"),
    ("OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed", "certificate verify failed"),
])
def test_a_failed_handshake_is_one_tls_failure_from_the_connection_address(failure: str, reason: str) -> None:
    events = parse_all(["1796030099: New connection from 127.0.0.1:60116 on port 60357.",
                        f"1796030099: {failure}",
                        "1796030099: Client <unknown> disconnected: Protocol error."])
    assert [e.kind for e in events] == ["connection", "tls_failure"]  # the <unknown> line is the same failure
    assert events[1].address == "127.0.0.1" and events[1].detail == {"reason": reason}


def test_a_client_gone_before_connect_is_a_tls_failure() -> None:
    events = parse_all(["1796030099: New connection from 10.0.0.7:60116 on port 60357.",
                        "1796030099: Client <unknown> disconnected: Protocol error."])
    assert [(e.kind, e.address, e.detail) for e in events][1] == ("tls_failure", "10.0.0.7",
                                                                  {"reason": "Protocol error"})


def test_a_failure_without_a_new_connection_line_counts_as_an_attempt() -> None:
    (event,) = parse_all(["Client connection from 10.0.0.7 failed: error:0A000418:SSL routines::"
                          "tlsv1 alert unknown ca."])
    assert event.kind == "tls_failure" and event.address == "10.0.0.7"
    assert event.detail == {"reason": "tlsv1 alert unknown ca", "attempt": True}


def test_an_openssl_error_outside_a_handshake_is_no_event() -> None:
    assert parse_all(["1796030099: OpenSSL Error[0]: error:0A000126:SSL routines::unexpected eof while reading"]) == []
    assert parse_all(SESSION[:2] + ["OpenSSL Error[0]: error:0A00010B:SSL routines::wrong version number"])[-1].kind \
        == "connected"  # the connection had become a client: no handshake of its failed


def test_oversize_and_invalid_packets() -> None:
    events = parse_all(SESSION[:2] + [
        "Dropped too large PUBLISH from meter-1-probe (d0, q1, r0, m2, 'fmb/metermodule/x', ... (300000 bytes))",
        "Invalid topic in PUBLISH from meter-1-probe, disconnecting.",
    ])
    oversize, invalid = events[2:]
    assert oversize.kind == "oversize" and oversize.detail == {"packet": "PUBLISH", "topic": "fmb/metermodule/x",
                                                               "bytes": 300000}
    assert invalid.kind == "malformed" and invalid.detail == {"reason": "invalid topic in PUBLISH"}
    assert oversize.identity == invalid.identity == "meter-1"


def test_a_restart_forgets_every_client() -> None:
    parser = BrokerLogParser("dc-delivery")
    events = parse_all(SESSION[:2] + ["1796030100: mosquitto version 2.0.11 starting",
                                      "1796030100: meter-1-probe 1 fmb/dms/#"], parser)
    assert [e.kind for e in events] == ["connection", "connected", "restarted"]  # no subscribe of a stranger
    assert parser.clients == {}


@pytest.mark.parametrize("line", [
    "",
    "garbage",
    "1796030100: \x00\xff\ufffd not a Mosquitto line",
    "1796030087: Config loaded from /tmp/mq/m.conf.",
    "1796030087: Opening ipv4 listen socket on port 52849.",
    "1796030087: Warning: Mosquitto should not be run as root/administrator.",
    "New client connected from nowhere as x (p5).",
    "Denied PUBLISH from meter-1-probe (no topic here)",
    "meter-1-probe 1 fmb/dms/#",  # a subscription of a client this parser never saw connect
])
def test_lines_that_are_no_event(line: str) -> None:
    assert parse_all([line]) == []


def test_timestamps_of_either_format_are_dropped() -> None:
    for stamp in ("1796030087: ", "2026-11-30T09:14:47: ", ""):
        (event,) = parse_all([f"{stamp}New connection from 127.0.0.1:1 on port 2."])
        assert event.line == "New connection from 127.0.0.1:1 on port 2."


def test_a_device_rejecting_a_command() -> None:
    line = ("2026-11-30 09:14:47,123 capbank.capbank-1 ERROR rejected command on "
            "fmb/capbankmodule/CapBankControlProfile/capbank-1: bad signature claiming to be 'dms-1' "
            "(rejected commands so far: 3)\n")
    event = device_log_event("capbank-1", line, NOW)
    assert event is not None and event.kind == "command_rejected" and event.identity == "dms-1"
    assert event.detail == {"actuator": "capbank-1", "topic": "fmb/capbankmodule/CapBankControlProfile/capbank-1",
                            "reason": "bad signature claiming to be 'dms-1'", "rejected_so_far": 3}
    unsigned = device_log_event("capbank-1", line.replace("bad signature claiming to be 'dms-1'", "unsigned command"))
    assert unsigned is not None and unsigned.identity is None and unsigned.detail["reason"] == "unsigned command"
    assert device_log_event("capbank-1", "capbank.capbank-1 INFO close from dms-1", NOW) is None
