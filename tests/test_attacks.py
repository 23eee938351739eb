"""Detect and Respond: attacks on the real session bus, each raising the monitor's expected alert.

The module runs the monitor with short test thresholds and one automatic response (topic scans
revoke the scanner), attacks with identities of its own (``intruder-*``, never a device's
certificate revoked), and ends by running Appendix A and checking that no legitimate QoS 1
message was lost. Detection delays (attack start to alert) are written, not asserted, to the
file named by ``FMB_ATTACK_FIGURES`` when it is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.bench.cutoff import tls_refused
from testbed.core.payloads import encode
from testbed.core.stats import count_loss_and_duplicates
from testbed.core.waiting import wait_until
from testbed.csf.detect import Thresholds, filter_within, load_monitor_config
from testbed.csf.respond import Responder
from testbed.reporting.text import summary_table
from testbed.security.pki import PKI
from testbed.transport.mqtt import TLSIdentity, connect, publish_properties
from tests.probes import client_context, mqtt5_connect_packet, try_mqtt
from tests.test_signed_commands import ATTACKS, TOPIC, _command, _operator_signer, _publish

INJECTED_SEQ = 10**7  # sequence numbers of attacker-injected messages start here, so loss counts skip them
CONFIG = """
[thresholds]
idle_s = 2
repeat_s = 0.001
connect_attempts = 20
rate_msgs_per_s = 100
voltage_grace_s = 0.5

[policy]
topic_scan = "revoke"
"""


@pytest.fixture(scope="module")
def monitor(bus) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    config = bus.state_dir / "monitor.toml"
    config.write_text(CONFIG)
    bus.restart("monitor")
    try:
        yield bus
    finally:
        config.unlink(missing_ok=True)
        bus.restart("monitor")


class Alerts:
    """The alert file from a mark on; :meth:`wait` polls until an alert matches."""

    def __init__(self, bus: Any) -> None:
        self.path = bus.state_dir / "alerts.jsonl"
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.t0 = time.time_ns()

    def wait(self, kind: str, match: Callable[[dict[str, Any]], bool] = lambda a: True,
             timeout_s: float = 10) -> dict[str, Any]:
        seen: list[dict[str, Any]] = []

        def matching() -> dict[str, Any] | None:
            if self.path.exists():
                with open(self.path) as f:
                    f.seek(self.offset)
                    seen[:] = [json.loads(line) for line in f if line.strip()]
            return next((a for a in seen if a["kind"] == kind and match(a)), None)

        alert = wait_until(matching, timeout_s, error=AssertionError,
                           what=lambda: f"no {kind} alert in {timeout_s} s; alerts since the mark: "
                                        f"{[(a['kind'], a.get('identity')) for a in seen][-10:]}")
        _figure(kind, (alert["time_ns"] - self.t0) / 1e6)
        return alert


def _figure(kind: str, delay_ms: float) -> None:
    path = os.environ.get("FMB_ATTACK_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0], "alert": kind,
                                "detection_delay_ms": round(delay_ms, 1)}) + "\n")


def _intruder(pki: PKI, what: str) -> tuple[str, TLSIdentity]:
    name = f"intruder-{what}-{time.monotonic_ns() % 10**9}"
    paths = pki.issue_client(name)
    return name, TLSIdentity(pki.ca_cert, paths.cert, paths.key)


def _raw_tls(bus: Any, broker: str, identity: TLSIdentity, client_id: str) -> ssl.SSLSocket:
    """A TLS socket with a valid client certificate, CONNECTed (MQTT v5), for hand-made packets."""
    ep = bus.endpoint(broker)
    ctx = client_context(identity.ca, identity.cert, identity.key)
    sock = ctx.wrap_socket(socket.create_connection((ep.host, ep.port), timeout=5), server_hostname=ep.host)
    sock.sendall(mqtt5_connect_packet(client_id))
    assert sock.recv(64)[:1] == b"\x20"
    return sock


def _varlen(n: int) -> bytes:
    out = b""
    while True:
        n, byte = divmod(n, 128)
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _publish_packet(topic: bytes, payload: bytes = b"x", flags: int = 0x32) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + b"\x00\x01" + b"\x00" + payload
    return bytes([flags]) + _varlen(len(body)) + body


MALFORMED = {
    "bad remaining length": b"\x32\xff\xff\xff\xff\x7f",
    "invalid UTF-8 topic": _publish_packet(b"fmb/\xff\xfe/x"),
    "zero-length topic": _publish_packet(b""),
    "QoS 3": _publish_packet(b"fmb/metermodule/MeterReadingProfile/meter-1", flags=0x36),
    "oversize payload": _publish_packet(b"fmb/metermodule/MeterReadingProfile/meter-1", b"A" * 70000),
}


def test_filter_within_and_config_units(tmp_path: Path) -> None:
    assert filter_within("fmb/a/B/x", "fmb/a/B/+")
    assert not filter_within("fmb/#", "fmb/a/B/+")
    assert not filter_within("fmb/a/B/+", "fmb/a/B/x")
    assert filter_within("$CONTROL/x", "$CONTROL/#")
    path = tmp_path / "monitor.toml"
    path.write_text(CONFIG)
    config = load_monitor_config(path)
    assert config.thresholds.idle_s == 2 and config.policy == {"topic_scan": "revoke"}
    path.write_text("[policy]\ntopic_scan = 'nuke'\n")
    with pytest.raises(Exception, match="policy.topic_scan"):
        load_monitor_config(path)
    with pytest.raises(ValueError):
        Thresholds(scan_topics=0)


def test_rogue_clients_without_certificate_and_from_another_ca(monitor, tmp_path: Path) -> None:
    alerts = Alerts(monitor)
    port = monitor.topology.broker("field-delivery").port
    rogue = PKI(tmp_path / "rogue")
    rogue.init({}, ["meter-1"])  # a real device's name, signed by the wrong CA
    other = rogue.client("meter-1")
    for _ in range(3):
        assert try_mqtt(port, client_context(monitor.pki.ca_cert)) != "connack"
        assert try_mqtt(port, client_context(monitor.pki.ca_cert, other.cert, other.key)) != "connack"
    tls = alerts.wait("tls_failures", lambda a: a["broker"] == "field-delivery")
    assert tls["address"] == "127.0.0.1" and "peer did not return a certificate" in tls["evidence"]["reasons"]
    auth = alerts.wait("auth_failures", lambda a: a["broker"] == "field-delivery")
    assert "certificate verify failed" in auth["evidence"]["reasons"]


def test_repeated_connection_attempts(monitor) -> None:
    alerts = Alerts(monitor)
    port = monitor.topology.broker("field-control").port
    for _ in range(25):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    alert = alerts.wait("connection_flood", lambda a: a["broker"] == "field-control")
    assert alert["address"] == "127.0.0.1" and alert["evidence"]["connections"] > 20


def test_stolen_certificate_is_revoked_while_connected_and_cannot_reconnect(monitor) -> None:
    name, identity = _intruder(monitor.pki, "stolen")
    dropped = threading.Event()
    client = connect(f"{name}-session", identity, monitor.endpoint("field-delivery"))
    client.on_disconnect = lambda *a: dropped.set()
    alerts = Alerts(monitor)
    try:
        outcome = Responder(monitor).revoke(name)
        assert dropped.wait(5), "the revoked identity's live session was not evicted"
        assert outcome["brokers_reloaded"] == 4 and len(outcome["evicted_on"]) == 4
        for _ in range(3):  # reconnecting with the stolen certificate fails at the handshake, and is seen
            assert tls_refused(monitor, name, "field-delivery")
    finally:
        client.disconnect()
        client.loop_stop()
    alerts.wait("auth_failures", lambda a: a["broker"] == "field-delivery")


def test_topic_scan_is_detected_and_the_scanner_revoked_automatically(monitor) -> None:
    name, identity = _intruder(monitor.pki, "scanner")
    dropped = threading.Event()
    alerts = Alerts(monitor)
    client = connect(f"{name}-scan", identity, monitor.endpoint("field-delivery"))
    client.on_disconnect = lambda *a: dropped.set()
    try:
        for module, profile in (("metermodule", "MeterReadingProfile"), ("supplymodule", "SupplyStatusProfile"),
                                ("capbankmodule", "CapBankStatusProfile"), ("dmsmodule", "SingleLineDiagramProfile"),
                                ("hmimodule", "DisplayStatusProfile"), ("x", "#")):
            client.subscribe(f"fmb/{module}/{profile}" if profile == "#" else f"fmb/{module}/{profile}/+", 1)
        alert = alerts.wait("topic_scan", lambda a: a["identity"] == name)
        assert alert["evidence"]["distinct_topics"] >= 5
        assert alert["response"]["action"] == "revoke" and "error" not in alert["response"], alert["response"]
        assert dropped.wait(5)
        assert tls_refused(monitor, name, "field-delivery")
    finally:
        client.disconnect()
        client.loop_stop()


def test_publish_scan_on_the_control_plane_is_detected_from_debug_denials(monitor) -> None:
    """Denied publishes are logged only at debug level, which the control-plane brokers have."""
    name, identity = _intruder(monitor.pki, "pubscan")
    alerts = Alerts(monitor)
    client = connect(f"{name}-scan", identity, monitor.endpoint("field-control"))
    try:
        for i in range(6):
            client.publish(f"fmb/capbankmodule/CapBankControlProfile/capbank-{i}", b"{}", 1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
    alert = alerts.wait("topic_scan", lambda a: a["identity"] == name)
    assert "PUBLISH denied" in alert["evidence"]["how"]
    assert alert["response"]["action"] == "revoke" and "error" not in alert["response"], alert["response"]


@pytest.mark.parametrize("packet", list(MALFORMED))
def test_malformed_packets_with_a_valid_certificate(monitor, packet: str) -> None:
    alerts = Alerts(monitor)
    cid = f"malformed-{packet.replace(' ', '-')}"
    sock = _raw_tls(monitor, "field-control", monitor.identity("meter-1"), cid)
    try:
        sock.sendall(MALFORMED[packet])
        sock.settimeout(3)
        with contextlib.suppress(TimeoutError, OSError):
            sock.recv(64)
    finally:
        sock.close()
    alert = alerts.wait("malformed_packet", lambda a: a["evidence"]["client_id"] == cid)
    assert alert["identity"] == "meter-1" and alert["address"] == "127.0.0.1"
    assert monitor.alive("field-control")


def test_abnormal_termination_and_idle_client(monitor) -> None:
    alerts = Alerts(monitor)
    name, identity = _intruder(monitor.pki, "idle")
    idle = _raw_tls(monitor, "field-delivery", identity, f"{name}-idle")
    alert = alerts.wait("idle_client", lambda a: a["identity"] == name)
    assert "unknown" in alert["evidence"]["why"]
    idle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    idle.close()  # a TCP reset, no DISCONNECT
    alerts.wait("abnormal_termination", lambda a: a["evidence"]["client_id"] == f"{name}-idle")


def test_messages_nobody_reads(monitor) -> None:
    alerts = Alerts(monitor)
    # The DMS may command any supply (a tablet only its own site's): no such supply, nobody subscribes.
    client = connect("dms-1-undeliverable", monitor.identity("dms-1"), monitor.endpoint("dc-control"))
    topic = "fmb/supplymodule/SupplyControlProfile/supply-9"
    try:
        for i in range(3):
            client.publish(topic, encode("SupplyControlProfile", "dms-1", INJECTED_SEQ + i, {"setpoint_v": 118.0}),
                           1, properties=publish_properties(None)).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
    alert = alerts.wait("undeliverable", lambda a: a["evidence"]["topic"] == topic)
    assert alert["identity"] == "dms-1"


def _as_meter(bus: Any, body_volts: list[float], client_id: str, delay_s: float = 0.0) -> None:
    client = connect(client_id, bus.identity("meter-1"), bus.endpoint("field-delivery"))
    try:
        for i, volts in enumerate(body_volts):
            payload = encode("MeterReadingProfile", "meter-1", INJECTED_SEQ + time.monotonic_ns() % 10**9 + i,
                             {"voltage_v": volts, "reason": "exception"})
            info = client.publish("fmb/metermodule/MeterReadingProfile/meter-1", payload, 0)
            if delay_s:
                time.sleep(delay_s)
        info.wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_compromised_meter_reporting_false_low_voltage(monitor) -> None:
    """The DMS cannot tell a false reading from a true one (it acts on it, closing the cap bank);
    the monitor flags it, because the feeder's supply and cap bank cannot explain it."""
    alerts = Alerts(monitor)
    _as_meter(monitor, [100.0], "meter-1-impostor")
    alert = alerts.wait("implausible_reading", lambda a: a["identity"] == "meter-1")
    evidence = alert["evidence"]
    assert evidence["voltage_v"] == 100.0
    assert evidence["expected_v"] is None or abs(evidence["expected_v"] - 100.0) > 3, evidence


def test_delivery_plane_flood(monitor) -> None:
    alerts = Alerts(monitor)
    _as_meter(monitor, [118.8] * 400, "meter-1-flood")
    alert = alerts.wait("rate_anomaly", lambda a: a["identity"] == "meter-1")
    assert alert["evidence"]["messages_this_second"] > 100


@pytest.mark.parametrize("attack", ["forged", "replayed"])
def test_forged_and_replayed_commands_raise_alerts(monitor, attack: str) -> None:
    alerts = Alerts(monitor)
    if attack == "forged":
        payload, props = ATTACKS["forged"][0](monitor)
        _publish(monitor, payload, props)
    else:
        payload = _command(119.0)
        props = _operator_signer(monitor).properties(TOPIC, payload)
        _publish(monitor, payload, props)
        _publish(monitor, payload, props)
    reason = "bad signature" if attack == "forged" else "replayed"
    alert = alerts.wait("command_rejected", lambda a: reason in a["evidence"]["reason"])
    assert alert["evidence"]["actuator"] == "supply-1" and alert["identity"] == "operator"


def test_block_topic_and_identity_then_unblock(monitor) -> None:
    responder = Responder(monitor)
    name, identity = _intruder(monitor.pki, "blocked")
    topic = "fmb/benchmodule/BenchFloodProfile/blocked"
    codes: list[int] = []
    client = connect(f"{name}-bench", monitor.identity("bench"), monitor.endpoint("field-delivery"))
    client.on_publish = lambda c, u, mid, reason, props: codes.append(reason.value)
    victim = connect(f"{name}-session", identity, monitor.endpoint("field-delivery"))
    dropped = threading.Event()
    victim.on_disconnect = lambda *a: dropped.set()
    try:
        client.publish(topic, b"{}", 1).wait_for_publish(5)
        responder.block(topic)
        client.publish(topic, b"{}", 1).wait_for_publish(5)
        responder.block(name)
        assert dropped.wait(5), "the blocked identity was not evicted"
        responder.unblock(topic)
        responder.unblock(name)
        client.publish(topic, b"{}", 1).wait_for_publish(5)
    finally:
        for c in (client, victim):
            c.disconnect()
            c.loop_stop()
    assert [c in (0, 16) for c in codes] == [True, False, True], codes  # 16: accepted, no subscriber
    assert codes[1] == 0x87


def test_legitimate_devices_keep_working_and_lose_nothing(monitor, run_scenario, tmp_path: Path) -> None:
    """Last: after every attack above, Appendix A passes and no legitimate QoS 1 message is lost."""
    result = run_scenario(repeat=2, out=tmp_path)
    assert result["passed"], summary_table(result)
    seqs: dict[str, list[int]] = {}
    for line in (tmp_path / "messages.jsonl").read_text().splitlines():
        obs = json.loads(line)
        payload = obs["payload"]
        if isinstance(payload, dict) and payload["seq"] < INJECTED_SEQ and obs["qos"] == 1 \
                and payload["source"] in {d.id for d in monitor.topology.devices}:
            seqs.setdefault(payload["source"], []).append(payload["seq"])
    assert seqs
    for source, received in seqs.items():
        counts = count_loss_and_duplicates(range(min(received), max(received) + 1), received)
        assert counts["lost"] == 0, (source, counts)
    assert all(monitor.alive(d.id) for d in monitor.topology.devices)
