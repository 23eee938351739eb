"""``fmb bench soak``: faults at random times on a whole bus while numbered streams cross it both ways.

A whole Appendix A bus runs (local processes, or the Compose bus with ``--backend docker``). Four
sequence-numbered streams flow for the whole soak, each read by a consumer process of its own with a
persistent session: field -> data centre as the power supply (``SupplyStatusProfile``, 120 V, what the
DMS already believes, on the delivery bridge) and data centre -> field as the DMS (``CapBankControlProfile``
to an mRID no device has, ``action = open``, on the control bridge), each at QoS 1 and at QoS 2. Those are
the only profiles that cross a bridge under these identities' ACLs without changing what a device
does (a diagram stream would replace what the tablet shows; a meter or cap bank stream would move the
DMS's regulation). Between faults Appendix A runs again and again.

Faults come from a schedule that a seeded RNG draws before the soak starts (rounds of every fault
kind the backend can apply, each round in its own random order; per fault a target, the quiet gap
before it, how long it lasts): broker SIGTERM and restart, broker ``kill -9`` and restart (the
data centre's persistent brokers), device crash (``kill -9`` of a device or of a stream's consumer,
then restarted), partition of the field site and link loss on its bridge (docker), and a poison
message (a JSON document nested far beyond the decoder's depth limit, published with a device's
certificate on a topic a device reads). The same seed gives the same faults, targets, gaps and
durations in the same order; how many fit depends on how long each recovery takes.

A fault's window opens ``LOOKBACK_S`` before it (messages already in flight) and closes once
Appendix A has been checked after the recovery and every stream flows again. Every message is
attributed to the window it was published in, or to "no fault", and is delivered, lost
(acknowledged by the broker, never delivered), unacknowledged (neither), duplicated or reordered
(``soak-ledger.csv``, one row per message, beside ``bench-soak.json``). The invariants, per window:

* graceful faults (SIGTERM, device crash, partition, link loss, poison): nothing published at QoS >= 1
  goes undelivered (neither lost nor unacknowledged);
* ``kill -9`` of a persistent broker: a stream through it loses no more than it published in the
  crash window before the kill (``crash_window_s``: by default the loss window the broker's
  persistence policy gives by construction, as ``fmb bench crash`` states and measures it: 0.5 s
  for Appendix A's data centre, which snapshots every 500 ms); streams not through it lose nothing;
* after every recovery, the first Appendix A run passes (within the scenario's own limits: 15 s to
  reach the initial state, then its ``timeout_s``);
* outside every window, nothing goes undelivered.

A violated invariant is recorded with its fault, stream and counts, never dropped.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from testbed.backends.environment import environment
from testbed.backends.faults import DockerFaults, Faults, LocalFaults
from testbed.backends.local import LocalBus
from testbed.backends.processes import ProcessRecord
from testbed.bench.common import Processes
from testbed.bench.crash import policy_of
from testbed.bench.latency import source_revision
from testbed.bench.recovery import TUNED, Producer, whole_at
from testbed.core.errors import BenchmarkError, FaultError, PayloadError, TestbedError
from testbed.core.payloads import MAX_DEPTH, NOMINAL_V, decode, encode
from testbed.core.results import (
    SoakFault,
    SoakInvariant,
    SoakLedgerRow,
    SoakResult,
    SoakRun,
    SoakScenarioCheck,
    SoakStream,
)
from testbed.core.scenario import Scenario, load_scenario
from testbed.core.stats import count_loss_and_duplicates
from testbed.core.topics import PROFILES, ROLES, topic
from testbed.core.topology import BrokerSpec, DeviceSpec, Topology
from testbed.core.waiting import WaitTimeout, wait_until
from testbed.harness.runner import ScenarioRunner
from testbed.reporting.text import soak_markdown
from testbed.security.pki import PKI
from testbed.transport.deadletter import FILE_SUFFIX, read_dead_letters
from testbed.transport.guard import one_line, set_aside
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect

__all__ = [
    "DEFAULT_RATE",
    "FAULT_KINDS",
    "LEDGER_FILE",
    "RESULT_FILE",
    "RESULT_SCHEMA",
    "Planned",
    "StreamSpec",
    "check_options",
    "consume",
    "docker_soak",
    "fault_targets",
    "local_soak",
    "plan",
    "run_soak",
    "stream_specs",
    "summary",
]

RESULT_SCHEMA: Final = "fmb.bench-soak/1"  # the shape: testbed.core.results.SoakResult
RESULT_FILE = "bench-soak.json"
LEDGER_FILE = "soak-ledger.csv"

FAULT_KINDS = ("broker-sigterm", "broker-kill9", "device-crash", "partition", "link-loss", "poison")
GRACEFUL = frozenset({"broker-sigterm", "device-crash", "partition", "link-loss", "poison"})
DEFAULT_RATE = 10.0  # messages per second per stream: a steady stream, not a load test
GAP_S = (4.0, 12.0)  # quiet time before each fault, Appendix A repeating
DOWNTIME_S = (0.5, 3.0)  # a broker or a device down
OUTAGE_S = (3.0, 10.0)  # a partition or a link loss lasting
LOSS_PCT = (10.0, 25.0, 50.0)  # link loss: share of packets dropped on the bridge's link
LOOKBACK_S = 2.0  # messages published this long before a fault may still be in flight when it strikes
GRACEFUL_WHOLE_S = 1.5  # fmb bench recovery's target for a graceful restart; shown beside whole_s
RECOVERY_DEADLINE_S = 60.0  # after a recovery, Appendix A is retried this long to time when it passes again
FLOWING_TIMEOUT_S = 15.0  # after a recovery, wait this long at most for every stream to flow again
MIN_ROOM_S = 20.0  # no fault starts later than this before the end: its recovery would overrun
APPENDIX_A_PAUSE_S = 1.0  # between two quiet Appendix A runs: the machine is shared
SINK_MRID = "soak-sink"  # the data centre -> field stream's mRID: no device has it, so none acts on it
POISON_DEPTH = 2000 * MAX_DEPTH  # 32000 brackets: within the brokers' 64 KiB limit, far past the decoder's bound
RECOVERY_TARGET = ("the first Appendix A run started after the recovery (restart, heal, or the poison's publish) "
                   "passes: the scenario's own limits, 15 s to reach the initial state and then its timeout_s")
MACHINE_NOTE = ("2 cores shared with other work (other engineers' tests and builds): the load average before and "
                "after says how busy; times are upper bounds on a quiet machine's")


class SoakBus(Protocol):
    """What the soak needs of a running bus (a LocalBus, or the Compose bus's DockerBus)."""

    topology: Topology

    def identity(self, name: str) -> TLSIdentity: ...
    def endpoint(self, broker: str) -> Endpoint: ...
    def ui_socket(self, device_id: str) -> Path: ...


# -- the streams ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamSpec:
    """One numbered stream: who publishes what, where, at which QoS, and who reads it where."""

    name: str
    direction: str
    qos: int
    publisher: str
    consumer: str
    profile: str
    mrid: str
    body: dict[str, Any]
    source_broker: str
    consumer_broker: str
    index: int

    @property
    def slug(self) -> str:
        return self.name.replace("->", "-").replace(" ", "-")

    @property
    def process(self) -> str:
        """The consumer's name as a device-crash target."""
        return f"soak-consumer-{self.slug}"

    def topic(self, root: str) -> str:
        return topic(root, self.profile, self.mrid)


def stream_specs(topology: Topology) -> list[StreamSpec]:
    """Field -> data centre as the power supply, data centre -> field as the DMS, each at QoS 1 and 2."""
    field_site = topology.first((s.name for s in topology.sites if s.bridge_to), "field site bridged to a data centre")
    dc = topology.site(field_site).bridge_to
    assert dc is not None  # the field site is the one with a bridge
    supply = topology.first((d for d in topology.devices if d.role == "supply" and d.site == field_site),
                            f"power supply at {field_site}")
    dms = topology.first((d for d in topology.devices if d.role == "dms" and d.site == dc), f"DMS at {dc}")
    specs: list[StreamSpec] = []
    for qos in (1, 2):
        specs.append(StreamSpec(f"field->dc q{qos}", "field->dc", qos, supply.id, "recorder", "SupplyStatusProfile",
                                supply.id, {"setpoint_v": NOMINAL_V, "output_v": NOMINAL_V},
                                topology.broker_for(field_site, "delivery").name,
                                topology.broker_for(dc, "delivery").name, len(specs)))
    for qos in (1, 2):
        specs.append(StreamSpec(f"dc->field q{qos}", "dc->field", qos, dms.id, "recorder", "CapBankControlProfile",
                                SINK_MRID, {"action": "open"}, topology.broker_for(dc, "control").name,
                                topology.broker_for(field_site, "control").name, len(specs)))
    return specs


def with_sink(topology: Topology) -> Topology:
    """``topology`` with the dc -> field streams' sink: an external cap bank (nobody starts it) at the
    field site, so that the field bridge carries its commands as it carries a real device's."""
    field_site = topology.first((s.name for s in topology.sites if s.bridge_to), "field site bridged to a data centre")
    if any(d.id == SINK_MRID for d in topology.devices):
        return topology
    sink = DeviceSpec(SINK_MRID, "capbank", field_site, external=True)
    return dataclasses.replace(topology, devices=(*topology.devices, sink))


def consume() -> None:
    """A stream's consumer process (``python -m testbed.bench.soak``): a persistent session that appends
    ``<seq> <receive ns>`` for each message of its stream, flushed at once, so a ``kill -9`` loses
    nothing it had received. Whatever does not decode (a poison) is set aside as a dead letter."""
    env = os.environ
    tls = TLSIdentity(Path(env["FMB_CA"]), Path(env["FMB_CERT"]), Path(env["FMB_KEY"]))
    run, stream, client_id = env["FMB_SOAK_RUN"], env["FMB_SOAK_STREAM"], env["FMB_CLIENT_ID"]
    out = open(env["FMB_OUT"], "a", buffering=1)  # noqa: SIM115 - line-buffered for the process's life
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        try:
            body = decode(msg.payload).body
        except PayloadError as e:
            set_aside(msg, f"rejected payload: {one_line(str(e), 300)}", client_id)
            return
        seq = body.get("soak_seq")
        if body.get("soak_run") == run and body.get("soak_stream") == stream and isinstance(seq, int):
            out.write(f"{seq} {time.time_ns()}\n")

    client = connect(client_id, tls, Endpoint.parse(env["FMB_BROKER"]), on_message=on_message,
                     on_connect=lambda c: c.subscribe(env["FMB_TOPIC"], int(env["FMB_QOS"])), clean_start=False,
                     session_expiry_s=3600, wait_s=None, reconnect_s=TUNED)
    stop.wait()
    client.disconnect()
    client.loop_stop()
    out.close()


def _read_records(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:  # a line cut short by a kill -9 is not a receipt
            records.append((int(parts[0]), int(parts[1])))
    return records


def _identity(bus: SoakBus, name: str) -> TLSIdentity:
    """A device's own certificate: the local bus has them all; the Compose bus lends them from its volumes."""
    borrow: Callable[[str], TLSIdentity] | None = getattr(bus, "borrow_identity", None)
    if borrow is not None and name in {d.id for d in bus.topology.devices}:
        return borrow(name)
    return bus.identity(name)


class _Stream:
    """A stream under way: its producer in this process, its consumer a process of its own."""

    def __init__(self, spec: StreamSpec, bus: SoakBus, procs: Processes, work: Path, run: str, base: int,
                 rate: float) -> None:
        self.spec, self.procs, self.run, self.rate = spec, procs, run, rate
        self.records_path = work / f"{spec.slug}.txt"
        self.dead_letters = work / "deadletters"
        self.topic = spec.topic(bus.topology.root)
        self.consumer_identity = bus.identity(spec.consumer)
        self.consumer_endpoint = bus.endpoint(spec.consumer_broker)
        self.client_id = f"soak-{run}-{spec.slug}"
        self.consumer: ProcessRecord | None = None
        self.start_consumer()

        def payload(seq: int) -> bytes:
            # The envelope's seq is far above any device's own counter, so the recorder (which keys messages by
            # source, profile and seq) never takes one of ours for one of the device's; soak_seq is the ledger's.
            body = {**spec.body, "soak_run": run, "soak_stream": spec.name, "soak_seq": seq}
            return encode(spec.profile, spec.publisher, base + 4 * seq + spec.index, body)

        self.producer = Producer(_identity(bus, spec.publisher), bus.endpoint(spec.source_broker), self.topic,
                                 spec.qos, 0, TUNED, payload=payload)

    def start_consumer(self) -> None:
        self.dead_letters.mkdir(exist_ok=True)
        ident = self.consumer_identity
        self.consumer = self.procs.start(f"{self.spec.process}-{time.monotonic_ns()}", [
            sys.executable, "-m", "testbed.bench.soak"], {
            "FMB_BROKER": f"{self.consumer_endpoint.host}:{self.consumer_endpoint.port}", "FMB_CA": str(ident.ca),
            "FMB_CERT": str(ident.cert), "FMB_KEY": str(ident.key), "FMB_TOPIC": self.topic,
            "FMB_QOS": str(self.spec.qos), "FMB_CLIENT_ID": self.client_id, "FMB_OUT": str(self.records_path),
            "FMB_SOAK_RUN": self.run, "FMB_SOAK_STREAM": self.spec.name,
            "FMB_DEADLETTERS": str(self.dead_letters / f"{self.spec.process}.deadletters.jsonl")})

    def kill_consumer(self) -> None:
        if self.consumer is not None:
            self.procs.kill(self.consumer)
            self.consumer = None

    def stop_consumer(self) -> None:
        if self.consumer is not None:
            self.procs.stop([self.consumer])
            self.consumer = None

    def records(self) -> list[tuple[int, int]]:
        first = self.producer.first
        return [r for r in _read_records(self.records_path) if r[0] >= first]

    def await_flow(self, timeout_s: float = 30) -> None:
        """Probe until the consumer receives: the ledger starts at the first message it was subscribed for."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.producer.publish_one()
            time.sleep(0.1)
            got = _read_records(self.records_path)
            if got:
                self.producer.first = min(s for s, _ in got)
                return
        raise BenchmarkError(f"nothing of the {self.spec.name} stream reached its consumer on "
                             f"{self.spec.consumer_broker} in {timeout_s:g} s: see the consumer's log under the "
                             "soak's work directory, and the bridge's brokers")

    def flowing_since(self, since_ns: int) -> bool:
        """Whether the consumer has received a message published after ``since_ns``."""
        sent = self.producer.sent_ns
        return any(sent.get(s, 0) > since_ns for s, _ in self.records()[-50:])

    def whole(self) -> bool:
        with self.producer.lock:
            acked = {s for s in self.producer.acked if s >= self.producer.first}
        return acked <= {s for s, _ in self.records()}


# -- the schedule -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Planned:
    """One fault of the schedule."""

    kind: str
    target: str
    gap_s: float  # quiet time before it
    downtime_s: float  # down / cut off / impaired this long (0 for a poison)
    loss_pct: float  # link loss only


def plan(seed: int, kinds: Sequence[str], targets: dict[str, list[str]], count: int = 400) -> list[Planned]:
    """The schedule the seed gives: rounds of every kind, each round in a random order."""
    rng = random.Random(seed)
    out: list[Planned] = []
    while len(out) < count:
        for kind in rng.sample(list(kinds), len(kinds)):
            target = rng.choice(targets[kind])
            gap = round(rng.uniform(*GAP_S), 2)
            lasting = OUTAGE_S if kind in ("partition", "link-loss") else DOWNTIME_S
            down = 0.0 if kind == "poison" else round(rng.uniform(*lasting), 2)
            loss = rng.choice(LOSS_PCT) if kind == "link-loss" else 0.0
            out.append(Planned(kind, target, gap, down, loss))
    return out[:count]


def _poison_targets(topology: Topology) -> dict[str, tuple[str, str, str]]:
    """``"<topic> as <device>"`` -> (publisher, profile, mRID): every topic a device reads, published with the
    certificate of a device the ACLs let write it."""
    found: dict[str, tuple[str, str, str]] = {}
    devices = [d for d in topology.devices if not d.external]  # the soak's own sink is no device under test
    for publisher in devices:
        for grant in ROLES[publisher.role].publishes:
            for reader in devices:
                reads = [g for g in ROLES[reader.role].reads if g.profile == grant.profile]
                if reader.id == publisher.id or not reads:
                    continue
                # Each mRID the publisher may write and the reader reads (the reader's own when the
                # publisher may write any: a command to it).
                written = topology.grant_mrids(publisher.id, grant)
                read = [topology.grant_mrids(reader.id, g) for g in reads]
                for mrid in [reader.id] if written == ["+"] else written:
                    if any(r == ["+"] or mrid in r for r in read):
                        found.setdefault(f"{topic(topology.root, grant.profile, mrid)} as {publisher.id}",
                                         (publisher.id, grant.profile, mrid))
    return found


def fault_targets(topology: Topology, specs: Sequence[StreamSpec]) -> dict[str, list[str]]:
    """What each fault kind may strike. Brokers: the persistent ones (an edge broker keeps nothing across a
    restart by design, so "lose nothing" is not its promise)."""
    bridged = [s.name for s in topology.sites if s.bridge_to]
    return {
        "broker-sigterm": [b.name for b in topology.brokers if b.persistent],
        "broker-kill9": [b.name for b in topology.brokers if b.persistent],
        "device-crash": [d.id for d in topology.devices if not d.external] + [s.process for s in specs],
        "partition": bridged,
        "link-loss": [b.name for b in topology.brokers if b.site in bridged],
        "poison": sorted(_poison_targets(topology)),
    }


def check_options(minutes: float, rate: float, crash_window_s: float | None) -> None:
    """Refuse numbers the soak cannot use, before anything starts."""
    if not minutes > 0:
        raise TestbedError(f"--minutes is {minutes:g}; give the soak's length in minutes (> 0, e.g. 2 or 0.5)")
    if not 0 < rate <= 200:
        raise TestbedError(f"--rate is {rate:g}; give messages per second per stream, > 0 and <= 200")
    if crash_window_s is not None and crash_window_s < 0:
        raise TestbedError(f"--crash-window-s is {crash_window_s:g}; give seconds >= 0")


# -- the soak ----------------------------------------------------------------------------------------

@dataclass
class _Window:
    n: int
    kind: str
    target: str
    lo_ns: int
    start_ns: int
    heal_ns: int
    end_ns: int


@dataclass
class _Message:
    stream: str
    qos: int
    seq: int
    published_ns: int
    acked: bool
    receipts: int = 0
    first_ns: int | None = None
    reordered: bool = False
    window: _Window | None = None

    @property
    def state(self) -> str:
        return "delivered" if self.receipts else "lost" if self.acked else "unacknowledged"


@dataclass
class _Soak:
    bus: SoakBus
    faults: Faults
    backend: str
    scenario: Scenario
    work: Path
    rate: float
    crash_window_s: float | None
    dead_letter_dirs: list[Path]
    say: Callable[[str], None]
    procs: Processes = field(init=False)
    streams: list[_Stream] = field(default_factory=list)
    runs: list[SoakRun] = field(default_factory=list)
    windows: list[_Window] = field(default_factory=list)
    faults_done: list[SoakFault] = field(default_factory=list)
    tls_version: str | None = None
    t0_ns: int = 0

    def __post_init__(self) -> None:
        self.procs = Processes(self.work)
        self.run_tag = f"{os.getpid()}-{time.time_ns() % 10**9}"
        self.specs = stream_specs(self.bus.topology)
        self.poisons = _poison_targets(self.bus.topology)

    def rel(self, ns: int) -> float:
        return round((ns - self.t0_ns) / 1e9, 3)

    # -- streams --------------------------------------------------------------------------------

    def start_streams(self) -> None:
        base = time.time_ns() // 1000
        self.t0_ns = time.time_ns()
        for spec in self.specs:
            self.streams.append(_Stream(spec, self.bus, self.procs, self.work, self.run_tag, base, self.rate))
        for s in self.streams:
            s.await_flow()
        for s in self.streams:
            s.producer.run(self.rate)

    def stream_of_process(self, name: str) -> _Stream | None:
        return next((s for s in self.streams if s.spec.process == name), None)

    def finish_streams(self) -> None:
        for s in self.streams:
            s.producer.stop.set()
        for s in self.streams:
            if s.producer.thread:
                s.producer.thread.join()
        for s in self.streams:
            s.producer.await_acks(10)
        with contextlib.suppress(WaitTimeout):  # what is missing by then is measured as such
            wait_until(lambda: all(s.whole() for s in self.streams), 15, interval_s=0.2,
                       what="every acknowledged message at its consumer")

    def close(self) -> None:
        for s in self.streams:
            with contextlib.suppress(Exception):  # closing a client whose broker is gone is not an error
                s.producer.close()
            s.stop_consumer()
        self.procs.stop()

    # -- Appendix A -----------------------------------------------------------------------------

    def appendix_a(self, after_fault: int | None) -> SoakRun:
        start, passed, failure, e2e = time.time_ns(), False, None, None
        try:
            with ScenarioRunner(self.bus, self.scenario) as runner:
                doc = runner.run(1)
                self.tls_version = self.tls_version or runner.recorder.tls_version
            passed, failure, e2e = doc["passed"], doc["failure"], doc["e2e_ms"]
        except (TestbedError, OSError) as e:  # a client that cannot connect: a failed run, not the end of the soak
            failure = one_line(f"{type(e).__name__}: {e}", 300)
        run: SoakRun = {"t_s": self.rel(start), "seconds": round((time.time_ns() - start) / 1e9, 3),
                        "passed": passed, "failure": failure, "after_fault": after_fault, "e2e_ms": e2e}
        self.runs.append(run)
        return run

    def recovery_check(self, n: int, heal_ns: int) -> SoakScenarioCheck:
        deadline = time.monotonic() + RECOVERY_DEADLINE_S
        attempts, first_failure = 0, None
        while True:
            attempts += 1
            run = self.appendix_a(n)
            if run["passed"]:
                return {"passed_first": attempts == 1, "attempts": attempts,
                        "seconds_to_pass": round((time.time_ns() - heal_ns) / 1e9, 3), "failure": first_failure}
            first_failure = first_failure or run["failure"]
            if time.monotonic() > deadline:
                return {"passed_first": False, "attempts": attempts, "seconds_to_pass": None, "failure": first_failure}
            time.sleep(APPENDIX_A_PAUSE_S)

    # -- faults ---------------------------------------------------------------------------------

    def apply(self, p: Planned) -> dict[str, str | float | None]:
        """Strike and undo one fault; returns what is worth recording about it."""
        if p.kind in ("broker-sigterm", "broker-kill9"):
            (self.faults.stop if p.kind == "broker-sigterm" else self.faults.kill)(p.target)
            time.sleep(p.downtime_s)
            self.faults.start(p.target)
            return {"persistent": "yes"}
        if p.kind == "device-crash":
            stream = self.stream_of_process(p.target)
            if stream is not None:
                stream.kill_consumer()
                time.sleep(p.downtime_s)
                stream.start_consumer()
                return {"what": "a stream's consumer (persistent session)"}
            self.faults.kill(p.target)
            time.sleep(p.downtime_s)
            self.faults.start(p.target)
            return {"what": "a device of the bus"}
        if p.kind == "partition":
            with self.faults.partitioned(p.target):
                time.sleep(p.downtime_s)
            return {}
        if p.kind == "link-loss":
            peer = self.bus.topology.site(self.bus.topology.broker(p.target).site).bridge_to
            with self.faults.impaired(p.target, loss_pct=p.loss_pct, network=peer):
                time.sleep(p.downtime_s)
            return {"loss_pct": p.loss_pct, "network": peer}
        if p.kind == "poison":
            return self.poison(p.target)
        raise FaultError(f"no fault kind {p.kind!r} (kinds: {', '.join(FAULT_KINDS)})")

    def poison(self, target: str) -> dict[str, str | float | None]:
        publisher, profile, mrid = self.poisons[target]
        topology = self.bus.topology
        name = topic(topology.root, profile, mrid)
        # A valid envelope around a body nested 2000 times deeper than decode() allows: a recursive parser
        # without the bound would overflow its stack, and a handler that raised would stop paho's loop.
        head = json.dumps({"v": 1, "profile": profile, "source": publisher, "seq": 1, "ts_ns": time.time_ns()})
        payload = (head[:-1] + ', "body": {"x": ' + "[" * POISON_DEPTH + "]" * POISON_DEPTH + "}}").encode()
        broker = topology.broker_for(topology.device(publisher).site, PROFILES[profile].plane)
        client = connect(f"soak-poison-{self.run_tag}", _identity(self.bus, publisher),
                         self.bus.endpoint(broker.name))
        try:
            client.publish(name, payload, 1).wait_for_publish(10)
        finally:
            client.disconnect()
            client.loop_stop()
        digest = hashlib.sha256(payload).hexdigest()
        receivers: set[str] = set()

        def noted() -> bool:
            receivers.update(self.set_aside_by(digest))
            return bool(receivers)

        with contextlib.suppress(WaitTimeout):  # who set it aside by then is recorded; none is a finding too
            wait_until(noted, 5, interval_s=0.2, what="the poison's dead letters")
        return {"topic": name, "publisher": publisher, "bytes": float(len(payload)), "depth": float(POISON_DEPTH),
                "set_aside_by": ", ".join(sorted(receivers))}

    def set_aside_by(self, digest: str) -> set[str]:
        records = [r for d in self.dead_letter_dirs for r in read_dead_letters(d)]
        project = getattr(self.bus, "project", None)
        if project is not None:
            records += _container_dead_letters(project, [d.id for d in self.bus.topology.devices])
        return {str(r.get("receiver")) for r in records if r.get("sha256") == digest}

    def fault(self, p: Planned) -> None:
        n = len(self.faults_done) + 1
        self.say(f"  fault {n} at {self.rel(time.time_ns()):.1f} s: {p.kind} {p.target}"
                 + (f" for {p.downtime_s:g} s" if p.downtime_s else ""))
        start = time.time_ns()
        detail: dict[str, str | float | None] = {}
        error = None
        try:
            detail = self.apply(p)
        except TestbedError as e:
            error = one_line(f"{type(e).__name__}: {e}", 300)
            self.say(f"    could not apply or undo it: {error}")
            with contextlib.suppress(TestbedError):  # bring the target back if the fault left it down
                if p.kind in ("broker-sigterm", "broker-kill9", "device-crash") and not self.stream_of_process(
                        p.target):
                    self.faults.start(p.target)
        heal = time.time_ns()
        check = self.recovery_check(n, heal)
        with contextlib.suppress(WaitTimeout):  # a stream still stalled by then is in the ledger as such
            wait_until(lambda: all(s.flowing_since(heal) for s in self.streams), FLOWING_TIMEOUT_S, interval_s=0.2,
                       what="every stream flowing again")
        end = time.time_ns()
        self.windows.append(_Window(n, p.kind, p.target, start - int(LOOKBACK_S * 1e9), start, heal, end))
        self.faults_done.append({
            "n": n, "kind": p.kind, "target": p.target, "start_s": self.rel(start), "heal_s": self.rel(heal),
            "end_s": self.rel(end), "downtime_s": p.downtime_s, "detail": detail, "error": error,
            "scenario_after": check, "whole_s": {}})
        self.say(f"    recovered in {(heal - start) / 1e9:.2f} s; Appendix A after it: "
                 + (f"passed in {check['seconds_to_pass']:.2f} s ({check['attempts']} run(s))"
                    if check["seconds_to_pass"] is not None else f"FAILED ({check['failure']})"))

    def soak(self, seconds: float, schedule: Iterator[Planned]) -> None:
        end = time.monotonic() + seconds
        planned = next(schedule)
        due = time.monotonic() + planned.gap_s
        while time.monotonic() < end:
            if time.monotonic() >= due and end - time.monotonic() >= MIN_ROOM_S:
                self.fault(planned)
                planned = next(schedule)
                due = time.monotonic() + planned.gap_s
                continue
            self.appendix_a(None)
            pause_until = min(time.monotonic() + APPENDIX_A_PAUSE_S, end)
            time.sleep(max(0.0, pause_until - time.monotonic()))


def _container_dead_letters(project: Any, devices: list[str]) -> list[dict[str, Any]]:
    """The dead letters the Compose bus's devices recorded (in their containers' /run/fmb)."""
    records: list[dict[str, Any]] = []
    for device in devices:
        try:
            code, data = project.container(device).exec_run(["cat", f"/run/fmb/{device}{FILE_SUFFIX}"])
        except Exception:  # noqa: BLE001 - a container restarting is one that recorded nothing we can read now
            continue
        for line in (data or b"").decode(errors="replace").splitlines() if code == 0 else []:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
    return records


# -- the ledger -------------------------------------------------------------------------------------

def _window_of(windows: list[_Window], ns: int) -> _Window | None:
    return next((w for w in windows if w.lo_ns <= ns <= w.end_ns), None)


def _messages(stream: _Stream, windows: list[_Window]) -> tuple[list[_Message], list[tuple[int, int]], int]:
    """Every message of ``stream`` from its first, with what became of it; the receipts; the unexpected ones."""
    p = stream.producer
    records = stream.records()
    with p.lock:
        acked = set(p.acked)
    messages = {seq: _Message(stream.spec.name, stream.spec.qos, seq, p.sent_ns[seq], seq in acked,
                              window=_window_of(windows, p.sent_ns[seq]))
                for seq in range(p.first, p.seq + 1)}
    highest = None
    unexpected: set[int] = set()
    for seq, ns in records:
        m = messages.get(seq)
        if m is None:
            unexpected.add(seq)
            continue
        m.receipts += 1
        if m.receipts == 1:
            m.first_ns = ns
            if highest is not None and seq < highest:
                m.reordered = True
            else:
                highest = seq
    return list(messages.values()), records, len(unexpected)


def _at(messages: list[_Message], t0: int, limit: int = 200) -> list[list[float]]:
    return [[m.seq, round((m.published_ns - t0) / 1e9, 3)] for m in messages[:limit]]


def _stream_summary(stream: _Stream, messages: list[_Message], records: list[tuple[int, int]], unexpected: int,
                    t0: int) -> SoakStream:
    spec, p = stream.spec, stream.producer
    # The totals as the recovery benchmark counts them: a cross-check of the per-message ledger.
    counts = count_loss_and_duplicates([m.seq for m in messages if m.acked], [s for s, _ in records])
    lost = [m for m in messages if m.state == "lost"]
    unacked = [m for m in messages if m.state == "unacknowledged"]
    delivered = [m for m in messages if m.receipts]
    delays: dict[int, float] = {}
    for m in delivered:
        assert m.first_ns is not None
        second = int((m.published_ns - t0) // 10**9)
        delays[second] = max(delays.get(second, 0.0), (m.first_ns - m.published_ns) / 1e6)
    complete = (len(messages) == len(delivered) + len(lost) + len(unacked) and unexpected == 0
                and counts["lost"] == len(lost) and counts["duplicated"] == sum(max(0, m.receipts - 1)
                                                                               for m in messages))
    return {
        "name": spec.name, "direction": spec.direction, "qos": spec.qos, "publisher": spec.publisher,
        "consumer": spec.consumer, "topic": stream.topic, "source_broker": spec.source_broker,
        "consumer_broker": spec.consumer_broker, "first_seq": p.first, "sent": len(messages),
        "acked": sum(m.acked for m in messages), "received": len(records), "delivered": len(delivered),
        "lost": len(lost), "unacknowledged": len(unacked), "duplicated": counts["duplicated"],
        "reordered": sum(m.reordered for m in messages), "unexpected": unexpected, "complete": complete,
        "lost_at": _at(lost, t0), "unacknowledged_at": _at(unacked, t0),
        "duplicated_at": _at([m for m in messages if m.receipts > 1], t0),
        "reordered_at": _at([m for m in messages if m.reordered], t0),
        "delay_ms_by_second": [[s, round(v, 1)] for s, v in sorted(delays.items())],
    }


def _ledger_rows(spec: StreamSpec, messages: list[_Message], windows: list[_Window]) -> list[SoakLedgerRow]:
    rows: list[SoakLedgerRow] = []
    for w in [None, *windows]:
        mine = [m for m in messages if m.window is w]
        rows.append({"window": f"fault {w.n}" if w else "no fault", "fault": w.n if w else None,
                     "kind": w.kind if w else "no fault", "stream": spec.name, "qos": spec.qos,
                     "published": len(mine), "delivered": sum(1 for m in mine if m.receipts),
                     "lost": sum(1 for m in mine if m.state == "lost"),
                     "unacknowledged": sum(1 for m in mine if m.state == "unacknowledged"),
                     "duplicated": sum(max(0, m.receipts - 1) for m in mine),
                     "reordered": sum(m.reordered for m in mine)})
    return rows


def _crash_window_s(broker: BrokerSpec, override: float | None) -> float:
    """What a kill -9 of ``broker`` may lose, in seconds of traffic: ``override``, else the bound its persistence
    policy gives by construction (``fmb bench crash`` measures it), else Mosquitto's own timer (interval + 1 s)."""
    if override is not None:
        return override
    bound = policy_of(broker).bound_s
    return bound if bound is not None else float(broker.autosave_interval_s + 1)


def _no_loss(row: SoakLedgerRow, kind: str, detail: str) -> SoakInvariant:
    undelivered = row["lost"] + row["unacknowledged"]
    return {"fault": row["fault"], "kind": kind, "invariant": "no-loss", "stream": row["stream"],
            "holds": undelivered == 0, "counts": _counts(row), "detail": detail}


def _counts(row: SoakLedgerRow) -> dict[str, float | None]:
    return {"published": row["published"], "delivered": row["delivered"], "lost": row["lost"],
            "unacknowledged": row["unacknowledged"], "duplicated": row["duplicated"], "reordered": row["reordered"]}


def _invariants(soak: _Soak, messages: dict[str, list[_Message]], rows: list[SoakLedgerRow]) -> list[SoakInvariant]:
    topology = soak.bus.topology
    by = {(r["fault"], r["stream"]): r for r in rows}
    out: list[SoakInvariant] = []
    for spec in soak.specs:
        out.append(_no_loss(by[(None, spec.name)], "no fault", "outside every fault's window"))
    for w, fault in zip(soak.windows, soak.faults_done, strict=True):
        for spec in soak.specs:
            row = by[(w.n, spec.name)]
            through = w.target in (spec.source_broker, spec.consumer_broker)
            if w.kind == "broker-kill9" and through:
                window_s = _crash_window_s(topology.broker(w.target), soak.crash_window_s)
                bound = sum(1 for m in messages[spec.name]
                            if w.start_ns - window_s * 1e9 <= m.published_ns <= w.heal_ns)
                undelivered = row["lost"] + row["unacknowledged"]
                out.append({"fault": w.n, "kind": w.kind, "invariant": "crash-loss-within-window", "stream": spec.name,
                            "holds": undelivered <= bound, "counts": {**_counts(row), "bound": float(bound),
                                                                      "crash_window_s": window_s},
                            "detail": f"kill -9 of {w.target}, which the stream crosses: at most what it published "
                                      f"in the {window_s:g} s before the kill and until the restart"})
            else:
                why = (f"{w.kind} of {w.target}" + (", which the stream crosses" if through else "")
                       + ("" if w.kind in GRACEFUL else ": a broker the stream does not cross"))
                out.append(_no_loss(row, w.kind, why))
        check = fault["scenario_after"]
        out.append({"fault": w.n, "kind": w.kind, "invariant": "appendix-a-after-recovery", "stream": None,
                    "holds": check["passed_first"],
                    "counts": {"attempts": float(check["attempts"]), "seconds_to_pass": check["seconds_to_pass"]},
                    "detail": check["failure"] or "the first run after the recovery passed"})
    return out


def _window_totals(rows: list[SoakLedgerRow], stream: str) -> tuple[int, ...]:
    """One stream's windows added up: published, delivered, lost, unacknowledged, duplicated, reordered."""
    mine = [r for r in rows if r["stream"] == stream]
    return (sum(r["published"] for r in mine), sum(r["delivered"] for r in mine), sum(r["lost"] for r in mine),
            sum(r["unacknowledged"] for r in mine), sum(r["duplicated"] for r in mine),
            sum(r["reordered"] for r in mine))


def _write_ledger_csv(path: Path, messages: dict[str, list[_Message]], t0: int) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["stream", "qos", "seq", "published_s", "acked", "receipts", "first_received_s", "reordered",
                      "state", "window"])
        for ms in messages.values():
            for m in ms:
                out.writerow([m.stream, m.qos, m.seq, f"{(m.published_ns - t0) / 1e9:.3f}", int(m.acked), m.receipts,
                              "" if m.first_ns is None else f"{(m.first_ns - t0) / 1e9:.3f}", int(m.reordered),
                              m.state, f"fault {m.window.n}" if m.window else "no fault"])


def _result(soak: _Soak, minutes: float, seed: int, kinds: list[str], unavailable: dict[str, str],
            targets: dict[str, list[str]], load_before: tuple[float, float, float], out: Path) -> SoakResult:
    t0 = soak.t0_ns
    messages: dict[str, list[_Message]] = {}
    streams: list[SoakStream] = []
    rows: list[SoakLedgerRow] = []
    for s in soak.streams:
        ms, records, unexpected = _messages(s, soak.windows)
        messages[s.spec.name] = ms
        streams.append(_stream_summary(s, ms, records, unexpected, t0))
        rows += _ledger_rows(s.spec, ms, soak.windows)
        undelivered = {m.seq for m in ms if not m.receipts}
        expected = sorted(m.seq for m in ms if m.acked)
        for w, fault in zip(soak.windows, soak.faults_done, strict=True):
            at = whole_at(records, expected, s.producer.sent_ns, w.heal_ns, undelivered)
            fault["whole_s"][s.spec.name] = round((at - w.heal_ns) / 1e9, 3) if at else None
    invariants = _invariants(soak, messages, rows)
    adds_up = all(_window_totals(rows, st["name"]) == (st["sent"], st["delivered"], st["lost"], st["unacknowledged"],
                                                        st["duplicated"], st["reordered"]) for st in streams)
    _write_ledger_csv(out / LEDGER_FILE, messages, t0)
    window_s = soak.crash_window_s
    persistent = [b for b in soak.bus.topology.brokers if b.persistent]
    windows = {b.name: _crash_window_s(b, window_s) for b in persistent}
    return {
        "schema": RESULT_SCHEMA, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "conditions": {
            "backend": soak.backend, "minutes": minutes, "seed": seed,
            "duration_s": round((time.time_ns() - t0) / 1e9, 1), "rate_per_s": soak.rate,
            "streams": "field->dc: SupplyStatusProfile as the power supply (120 V, as it reports), field delivery "
                       "broker -> bridge -> data-centre delivery broker; dc->field: CapBankControlProfile as the DMS "
                       f"to mRID {SINK_MRID} (no device has it), data-centre control broker -> bridge -> field "
                       "control broker; each at QoS 1 and QoS 2 (the publisher's and the consumer's); consumers: "
                       "separate processes, recorder identity, clean_start false, session expiry 3600 s",
            "fault_kinds": kinds, "unavailable": unavailable, "targets": targets, "gap_s": list(GAP_S),
            "downtime_s": [DOWNTIME_S[0], OUTAGE_S[1]],
            "crash_window_s": max(windows.values(), default=0.0),
            "crash_window_source": (f"--crash-window-s {window_s:g}" if window_s is not None else
                                    "the killed broker's persistence policy in the topology, its loss window by "
                                    "construction (testbed.bench.crash: what fmb bench crash measures): "
                                    + "; ".join(f"{b.name}: {b.policy} -> {windows[b.name]:g} s" for b in persistent)
                                    + "; --crash-window-s sets another"),
            "lookback_s": LOOKBACK_S, "recovery_target": RECOVERY_TARGET,
            "graceful_whole_target_s": GRACEFUL_WHOLE_S, "appendix_a_pause_s": APPENDIX_A_PAUSE_S,
            "bridge_qos": soak.bus.topology.qos,
            "monitor": "not running: its alerts are not part of the ledger, and the dc->field stream goes to an "
                       "mRID no device reads, which it would report as undeliverable" if soak.backend == "local"
                       else "none on the Compose bus",
            "tls_version": soak.tls_version, "source_revision": source_revision(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()], "machine_note": MACHINE_NOTE},
        "streams": streams, "faults": soak.faults_done, "ledger": rows, "invariants": invariants,
        "violations": sum(not i["holds"] for i in invariants),
        "ledger_complete": adds_up and all(st["complete"] for st in streams),
        "appendix_a": soak.runs, "ledger_file": LEDGER_FILE,
        "environment": environment(soak.bus.topology, soak.tls_version, soak.backend),
    }


def run_soak(bus: SoakBus, faults: Faults, backend: str, minutes: float, seed: int, out: Path, work: Path, *,
             rate: float = DEFAULT_RATE, crash_window_s: float | None = None,
             dead_letter_dirs: Sequence[Path] = (), progress: Callable[[str], None] | None = None) -> SoakResult:
    """Soak a running bus for ``minutes``; writes ``out/bench-soak.json`` and ``out/soak-ledger.csv``."""
    check_options(minutes, rate, crash_window_s)
    say = progress or (lambda line: None)
    load_before = os.getloadavg()
    scenario = load_scenario("appendix-a", {d.id: d.role for d in bus.topology.devices})
    soak = _Soak(bus, faults, backend, scenario, work, rate, crash_window_s,
                 [*dead_letter_dirs, work / "deadletters"], say)
    targets = fault_targets(bus.topology, soak.specs)
    unavailable: dict[str, str] = {}
    if not isinstance(faults, DockerFaults):  # the fault API says what this backend cannot do, and why
        site = targets["partition"][0] if targets["partition"] else "field"
        probes: dict[str, Callable[[], None]] = {"partition": lambda: faults.partition(site),
                                                 "link-loss": lambda: faults.impair(site, loss_pct=1)}
        for kind, probe in probes.items():
            try:
                probe()
            except FaultError as e:
                unavailable[kind] = str(e)
    kinds = [k for k in FAULT_KINDS if k not in unavailable and targets[k]]
    schedule = plan(seed, kinds, targets)
    out.mkdir(parents=True, exist_ok=True)
    say(f"soak on the {backend} bus for {minutes:g} min, seed {seed}: {', '.join(kinds)}"
        + (f" ({', '.join(unavailable)}: not on this backend)" if unavailable else ""))
    try:
        soak.start_streams()
        say(f"  4 streams flowing at {rate:g} msg/s each; Appendix A repeating between faults")
        soak.soak(minutes * 60, iter(schedule))
        soak.finish_streams()
    finally:
        soak.close()
    result = _result(soak, minutes, seed, kinds, unavailable, targets, load_before, out)
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


@contextlib.contextmanager
def _work_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fmb-soak-") as tmp:
        yield Path(tmp)


def local_soak(topology: Topology, pki: PKI, minutes: float, seed: int, out: Path, **options: Any) -> SoakResult:
    """The soak on a fresh local bus of ``topology`` (free ports, a temporary state directory), stopped after."""
    check_options(minutes, options.get("rate", DEFAULT_RATE), options.get("crash_window_s"))
    with _work_dir() as work:
        bus = LocalBus(with_sink(topology).with_free_ports(), pki, work / "state", monitor=False, ui_port=None)
        bus.start()
        try:
            return run_soak(bus, LocalFaults(bus), "local", minutes, seed, out, work,
                            dead_letter_dirs=[bus.run_dir], **options)
        finally:
            bus.stop()


def docker_soak(topology_path: str | None, minutes: float, seed: int, out: Path, **options: Any) -> SoakResult:
    """The soak on the Compose bus (started for it if not up, and removed after)."""
    # Here, not at the top: the Compose backend loads the Docker SDK, which the local soak does not need.
    from testbed.backends.compose import compose_bus

    check_options(minutes, options.get("rate", DEFAULT_RATE), options.get("crash_window_s"))
    with _work_dir() as work, compose_bus(topology_path=topology_path) as bus:
        return run_soak(bus, DockerFaults(bus.project, bus.topology), "docker", minutes, seed, out, work, **options)


def summary(result: SoakResult) -> str:
    return "soak benchmark\n" + soak_markdown(result)


if __name__ == "__main__":
    consume()
