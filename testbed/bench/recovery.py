"""``fmb bench recovery``: faults, each repeated; time to detect, reconnect, be whole; loss.

Each broker fault runs on a fresh data-centre broker of its own (persistent, the autosave policy
under test) with a producer publishing sequence-numbered messages at a steady rate and a
central consumer holding a persistent session, as the DMS does. After the fault the broker is
restarted at once. Per trial:

* ``detect_s``: fault -> the producer's client sees its connection drop;
* ``reconnect_s``: broker accepting again (or consumer restarted) -> the client is back;
* ``whole_s``: the same moment -> the consumer has every message, without a gap, up to one
  published after it;
* ``lost`` / ``duplicated``: acknowledged by the broker but never delivered / delivered twice
  (``testbed.core.stats.count_loss_and_duplicates``).

Faults: data-centre broker SIGTERM (graceful); consumer ``kill -9`` and restart (the persistent
session must hand it everything); the same SIGTERM with paho's default reconnect backoff against
the testbed's tuned one; the field delivery broker ``kill -9`` on a whole Appendix A bus (time for
the tablet to show the data centre's diagram again); and a sweep of ``kill -9`` of the
data-centre broker over autosave intervals while messages queue for an offline consumer: the
loss window against the save cost, measured as throughput with each policy.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from testbed.backends.environment import environment
from testbed.backends.local import LocalBus
from testbed.backends.processes import ProcessRecord
from testbed.bench.common import Processes, bench_topology, start_broker
from testbed.core.errors import BenchmarkError, TestbedError
from testbed.core.ports import free_port
from testbed.core.results import AutosavePoint, RecoveryFault, RecoveryResult, RecoveryTime, RecoveryTrial
from testbed.core.scenario import load_scenario
from testbed.core.stats import count_loss_and_duplicates
from testbed.core.topics import topic
from testbed.core.topology import BrokerSpec, Topology, load_topology
from testbed.core.waiting import WaitTimeout, wait_until
from testbed.harness.recorder import Recorder
from testbed.harness.runner import ScenarioRunner
from testbed.reporting.text import recovery_markdown
from testbed.security.pki import PKI
from testbed.transport.mqtt import (
    PAHO_DEFAULT_RECONNECT_S,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    Endpoint,
    TLSIdentity,
    connect,
)

__all__ = ["RESULT_SCHEMA", "TUNED", "Producer", "fault_line", "run_recovery", "whole_at"]

RESULT_SCHEMA: Final = "fmb.bench-recovery/1"  # the shape: testbed.core.results.RecoveryResult
TUNED = (RECONNECT_MIN_S, RECONNECT_MAX_S)


class Producer:
    """Publishes ``<seq>,<padding>`` at a steady rate; knows what the broker acknowledged."""

    def __init__(self, identity: TLSIdentity, endpoint: Endpoint, name: str, qos: int, payload_bytes: int,
                 reconnect: tuple[float, float], payload: Callable[[int], bytes] | None = None) -> None:
        self.topic, self.qos, self.payload = name, qos, payload
        self.padding = b"p" * max(0, payload_bytes - 8)
        self.lock = threading.Lock()
        self.mids: dict[int, int] = {}
        self.acked: set[int] = set()
        self.sent_ns: dict[int, int] = {}
        self.disconnects: list[int] = []
        self.connects: list[int] = []
        self.seq = 0
        self.first = 1  # the first message the consumer was subscribed for

        self.early: dict[int, bool] = {}  # acknowledgements that came before publish() returned

        def on_publish(c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
            with self.lock:
                if mid in self.mids:
                    seq = self.mids.pop(mid)
                    if not reason.is_failure:
                        self.acked.add(seq)
                else:
                    self.early[mid] = not reason.is_failure

        def on_disconnect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
            self.disconnects.append(time.time_ns())

        # Exactly-once needs a session that outlives the connection: the broker keeps what it PUBREC'd.
        self.client = connect(f"recovery-producer-{os.getpid()}-{time.monotonic_ns() % 10**6}", identity, endpoint,
                              on_connect=lambda c: self.connects.append(time.time_ns()), reconnect_s=reconnect,
                              exactly_once=qos == 2)
        self.client.on_publish = on_publish
        self.client.on_disconnect = on_disconnect
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def publish_one(self) -> None:
        # paho's publish() takes paho's own lock, which its network thread holds while it runs
        # on_publish: calling it under self.lock would deadlock against on_publish.
        self.seq += 1
        self.sent_ns[self.seq] = time.time_ns()
        body = self.payload(self.seq) if self.payload else f"{self.seq:08d}".encode() + b"," + self.padding
        info = self.client.publish(self.topic, body, self.qos)
        with self.lock:
            if info.mid in self.early:
                if self.early.pop(info.mid):
                    self.acked.add(self.seq)
            else:
                self.mids[info.mid] = self.seq

    def run(self, rate: float) -> None:
        def loop() -> None:
            period, start, i = 1.0 / rate, time.perf_counter(), 0
            while not self.stop.is_set():
                delay = start + i * period - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                self.publish_one()
                i += 1

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def finish(self, timeout_s: float = 15) -> None:
        """Stop publishing; wait up to ``timeout_s`` for the broker to acknowledge what was sent."""
        self.stop.set()
        if self.thread:
            self.thread.join()
        self.await_acks(timeout_s)

    def await_acks(self, timeout_s: float, interval_s: float = 0.02) -> None:
        """Wait up to ``timeout_s`` until every message published is acknowledged (those that are not
        by then count as unacknowledged: not an error)."""
        with contextlib.suppress(WaitTimeout):
            wait_until(lambda: len(self.acked) >= self.seq, timeout_s, interval_s=interval_s,
                       what=f"acknowledgements of {self.topic} up to {self.seq}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _read_consumer(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    return [(int(a), int(b)) for a, b in (line.split() for line in path.read_text().splitlines() if line.strip())]


def whole_at(records: list[tuple[int, int]], expected: list[int], sent_ns: dict[int, int], after_ns: int,
              lost: set[int]) -> int | None:
    """When the consumer first held, with no gap, every expected message up to one published after ``after_ns``."""
    have: set[int] = set()
    ptr = 0
    wanted = [s for s in expected if s not in lost]
    for seq, recv_ns in sorted(records, key=lambda r: r[1]):
        have.add(seq)
        while ptr < len(wanted) and wanted[ptr] in have:
            ptr += 1
        if ptr and sent_ns[wanted[ptr - 1]] > after_ns:
            return recv_ns
    return None


class _Harness:
    def __init__(self, pki: PKI, root: str, work: Path, rate: float, payload_bytes: int,
                 progress: Callable[[str], None] | None) -> None:
        self.pki, self.root, self.work = pki, root, work
        self.rate, self.payload_bytes = rate, payload_bytes
        self.procs = Processes(work)
        self.broker_record: ProcessRecord | None = None  # the broker of the trial under way
        self.identity = TLSIdentity(pki.ca_cert, pki.client("bench").cert, pki.client("bench").key)
        self.progress = progress or (lambda line: None)
        self.trial = 0

    def broker(self, autosave_s: int = 60) -> tuple[Topology, BrokerSpec, Path, Endpoint]:
        self.trial += 1
        topology = bench_topology(self.root, 1, (free_port(), free_port()), kind="datacentre",
                                  autosave_interval_s=autosave_s)
        spec = topology.broker("bench-delivery")
        directory = self.work / f"trial-{self.trial}"
        self.broker_record, endpoint = start_broker(self.procs, topology, spec, self.pki, directory)
        return topology, spec, directory, endpoint

    def restart(self, topology: Topology, spec: BrokerSpec, directory: Path) -> tuple[ProcessRecord, int]:
        self.broker_record, _ = start_broker(self.procs, topology, spec, self.pki, directory)
        return self.broker_record, time.time_ns()

    def consumer(self, endpoint: Endpoint, qos: int, out: Path,
                 reconnect: tuple[float, float]) -> ProcessRecord:
        return self.procs.start(f"consumer-{self.trial}-{time.monotonic_ns()}", [sys.executable, "-m",
                                "testbed.bench.consumer"], {
            "FMB_BROKER": f"{endpoint.host}:{endpoint.port}", "FMB_CA": str(self.identity.ca),
            "FMB_CERT": str(self.identity.cert), "FMB_KEY": str(self.identity.key),
            "FMB_TOPIC": self.topic(), "FMB_QOS": str(qos), "FMB_CLIENT_ID": f"central-{self.trial}",
            "FMB_SESSION_EXPIRY": "3600", "FMB_OUT": str(out),
            "FMB_RECONNECT": ",".join(str(x) for x in reconnect)})

    def topic(self) -> str:
        return topic(self.root, "BenchFloodProfile", "recovery")

    @staticmethod
    def await_subscription(producer: Producer, records: Path, timeout_s: float = 15) -> None:
        """Probe until the consumer receives: only what is published from then on is expected."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            producer.publish_one()
            time.sleep(0.1)
            got = _read_consumer(records)
            if got:
                producer.first = min(s for s, _ in got)
                return
        raise BenchmarkError(f"the benchmark consumer received nothing in {timeout_s:g} s: its broker or its "
                             "process failed to start; run the benchmark again on an idle machine")

    @staticmethod
    def wait_records(path: Path, count: int, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the consumer to hold ``count`` distinct messages (fewer: measured as lost)."""
        with contextlib.suppress(WaitTimeout):
            wait_until(lambda: len({s for s, _ in _read_consumer(path)}) >= count, timeout_s, interval_s=0.05,
                       what=f"{count} messages in {path}")

    def measure(self, producer: Producer, records_path: Path, fault_ns: int, back_ns: int) -> RecoveryTrial:
        records = _read_consumer(records_path)
        acked = sorted(s for s in producer.acked if s >= producer.first)
        counts = count_loss_and_duplicates(acked, [s for s, _ in records if s >= producer.first])
        lost = set(counts["lost_seqs"]) if counts["lost"] <= 100 else set(acked) - {s for s, _ in records}
        whole = whole_at(records, acked, producer.sent_ns, back_ns, lost)
        detect = next((t for t in producer.disconnects if t >= fault_ns), None)
        reconnect = next((t for t in producer.connects if t >= back_ns), None)
        return {"detect_s": round((detect - fault_ns) / 1e9, 4) if detect else None,
                "reconnect_s": round((reconnect - back_ns) / 1e9, 4) if reconnect else None,
                "whole_s": round((whole - back_ns) / 1e9, 4) if whole else None,
                "lost": counts["lost"], "duplicated": counts["duplicated"], "acked": len(acked)}

    # -- the faults ---------------------------------------------------------------------------------

    def broker_sigterm(self, qos: int, reconnect: tuple[float, float]) -> RecoveryTrial:
        topology, spec, directory, endpoint = self.broker()
        records = directory / "consumer.txt"
        consumer = self.consumer(endpoint, qos, records, reconnect)
        producer = Producer(self.identity, endpoint, self.topic(), qos, self.payload_bytes, reconnect)
        try:
            self.await_subscription(producer, records)
            producer.run(self.rate)
            time.sleep(1.0)
            broker = self.broker_record
            assert broker is not None
            fault_ns = time.time_ns()
            # Graceful: Mosquitto saves its database on the way out; a broker that needs SIGKILL is not this fault.
            if self.procs.stop([broker], timeout_s=10):
                raise TestbedError(f"the benchmark broker did not exit within 10 s of SIGTERM; see {directory}")
            _, back_ns = self.restart(topology, spec, directory)
            time.sleep(max(2.0, reconnect[0] * 2 + 1))
            producer.finish()
            self.wait_records(records, len(producer.acked) - producer.first + 1, 15)
            return self.measure(producer, records, fault_ns, back_ns)
        finally:
            producer.close()
            self.procs.stop([consumer])
            self.procs.stop()

    def consumer_kill9(self, qos: int) -> RecoveryTrial:
        topology, spec, directory, endpoint = self.broker()
        records = directory / "consumer.txt"
        consumer = self.consumer(endpoint, qos, records, TUNED)
        producer = Producer(self.identity, endpoint, self.topic(), qos, self.payload_bytes, TUNED)
        try:
            self.await_subscription(producer, records)
            producer.run(self.rate)
            time.sleep(1.0)
            fault_ns = time.time_ns()
            self.procs.kill(consumer)  # the DMS crashes: its session stays in the broker
            time.sleep(2.0)
            back_ns = time.time_ns()
            consumer = self.consumer(endpoint, qos, records, TUNED)
            time.sleep(1.5)
            producer.finish()
            self.wait_records(records, len(producer.acked) - producer.first + 1, 15)
            trial = self.measure(producer, records, fault_ns, back_ns)
            first_after = min((r for _, r in _read_consumer(records) if r >= back_ns), default=None)
            trial["detect_s"] = None  # the broker sees the dead socket; the producer sees nothing
            trial["reconnect_s"] = round((first_after - back_ns) / 1e9, 4) if first_after else None
            return trial
        finally:
            producer.close()
            self.procs.stop()

    def autosave_kill9(self, autosave_s: int, qos: int, seconds: float) -> tuple[int, int]:
        """Messages queue for an offline consumer, then kill -9: (acked, lost)."""
        topology, spec, directory, endpoint = self.broker(autosave_s)
        records = directory / "consumer.txt"
        consumer = self.consumer(endpoint, qos, records, TUNED)
        producer = Producer(self.identity, endpoint, self.topic(), qos, self.payload_bytes, TUNED)
        try:
            self.await_subscription(producer, records)
            self.procs.stop([consumer])  # offline: from now on messages queue in its session
            producer.run(self.rate)
            time.sleep(seconds)
            producer.finish(timeout_s=5)
            acked = {s for s in producer.acked if s >= producer.first}
            broker = self.broker_record
            assert broker is not None  # set by self.broker() above
            self.procs.kill(broker)
            self.restart(topology, spec, directory)
            consumer = self.consumer(endpoint, qos, records, TUNED)
            time.sleep(2.5)
            got = {s for s, _ in _read_consumer(records)}
            return len(acked), len(acked - got)
        finally:
            producer.close()
            self.procs.stop()

    def autosave_throughput(self, autosave_s: int, qos: int, count: int) -> float:
        """QoS ``qos`` publishes acknowledged per second while queuing for an offline consumer."""
        topology, spec, directory, endpoint = self.broker(autosave_s)
        records = directory / "consumer.txt"
        consumer = self.consumer(endpoint, qos, records, TUNED)
        producer = Producer(self.identity, endpoint, self.topic(), qos, self.payload_bytes, TUNED)
        try:
            self.await_subscription(producer, records)
            self.procs.stop([consumer])
            start = time.perf_counter()
            for _ in range(count):
                producer.publish_one()
            producer.await_acks(60, interval_s=0.001)
            return round(count / (time.perf_counter() - start), 1)
        finally:
            producer.close()
            self.procs.stop()


def _field_broker_kill9(pki: PKI, certs: Path, progress: Callable[[str], None]) -> RecoveryTrial:
    """Kill -9 the field delivery broker of a whole Appendix A bus; time until the tablet shows the
    data centre's diagram again (the bridge resubscribes, the DC resends the retained diagram)."""
    topology = load_topology().with_free_ports()
    with tempfile.TemporaryDirectory(prefix="fmb-bench-field-") as tmp:
        bus = LocalBus(topology, pki, Path(tmp))
        bus.start()
        try:
            endpoints = {b.name: bus.endpoint(b.name) for b in topology.brokers}
            recorder = Recorder(topology, bus.identity("recorder"), endpoints)
            recorder.start()
            try:
                time.sleep(1.0)
                fault_ns = time.time_ns()
                bus.signal("field-delivery", signal.SIGKILL)
                while bus.alive("field-delivery"):
                    time.sleep(0.005)
                bus.restart("field-delivery")
                back_ns = time.time_ns()

                def displayed(obs: list[Any]) -> Any:
                    return next((o for o in obs if o.message and o.message.profile == "DisplayStatusProfile"
                                 and o.message.ts_ns > back_ns), None)

                shown = recorder.wait_for(displayed, 30)
            finally:
                recorder.stop()
            scenario = load_scenario("appendix-a", {d.id: d.role for d in topology.devices})
            with ScenarioRunner(bus, scenario) as runner:
                verified = runner.run(1)["passed"]
        finally:
            bus.stop()
    whole = (shown.message.ts_ns - back_ns) / 1e9 if shown else None
    progress(f"  field-broker-kill9: tablet shows the diagram again {whole:.3f} s after the restart; "
             f"Appendix A afterwards {'passes' if verified else 'FAILS'}" if whole is not None else
             "  field-broker-kill9: the tablet never showed the diagram again")
    return {"detect_s": None, "reconnect_s": None, "whole_s": round(whole, 4) if whole is not None else None,
            "lost": 0, "duplicated": 0, "scenario_after": verified, "restart_s": round((back_ns - fault_ns) / 1e9, 4)}


def run_recovery(pki: PKI, certs: Path, root: str, repetitions: int, rate: float, payload_bytes: int,
                 autosave_intervals: list[int], out: Path, progress: Callable[[str], None] | None = None,
                 include_field: bool = True) -> RecoveryResult:
    """The whole benchmark; writes ``out/bench-recovery.json`` and returns it."""
    say = progress or (lambda line: None)
    pki.init({b.name: [] for b in bench_topology(root, 1, (1, 2)).brokers}, ["bench"])
    faults: list[RecoveryFault] = []
    sweep: list[AutosavePoint] = []
    with tempfile.TemporaryDirectory(prefix="fmb-bench-recovery-") as tmp:
        h = _Harness(pki, root, Path(tmp), rate, payload_bytes, say)
        try:
            for qos in (1, 2):
                trials = [h.broker_sigterm(qos, TUNED) for _ in range(repetitions)]
                faults.append({"name": "dc-broker-sigterm", "qos": qos, "client": "tuned",
                               "description": "data-centre broker SIGTERM (saves), restarted at once; "
                                              f"clients reconnect {TUNED[0]}-{TUNED[1]} s",
                               "target": {"lost": 0, "whole_s": 1.5}, "trials": trials})
                say(fault_line(faults[-1]))
            trials = [h.broker_sigterm(1, PAHO_DEFAULT_RECONNECT_S) for _ in range(repetitions)]
            faults.append({"name": "dc-broker-sigterm", "qos": 1, "client": "defaults",
                           "description": "the same with paho's default reconnect backoff "
                                          f"{PAHO_DEFAULT_RECONNECT_S[0]:g}-{PAHO_DEFAULT_RECONNECT_S[1]:g} s",
                           "target": None, "trials": trials})
            say(fault_line(faults[-1]))
            for qos in (1, 2):
                trials = [h.consumer_kill9(qos) for _ in range(repetitions)]
                faults.append({"name": "consumer-kill9", "qos": qos, "client": "tuned",
                               "description": "the central consumer (persistent session, like the DMS) "
                                              "killed -9 and restarted 2 s later", "target": {"lost": 0},
                               "trials": trials})
                say(fault_line(faults[-1]))
            for autosave in autosave_intervals:
                losses, acked = [], []
                for _ in range(repetitions):
                    a, lost = h.autosave_kill9(autosave, 1, 3.0)
                    acked.append(a)
                    losses.append(lost)
                throughput = h.autosave_throughput(autosave, 1, 3000)
                sweep.append({"autosave_interval_s": autosave, "throughput_per_s": throughput, "lost": losses,
                              "acked": acked, "queued_for_s": 3.0})
                say(f"  dc-broker-kill9, autosave {autosave:>4} s: lost {losses} of {acked} queued; "
                    f"QoS 1 throughput {throughput:.0f} msg/s")
        finally:
            h.procs.stop()
    if include_field:
        trials = [_field_broker_kill9(pki, certs, say) for _ in range(repetitions)]
        faults.append({"name": "field-broker-kill9", "qos": 1, "client": "tuned",
                       "description": "field delivery broker kill -9 (non-persistent), restarted; time until "
                                      "the tablet displays the data centre's diagram again",
                       "target": None, "trials": trials})
    result: RecoveryResult = {
        "schema": RESULT_SCHEMA, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "conditions": {"backend": "local", "repetitions": repetitions, "message_rate_per_s": rate,
                       "payload_bytes": payload_bytes, "tls_version": "TLSv1.2+ (mutual)",
                       "client": f"paho-mqtt, MQTT v5; tuned reconnect {TUNED[0]}-{TUNED[1]} s, "
                                 f"paho default {PAHO_DEFAULT_RECONNECT_S[0]:g}-{PAHO_DEFAULT_RECONNECT_S[1]:g} s; "
                                 "testbed.transport.reliable.ReliableClient; QoS 2 producer with a session "
                                 "(clean start 0, expiry 3600 s)",
                       "consumer": "separate process, clean_start false, session expiry 3600 s",
                       "autosave_sweep": "messages queued 3 s for an offline consumer, then kill -9",
                       "partition": "field <-> data-centre partitions need the docker backend (fmb run --backend "
                                    "docker and tests/test_docker.py); not in this local benchmark"},
        "faults": faults, "autosave_sweep": sweep,
        "environment": environment(bench_topology(root, 1, (1, 2)), None, "local"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-recovery.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def fault_line(fault: RecoveryFault) -> str:
    """One fault's trials summarised on one line, as the benchmark prints them while it runs."""
    t = fault["trials"]

    def worst(key: RecoveryTime) -> str:
        values = [v for x in t if (v := x.get(key)) is not None]
        return f"{max(values):.3f}" if values else "-"

    return (f"  {fault['name']} QoS {fault['qos']} ({fault['client']}): worst detect {worst('detect_s')} s, "
            f"reconnect {worst('reconnect_s')} s, whole {worst('whole_s')} s; lost {sum(x['lost'] for x in t)}, "
            f"duplicated {sum(x['duplicated'] for x in t)} over {len(t)} trials")


def summary(result: RecoveryResult) -> str:
    return "recovery benchmark\n" + recovery_markdown(result)
