"""Least privilege: a device may publish only its own topics, and the bus carries on."""

from __future__ import annotations

import threading

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from testbed.core.payloads import encode
from testbed.reporting.text import summary_table
from testbed.transport.mqtt import Endpoint, TLSIdentity, tls_context

NOT_AUTHORIZED = 0x87


def _publish_as(identity: TLSIdentity, endpoint: Endpoint, topic: str, payload: bytes) -> int:
    """Publish QoS 1 as ``identity``; the PUBACK's MQTT v5 reason code."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-probe-{identity.cert.stem}",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set_context(tls_context(identity))
    acked = threading.Event()
    codes: list[int] = []

    def on_publish(c, userdata, mid, reason, props):  # type: ignore[no-untyped-def]
        codes.append(reason.value)
        acked.set()

    client.on_publish = on_publish
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1)
        assert acked.wait(5), "no PUBACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]


def test_meter_cannot_command_the_cap_bank(bus, run_scenario) -> None:
    meter = bus.identity("meter-1")
    control = bus.endpoint("field-control")
    payload = encode("CapBankControlProfile", "meter-1", 1, {"action": "close"})
    code = _publish_as(meter, control, "fmb/capbankmodule/CapBankControlProfile/capbank-1", payload)
    assert code == NOT_AUTHORIZED


def test_meter_cannot_impersonate_another_meter(bus) -> None:
    meter = bus.identity("meter-1")
    payload = encode("MeterReadingProfile", "meter-2", 1, {"voltage_v": 90.0, "reason": "periodic"})
    code = _publish_as(meter, bus.endpoint("field-delivery"),
                       "fmb/metermodule/MeterReadingProfile/meter-2", payload)
    assert code == NOT_AUTHORIZED


def test_meter_may_publish_its_own_reading(bus) -> None:
    """The control case: the same probe, on the meter's own topic, is accepted."""
    meter = bus.identity("meter-1")
    payload = encode("MeterReadingProfile", "meter-1", 10**6, {"voltage_v": 118.8, "reason": "periodic"})
    code = _publish_as(meter, bus.endpoint("field-delivery"),
                       "fmb/metermodule/MeterReadingProfile/meter-1", payload)
    assert code == 0


def test_recorder_is_read_only(bus) -> None:
    payload = encode("SupplyControlProfile", "recorder", 1, {"setpoint_v": 114.0})
    code = _publish_as(bus.identity("recorder"), bus.endpoint("field-control"),
                       "fmb/supplymodule/SupplyControlProfile/supply-1", payload)
    assert code == NOT_AUTHORIZED


def test_bus_carries_on_after_denials(bus, run_scenario) -> None:
    payload = encode("CapBankControlProfile", "meter-1", 2, {"action": "close"})
    _publish_as(bus.identity("meter-1"), bus.endpoint("field-control"),
                "fmb/capbankmodule/CapBankControlProfile/capbank-1", payload)
    result = run_scenario(repeat=2)
    assert result["passed"], summary_table(result)
