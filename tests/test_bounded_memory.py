"""The recorder and the monitor's rules keep bounded memory whatever the traffic (issue 12).

No broker here: the recorder's message handler and the Detector are fed what the MQTT clients
would hand them (real ``paho.MQTTMessage`` objects, real payloads), tens of thousands of messages
from 10,000 distinct identities, and what they hold is measured as the garbage collector's count
of live objects. The recorder's spool must still give back every observation, in order, with
today's fields. The monitor's sharding (one alert file, whole lines; a shard's environment) is
checked here too.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import multiprocessing
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from testbed.backends.local import monitor_environment
from testbed.core.errors import TestbedError
from testbed.core.payloads import Message, encode
from testbed.core.topology import Topology, load_topology
from testbed.csf.detect import Detector, Thresholds
from testbed.csf.monitor import append_line, watched_sites
from testbed.csf.window import SlidingWindow
from testbed.harness.recorder import MAX_SIGHTINGS, Recorder
from testbed.transport.mqtt import TLSIdentity

S = 10**9
T0 = 1_700_000_000 * S
FIELDS = {"index", "topic", "qos", "retain", "first_recv_ns", "traceparent", "signer", "sightings", "payload", "error"}


TRACEPARENT = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"


def _properties(traceparent: str = TRACEPARENT) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("traceparent", traceparent)]
    return props


PROPERTIES = _properties()  # shared by the many messages below: building one per message is slow


def _message(topic: str, payload: bytes, props: Properties = PROPERTIES) -> paho.MQTTMessage:
    msg = paho.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    msg.qos = 1
    msg.properties = props
    return msg


def _recorder(tmp_path: Path, **options: Any) -> Recorder:
    nobody = TLSIdentity(tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "c.key")  # never connects here
    return Recorder(load_topology(), nobody, {}, spool_dir=tmp_path, **options)


COMMAND = encode("SupplyControlProfile", "meter-K", 0, {"setpoint_v": 120.0}, ts_ns=0).decode().replace(
    '"seq":0', '"seq":%(seq)d').replace('"ts_ns":0', '"ts_ns":%(ts)d').replace("meter-K", "meter-%(k)05d")


def _command(k: int, seq: int) -> paho.MQTTMessage:
    """What the operator identity may publish: a command to any mRID (here one of 10,000 meters),
    its payload naming that meter as the source (the bytes ``encode`` makes, formatted: faster)."""
    payload = (COMMAND % {"k": k, "seq": seq, "ts": T0 + seq}).encode()
    return _message(f"fmb/supplymodule/SupplyControlProfile/meter-{k:05d}", payload)


def _live_objects(feed: Any, rounds: int) -> list[int]:
    """How many objects the garbage collector tracks after each of ``rounds`` calls of
    ``feed(round)``: what is held (observations, messages, dicts, windows) is counted there, and
    counting is cheap where tracing every allocation would slow the feeding down tenfold."""
    sizes = []
    for r in range(rounds):
        feed(r)
        gc.collect()
        sizes.append(len(gc.get_objects()))
    return sizes


def test_the_recorder_holds_a_bounded_ring_and_spools_all_50000_observations_to_disk(tmp_path: Path) -> None:
    rec = _recorder(tmp_path, capacity=2_000)
    sent = 0

    def feed(_: int) -> None:
        nonlocal sent
        for _ in range(10_000):
            rec.on_message("field-control", "control", _command(sent % 10_000, sent))
            sent += 1

    sizes = _live_objects(feed, 5)
    assert sent == 50_000 and rec.mark() == 50_000
    assert rec.held() == 2_000 and rec.dropped == 48_000
    # After the first 10,000 the ring is full: what is held no longer grows with what was seen.
    assert max(sizes[1:]) - min(sizes[1:]) < 0.1 * sizes[1], sizes
    assert sizes[-1] - sizes[0] < 5_000, sizes  # no object per message seen

    out = tmp_path / "messages.jsonl"
    rec.write_jsonl(out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["index"] for d in lines] == list(range(50_000))
    assert all(set(d) == FIELDS for d in lines)
    assert lines[123]["payload"]["source"] == "meter-00123" and lines[123]["sightings"][0]["broker"] == "field-control"
    assert lines[123]["traceparent"].startswith("00-1111")
    later = tmp_path / "later.jsonl"
    rec.write_jsonl(later, since=49_990)  # from the spool and the ring alike
    assert [json.loads(line)["index"] for line in later.read_text().splitlines()] == list(range(49_990, 50_000))
    rec.write_jsonl(tmp_path / "again.jsonl")  # writing leaves the spool whole, and recording goes on
    rec.on_message("field-control", "control", _command(1, 50_000))
    rec.write_jsonl(out)
    assert len(out.read_text().splitlines()) == 50_001
    rec.close()


def test_the_same_message_on_two_brokers_is_one_observation_while_held(tmp_path: Path) -> None:
    rec = _recorder(tmp_path, capacity=10)
    payload = encode("MeterReadingProfile", "meter-1", 7, {"voltage_v": 118.8, "reason": "periodic"})
    topic = "fmb/metermodule/MeterReadingProfile/meter-1"
    rec.on_message("field-delivery", "delivery", _message(topic, payload))
    rec.on_message("dc-delivery", "delivery", _message(topic, payload))
    (obs,) = rec.snapshot()
    assert [b for b, _, _ in obs.sightings] == ["field-delivery", "dc-delivery"]
    for _ in range(MAX_SIGHTINGS + 30):  # a replay flood of the very same bytes: counted, not kept
        rec.on_message("field-delivery", "delivery", _message(topic, payload))
    assert len(obs.sightings) == MAX_SIGHTINGS and obs.unkept_sightings == 32
    assert obs.as_json()["unkept_sightings"] == 32


def test_the_newest_state_of_a_device_outlives_the_ring(tmp_path: Path) -> None:
    rec = _recorder(tmp_path, capacity=100)
    status = encode("SupplyStatusProfile", "supply-1", 1, {"setpoint_v": 114.0, "output_v": 114.0}, ts_ns=T0)
    rec.on_message("field-delivery", "delivery", _message("fmb/supplymodule/SupplyStatusProfile/supply-1", status))
    mark = rec.mark()
    for n in range(1_000):
        rec.on_message("field-control", "control", _command(n, n + 10))
    assert rec.snapshot(0)[0].index == 1_000 - 100 + 1  # the status left the ring...
    latest = rec.latest("supply-1", "SupplyStatusProfile")
    assert latest is not None and latest.index == mark - 1  # ...not the device's state
    assert latest.decoded.body["output_v"] == 114.0
    assert rec.latest("supply-1", "SupplyStatusProfile", until_ns=T0 - 1) is None
    assert rec.wait_for(lambda obs: len(obs) == 10 and obs[0].index == 991, 0.1, since=991)


def test_a_recorder_for_some_devices_keeps_only_their_messages(tmp_path: Path) -> None:
    rec = _recorder(tmp_path, devices={"meter-00042", "supply-1"})
    for n in range(500):
        rec.on_message("field-control", "control", _command(n, n))
    bad = _message("fmb/supplymodule/SupplyStatusProfile/supply-1", b"{not json")
    rec.on_message("field-delivery", "delivery", bad)
    kept = rec.snapshot()
    assert [o.topic.rsplit("/", 1)[1] for o in kept] == ["meter-00042", "supply-1"]
    assert kept[1].message is None and kept[1].error  # an undecodable payload on a chosen device's topic is kept
    assert rec.ignored == 499
    with pytest.raises(TestbedError, match="nowhere"):
        _recorder(tmp_path, sites={"nowhere"})
    assert {b.site for b in _recorder(tmp_path, sites={"field"}).brokers} == {"field"}


# -- the monitor's rules ------------------------------------------------------------------------


def _many_feeders(topology: Topology, n: int) -> Topology:
    """Appendix A's feeder and ``n`` - 1 copies of it with devices of their own (named only)."""
    f = topology.feeders[0]
    copies = [dataclasses.replace(f, id=f"feeder-x{k}", supply=f"supply-x{k}", capbank=f"capbank-x{k}",
                                  meters=(f"meter-x{k}",)) for k in range(1, n)]
    return dataclasses.replace(topology, feeders=(f, *copies))


class _NoScan:
    """A topology whose feeders must not be looked at (per message, the rules use their index)."""

    def __init__(self, topology: Topology) -> None:
        self._topology = topology

    def __getattr__(self, name: str) -> Any:
        if name == "feeders":
            raise AssertionError("the detector scanned every feeder for one message")
        return getattr(self._topology, name)


def test_plausibility_looks_up_the_readings_feeder_instead_of_scanning_them_all() -> None:
    clock = [T0]
    d = Detector(_many_feeders(load_topology(), 2_000), Thresholds(), clock=lambda: clock[0])
    d.topology = _NoScan(d.topology)  # type: ignore[assignment]
    status = Message("SupplyStatusProfile", "supply-x1500", 1, T0, {"setpoint_v": 120.0, "output_v": 120.0})
    assert d.on_message("field-delivery", "fmb/supplymodule/SupplyStatusProfile/supply-x1500", status, False) == []
    clock[0] += 5 * S  # past the grace period: 120 V less the 1.2 V line drop is expected
    ok = Message("MeterReadingProfile", "meter-x1500", 1, clock[0], {"voltage_v": 118.8, "reason": "periodic"})
    bad = Message("MeterReadingProfile", "meter-x1500", 2, clock[0], {"voltage_v": 110.0, "reason": "periodic"})
    assert d.on_message("field-delivery", "fmb/metermodule/MeterReadingProfile/meter-x1500", ok, False) == []
    assert d.on_message("field-delivery", "fmb/metermodule/MeterReadingProfile/meter-x1500", bad, False) == []
    clock[0] += 3 * S  # held for the grace time (a status explaining it may be on its way), then reported
    (alert,) = d.tick()
    assert alert.kind == "implausible_reading" and alert.evidence["feeder"] == "feeder-x1500"
    assert alert.evidence["expected_v"] == 118.8


def test_the_detectors_state_levels_off_under_10000_identities_and_a_hostile_one() -> None:
    """Four simulated minutes at 500 msg/s: readings from 10,000 meters (each names itself), a
    device claiming a new source in every message, topics nobody reads; the state after minute 2
    and after minute 4 are the same size."""
    clock = [T0]
    d = Detector(load_topology(), Thresholds(undeliverable=10**6, rate_msgs_per_s=10**6), clock=lambda: clock[0])
    seq = 0

    def one_minute(_: int) -> None:
        nonlocal seq
        for _ in range(60):
            for _ in range(500):
                seq += 1
                k = seq % 10_000
                source = f"forged-{seq}" if seq % 10 == 0 else f"meter-{k:05d}"
                m = Message("MeterReadingProfile", source, seq, clock[0], {"voltage_v": 120.0, "reason": "periodic"})
                d.on_message("field-delivery", f"fmb/metermodule/MeterReadingProfile/meter-{k:05d}", m, False)
                clock[0] += S // 500
            d.tick()

    sizes = _live_objects(one_minute, 4)
    assert sizes[3] - sizes[1] < 0.1 * sizes[1], sizes  # levelled off after the windows filled


def test_a_sliding_window_decides_as_if_it_kept_everything_and_keeps_cap_events() -> None:
    w = SlidingWindow(10, cap=64)
    for n in range(10_000):
        w.add(T0 + n * 1_000, f"topic-{n % 3}")
    assert w.count == 10_000 and len(w._times) == 64  # counted exactly, 64 kept
    assert sorted(w.distinct()) == ["topic-0", "topic-1", "topic-2"]
    w.expire(T0 + 11 * S)
    assert w.count == 0 and w.empty() and w.distinct() == []
    with pytest.raises(ValueError):
        SlidingWindow(0, 5)


# -- the monitor's shards -----------------------------------------------------------------------


def _append_many(path: str, tag: str) -> None:
    for n in range(500):
        append_line(Path(path), json.dumps({"shard": tag, "n": n, "pad": "x" * 9_000}))  # over one 8 KB buffer


def test_shards_share_one_alert_file_in_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    workers = [multiprocessing.get_context("fork").Process(target=_append_many, args=(str(path), t)) for t in "abc"]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    records = [json.loads(line) for line in path.read_text().splitlines()]  # each line whole
    assert len(records) == 1_500
    for tag in "abc":
        assert [r["n"] for r in records if r["shard"] == tag] == list(range(500))
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_shards_environment_names_its_sites_brokers_logs_and_ready_file(tmp_path: Path) -> None:
    topology = load_topology()
    env = monitor_environment(topology, tmp_path / "certs", tmp_path, tmp_path / "logs", tmp_path / "run",
                              sites=["field"])
    assert set(json.loads(env["FMB_BROKERS"])) == {"field-delivery", "field-control"}
    logs = set(json.loads(env["FMB_MONITOR_LOGS"]))
    assert {"field-delivery", "field-control"} <= logs and not any(n.startswith("dc-") for n in logs)
    assert "dms-1" not in logs and "supply-1" in logs  # the DMS lives in the data centre
    assert env["FMB_MONITOR_SITES"] == "field" and env["FMB_READY_FILE"].endswith("monitor-field.ready")
    assert env["FMB_MONITOR_ALERTS"] == str(tmp_path / "alerts.jsonl")  # one file for every shard
    whole = monitor_environment(topology, tmp_path / "certs", tmp_path, tmp_path / "logs", tmp_path / "run")
    assert whole["FMB_READY_FILE"].endswith("/monitor.ready") and len(json.loads(whole["FMB_BROKERS"])) == 4
    with pytest.raises(TestbedError, match="substation-9"):
        monitor_environment(topology, tmp_path, tmp_path, tmp_path, tmp_path, sites=["substation-9"])
    assert watched_sites(topology, " dc ,field") == ["dc", "field"]
    assert watched_sites(topology, "") == ["field", "dc"] or watched_sites(topology, "") == [
        s.name for s in topology.sites]
    with pytest.raises(TestbedError, match="FMB_MONITOR_SITES names nowhere"):
        watched_sites(topology, "nowhere")


def test_a_substations_shard_of_a_utility_watches_its_two_brokers_and_its_fleets_meters_are_indexed(
        tmp_path: Path) -> None:
    topology = load_topology(Path(__file__).parent.parent / "brokers" / "topologies" / "utility-small.toml")
    env = monitor_environment(topology, tmp_path, tmp_path, tmp_path / "logs", tmp_path / "run", sites=["sub-002"])
    assert set(json.loads(env["FMB_BROKERS"])) == {"sub-002-delivery", "sub-002-control"}
    assert not any(n.startswith(("sub-001", "sub-003", "dc")) for n in json.loads(env["FMB_MONITOR_LOGS"]))
    clock = [T0]
    d = Detector(topology, Thresholds(), clock=lambda: clock[0])
    d.topology = _NoScan(d.topology)  # type: ignore[assignment]
    meter = "sub-002-f1-m0037"  # not the feeder's regulating meter: held to the bounds of a 120 V service
    topic = f"fmb/metermodule/MeterReadingProfile/{meter}"
    fine = Message("MeterReadingProfile", meter, 1, T0, {"voltage_v": 117.5, "reason": "periodic"})
    assert d.on_message("sub-002-delivery", topic, fine, False) == []
    low = Message("MeterReadingProfile", meter, 2, T0, {"voltage_v": 95.0, "reason": "periodic"})
    (alert,) = d.on_message("sub-002-delivery", topic, low, False)
    assert alert.kind == "implausible_reading" and alert.evidence["feeder"] == "sub-002-f1"
