"""A fleet of meters (``python -m devices.fleet``) on a real edge broker, each meter with its own certificate.

One module-scoped substation: Debian's Mosquitto with the project's mutual TLS and the ACL that
``render_acl`` derives from a topology declaring the meters, one of them revoked before the broker
starts, a feeder model coupling some of them, and the fleet as a process of its own. A recorder
(paho) reads every reading. The tests run in order on that one fleet: readings arrive with
consecutive sequence numbers, confinement, revocation, a broker restart (the storm, small), SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from brokers.mosquitto import mosquitto_binary
from devices.feeder import FeederLink
from devices.fleet import load_fleet_file
from testbed.bench.common import Processes, start_broker
from testbed.core.errors import ConfigError, TestbedError
from testbed.core.payloads import decode, encode
from testbed.core.ports import free_port
from testbed.core.topics import topic
from testbed.core.topology import DeviceSpec, SiteSpec, Topology
from testbed.security.pki import PKI
from testbed.transport.aio import REFUSED_QOS2, AioClient
from testbed.transport.health import read_health
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect
from tests.conftest import require

ROOT = "fmb"
SITE = "sub-001"
N = 50
METERS = [f"{SITE}-f1-m{i:04d}" for i in range(1, N + 1)]
REVOKED = METERS[-1]
ON_FEEDER = METERS[:10]  # coupled to the feeder model; the others have no physics (120.0 V)
PROBE_SEQ = 10**9  # the probe's readings in test_a_meter_cannot_publish_as_another
ROOT_DIR = Path(__file__).resolve().parent.parent


def _wait(predicate: Callable[[], object], timeout_s: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what()} after {timeout_s:g} s")
        time.sleep(0.05)


@dataclass
class Readings:
    """What the recorder received: per meter, (seq, reason, volts) in order of arrival."""

    by_meter: dict[str, list[tuple[int, str, float]]] = field(default_factory=lambda: defaultdict(list))
    foreign: list[tuple[str, str]] = field(default_factory=list)  # (topic, claimed source) that do not match
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        mrid = msg.topic.rsplit("/", 1)[-1]
        data = json.loads(msg.payload)
        with self.lock:
            if data.get("source") != mrid:
                self.foreign.append((msg.topic, str(data.get("source"))))
                return
            message = decode(msg.payload, "MeterReadingProfile", mrid)
            self.by_meter[mrid].append((message.seq, message.body["reason"], message.body["voltage_v"]))

    def copy(self) -> dict[str, list[tuple[int, str, float]]]:
        with self.lock:
            return {k: list(v) for k, v in self.by_meter.items()}


@dataclass
class Substation:
    pki: PKI
    topology: Topology
    procs: Processes
    work: Path
    broker: Any
    endpoint: Endpoint
    readings: Readings
    recorder: paho.Client
    fleet: subprocess.Popen[bytes]
    ready: Path
    feeder_socket: Path

    def identity(self, name: str) -> TLSIdentity:
        return TLSIdentity(self.pki.ca_cert, self.pki.client(name).cert, self.pki.client(name).key)

    def counters(self) -> dict[str, int]:
        report = read_health(self.ready).report
        return dict(report["counters"]) if report else {}

    def restart_broker(self) -> None:
        killed = self.procs.stop([self.broker], timeout_s=10)
        assert not killed, "the broker did not stop on SIGTERM"
        self.broker, _ = start_broker(self.procs, self.topology, self.topology.broker(f"{SITE}-delivery"),
                                      self.pki, self.work / "broker")


def fleet_env(work: Path, endpoint: Endpoint, ca: Path, fleet_file: Path, ready: Path) -> dict[str, str]:
    return {**os.environ, "FMB_FLEET_ID": f"{SITE}-fleet", "FMB_DELIVERY": f"{endpoint.host}:{endpoint.port}",
            "FMB_CA": str(ca), "FMB_FLEET_FILE": str(fleet_file), "FMB_READY_FILE": str(ready),
            "FMB_FLEET_CONNECT_RATE": "500"}


@pytest.fixture(scope="module")
def sub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Substation]:
    require(Path(mosquitto_binary()).exists(), "Mosquitto is not installed: sudo apt-get install mosquitto")
    work = tmp_path_factory.mktemp("fleet")
    site = SiteSpec(SITE, "edge", free_port(), free_port())
    topology = Topology(path="(test_fleet)", name="fleet", root=ROOT, qos=1, message_size_limit=65536,
                        max_queued_messages=1000, sites=(site,),
                        devices=tuple(DeviceSpec(m, "meter", SITE) for m in METERS), feeders=())
    pki = PKI(work / "certs")
    pki.init({b.name: [] for b in topology.brokers}, [*METERS, "recorder"])
    pki.revoke(REVOKED)  # before the broker starts: its CRL has it
    procs = Processes(work)
    feeder_socket = work / "feeder.sock"
    procs.start("feeder", [sys.executable, "-m", "devices.feeder"],
                env={"FMB_FEEDER": json.dumps({"id": f"{SITE}-f1", "line_drop_v": 1.2}),
                     "FMB_FEEDER_SOCKET": str(feeder_socket)})
    broker, endpoint = start_broker(procs, topology, topology.broker(f"{SITE}-delivery"), pki, work / "broker")
    readings = Readings()
    recorder = connect("recorder", TLSIdentity(pki.ca_cert, pki.client("recorder").cert, pki.client("recorder").key),
                       endpoint, on_message=readings.on_message,
                       on_connect=lambda c: c.subscribe(topic(ROOT, "MeterReadingProfile", "+"), 1))
    meters = [{"id": m, "cert": str(pki.client(m).cert), "key": str(pki.client(m).key), "period_s": 1.0,
               "deadband_v": 0.5, **({"feeder_socket": str(feeder_socket)} if m in ON_FEEDER else {})}
              for m in METERS]
    fleet_file = work / "fleet.json"
    fleet_file.write_text(json.dumps({"root": ROOT, "qos": 1, "backoff": {"base_s": 0.2, "cap_s": 1.0},
                                      "meters": meters}))
    ready = work / "fleet.ready"
    log = open(work / "fleet.log", "wb")  # noqa: SIM115 (closed at teardown)
    fleet = subprocess.Popen([sys.executable, "-m", "devices.fleet"], cwd=ROOT_DIR, stdout=log, stderr=log,
                             env=fleet_env(work, endpoint, pki.ca_cert, fleet_file, ready))
    s = Substation(pki, topology, procs, work, broker, endpoint, readings, recorder, fleet, ready, feeder_socket)
    try:
        yield s
    finally:
        if fleet.poll() is None:
            fleet.kill()
            fleet.wait(5)
        log.close()
        recorder.disconnect()
        recorder.loop_stop()
        procs.stop()


def _tail(sub: Substation) -> str:
    return (sub.work / "fleet.log").read_text()[-1500:]


def test_every_meter_connects_with_its_own_certificate_and_reports_in_sequence(sub: Substation) -> None:
    """49 meters connected (the revoked one refused), every one's readings consecutive from 1."""
    _wait(lambda: sub.counters().get("connected") == N - 1, 15,
          lambda: f"connected {sub.counters()} (want {N - 1}); fleet log: {_tail(sub)}")
    _wait(lambda: all(len(sub.readings.copy().get(m, [])) >= 3 for m in METERS[:-1]), 15,
          lambda: f"readings per meter: { {m: len(v) for m, v in sub.readings.copy().items()} }")
    got = sub.readings.copy()
    for meter in METERS[:-1]:
        seqs = [seq for seq, _, _ in got[meter]]
        assert seqs == list(range(1, len(seqs) + 1)), f"{meter}: sequence numbers {seqs}"
    assert all(v == 120.0 for m in METERS[10:-1] for _, _, v in got[m]), "no physics: nominal 120.0 V"
    assert sub.counters()["expected"] == N
    assert sub.counters()["rejected"] == 0


def test_the_revoked_meter_is_refused(sub: Substation) -> None:
    _wait(lambda: sub.counters().get("connect_failures", 0) >= 2, 10, lambda: f"counters {sub.counters()}")
    assert REVOKED not in sub.readings.copy()

    async def attempt() -> None:
        client = AioClient(REVOKED, sub.identity(REVOKED), sub.endpoint)
        with pytest.raises(TestbedError, match="could not connect"):
            await client.connect_or_raise(timeout_s=5)
        # The broker's TLS alert says "certificate revoked"; when it resets the connection before the
        # client reads the alert, the client sees the reset. Either way: refused in the handshake.
        assert re.search("revoked|reset by peer", client.last_error), client.last_error
        assert client.connections == 0

    asyncio.run(attempt())


def test_a_meter_cannot_publish_as_another(sub: Substation) -> None:
    """Meter k's identity: its own topic accepted (0), meter j's refused (0x87), nothing arrives on j's."""
    k, j = METERS[20], METERS[21]
    forged = encode("MeterReadingProfile", j, PROBE_SEQ, {"voltage_v": 99.0, "reason": "exception"})
    own = encode("MeterReadingProfile", k, PROBE_SEQ, {"voltage_v": 99.0, "reason": "exception"})

    async def attempt() -> tuple[int, int, bool]:
        # A second connection with k's identity and another client id: the fleet's own stays up.
        client = AioClient(f"{k}-probe", sub.identity(k), sub.endpoint)
        await client.connect_or_raise(timeout_s=5)
        try:
            with pytest.raises(TestbedError, match="QoS 2 is refused"):
                client.publish(topic(ROOT, "MeterReadingProfile", k), own, 2)
            as_j = await client.publish_acked(topic(ROOT, "MeterReadingProfile", j), forged)
            as_k = await client.publish_acked(topic(ROOT, "MeterReadingProfile", k), own)
            return as_j, as_k, client.nodelay()
        finally:
            await client.stop()

    as_j, as_k, nodelay = asyncio.run(attempt())
    assert as_j == 0x87, f"the broker answered {as_j:#x} to meter {k} publishing as {j}"
    assert as_k == 0, f"the broker refused ({as_k:#x}) meter {k}'s own topic: the check above proves nothing"
    assert nodelay, "TCP_NODELAY is not set on the asyncio client's socket"
    _wait(lambda: any(seq == PROBE_SEQ for seq, _, _ in sub.readings.copy().get(k, [])), 5,
          lambda: "meter k's own reading never arrived")
    assert not any(seq == PROBE_SEQ for seq, _, _ in sub.readings.copy().get(j, [])), "the forged reading arrived"
    assert REFUSED_QOS2.startswith("QoS 2 is refused")


def test_feeder_changes_fan_out_to_its_meters_by_exception(sub: Substation) -> None:
    link = FeederLink(sub.feeder_socket)
    link.request(op="set_supply", volts=114, traceparent=f"00-{'ab' * 16}-{'cd' * 8}-01")
    try:
        _wait(lambda: all(any(r == "exception" and v == 112.8 for _, r, v in sub.readings.copy().get(m, []))
                          for m in ON_FEEDER), 10,
              lambda: f"feeder meters' readings: { {m: sub.readings.copy().get(m, [])[-3:] for m in ON_FEEDER} }")
        assert all(v == 120.0 for m in METERS[10:-1] for seq, _, v in sub.readings.copy()[m] if seq != PROBE_SEQ), \
            "a meter without a feeder moved"
    finally:
        link.request(op="set_supply", volts=120)


def test_broker_restart_every_meter_reconnects_and_reports_again(sub: Substation) -> None:
    before = sub.counters()["reconnects"]
    sub.restart_broker()
    restarted = time.monotonic()
    def last(meter: str) -> int:
        return max(seq for seq, _, _ in sub.readings.copy()[meter] if seq != PROBE_SEQ)

    last_seq = {m: last(m) for m in METERS[:-1]}
    # The recorder (paho, backoff up to 5 s) must be back too, or nothing can be seen arriving.
    _wait(lambda: sub.recorder.is_connected(), 15, lambda: "the recorder did not reconnect")
    _wait(lambda: sub.counters()["reconnects"] >= before + N - 1 and sub.counters()["connected"] == N - 1, 20,
          lambda: f"counters {sub.counters()}")
    _wait(lambda: all(last(m) > last_seq[m] for m in METERS[:-1]), 15,
          lambda: f"meters that did not report after the restart: {[m for m in METERS[:-1] if last(m) <= last_seq[m]]}")
    print(f"storm of {N - 1} meters: all back and reporting {time.monotonic() - restarted:.1f} s after the restart")


def test_sigterm_disconnects_all_and_exits_0(sub: Substation) -> None:
    sub.fleet.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = sub.fleet.wait(10)
    assert code == 0, f"exit {code}: {_tail(sub)}"
    assert time.monotonic() - started < 5
    assert not sub.ready.exists(), "a stopped fleet left its heartbeat"


# -- the fleet file, hostile ----------------------------------------------------------------------------

def _meter(tmp: Path, **extra: object) -> dict[str, object]:
    (tmp / "m.pem").write_text("x")
    (tmp / "m.key").write_text("x")
    return {"id": "m1", "cert": str(tmp / "m.pem"), "key": str(tmp / "m.key"), **extra}


@pytest.mark.parametrize(("content", "field", "fix"), [
    (lambda t: "{", "", "fix the syntax"),
    (lambda t: "[]", "", "write an object"),
    (lambda t: {"meters": []}, "meters", "non-empty list"),
    (lambda t: {"qos": 2, "meters": [_meter(t)]}, "qos", "use 1"),
    (lambda t: {"qos": "1", "meters": [_meter(t)]}, "qos", "use 0 or 1"),
    (lambda t: {"root": "a/b", "meters": [_meter(t)]}, "root", "one topic level"),
    (lambda t: {"meters": [_meter(t, id="m/#")]}, "meters[0].id", "mRID"),
    (lambda t: {"meters": [_meter(t), _meter(t)]}, "meters[1].id", "its own mRID"),
    (lambda t: {"meters": [_meter(t, period_s=0)]}, "meters[0].period_s", "seconds"),
    (lambda t: {"meters": [_meter(t, period_s=float("nan"))]}, "meters[0].period_s", "seconds"),
    (lambda t: {"meters": [_meter(t, deadband_v=-1)]}, "meters[0].deadband_v", "volts"),
    (lambda t: {"meters": [_meter(t, cert=str(t / "nope.pem"))]}, "meters[0].cert", "issue"),
    (lambda t: {"meters": [_meter(t, feeder_socket=3)]}, "meters[0].feeder_socket", "null for no physics"),
    (lambda t: {"meters": [_meter(t, colour="red")]}, "meters[0].colour", "remove it"),
    (lambda t: {"backoff": {"base_s": 5, "cap_s": 1}, "meters": [_meter(t)]}, "backoff.cap_s", "seconds"),
])
def test_a_bad_fleet_file_names_the_field_and_the_fix(tmp_path: Path, content: Callable[[Path], object],
                                                      field: str, fix: str) -> None:
    body = content(tmp_path)
    path = tmp_path / "fleet.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    with pytest.raises(ConfigError) as e:
        load_fleet_file(path)
    assert e.value.field == field and fix in e.value.fix, str(e.value)
    assert "\n" not in str(e.value)


def test_a_bad_fleet_file_stops_the_process_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"qos": 1, "meters": [_meter(tmp_path, period_s=-5)]}))
    done = subprocess.run([sys.executable, "-m", "devices.fleet"], cwd=ROOT_DIR, capture_output=True, text=True,
                          timeout=60, env=fleet_env(tmp_path, Endpoint("127.0.0.1", 1), tmp_path / "ca.pem", path,
                                                    tmp_path / "ready"))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "meters[0].period_s" in lines[0] and lines[0].startswith("error:"), done.stderr
