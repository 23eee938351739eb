"""The DMS at scale: 500 feeders, one diagram each, the work of a reading on its own feeder only.

A topology of its own, built here: a data centre's two brokers (real Mosquitto, the project's
mutual TLS and generated ACLs), a DMS process managing 500 feeders read from the feeders file the
backend writes, and nothing else running: the readings come from the meters' own certificates
(issued for the few this test uses), as a meter would send them. Feeder 0 has three meters; its
first regulates.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from devices.feeder_file import read_feeders, write_feeders
from testbed.backends import processes
from testbed.backends.local import device_environment
from testbed.bench.common import Processes, start_broker
from testbed.core.payloads import decode, encode
from testbed.core.ports import free_port
from testbed.core.topics import Plane
from testbed.core.topology import Topology, load_topology
from testbed.core.waiting import wait_until
from testbed.harness.recorder import Observation, Recorder
from testbed.pytest_plugin import require
from testbed.security.pki import PKI
from testbed.security.signing import SigningKeys
from testbed.transport.mqtt import Endpoint, TLSIdentity
from tests.test_acl import NOT_AUTHORIZED, _publish_as

FEEDERS = 500
MULTI = "feeder-000"  # three meters: m1 regulates, m2 and m3 are counted
SUB_FEEDERS = ("feeder-498", "feeder-499")  # at the substation "sub", bridged to "dc", with the tablet
USED = ["dms-1", "recorder", "tablet-1", "feeder-000-m1", "feeder-000-m2", "feeder-123-m1", "feeder-498-m1",
        "feeder-499-m1"]


def _topology_file(directory: Path) -> Path:
    lines = ['schema = 1', 'name = "dms-scale"', "",
             "[[sites]]", 'name = "dc"', 'kind = "datacentre"',
             f"delivery_port = {free_port()}", f"control_port = {free_port()}", "",
             "[[sites]]", 'name = "sub"', 'kind = "edge"', 'bridge_to = "dc"',
             f"delivery_port = {free_port()}", f"control_port = {free_port()}", "",
             "[[devices]]", 'id = "dms-1"', 'role = "dms"', 'site = "dc"', "",
             "[[devices]]", 'id = "tablet-1"', 'role = "tablet"', 'site = "sub"', ""]
    for k in range(FEEDERS):
        f = f"feeder-{k:03d}"
        site = "sub" if f in SUB_FEEDERS else "dc"
        meters = [f"{f}-m{j}" for j in range(1, 4 if f == MULTI else 2)]
        for ident, role in ((f"{f}-supply", "supply"), (f"{f}-capbank", "capbank"), *((m, "meter") for m in meters)):
            lines += ["[[devices]]", f'id = "{ident}"', f'role = "{role}"', f'site = "{site}"', ""]
        lines += ["[[feeders]]", f'id = "{f}"', f'site = "{site}"', f'supply = "{f}-supply"',
                  f'capbank = "{f}-capbank"', f"meters = {json.dumps(meters)}", ""]
    path = directory / "dms-scale.toml"
    path.write_text("\n".join(lines))
    return path


@dataclass
class ScaleBus:
    """The test's topology, its PKI, its two brokers, a recorder on both and the DMS process."""

    topology: Topology
    pki: PKI
    recorder: Recorder
    dms_log: Path

    def identity(self, name: str) -> TLSIdentity:
        c = self.pki.client(name)
        return TLSIdentity(self.pki.ca_cert, c.cert, c.key)

    def endpoint(self, site: str, plane: Plane = "delivery") -> Endpoint:
        b = self.topology.broker_for(site, plane)
        return Endpoint(b.host, b.port)

    def read(self, meter: str, volts: float) -> int:
        """A reading published with ``meter``'s own certificate on its own topic, at its site; its publish time."""
        ts = time.time_ns()
        payload = encode("MeterReadingProfile", meter, ts // 1000, {"voltage_v": volts, "reason": "exception"},
                         ts_ns=ts)
        assert _publish_as(self.identity(meter), self.endpoint(self.topology.device(meter).site),
                           f"fmb/metermodule/MeterReadingProfile/{meter}", payload) == 0
        return ts


def _diagrams(observations: list[Observation]) -> list[Observation]:
    return [o for o in observations if o.message is not None and o.message.profile == "SingleLineDiagramProfile"]


def _ready_or_gone(ready: Path, record: processes.ProcessRecord) -> bool:
    return ready.exists() or not processes.alive(record)


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleBus]:
    require(shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists(),
            "Mosquitto is not installed: sudo apt-get install mosquitto")
    work = tmp_path_factory.mktemp("dms-scale")
    topology = load_topology(_topology_file(work))
    pki = PKI(work / "certs")
    pki.init({b.name: [b.host] for b in topology.brokers}, USED + [b.name for b in topology.bridges])
    SigningKeys(pki.directory).ensure(topology.command_signers())  # the DMS and the tablet sign commands
    procs = Processes(work / "logs")
    (work / "logs").mkdir()
    try:
        for broker in sorted(topology.brokers, key=lambda b: b.site != "dc"):  # the bridges connect to dc
            start_broker(procs, topology, broker, pki, work / broker.name)
        bus = ScaleBus(topology, pki, Recorder(topology, TLSIdentity(
            pki.ca_cert, pki.client("recorder").cert, pki.client("recorder").key),
            {b.name: Endpoint(b.host, b.port) for b in topology.brokers}), work / "logs" / "dms-1.log")
        bus.recorder.start()
        env = device_environment(topology, topology.device("dms-1"), pki.directory.resolve(), work / "run")
        devices = []
        for name in ("dms-1", "tablet-1"):
            device = topology.device(name)
            env = device_environment(topology, device, pki.directory.resolve(), work / "run")
            record = procs.start(name, [sys.executable, "-m", f"devices.{device.role}"], env)
            devices.append(record)
            ready, log = Path(env["FMB_READY_FILE"]), work / "logs" / f"{name}.log"
            wait_until(partial(_ready_or_gone, ready, record), 30, what=f"{name} is not ready")
            assert ready.exists(), f"{name} did not start: {log.read_text()[-2000:]}"
        yield bus
        bus.recorder.stop()
        assert procs.stop(devices) == [], "a device did not stop on SIGTERM"
    finally:
        procs.stop()


def test_the_backend_writes_the_feeders_file_the_dms_reads(scale: ScaleBus, tmp_path: Path) -> None:
    path = write_feeders(scale.topology, tmp_path)
    feeders = read_feeders({"FMB_FEEDERS_FILE": str(path)})
    assert len(feeders) == FEEDERS and feeders[0].meters == ("feeder-000-m1", "feeder-000-m2", "feeder-000-m3")
    assert feeders[0].meter == "feeder-000-m1" and feeders[123].meters == ("feeder-123-m1",)
    assert path.parent == tmp_path and read_feeders({"FMB_FEEDERS": path.read_text()}) == feeders


def test_every_feeder_has_its_own_diagram_under_the_size_limit(scale: ScaleBus) -> None:
    def all_feeders(observations: list[Observation]) -> dict[str, Observation]:
        found = {o.mrid: o for o in _diagrams(observations)}
        return found if len(found) == FEEDERS else {}

    found = scale.recorder.wait_for(all_feeders, 30)
    assert len(found) == FEEDERS, f"diagrams of {len(_diagrams(scale.recorder.snapshot()))} messages"
    limit = scale.topology.message_size_limit
    sizes = [len(o.raw) for o in found.values()]
    assert max(sizes) < limit, max(sizes)
    for feeder, o in found.items():
        assert o.message is not None and o.message.source == "dms-1"
        assert decode(o.raw, "SingleLineDiagramProfile", about=feeder).body["feeder"] == feeder
    assert found[MULTI].decoded.body["meters"]["count"] == 3
    # What the one diagram of every feeder used to be would not pass the brokers any more.
    assert sum(sizes) > limit, sum(sizes)


def test_a_reading_republishes_only_its_own_feeders_diagram(scale: ScaleBus) -> None:
    test_every_feeder_has_its_own_diagram_under_the_size_limit(scale)  # the DMS has published its start
    since = scale.recorder.mark()
    scale.read("feeder-123-m1", 121.5)
    # A fence: the DMS handles readings in order and publishes its diagrams in order on one
    # connection, so once the second reading's diagram is here, every diagram of the first is too.
    scale.read("feeder-000-m2", 119.0)

    def fenced(observations: list[Observation]) -> list[Observation]:
        new = _diagrams(observations[since:])
        return new if any(o.mrid == MULTI and o.decoded.body["meters"]["min_v"] == 119.0 for o in new) else []

    new = scale.recorder.wait_for(fenced, 10)
    assert new, [o.as_json() for o in scale.recorder.snapshot(since)]
    assert [o.mrid for o in new] == ["feeder-123", MULTI], [o.as_json() for o in new]
    assert new[0].decoded.body["meter_v"] == 121.5 and new[0].decoded.body["range_a"] == "normal"


def test_only_the_regulating_meter_makes_the_dms_act(scale: ScaleBus) -> None:
    since = scale.recorder.mark()
    log_start = len(scale.dms_log.read_text())
    scale.read("feeder-000-m2", 110.0)  # far below range A, but not the end-of-line meter
    t_regulating = scale.read("feeder-000-m1", 112.0)

    def commanded(observations: list[Observation]) -> list[Observation]:
        return [o for o in observations[since:] if o.message is not None
                and o.message.profile == "CapBankControlProfile"]

    commands = scale.recorder.wait_for(commanded, 10)
    assert len(commands) == 1, [o.as_json() for o in commands]
    (command,) = commands
    assert command.mrid == "feeder-000-capbank" and command.decoded.body == {"action": "close"}
    assert command.decoded.ts_ns > t_regulating  # caused by the regulating meter's reading, not the other's
    log = scale.dms_log.read_text()[log_start:]
    assert "feeder-000: 112.0 V below range A, closing feeder-000-capbank" in log, log
    assert "110.0 V" not in log, log

    def redrawn(observations: list[Observation]) -> list[Observation]:  # published after the command
        return [o for o in _diagrams(observations[since:]) if o.mrid == MULTI and o.decoded.body["meter_v"] == 112.0]

    (diagram,) = scale.recorder.wait_for(redrawn, 10)
    body = diagram.decoded.body
    assert (body["range_a"], body["meters"]["min_v"], body["meters"]["max_v"]) == ("low", 110.0, 112.0), body


def test_only_a_dms_may_publish_a_diagram(scale: ScaleBus) -> None:
    name = "fmb/dmsmodule/SingleLineDiagramProfile/feeder-123"
    body = {"feeder": "feeder-123", "version": 1, "range_a": "normal", "meters": {}}
    delivery = scale.endpoint("dc")
    forged = encode("SingleLineDiagramProfile", "feeder-123-m1", 1, body)  # a compromised meter
    assert _publish_as(scale.identity("feeder-123-m1"), delivery, name, forged) == NOT_AUTHORIZED
    sub = {**body, "feeder": "feeder-499"}  # the tablet, on its own site's broker, of its own feeder
    forged = encode("SingleLineDiagramProfile", "tablet-1", 1, sub)
    assert _publish_as(scale.identity("tablet-1"), scale.endpoint("sub"),
                       "fmb/dmsmodule/SingleLineDiagramProfile/feeder-499", forged) == NOT_AUTHORIZED
    # The DMS itself: the diagrams of the feeders it manages, not a topic of another mRID.
    signed_by_dms = encode("SingleLineDiagramProfile", "dms-1", 1, {**body, "feeder": "feeder-123-m1"})
    assert _publish_as(scale.identity("dms-1"), delivery, "fmb/dmsmodule/SingleLineDiagramProfile/feeder-123-m1",
                       signed_by_dms) == NOT_AUTHORIZED


def test_the_tablet_shows_its_sites_feeders_merged(scale: ScaleBus) -> None:
    since = scale.recorder.mark()
    scale.read("feeder-498-m1", 118.5)
    scale.read("feeder-499-m1", 121.5)

    def shown(observations: list[Observation]) -> dict[str, Any]:
        for o in reversed(observations[since:]):
            if o.message is not None and o.message.profile == "DisplayStatusProfile":
                feeders = o.message.body["feeders"]
                if {f: v.get("meter_v") for f, v in feeders.items()} == {"feeder-498": 118.5, "feeder-499": 121.5}:
                    return o.message.body
        return {}

    display = scale.recorder.wait_for(shown, 15)
    assert display, [o.as_json() for o in scale.recorder.snapshot(since)]
    # Its site's two feeders, none of the 498 others; nor did their diagrams cross the bridge.
    assert set(display["feeders"]) == set(SUB_FEEDERS) and display["dms"] == "dms-1"
    sub = scale.topology.broker_for("sub", "delivery").name
    crossed = {o.mrid for o in _diagrams(scale.recorder.snapshot()) if any(b == sub for b, _, _ in o.sightings)}
    assert crossed == set(SUB_FEEDERS), sorted(crossed)[:10]
