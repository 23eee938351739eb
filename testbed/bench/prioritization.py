"""``fmb bench prioritization``: does a segregated control plane keep commands fast under flood?

A flood of ``BenchFloodProfile`` messages (C ``mosquitto_pub`` processes, payload size and QoS
configurable) hits the delivery plane at stepped rates, up to and past what one broker can take,
while commands go at a steady rate to a responder on the control plane and their round trip
(command publish -> acknowledgement received) is recorded. Three configurations, same rates,
same run:

* ``segregated``: the control plane has a broker of its own (as the testbed is built);
* ``shared``: both planes on one broker;
* ``segregated+priority``: segregated, and the delivery plane's processes (broker, flood
  publishers and subscriber) run at nice +15 and, on a machine with two cores or more, pinned
  to the last core while the control plane (broker, responder, commander) is pinned to the
  others: the scheduler then favours the control plane (no root needed).

Everything runs on loopback over mutual TLS with the project's PKI, on brokers configured by
the same generator as the testbed's (``brokers.mosquitto``), with nothing on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from brokers.mosquitto import render_acl
from testbed.backends.environment import environment
from testbed.backends.processes import ProcessRecord
from testbed.bench.common import Placement, Processes, bench_topology, start_broker
from testbed.core.errors import TestbedError
from testbed.core.ports import free_port
from testbed.core.results import (
    PrioritizationConditions,
    PrioritizationControl,
    PrioritizationHeadline,
    PrioritizationResult,
    PrioritizationRow,
    PrioritizationTargets,
)
from testbed.core.stats import percentiles, rounded
from testbed.core.topics import topic
from testbed.core.topology import Topology
from testbed.core.waiting import WaitTimeout, wait_until
from testbed.security.pki import PKI
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect

__all__ = ["CONFIGS", "RESULT_SCHEMA", "run_prioritization", "summary"]

RESULT_SCHEMA: Final = "fmb.bench-prioritization/1"  # the shape: testbed.core.results.PrioritizationResult
CONFIGS = ("segregated", "shared", "segregated+priority")
FLOOD_NICE = 15
ACK_TIMEOUT_S = 2.0


def _placement(config: str) -> tuple[Placement, Placement]:
    """(control-plane placement, delivery-plane placement) of a configuration."""
    if config != "segregated+priority":
        return {}, {}
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {}, {"nice": FLOOD_NICE}
    return {"cpus": set(cpus[:-1])}, {"nice": FLOOD_NICE, "cpus": {cpus[-1]}}


@dataclasses.dataclass
class _Setup:
    control: Endpoint
    delivery: Endpoint
    procs: list[ProcessRecord]


def _start_brokers(config: str, topology: Topology, pki: PKI, work: Path, procs: Processes) -> _Setup:
    """The brokers of one configuration, ready to accept connections."""
    delivery, control = topology.broker("bench-delivery"), topology.broker("bench-control")
    control_place, delivery_place = _placement(config)
    # One broker carries both planes when shared: it gets both planes' rights.
    extra = render_acl(topology, control) if config == "shared" else ""
    d_proc, d = start_broker(procs, topology, delivery, pki, work / config / delivery.name, extra,
                             **delivery_place)
    if config == "shared":
        return _Setup(control=d, delivery=d, procs=[d_proc])
    c_proc, c = start_broker(procs, topology, control, pki, work / config / control.name, **control_place)
    return _Setup(control=c, delivery=d, procs=[d_proc, c_proc])


class _Commander:
    """Publishes commands at a steady rate and times each until its acknowledgement arrives."""

    def __init__(self, identity: TLSIdentity, endpoint: Endpoint, root: str, qos: int, target: str) -> None:
        self.qos = qos
        self.sent: dict[int, int] = {}  # seq -> perf_counter_ns at publish
        self.rtts: dict[int, float] = {}  # seq -> round trip, ms
        self.lock = threading.Lock()
        self.command_topic = topic(root, "BenchCommandProfile", target)
        subscribed = threading.Event()

        def on_message(c: Any, u: Any, msg: Any) -> None:
            now = time.perf_counter_ns()
            seq = int(msg.payload.split(b",", 1)[0])
            with self.lock:
                if seq in self.sent and seq not in self.rtts:
                    self.rtts[seq] = (now - self.sent[seq]) / 1e6

        def on_connect(c: Any) -> None:
            c.on_subscribe = lambda *a: subscribed.set()
            c.subscribe(topic(root, "BenchAckProfile", target), qos)

        self.client = connect(f"bench-commander-{os.getpid()}", identity, endpoint, on_message=on_message,
                              on_connect=on_connect)
        if not subscribed.wait(10):
            raise TestbedError("the benchmark commander could not subscribe to acknowledgements")
        self.seq = 0

    def send(self) -> None:
        self.seq += 1
        with self.lock:
            self.sent[self.seq] = time.perf_counter_ns()
        self.client.publish(self.command_topic, f"{self.seq},{'c' * 64}".encode(), self.qos)

    def window(self, rate: float, seconds: float) -> PrioritizationControl:
        """Send at ``rate`` for ``seconds``; the round trips of this window (ms)."""
        first = self.seq + 1
        period = 1.0 / rate
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.send()
        last = self.seq

        def acked() -> bool:
            with self.lock:
                return all(s in self.rtts for s in range(first, last + 1))

        with contextlib.suppress(WaitTimeout):  # those still unacknowledged are counted lost
            wait_until(acked, ACK_TIMEOUT_S, interval_s=0.01, what=f"acknowledgements of commands {first} to {last}")
        with self.lock:
            samples = [self.rtts[s] for s in range(first, last + 1) if s in self.rtts]
        lost = (last - first + 1) - len(samples)
        counts: PrioritizationControl = {"sent": last - first + 1, "acked": len(samples),
                                         "unacked_within_s": ACK_TIMEOUT_S, "lost": lost}
        return {**counts, **rounded(percentiles(samples), 4)} if samples else counts

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _flood(procs: Processes, pki: PKI, endpoint: Endpoint, root: str, rate: float | None, seconds: float,
           payload_bytes: int, qos: int, publishers: int, place: Placement,
           tag: str) -> list[ProcessRecord]:
    """Start ``publishers`` mosquitto_pub processes offering ``rate`` msg/s in all (None: as fast as they can)."""
    client = pki.client("bench")
    base = ["mosquitto_pub", "-V", "5", "-h", endpoint.host, "-p", str(endpoint.port), "--cafile",
            str(pki.ca_cert), "--cert", str(client.cert), "--key", str(client.key), "-q", str(qos),
            "-m", "f" * payload_bytes]
    started = []
    for i in range(publishers):
        if rate is None:
            count, delay = 10**9, 0.0
        else:
            count, delay = int(rate * seconds / publishers) + 1, publishers / rate
        argv = base + ["-i", f"flood-{tag}-{i}", "-t", topic(root, "BenchFloodProfile", f"flood-{i}"),
                       "--repeat", str(count), "--repeat-delay", f"{delay:.6f}"]
        started.append(procs.start(f"flood-{tag}-{i}", argv, **place))
    return started


def run_prioritization(pki: PKI, root: str, rates: list[float | None], seconds: float, settle_s: float,
                       command_rate: float, payload_bytes: int, flood_qos: int, command_qos: int,
                       publishers: int, out: Path, configs: tuple[str, ...] = CONFIGS,
                       progress: Callable[[str], None] | None = None) -> PrioritizationResult:
    """The whole benchmark; writes ``out/bench-prioritization.json`` and returns it."""
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            raise TestbedError(f"{tool} is not installed: run `sudo apt-get install mosquitto-clients`")
    topology = bench_topology(root, command_qos, (free_port(), free_port()))
    pki.init({b.name: [] for b in topology.brokers}, ["bench"])
    identity = TLSIdentity(pki.ca_cert, pki.client("bench").cert, pki.client("bench").key)
    results: dict[str, list[PrioritizationRow]] = {}
    tls_version = None
    with tempfile.TemporaryDirectory(prefix="fmb-bench-prio-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        try:
            for config in configs:
                setup = _start_brokers(config, topology, pki, work, procs)
                control_place, delivery_place = _placement(config)
                own_cpus = os.sched_getaffinity(0)
                if control_place.get("cpus"):
                    os.sched_setaffinity(0, control_place["cpus"])  # the commander is this process
                responder = procs.start(f"{config}-responder", [sys.executable, "-m", "testbed.bench.echo"], {
                    "FMB_CONTROL": f"{setup.control.host}:{setup.control.port}", "FMB_CA": str(pki.ca_cert),
                    "FMB_CERT": str(identity.cert), "FMB_KEY": str(identity.key), "FMB_ROOT": root,
                    "FMB_QOS": str(command_qos), "FMB_DEVICE_ID": "responder-1"},
                    **control_place)
                commander = _Commander(identity, setup.control, root, command_qos, "responder-1")
                flood_log = work / f"{config}-flood-sub.out"
                subscriber = procs.start(f"{config}-flood-sub", [
                    "mosquitto_sub", "-V", "5", "-h", setup.delivery.host, "-p", str(setup.delivery.port),
                    "--cafile", str(pki.ca_cert), "--cert", str(identity.cert), "--key", str(identity.key),
                    "-q", str(flood_qos), "-i", f"flood-sub-{config}", "-t", topic(root, "BenchFloodProfile", "+"),
                    "-F", "x"], stdout=flood_log, **delivery_place)
                try:
                    _wait_for_ack(commander)
                    if tls_version is None:
                        sock = commander.client.socket()
                        tls_version = sock.version() if sock is not None and hasattr(sock, "version") else None
                    rows: list[PrioritizationRow] = []
                    for rate in rates:
                        flood = [] if rate == 0 else _flood(
                            procs, pki, setup.delivery, root, rate, seconds + settle_s + 1, payload_bytes,
                            flood_qos, publishers, delivery_place, f"{config}-{rate}")
                        time.sleep(settle_s if flood else 0.2)
                        before, t0 = _size(flood_log), time.monotonic()
                        control = commander.window(command_rate, seconds)
                        achieved = (_size(flood_log) - before) / 2 / (time.monotonic() - t0)  # "x\n" a message
                        procs.stop(flood)
                        rows.append({"offered_rate": rate if rate is not None else "max",
                                     "achieved_rate": round(achieved, 1), "control_ms": control})
                        if progress:
                            progress(f"  {config:20} flood {str(rate if rate is not None else 'max'):>6} msg/s: "
                                     f"delivered {achieved:8.0f} msg/s, control p50 {control.get('p50', 0):.2f} "
                                     f"p99 {control.get('p99', 0):.2f} ms, unacked {control['lost']}")
                        time.sleep(0.5)  # let the broker drain before the next step
                    results[config] = rows
                finally:
                    commander.close()
                    procs.stop([responder, subscriber, *setup.procs])
                    os.sched_setaffinity(0, own_cpus)
        finally:
            procs.stop()
    result = _summarise(results, rates, PrioritizationConditions(
        rates=["max" if r is None else r for r in rates], seconds_per_step=seconds, settle_s=settle_s,
        command_rate=command_rate, command_qos=command_qos, flood_qos=flood_qos, payload_bytes=payload_bytes,
        flood_publishers=publishers, flood_client=_mosquitto_pub_version(), flood_nice_priority=FLOOD_NICE,
        priority_placement={k: {kk: sorted(vv) if isinstance(vv, set) else vv for kk, vv in v.items()}
                            for k, v in zip(("control", "delivery"), _placement("segregated+priority"), strict=True)},
        command_payload_bytes=len(b"1," + b"c" * 64), tls_version=tls_version,
        commander="paho-mqtt, MQTT v5, TCP_NODELAY; responder a separate process",
        placement="all processes on this machine, loopback"), topology, tls_version)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-prioritization.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _summarise(results: dict[str, list[PrioritizationRow]], rates: list[float | None],
               conditions: PrioritizationConditions, topology: Topology,
               tls_version: str | None) -> PrioritizationResult:
    def p99(config: str, index: int) -> float | None:
        rows = results.get(config)
        return rows[index]["control_ms"].get("p99") if rows else None

    top = len(rates) - 1
    headline: dict[str, PrioritizationHeadline] = {}
    for config in results:
        idle, sat = p99(config, 0), p99(config, top)
        headline[config] = {"idle_p99_ms": idle, "saturation_p99_ms": sat,
                            "saturation_over_idle": round(sat / idle, 2) if idle and sat else None,
                            "saturation_achieved_rate": results[config][top]["achieved_rate"]}
    seg, shared = p99("segregated", top), p99("shared", top)
    ratio = round(shared / seg, 2) if seg and shared else None
    over_idle = headline["segregated"]["saturation_over_idle"] if "segregated" in headline else None
    targets: PrioritizationTargets = {
        "segregated_saturation_over_idle_max": 2.0,
        "segregated_met": bool(over_idle and over_idle <= 2.0),
        "shared_over_segregated_min": 10.0,
        "shared_over_segregated": ratio,
        "shared_over_segregated_met": bool(ratio and ratio >= 10.0),
    }
    return {"schema": RESULT_SCHEMA, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "conditions": conditions, "results": results, "headline": headline, "targets": targets,
            "environment": environment(topology, tls_version, "local")}


def _wait_for_ack(commander: _Commander) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        window = commander.window(20, 0.25)
        if window["acked"]:
            return
    raise TestbedError("the benchmark responder never acknowledged a command")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mosquitto_pub_version() -> str | None:
    try:
        out = subprocess.run(["mosquitto_pub", "--help"], capture_output=True, text=True, timeout=5)
        lines = (out.stdout or out.stderr).splitlines()
        return next((ln.strip() for ln in lines if "version" in ln), lines[0].strip())
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def summary(result: PrioritizationResult) -> str:
    lines = ["prioritization benchmark: control round trip (ms) under a delivery-plane flood",
             f"{'config':22}{'flood offered':>14}{'delivered':>11}{'ctl p50':>9}{'ctl p99':>9}{'unacked':>9}"]
    for config, rows in result["results"].items():
        for row in rows:
            c = row["control_ms"]
            lines.append(f"{config:22}{str(row['offered_rate']):>14}{row['achieved_rate']:>11.0f}"
                         f"{c.get('p50', float('nan')):>9.2f}{c.get('p99', float('nan')):>9.2f}{c['lost']:>9}")
    t = result["targets"]
    seg = result["headline"]["segregated"]["saturation_over_idle"] if "segregated" in result["headline"] else None
    lines.append(f"shared / segregated p99 at saturation: {t['shared_over_segregated']} "
                 f"(target >= 10: {'met' if t['shared_over_segregated_met'] else 'NOT met'}); "
                 f"segregated saturation/idle p99: {seg} (target <= 2: {'met' if t['segregated_met'] else 'NOT met'})")
    return "\n".join(lines)
