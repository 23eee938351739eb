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

import dataclasses
import datetime as dt
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from brokers.mosquitto import render_acl
from testbed.backends.environment import environment
from testbed.backends.processes import ProcessRecord
from testbed.bench.common import (
    Commander,
    Placement,
    Processes,
    bench_topology,
    file_size,
    mosquitto_pub_version,
    sent_count,
    start_broker,
    start_flood,
    start_flood_subscriber,
    start_responder,
    wait_for_ack,
)
from testbed.bench.scaleprobes import ProcessCpu
from testbed.core.errors import TestbedError
from testbed.core.ports import free_port
from testbed.core.results import (
    PrioritizationConditions,
    PrioritizationHeadline,
    PrioritizationResult,
    PrioritizationRow,
    PrioritizationTargets,
)
from testbed.core.topology import Topology
from testbed.security.pki import PKI
from testbed.transport.mqtt import Endpoint, TLSIdentity

__all__ = ["CONFIGS", "RESULT_SCHEMA", "run_prioritization", "summary"]

RESULT_SCHEMA: Final = "fmb.bench-prioritization/1"  # the shape: testbed.core.results.PrioritizationResult
CONFIGS = ("segregated", "shared", "segregated+priority")
FLOOD_NICE = 15


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
                responder = start_responder(procs, f"{config}-responder", setup.control, identity, root,
                                            command_qos, control_place)
                commander = Commander(identity, setup.control, root, command_qos, "responder-1")
                flood_log = work / f"{config}-flood-sub.out"
                subscriber = start_flood_subscriber(procs, f"{config}-flood-sub", setup.delivery, identity, root,
                                                    flood_qos, flood_log, delivery_place)
                try:
                    wait_for_ack(commander)
                    if tls_version is None:
                        sock = commander.client.socket()
                        tls_version = sock.version() if sock is not None and hasattr(sock, "version") else None
                    rows: list[PrioritizationRow] = []
                    for rate in rates:
                        flood = [] if rate == 0 else start_flood(
                            procs, pki, setup.delivery, root, rate, seconds + settle_s + 1, payload_bytes,
                            flood_qos, publishers, delivery_place, f"{config}-{rate}", count_sent=True)
                        time.sleep(settle_s if flood else 0.2)
                        offsets: dict[int, tuple[int, int]] = {}
                        groups = {"publishers": [r.pid for r in flood], "flood_subscriber": [subscriber.pid],
                                  "brokers": [r.pid for r in setup.procs]}
                        cpu = ProcessCpu({name: functools.partial(list, pids) for name, pids in groups.items()})
                        cpu.start()
                        before, sent0, t0 = file_size(flood_log), sent_count(flood, offsets), time.monotonic()
                        control = commander.window(command_rate, seconds)
                        elapsed = time.monotonic() - t0
                        used = cpu.result()
                        achieved = (file_size(flood_log) - before) / 2 / elapsed  # "x\n" a message
                        sent = (sent_count(flood, offsets) - sent0) / elapsed
                        procs.stop(flood)
                        rows.append({"offered_rate": rate if rate is not None else "max",
                                     "achieved_rate": round(achieved, 1), "control_ms": control,
                                     "sent_rate": round(sent, 1), "cpu": used})
                        if progress:
                            progress(f"  {config:20} flood {str(rate if rate is not None else 'max'):>6} msg/s: "
                                     f"sent {sent:8.0f}, delivered {achieved:8.0f} msg/s, "
                                     f"control p50 {control.get('p50', 0):.2f} p99 {control.get('p99', 0):.2f} ms, "
                                     f"unacked {control['lost']}")
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
        flood_publishers=publishers, flood_client=mosquitto_pub_version(), flood_nice_priority=FLOOD_NICE,
        priority_placement={k: {kk: sorted(vv) if isinstance(vv, set) else vv for kk, vv in v.items()}
                            for k, v in zip(("control", "delivery"), _placement("segregated+priority"), strict=True)},
        command_payload_bytes=len(b"1," + b"c" * 64), tls_version=tls_version,
        commander="paho-mqtt, MQTT v5, TCP_NODELAY; responder a separate process",
        placement="all processes on this machine, loopback",
        flood_counted="sent_rate: PUBLISH packets in the publishers' -d logs over the window (each logs a line "
                      "per message, a cost the earlier results did not have)"), topology, tls_version)
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
