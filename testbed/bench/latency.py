"""``fmb bench latency``: Appendix A end to end against one plain broker hop, same brokers.

After a warm-up, the scenario is repeated and its end-to-end latency recorded; then, on the
same running brokers, a plain publish -> broker -> subscriber hop is timed (one publisher, one
subscriber, one message in flight, TLS, the topology's QoS, a payload the size of a meter
reading). The overhead ratio is end-to-end p50 / (broker traversals on the critical path x
one-hop p50): what the devices, the feeder model and the harness add to the bus itself.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path
from typing import Any

from testbed.environment import environment
from testbed.mqtt import connect, publish_properties
from testbed.payloads import encode
from testbed.runner import Bus, ScenarioRunner
from testbed.scenario import Scenario
from testbed.stats import percentiles
from testbed.topics import topic

__all__ = ["RESULT_SCHEMA", "critical_path_traversals", "one_hop", "run_latency"]

RESULT_SCHEMA = "fmb.bench-latency/1"
TARGET_RATIO = 1.3


def one_hop(bus: Bus, count: int, broker: str = "field-control", warmup: int = 50) -> dict[str, Any]:
    """Time ``count`` sequential publish -> subscriber hops on ``broker`` (ms)."""
    t = bus.topology
    name = topic(t.root, "SupplyControlProfile", "bench-probe")  # no device has this mRID
    received = threading.Event()
    stamps: dict[str, int] = {}

    def on_message(c: Any, u: Any, msg: Any) -> None:
        stamps["recv"] = time.perf_counter_ns()
        received.set()

    subscribed = threading.Event()
    sub = connect(f"bench-sub-{time.monotonic_ns() % 10**9}", bus.identity("recorder"), bus.endpoint(broker),
                  on_message=on_message,
                  on_connect=lambda c: (setattr(c, "on_subscribe", lambda *a: subscribed.set()),
                                        c.subscribe(name, t.qos)))
    pub = connect(f"bench-pub-{time.monotonic_ns() % 10**9}", bus.identity("operator"), bus.endpoint(broker))
    try:
        if not subscribed.wait(10):
            raise TimeoutError("the one-hop subscriber could not subscribe")
        samples = []
        payload = encode("SupplyControlProfile", "operator", 0, {"setpoint_v": 120.0})
        for i in range(warmup + count):
            received.clear()
            sent = time.perf_counter_ns()
            pub.publish(name, payload, t.qos, properties=publish_properties(None))
            if not received.wait(5):
                raise TimeoutError(f"one-hop message {i} not received in 5 s")
            if i >= warmup:
                samples.append((stamps["recv"] - sent) / 1e6)
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()
    return {"broker": broker, "payload_bytes": len(payload), "count": count, "warmup": warmup,
            "ms": percentiles(samples, (50, 90, 99))}


def critical_path_traversals(bus: Bus, scenario: Scenario, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Broker traversals from the trigger to the end, following each step's ``after`` link back.

    A step whose receivers sit at its publisher's site crosses one broker; one whose receivers
    sit at another site crosses two (the local broker and, over the bridge, the remote one).
    """
    t = bus.topology
    chain, n = [], len(steps)
    while n:
        chain.append(n)
        n = scenario.steps[n - 1].after
    chain.reverse()
    per_step = {}
    for n in chain:
        step = steps[n - 1]
        here = t.device(step["device"]).site
        crosses = any(t.device(r).site != here for r in step["receivers"])
        per_step[n] = 2 if crosses else 1
    return {"path": chain, "per_step": per_step, "total": sum(per_step.values())}


def run_latency(bus: Bus, scenario: Scenario, repeat: int, warmup: int, hops: int, out: Path,
                progress: Any = None) -> dict[str, Any]:
    """The whole benchmark; writes ``out/bench-latency.json`` and returns it."""
    with ScenarioRunner(bus, scenario) as runner:
        runner.run(warmup)
        scenario_result = runner.run(repeat, progress=progress)
        tls = runner.recorder.tls_version
    if not scenario_result["passed"]:
        raise RuntimeError(f"the scenario failed during the benchmark: {scenario_result['failure']}")
    hop = one_hop(bus, hops)
    traversals = critical_path_traversals(bus, scenario, scenario_result["steps"])
    e2e = scenario_result["e2e_stats"] if repeat > 1 else percentiles([scenario_result["e2e_ms"]])
    ratio = e2e["p50"] / (traversals["total"] * hop["ms"]["p50"])
    result = {
        "schema": RESULT_SCHEMA,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "conditions": {"scenario": scenario.name, "repetitions": repeat, "warmup_repetitions": warmup,
                       "one_hop_messages": hops, "qos": bus.topology.qos, "tls_version": tls,
                       "one_hop_payload_bytes": hop["payload_bytes"], "one_hop_broker": hop["broker"],
                       "client": "paho-mqtt, MQTT v5, TCP_NODELAY, one message in flight"},
        "scenario_e2e_ms": e2e,
        "scenario_hop_ms": scenario_result.get("hop_stats"),
        "one_hop_ms": hop["ms"],
        "critical_path": traversals,
        "overhead_ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "environment": environment(bus.topology, tls, "local"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-latency.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary(result: dict[str, Any]) -> str:
    c, e, h = result["conditions"], result["scenario_e2e_ms"], result["one_hop_ms"]
    return "\n".join([
        f"latency benchmark: {c['scenario']} x{c['repetitions']} (after {c['warmup_repetitions']} warm-up), "
        f"QoS {c['qos']}, {c['tls_version']}",
        f"  scenario end to end  p50 {e['p50']:.2f}  p90 {e['p90']:.2f}  p99 {e['p99']:.2f}  max {e['max']:.2f} ms",
        f"  one broker hop       p50 {h['p50']:.3f}  p90 {h['p90']:.3f}  p99 {h['p99']:.3f}  max {h['max']:.3f} ms "
        f"({c['one_hop_messages']} messages, {c['one_hop_payload_bytes']} B)",
        f"  critical path: steps {result['critical_path']['path']}, "
        f"{result['critical_path']['total']} broker traversals",
        f"  overhead ratio {result['overhead_ratio']:.2f} (target <= {result['target_ratio']}): "
        f"{'met' if result['meets_target'] else 'NOT met'}",
    ])
