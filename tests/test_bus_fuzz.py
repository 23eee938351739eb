"""Any message is survivable: generated payloads on every topic every role reads, on a real bus.

Issue 11: one ~60 KB deeply nested array, published with a device's own certificate on a topic the
DMS reads, raised RecursionError in the payload check, which escaped the message callback and ended
the MQTT network thread of the DMS, the supply, the cap bank, the tablet and the monitor, while
their processes stayed up; queued in the DMS's persistent session, it killed every restart too.

Here, on a bus of this module's own (local processes, real Mosquitto, mutual TLS): the reported
message, as an explicit regression; the same message queued for a stopped DMS, which must come
back and drain it; then Hypothesis's hostile payloads (``tests/test_payload_fuzz.py``) on every
topic that every role reads (derived from ``testbed.core.topics`` and the topology), each published
with a legitimate publisher's certificate. Afterwards every reader's network loop must still work
(each logs a last, marked bad payload; the recorder records it), every process is alive, each bad
message is a bounded dead letter that ``fmb deadletters`` lists, and Appendix A passes on the
same bus. Deterministic (derandomized) and bounded: a few hundred messages.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from testbed.core.payloads import MAX_PAYLOAD_BYTES
from testbed.core.topics import PROFILES, ROLES, topic
from testbed.core.topology import Topology, load_topology
from testbed.core.waiting import wait_until
from testbed.harness.recorder import Recorder
from testbed.pytest_plugin import assert_scenario_passed
from testbed.pytest_plugin import settings as fmb_settings
from testbed.transport.deadletter import (
    FILE_SUFFIX,
    HEAD_BYTES,
    MAX_FILE_BYTES,
    DeadLetterBox,
    dead_letter,
    read_dead_letters,
)
from testbed.transport.guard import counts as guard_counts
from testbed.transport.mqtt import connect, publish_properties, tls_context
from tests.conftest import wait_log
from tests.test_payload_fuzz import hostile_payloads

pytestmark = pytest.mark.slow

# The reported message: about 60 KB, under the brokers' message_size_limit.
POISON = b"[" * 30000 + b"]" * 30000
HARNESS_READERS = ("monitor", "recorder")  # processes of the bus (or the harness) that read the tree too


@dataclass(frozen=True)
class Target:
    """One topic a role reads, with an identity allowed to publish on it and where it publishes."""

    topic: str
    publisher: str
    broker: str
    readers: tuple[str, ...]  # the processes whose logs show a rejected payload on it


def targets(topology: Topology) -> list[Target]:
    """Every topic every role reads on ``topology``, each with every legitimate publisher."""
    devices = {d.id: d for d in topology.devices}
    found: dict[tuple[str, str], set[str]] = {}
    readers = [(d.id, d.role) for d in topology.devices] + [(r, r) for r in HARNESS_READERS]
    for reader, role in readers:
        for grant in ROLES[role].reads:
            if grant.profile.startswith("Bench"):
                continue
            for pub_role, rights in ROLES.items():
                for pub in (g for g in rights.publishes if g.profile == grant.profile):
                    identities = [d.id for d in topology.devices if d.role == pub_role] or (
                        [pub_role] if pub_role in ("monitor", "operator") else [])
                    for ident in identities:
                        # What the publisher may write and the reader reads: both, where both are scoped.
                        written, read = topology.grant_mrids(ident, pub), topology.grant_mrids(reader, grant)
                        if written == read == ["+"]:  # anyone's command: to each device that obeys it
                            mrids = [d.id for d in topology.devices
                                     if any(g.profile == grant.profile for g in ROLES[d.role].reads)]
                        else:
                            mrids = [m for m in (read if written == ["+"] else written) if read == ["+"] or m in read]
                        for mrid in mrids:
                            found.setdefault((topic(topology.root, grant.profile, mrid), ident), set()).add(reader)
    out = []
    for (name, ident), who in sorted(found.items()):
        profile = PROFILES[name.split("/")[2]]
        mrid = name.rsplit("/", 1)[-1]
        # A device publishes at its own site; the harness's identities where the topic's device is.
        site = devices[ident].site if ident in devices else devices[mrid].site if mrid in devices else \
            next(devices[r].site for r in who if r in devices)
        logs = tuple(sorted(r for r in who if r != "recorder"))
        out.append(Target(name, ident, topology.broker_for(site, profile.plane).name, logs))
    return out


def test_the_targets_cover_every_read_of_every_role() -> None:
    """The derivation above is checked against the table of the topic tree, not trusted."""
    topology = load_topology()
    found = targets(topology)
    by_topic = {t.topic: t for t in found}
    for d in topology.devices:
        for grant in ROLES[d.role].reads:
            assert any(t.topic.split("/")[2] == grant.profile and d.id in t.readers for t in found), (d.id, grant)
    assert {t.topic.split("/")[2] for t in found} == {p for p in PROFILES if not p.startswith("Bench")}
    assert {t.publisher for t in found if "SupplyControlProfile" in t.topic} >= {"tablet-1", "dms-1"}
    assert by_topic["fmb/metermodule/MeterReadingProfile/meter-1"].readers == ("dms-1", "monitor")
    assert by_topic["fmb/securitymodule/AlertProfile/monitor"].readers == ("tablet-1",)


# -- the bus, the publishers, the checks ------------------------------------------------------


@pytest.fixture(scope="module")
def fmb_bus(request: pytest.FixtureRequest, fmb_bus_factory: Any) -> Iterator[Any]:
    """A bus of this module's own (fmb_run uses it too): the fuzz must not disturb other tests' bus."""
    if fmb_settings(request.config).backend != "local":
        pytest.skip("publishes with the devices' own certificates and reads their logs: local backend only")
    with fmb_bus_factory() as bus:
        yield bus


@pytest.fixture(scope="module")
def topology(fmb_bus: Any) -> Topology:  # the module's bus's (on its own free ports)
    return fmb_bus.topology  # type: ignore[no-any-return]


class Publishers:
    """One client per (identity, broker), connected on demand, all disconnected at the end."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.clients: dict[tuple[str, str], paho.Client] = {}

    def publish(self, target: Target, payload: bytes, qos: int = 1) -> None:
        key = (target.publisher, target.broker)
        if key not in self.clients:
            self.clients[key] = connect(f"{target.publisher}-fuzz", self.bus.identity(target.publisher),
                                        self.bus.endpoint(target.broker))
        info = self.clients[key].publish(target.topic, payload, qos, properties=publish_properties(None))
        if qos:
            info.wait_for_publish(10)
            assert info.rc == paho.MQTT_ERR_SUCCESS, f"{target.publisher} could not publish on {target.topic}"

    def close(self) -> None:
        for c in self.clients.values():
            c.disconnect()
            c.loop_stop()


@pytest.fixture(scope="module")
def publishers(fmb_bus: Any) -> Iterator[Publishers]:
    p = Publishers(fmb_bus)
    try:
        yield p
    finally:
        p.close()


def _log_offsets(bus: Any, names: set[str]) -> dict[str, int]:
    return {n: len(bus.device_log(n).read_text()) for n in names}


def assert_loops_alive(bus: Any, publishers: Publishers, chosen: list[Target],
                       recorder: Recorder | None = None) -> None:
    """Every reader of ``chosen`` still handles messages on that topic: it logs one more bad payload,
    marked, within seconds (a dead network thread would never see it)."""
    mark = f"probe-{time.monotonic_ns()}"
    names = {r for t in chosen for r in t.readers}
    offsets = _log_offsets(bus, names)
    since = recorder.mark() if recorder else 0
    for t in chosen:
        publishers.publish(t, json.dumps({"v": mark}).encode())

    def unseen() -> set[tuple[str, str]]:  # (reader, topic): on this very topic (a device has a client per plane)
        logs = {n: bus.device_log(n).read_text()[offsets[n]:].splitlines() for n in names}
        return {(r, t.topic) for t in chosen for r in t.readers
                if not any(t.topic in line and mark in line for line in logs[r])}

    wait_until(lambda: not unseen(), 30, what=lambda: f"the probe {mark} was not handled by {sorted(unseen())}")
    for name in sorted(names):
        new = bus.device_log(name).read_text()[offsets[name]:]
        assert "Traceback" not in new, new
    if recorder is not None:
        got = lambda obs: {o.topic for o in obs if o.error and mark in o.error}  # noqa: E731
        assert recorder.wait_for(lambda obs: got(obs[since:]) >= {t.topic for t in chosen}, 30), \
            f"the recorder missed the probe on {({t.topic for t in chosen} - got(recorder.snapshot(since)))}"
    for p in bus.processes:
        assert bus.alive(p.name), f"{p.name} died: see {p.log}"


def _dead_letters(bus: Any, receiver: str) -> list[dict[str, Any]]:
    return [r for r in read_dead_letters(bus.run_dir) if r.get("receiver") == receiver]


# -- the guard itself, under any handler --------------------------------------------------------


def _subscriber(bus: Any, client_id: str, handler: Any, guarded: bool = True) -> tuple[paho.Client, threading.Event]:
    """The recorder's identity on the data centre's delivery broker, in a persistent session,
    subscribed to the meter's readings; ``guarded`` False: stock paho, no guard (the control)."""
    subscribed = threading.Event()

    def on_connect(c: paho.Client) -> None:
        c.on_subscribe = lambda *a: subscribed.set()
        c.subscribe("fmb/metermodule/MeterReadingProfile/meter-1", 1)

    if guarded:
        client = connect(client_id, bus.identity("recorder"), bus.endpoint("dc-delivery"), on_message=handler,
                         on_connect=on_connect, clean_start=False, session_expiry_s=300)
    else:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        client.tls_set_context(tls_context(bus.identity("recorder")))
        client.on_connect = lambda c, *a: on_connect(c)
        client.on_message = handler
        client.connect(bus.endpoint("dc-delivery").host, bus.endpoint("dc-delivery").port, clean_start=True)
        client.loop_start()
    assert subscribed.wait(10), f"{client_id} did not subscribe"
    return client, subscribed


def test_a_failing_handler_neither_stops_the_loop_nor_leaves_its_message_unacknowledged(
        fmb_bus: Any, publishers: Publishers, topology: Topology) -> None:
    meter = next(t for t in targets(topology) if t.publisher == "meter-1")
    got: list[bytes] = []

    def handler(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        if msg.payload.startswith(b"raise"):
            raise RecursionError("maximum recursion depth exceeded (a handler's bug)")

    # The control: stock paho lets the exception end its network thread; nothing arrives after it.
    died: list[BaseException | None] = []
    hook, threading.excepthook = threading.excepthook, lambda args: died.append(args.exc_value)
    try:
        stock, _ = _subscriber(fmb_bus, f"recorder-stock-{time.monotonic_ns()}", handler, guarded=False)
        publishers.publish(meter, b"raise stock")
        publishers.publish(meter, b"after stock")
        time.sleep(2)
        stock.loop_stop()
    finally:
        threading.excepthook = hook
    assert b"raise stock" in got and b"after stock" not in got, got
    assert len(died) == 1 and isinstance(died[0], RecursionError), died
    got.clear()
    failures = guard_counts()["handler_failures"]
    client_id = f"recorder-guarded-{time.monotonic_ns()}"
    client, _ = _subscriber(fmb_bus, client_id, handler)
    publishers.publish(meter, b"raise 1")
    publishers.publish(meter, b"after 1")
    wait_until(lambda: b"after 1" in got, 10, what=f"the guarded client's loop stopped: it got {got}")
    assert guard_counts()["handler_failures"] == failures + 1
    client.disconnect()
    client.loop_stop()
    # Acknowledged although its handler failed: the persistent session does not deliver it again.
    got.clear()
    client, _ = _subscriber(fmb_bus, client_id, handler)
    try:
        publishers.publish(meter, b"after reconnect")
        wait_until(lambda: b"after reconnect" in got, 10, what=f"nothing after reconnecting: {got}")
        assert b"raise 1" not in got, "the message whose handler failed was delivered again"
    finally:
        client.disconnect()
        client.loop_stop()


def test_dead_letter_files_are_bounded_and_escaped(tmp_path: Path) -> None:
    box = DeadLetterBox(tmp_path / f"dms-1{FILE_SUFFIX}", max_bytes=20_000)
    payload = b"\x00\n\x1b[31m" + b"[" * 60_000
    for i in range(100):
        box.add(dead_letter("fmb/metermodule/MeterReadingProfile/meter-1", payload, f"reason {i}\nforged", "dms-1"))
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == [f"dms-1{FILE_SUFFIX}", f"dms-1{FILE_SUFFIX}.1"]
    assert all(f.stat().st_size <= 20_000 and oct(f.stat().st_mode)[-3:] == "600" for f in files)
    records = list(read_dead_letters(tmp_path))
    assert box.count == 100 and 10 < len(records) < 100 and records[-1]["reason"] == "reason 99\nforged"
    assert all(len(line) < 2000 for f in files for line in f.read_text().splitlines())  # one line each
    r = records[-1]
    assert r["size"] == len(payload) and r["head"].startswith("\x00\n\x1b[31m[[[") and len(r["head"]) == HEAD_BYTES
    assert (r["mrid"], r["source"]) == ("meter-1", None)


# -- the reported failure, explicitly ---------------------------------------------------------


def test_the_reported_poison_message_no_longer_kills_any_reader(fmb_bus: Any, publishers: Publishers,
                                                                topology: Topology) -> None:
    """The issue's message on every topic the DMS reads, with each topic's own publisher: each reader
    rejects it with one log line, sets it aside, and keeps handling messages."""
    chosen = [t for t in targets(topology) if "dms-1" in t.readers]
    assert {t.publisher for t in chosen} == {"meter-1", "supply-1", "capbank-1"}
    before = len(_dead_letters(fmb_bus, "dms-1"))
    offset = _log_offsets(fmb_bus, {"dms-1"})["dms-1"]
    for t in chosen:
        publishers.publish(t, POISON)
    new = wait_log(fmb_bus.device_log("dms-1"), offset, "nested deeper than", timeout_s=10)
    assert "RecursionError" not in new and "Traceback" not in new, new
    line = next(ln for ln in new.splitlines() if "nested deeper than" in ln)
    assert "rejected payload on fmb/" in line and " from " in line and "dead letter" in line, line
    assert_loops_alive(fmb_bus, publishers, chosen)
    letters = _dead_letters(fmb_bus, "dms-1")[before:]
    poison = [r for r in letters if r["size"] == len(POISON)]
    assert {r["topic"] for r in poison} == {t.topic for t in chosen}, letters
    assert all(r["head"] == "[" * HEAD_BYTES and "nested deeper" in r["reason"] for r in poison), poison[0]


def test_a_poison_message_queued_for_the_dms_is_drained_on_restart(fmb_bus: Any, publishers: Publishers,
                                                                   topology: Topology, fmb_run: Any) -> None:
    """Stopped, the DMS keeps its persistent session on the data centre's broker, where the poison waits
    for it: started again, it must take the message, acknowledge it, set it aside and come back."""
    meter = next(t for t in targets(topology) if t.publisher == "meter-1")
    fmb_bus.signal("dms-1", signal.SIGTERM)
    wait_until(lambda: not fmb_bus.alive("dms-1"), 15, what="dms-1 still running 15 s after SIGTERM")
    monitor_offset = _log_offsets(fmb_bus, {"monitor"})["monitor"]
    before = len(_dead_letters(fmb_bus, "dms-1"))
    publishers.publish(meter, POISON)
    # Through the bridge to the data centre's broker (the monitor sees it there), queued for the DMS.
    wait_log(fmb_bus.device_log("monitor"), monitor_offset, "via dc-delivery does not decode", timeout_s=10)
    fmb_bus.restart("dms-1")  # raises unless the DMS connects, subscribes and is ready (30 s)
    wait_until(lambda: len(_dead_letters(fmb_bus, "dms-1")) > before, 10, what="no dead letter from the restarted DMS")
    (letter,) = [r for r in _dead_letters(fmb_bus, "dms-1")[before:] if r["size"] == len(POISON)]
    assert letter["topic"] == meter.topic and letter["mrid"] == "meter-1"
    assert_loops_alive(fmb_bus, publishers, [t for t in targets(topology) if "dms-1" in t.readers])
    # Acknowledged, so gone from the session: a second restart gets nothing more to set aside.
    count = len(_dead_letters(fmb_bus, "dms-1"))
    fmb_bus.restart("dms-1")
    time.sleep(1)
    assert len(_dead_letters(fmb_bus, "dms-1")) == count
    assert_scenario_passed(fmb_run("appendix-a"))


# -- the fuzz ---------------------------------------------------------------------------------


def test_fuzz_every_topic_every_role_reads(fmb_bus: Any, publishers: Publishers, topology: Topology,
                                          fmb_run: Any) -> None:
    all_targets = targets(topology)
    recorder = Recorder(topology, fmb_bus.identity("recorder"), {b.name: fmb_bus.endpoint(b.name)
                                                                  for b in topology.brokers})
    recorder.start()
    sent: list[tuple[Target, int]] = []
    try:
        @settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])
        @given(target=st.sampled_from(all_targets), payload=hostile_payloads(), qos=st.sampled_from([0, 1]))
        def publish_one(target: Target, payload: bytes, qos: int) -> None:
            if len(payload) > MAX_PAYLOAD_BYTES:
                return  # the broker refuses it (test_payload_fuzz covers the decoder's own limit)
            publishers.publish(target, payload, qos)
            sent.append((target, len(payload)))

        publish_one()
        assert len(sent) > 200 and {t for t, _ in sent} == set(all_targets), "the fuzz did not reach every topic"
        assert max(n for _, n in sent) > 60000, "nothing near the size limit was sent"
        assert_loops_alive(fmb_bus, publishers, all_targets, recorder)
    finally:
        recorder.stop()

    # Each bad message a reader could not handle is a bounded dead letter; `fmb deadletters` lists them.
    files = sorted(fmb_bus.run_dir.glob(f"*{FILE_SUFFIX}*"))
    assert {f.name.split(".")[0] for f in files} >= {"dms-1", "supply-1", "capbank-1", "tablet-1"}, files
    assert all(f.stat().st_size <= MAX_FILE_BYTES for f in files)
    letters = list(read_dead_letters(fmb_bus.run_dir))
    assert len(letters) > 100
    for r in letters:
        assert r.keys() >= {"time", "receiver", "topic", "mrid", "source", "reason", "size", "sha256", "head"}, r
        assert len(r["head"].encode()) <= 4 * HEAD_BYTES and len(json.dumps(r)) < 4000
    done = subprocess.run([sys.executable, "-m", "testbed", "deadletters", "--state", str(fmb_bus.state_dir),
                           "--receiver", "dms-1", "--last", "5"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 6 and all(" dms-1 " in ln and " fmb/" in ln for ln in lines[:5]), done.stdout
    assert "5 dead letters shown" in lines[-1], lines[-1]

    # And the bus still does its job.
    result = fmb_run("appendix-a")
    assert_scenario_passed(result)
