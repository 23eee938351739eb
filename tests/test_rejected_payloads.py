"""A burst of rejected payloads from one identity: the monitor alerts, and the respond policy blocks it.

A compromised meter (its own certificate) publishes payloads the DMS cannot take on the meter's
own topic; the DMS logs each rejection, the monitor reads the DMS's log, raises
``payload_rejected_burst`` on ``meter-1`` and, with ``payload_rejected_burst = "block"`` in its
policy, blocks the identity: its next publish is refused, another device's is not. On a bus of
its own, because it blocks a device of the bus and changes the monitor's policy; Appendix A passes
on it once the block is lifted.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.core.payloads import encode
from testbed.core.topics import topic
from testbed.csf.respond import Responder
from testbed.pytest_plugin import assert_scenario_passed, settings
from testbed.transport.mqtt import connect

BURST = 5
CONFIG = f"""
[thresholds]
payload_rejects = {BURST}
payload_reject_window_s = 30

[policy]
payload_rejected_burst = "block"
"""
NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="module")
def fmb_bus(request: pytest.FixtureRequest, fmb_bus_factory) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    if settings(request.config).backend != "local":
        pytest.skip("changes the local bus's monitor policy; runs with --fmb-backend local")
    with fmb_bus_factory() as bus:
        (bus.state_dir / "monitor.toml").write_text(CONFIG)
        bus.restart("monitor")
        yield bus


def _publish(bus: Any, identity: str, profile: str, payloads: list[bytes]) -> list[int]:
    """Publish as ``identity`` on its own topic, QoS 1; the PUBACK reason code of each."""
    codes: list[int] = []
    acked = threading.Condition()

    def on_publish(c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        with acked:
            codes.append(reason.value)
            acked.notify_all()

    client = connect(f"{identity}-test-{time.monotonic_ns() % 10**9}", bus.identity(identity),
                     bus.endpoint("field-delivery"))
    client.on_publish = on_publish
    try:
        for payload in payloads:
            client.publish(topic(bus.topology.root, profile, identity), payload, 1).wait_for_publish(5)
        with acked:
            acked.wait_for(lambda: len(codes) == len(payloads), 5)
    finally:
        client.disconnect()
        client.loop_stop()
    return codes


def _alert(bus: Any, offset: int, kind: str, timeout_s: float = 15) -> dict[str, Any]:
    path = bus.state_dir / "alerts.jsonl"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = path.read_bytes()[offset:] if path.exists() else b""  # the monitor creates it with its first alert
        for alert in (json.loads(line) for line in new.splitlines()):
            if alert["kind"] == kind and "response" in alert:
                return alert  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"no {kind} alert with a response in {timeout_s} s")


def test_a_burst_of_rejected_payloads_is_detected_and_its_sender_blocked(fmb_bus) -> None:  # type: ignore[no-untyped-def]
    alerts = fmb_bus.state_dir / "alerts.jsonl"
    offset = alerts.stat().st_size if alerts.exists() else 0
    reading = encode("MeterReadingProfile", "meter-1", 10**7, {"voltage_v": 120.0, "reason": "periodic"})
    status = encode("SupplyStatusProfile", "supply-1", 10**7, {"setpoint_v": 120.0, "output_v": 120.0})
    try:
        t0 = time.monotonic()
        bad = [b"not json {", b"[" * 200, b'{"v": 1}', b"\xff\xfe", b"{}"]
        assert _publish(fmb_bus, "meter-1", "MeterReadingProfile", bad[:BURST]) == [0] * BURST  # the broker takes them
        alert = _alert(fmb_bus, offset, "payload_rejected_burst")
        took_s = time.monotonic() - t0
        assert alert["identity"] == alert["subject"] == "meter-1", alert
        assert alert["evidence"]["rejections"] >= BURST and "dms-1" in alert["evidence"]["receivers"]
        response = alert["response"]
        assert response["action"] == "block" and response.get("identity") == "meter-1", response
        # Blocked: the meter's next publish, even a valid one, is refused; another device's is not.
        assert _publish(fmb_bus, "meter-1", "MeterReadingProfile", [reading]) == [NOT_AUTHORIZED]
        assert _publish(fmb_bus, "supply-1", "SupplyStatusProfile", [status]) == [0]
        print(json.dumps({"burst_to_block_s": round(took_s, 2), "response_ms": response["ms"]}))
    finally:
        Responder(fmb_bus).unblock("meter-1")
    assert _publish(fmb_bus, "meter-1", "MeterReadingProfile", [reading]) == [0]  # unblocked


def test_appendix_a_passes_once_the_block_is_lifted(fmb_run) -> None:  # type: ignore[no-untyped-def]
    assert_scenario_passed(fmb_run("appendix-a"))
