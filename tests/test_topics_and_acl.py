"""The topic tree, the ACLs and bridges derived from it, and payload validation (no broker)."""

from __future__ import annotations

from pathlib import PurePath

import pytest

from brokers.mosquitto import BrokerFiles, render_acl, render_conf
from testbed.core.payloads import PayloadError, child_traceparent, decode, encode, new_traceparent
from testbed.core.scenario import matches
from testbed.core.topics import parse_topic, topic
from testbed.core.topology import load_topology

T = load_topology()


def _acl(broker: str) -> dict[str, set[str]]:
    users: dict[str, set[str]] = {}
    current = None
    for line in render_acl(T, T.broker(broker)).splitlines():
        if line.startswith("user "):
            current = line.split()[1]
            users[current] = set()
        elif line.startswith("topic ") and current:
            users[current].add(line.removeprefix("topic "))
    return users


def test_topic_round_trip() -> None:
    name = topic("fmb", "MeterReadingProfile", "meter-1")
    assert name == "fmb/metermodule/MeterReadingProfile/meter-1"
    profile, mrid = parse_topic("fmb", name)
    assert (profile.name, profile.plane, mrid) == ("MeterReadingProfile", "delivery", "meter-1")
    for bad in ("fmb/metermodule/MeterReadingProfile", "x/metermodule/MeterReadingProfile/m",
                "fmb/capbankmodule/MeterReadingProfile/m", "fmb/metermodule/MeterReadingProfile/"):
        with pytest.raises(ValueError):
            parse_topic("fmb", bad)


def test_acl_is_least_privilege() -> None:
    field_control = _acl("field-control")
    assert field_control["capbank-1"] == {"read fmb/capbankmodule/CapBankControlProfile/capbank-1"}
    # The operator's screen shows the monitor's alerts: the tablet reads them, and writes only commands,
    # to its own site's supplies.
    assert field_control["tablet-1"] == {"write fmb/supplymodule/SupplyControlProfile/supply-1",
                                         "read fmb/securitymodule/AlertProfile/+"}
    assert "meter-1" not in field_control  # a meter has no business on the control plane
    field_delivery = _acl("field-delivery")
    assert field_delivery["meter-1"] == {"write fmb/metermodule/MeterReadingProfile/meter-1"}
    assert all(e.startswith("read ") for e in field_delivery["recorder"])
    # The data centre's bridge writes here only the commands addressed to this site's devices.
    assert field_control["bridge-field-control"] == {"write fmb/supplymodule/SupplyControlProfile/supply-1",
                                                     "write fmb/capbankmodule/CapBankControlProfile/capbank-1"}
    dc_delivery = _acl("dc-delivery")
    assert "meter-1" not in dc_delivery  # field devices have no rights on data-centre brokers
    # The DMS publishes one diagram per feeder it manages, on the feeder's topic, and no other.
    assert dc_delivery["dms-1"] >= {"read fmb/metermodule/MeterReadingProfile/+",
                                    "write fmb/dmsmodule/SingleLineDiagramProfile/feeder-1"}
    assert {e for e in dc_delivery["dms-1"] if "SingleLineDiagram" in e} == {
        "write fmb/dmsmodule/SingleLineDiagramProfile/feeder-1"}
    # The tablet reads the diagrams of its site's feeders only, and writes its display.
    assert field_delivery["tablet-1"] == {"read fmb/dmsmodule/SingleLineDiagramProfile/feeder-1",
                                          "write fmb/hmimodule/DisplayStatusProfile/tablet-1"}
    assert not any("#" in e for entries in dc_delivery.values() for e in entries)


def test_bridges_carry_only_what_the_other_side_reads() -> None:
    delivery, control = T.bridges
    assert T.bridge_directions(delivery) == {
        "SupplyStatusProfile": "out", "MeterReadingProfile": "out", "CapBankStatusProfile": "out",
        "SingleLineDiagramProfile": "in"}
    assert T.bridge_directions(control) == {"SupplyControlProfile": "in", "CapBankControlProfile": "in"}
    files = BrokerFiles(PurePath("/c"), PurePath("/d"), None)
    conf = render_conf(T, T.broker("field-delivery"), files)
    # Each side opens the connection that carries what it sends, so what waits during a
    # partition waits in the sender's queue (the data centre's is persistent).
    assert "connection bridge-field-delivery-out" in conf and "connection bridge-field-delivery-in" not in conf
    assert "topic fmb/metermodule/MeterReadingProfile/+ out 1" in conf
    assert "DisplayStatusProfile" not in conf  # nobody in the data centre reads it
    assert "persistence false" in conf
    # A partition heals within one retry: a constant 1 s (one value alone would keep Mosquitto's
    # default 5-30 s backoff) and the shortest keepalive Mosquitto takes (brokers/mosquitto.py).
    assert "restart_timeout 1 1" in conf and "keepalive_interval 5" in conf
    dc = render_conf(T, T.broker("dc-delivery"), files)
    assert "persistence true" in dc and "autosave_interval 60" in dc
    # Inward, the field's bridge carries the diagrams of the field's feeders only (the tablet's reads).
    assert "connection bridge-field-delivery-in" in dc
    assert "topic fmb/dmsmodule/SingleLineDiagramProfile/feeder-1 out 1" in dc
    assert "SingleLineDiagramProfile/+" not in dc
    assert "connection bridge-field-control-in" in render_conf(T, T.broker("dc-control"), files)
    assert "connection " not in render_conf(T, T.broker("field-control"), files)  # nothing goes up on control


def test_payload_round_trip_and_rejections() -> None:
    payload = encode("MeterReadingProfile", "meter-1", 7, {"voltage_v": 118.8, "reason": "periodic"})
    msg = decode(payload, "MeterReadingProfile", "meter-1")
    assert (msg.source, msg.seq, msg.body["voltage_v"]) == ("meter-1", 7, 118.8)
    with pytest.raises(PayloadError, match="outside the plausible"):
        encode("SupplyControlProfile", "tablet-1", 1, {"setpoint_v": 5000})
    with pytest.raises(PayloadError, match="profile 'MeterReadingProfile' on a CapBankStatusProfile"):
        decode(payload, "CapBankStatusProfile")
    with pytest.raises(PayloadError, match="expected one of"):
        encode("CapBankControlProfile", "dms-1", 1, {"action": "explode"})
    with pytest.raises(PayloadError, match="not JSON"):
        decode(b"\xff\xfe")
    with pytest.raises(PayloadError, match="field 'seq' is bool"):
        decode(payload.replace(b'"seq":7', b'"seq":true'))


def test_traceparent_keeps_the_trace() -> None:
    parent = new_traceparent()
    child = child_traceparent(parent)
    assert child.split("-")[1] == parent.split("-")[1] and child != parent
    assert len(child_traceparent("garbage").split("-")[1]) == 32


def test_predicates() -> None:
    body = {"feeders": {"f1": {"capbank_state": "closed", "meter_v": 120.0}}, "v": 3}
    assert matches({"feeders.*.capbank_state": "closed", "v": {"between": [1, 3]}}, body)
    assert not matches({"feeders.*.capbank_state": "open"}, body)
    assert not matches({"feeders.*.meter_v": {"lt": 114}}, body)
    assert not matches({"missing.path": 1}, body)
    assert not matches({"feeders.*.capbank_state": {"gt": 1}}, body)  # no number, no match
