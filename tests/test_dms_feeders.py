"""The feeders file (hostile input: one-line errors), the diagrams' grants and the diagram's
checks in decode and in the tablet (no broker: tests/test_dms_scale.py runs them on one)."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from devices.base import DeviceConfig
from devices.dms import MeterSummary
from devices.feeder_file import MAX_FEEDERS_FILE_BYTES, read_feeders, write_feeders
from devices.tablet import TabletUI
from testbed.core.errors import DeviceError, PayloadError
from testbed.core.payloads import Message, decode, encode
from testbed.core.topics import PROFILES, ROLES, Grant
from testbed.core.topology import load_topology
from testbed.transport.health import install
from testbed.transport.mqtt import Endpoint, TLSIdentity

T = load_topology()
GOOD = {"id": "f1", "supply": "s1", "capbank": "c1", "meters": ["m1", "m2"]}

BAD = {
    "not JSON": ("[{", "is not JSON"),
    "not a list": ('{"id": "f1"}', "holds dict, not a list of feeders"),
    "not an object": ("[42]", "feeder #1 is int"),
    "missing field": (json.dumps([{"id": "f1", "supply": "s1", "meters": ["m1"]}]), "misses field 'capbank'"),
    "no meter": (json.dumps([{**GOOD, "meters": []}]), "needs 'meters', a non-empty list"),
    "wildcard mRID": (json.dumps([{**GOOD, "meters": ["m1", "+"]}]), "field 'meters[1]' is '+'"),
    "topic separator": (json.dumps([{**GOOD, "id": "f1/x"}]), "field 'id' is 'f1/x'"),
    "number as mRID": (json.dumps([{**GOOD, "supply": 7}]), "field 'supply' is '7'"),
    "device on two feeders": (json.dumps([GOOD, {**GOOD, "id": "f2", "supply": "s2", "capbank": "c2",
                                                 "meters": ["m2"]}]),
                              "device 'm2' appears twice (feeders 'f1' and 'f2')"),
    "feeder twice": (json.dumps([GOOD, {**GOOD, "supply": "s2", "capbank": "c2", "meters": ["m3"]}]),
                     "feeder 'f1' appears twice"),
    "deep nesting": ("[" * 100000, "is not JSON"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_feeders_list_is_a_one_line_error(case: str, tmp_path: Path) -> None:
    text, reason = BAD[case]
    path = tmp_path / "feeders.json"
    path.write_text(text)
    for extra in ({"FMB_FEEDERS_FILE": str(path)}, {"FMB_FEEDERS": text}):
        with pytest.raises(DeviceError, match="^[^\n]*$") as e:
            read_feeders(extra)
        assert reason in str(e.value), str(e.value)


def test_the_feeders_file_must_exist_and_be_of_a_sane_size(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="cannot read FMB_FEEDERS_FILE .*nothing.json"):
        read_feeders({"FMB_FEEDERS_FILE": str(tmp_path / "nothing.json")})
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        os.truncate(f.fileno(), MAX_FEEDERS_FILE_BYTES + 1)  # sparse: nothing written, nothing read
    with pytest.raises(DeviceError, match="over 67108864"):
        read_feeders({"FMB_FEEDERS_FILE": str(huge)})


def test_feeders_read_back_as_written(tmp_path: Path) -> None:
    (plan,) = read_feeders({"FMB_FEEDERS": json.dumps([GOOD])})
    assert (plan.id, plan.meter, plan.meters) == ("f1", "m1", ("m1", "m2"))
    (one,) = read_feeders({"FMB_FEEDERS": json.dumps([{"id": "f", "supply": "s", "capbank": "c", "meter": "m"}])})
    assert one.meters == ("m",)  # a single `meter`, as small topologies write it
    path = write_feeders(T, tmp_path)
    assert [(f.id, f.meter) for f in read_feeders({"FMB_FEEDERS_FILE": str(path)})] == [("feeder-1", "meter-1")]
    assert read_feeders({}) == []


def test_the_dms_publishes_every_feeders_diagram_a_tablet_reads_its_sites() -> None:
    diagram = "SingleLineDiagramProfile"
    assert Grant(diagram, "feeders") in ROLES["dms"].publishes and Grant(diagram, "site") in ROLES["tablet"].reads
    assert T.grant_mrids("dms-1", Grant(diagram, "feeders")) == ["feeder-1"]
    assert T.grant_mrids("tablet-1", Grant(diagram, "site")) == ["feeder-1"]
    assert T.grant_mrids("dms-1", Grant(diagram, "site")) == []  # the data centre has no feeder
    assert T.grant_mrids("recorder", Grant(diagram, "feeders")) == ["feeder-1"]  # a scope, whoever holds it


def _diagram(feeder: str, source: str = "dms-1") -> bytes:
    return encode("SingleLineDiagramProfile", source, 1, {"feeder": feeder, "version": 1, "range_a": "normal",
                                                          "meters": {"count": 1}})


def test_a_diagram_must_show_the_feeder_its_topic_names() -> None:
    assert decode(_diagram("feeder-1"), "SingleLineDiagramProfile", about="feeder-1").source == "dms-1"
    with pytest.raises(PayloadError, match="diagram of feeder 'feeder-2' on the topic of 'feeder-1'"):
        decode(_diagram("feeder-2"), "SingleLineDiagramProfile", about="feeder-1")
    with pytest.raises(PayloadError, match="misses field 'feeder'"):
        encode("SingleLineDiagramProfile", "dms-1", 1, {"version": 1, "range_a": "normal", "meters": {}})


def test_the_tablet_ignores_a_diagram_not_published_by_a_dms(tmp_path: Path) -> None:
    config = DeviceConfig("tablet-1", Endpoint("127.0.0.1", 1), Endpoint("127.0.0.1", 1),
                          TLSIdentity(tmp_path / "ca", tmp_path / "cert", tmp_path / "key"), extra={"FMB_DMS": "dms-1"})
    try:
        tablet = TabletUI(config)
    finally:
        install(None)  # the device made its heartbeat this process's
    forged = Message("SingleLineDiagramProfile", "meter-1", 1, time.time_ns(),
                     decode(_diagram("feeder-1", "meter-1")).body)
    tablet.handle(PROFILES["SingleLineDiagramProfile"], "feeder-1", forged, None)
    assert tablet.display is None and tablet.rejected == 1


def test_a_feeders_spread_follows_its_meters_latest_readings() -> None:
    spread = MeterSummary(count=3)
    for meter, volts in (("m1", 120.0), ("m2", 118.0), ("m3", 118.0), ("m2", 121.0)):
        spread.add(meter, volts)
    assert (spread.min_v, spread.max_v, spread.readings) == (118.0, 121.0, 4)  # m3 still holds 118
    spread.add("m3", 119.5)  # the last meter at the minimum leaves it
    spread.add("m2", 120.5)  # and the only one at the maximum
    assert (spread.min_v, spread.max_v) == (119.5, 120.5)
    assert spread.view() == {"count": 3, "reporting": 3, "min_v": 119.5, "max_v": 120.5}
    random.seed(7)
    latest: dict[str, float] = {}
    for _ in range(2000):  # against the obvious computation
        meter, volts = f"m{random.randrange(50)}", round(random.uniform(110, 130), 1)
        spread.add(meter, volts)
        latest[meter] = volts
        everyone = {**{"m1": 120.0, "m2": 120.5, "m3": 119.5}, **latest}
        assert (spread.min_v, spread.max_v) == (min(everyone.values()), max(everyone.values()))
