"""``fmb bench recovery --backend docker``: field <-> data-centre partitions on the Compose bus.

During a steady QoS 1 stream crossing the bridge in each direction at once, the field site is
cut off from the data centre (:meth:`DockerFaults.partition`: its brokers leave the ``dc``
network) for 5 s and for 30 s, then healed. The two streams:

* field -> DC: ``MeterReadingProfile`` as the meter (its own certificate, borrowed from its
  volume) on the field delivery broker; read by the ``recorder`` on the data-centre one;
* DC -> field: ``SingleLineDiagramProfile`` as the DMS on the data-centre delivery broker;
  read by the ``recorder`` on the field one.

Payloads are valid profile messages (120 V, normal: nothing for the DMS to regulate) that
carry a ``bench_run`` tag and a sequence number in their body; the consumers keep only their
own run's messages and hold persistent sessions. The producers' and consumers' own
connections (published ports on the access networks) stay up: what breaks is the bridge.

Per trial and direction, in the shape of ``fmb.bench-recovery/1``: ``detect_s`` is None (no
client sees the cut: the bridge's brokers do, on their keepalive), ``reconnect_s`` = heal ->
first message through the bridge, ``whole_s`` = heal -> the consumer holds every acknowledged
message up to one published after the heal, ``lost`` / ``duplicated`` against the sequence.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brokers.mosquitto import BRIDGE_KEEPALIVE_S, BRIDGE_RESTART_S
from testbed.backends.environment import environment
from testbed.backends.faults import DockerFaults
from testbed.bench.recovery import RESULT_SCHEMA, TUNED, Producer, fault_line, whole_at
from testbed.core.errors import BenchmarkError
from testbed.core.payloads import encode
from testbed.core.results import RecoveryFault, RecoveryResult, RecoveryTrial
from testbed.core.stats import count_loss_and_duplicates
from testbed.core.topics import topic
from testbed.core.waiting import WaitTimeout, wait_until
from testbed.transport.mqtt import TLSIdentity, connect

if TYPE_CHECKING:
    from testbed.backends.compose import DockerBus

__all__ = ["run_partition_recovery"]

DIRECTIONS = ("field->dc", "dc->field")


class _Consumer:
    """A persistent-session subscriber that records ``(seq, receive ns)`` of its run's messages."""

    def __init__(self, identity: TLSIdentity, endpoint: Any, name: str, run: str) -> None:
        self.records: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()

        def on_message(c: Any, u: Any, msg: Any) -> None:
            now = time.time_ns()
            try:
                body = json.loads(msg.payload)["body"]
            except (ValueError, KeyError, TypeError):
                return
            if isinstance(body, dict) and body.get("bench_run") == run:
                with self.lock:
                    self.records.append((int(body["bench_seq"]), now))

        def on_connect(c: Any) -> None:
            c.on_subscribe = lambda *a: subscribed.set()
            c.subscribe(name, 1)

        self.client = connect(f"partition-consumer-{run}-{secrets.token_hex(3)}", identity, endpoint,
                              on_message=on_message, on_connect=on_connect, clean_start=False,
                              session_expiry_s=600, reconnect_s=TUNED)
        if not subscribed.wait(10):
            raise BenchmarkError("the partition benchmark's consumer could not subscribe in 10 s: check that "
                                 f"{endpoint.host}:{endpoint.port} is up and accepts the recorder identity")

    def snapshot(self) -> list[tuple[int, int]]:
        with self.lock:
            return list(self.records)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class _Stream:
    def __init__(self, bus: DockerBus, direction: str, rate: float, run: str) -> None:
        topology = bus.topology
        field = topology.first((s.name for s in topology.sites if s.bridge_to), "field site bridged to a data centre")
        dc = topology.site(field).bridge_to
        assert dc is not None  # the field site is the one with a bridge
        if direction == "field->dc":
            device = topology.first((d for d in topology.devices if d.role == "meter" and d.site == field),
                                    f"meter at {field}")
            profile, body = "MeterReadingProfile", {"voltage_v": 120.0, "reason": "periodic"}
            src, dst = topology.broker_for(field, "delivery"), topology.broker_for(dc, "delivery")
            mrid = device.id
        else:
            device = topology.first((d for d in topology.devices if d.role == "dms"), "DMS")
            # A diagram of a feeder of the field site: the DMS may publish it, the bridge carries it there.
            feeder = topology.first((f.id for f in topology.feeders if f.site == field), f"feeder at {field}")
            profile, body = "SingleLineDiagramProfile", {"feeder": feeder, "version": 0, "range_a": "unknown",
                                                         "meters": {}}
            src, dst = topology.broker_for(dc, "delivery"), topology.broker_for(field, "delivery")
            mrid = feeder
        name = topic(topology.root, profile, mrid)
        tag = f"{run}-{direction}"

        def payload(seq: int) -> bytes:
            return encode(profile, device.id, seq, {**body, "bench_run": tag, "bench_seq": seq})

        self.direction, self.rate = direction, rate
        self.consumer = _Consumer(bus.identity("recorder"), bus.endpoint(dst.name), name, tag)
        self.producer = Producer(bus.borrow_identity(device.id), bus.endpoint(src.name), name, 1, 0, TUNED,
                                  payload=payload)

    def await_flow(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.producer.publish_one()
            time.sleep(0.1)
            got = self.consumer.snapshot()
            if got:
                self.producer.first = min(s for s, _ in got)
                return
        raise BenchmarkError(f"nothing crossed the bridge {self.direction} in {timeout_s:g} s before the partition: "
                             "check the bridge's brokers (`docker compose logs`)")

    def whole(self) -> bool:
        got = {s for s, _ in self.consumer.snapshot()}
        with self.producer.lock:
            acked = {s for s in self.producer.acked if s >= self.producer.first}
        return acked <= got

    def measure(self, fault_ns: int, heal_ns: int) -> RecoveryTrial:
        records = [(s, t) for s, t in self.consumer.snapshot() if s >= self.producer.first]
        acked = sorted(s for s in self.producer.acked if s >= self.producer.first)
        counts = count_loss_and_duplicates(acked, [s for s, _ in records])
        lost = set(counts["lost_seqs"]) if counts["lost"] <= 100 else set(acked) - {s for s, _ in records}
        whole = whole_at(records, acked, self.producer.sent_ns, heal_ns, lost)
        first_after = min((t for _, t in records if t >= heal_ns), default=None)
        held = sum(1 for s in acked if fault_ns <= self.producer.sent_ns[s] < heal_ns)
        return {"detect_s": None,
                "reconnect_s": round((first_after - heal_ns) / 1e9, 4) if first_after else None,
                "whole_s": round((whole - heal_ns) / 1e9, 4) if whole else None,
                "lost": counts["lost"], "duplicated": counts["duplicated"], "acked": len(acked),
                "published_during_partition": held}

    def close(self) -> None:
        self.producer.stop.set()
        self.producer.close()
        self.consumer.close()


def _await_whole(streams: list[_Stream], timeout_s: float) -> None:
    """Wait up to ``timeout_s`` until every stream's consumer holds all its acknowledged messages
    (a stream that does not by then is measured as it is)."""
    with contextlib.suppress(WaitTimeout):
        wait_until(lambda: all(s.whole() for s in streams), timeout_s, interval_s=0.1,
                   what="every acknowledged message across the healed bridge")


def _trial(bus: DockerBus, faults: DockerFaults, site: str, seconds: float, rate: float,
           settle_s: float, whole_timeout_s: float) -> dict[str, RecoveryTrial]:
    run = f"{os.getpid()}-{secrets.token_hex(3)}"
    streams: list[_Stream] = []
    try:
        for direction in DIRECTIONS:
            streams.append(_Stream(bus, direction, rate, run))
        for s in streams:
            s.await_flow()
            s.producer.run(rate)
        time.sleep(settle_s)
        fault_ns = time.time_ns()
        faults.partition(site)
        try:
            time.sleep(seconds)
        finally:
            faults.heal(site)
        heal_ns = time.time_ns()
        time.sleep(1.0)  # at least one message published after the heal
        _await_whole(streams, whole_timeout_s)
        for s in streams:
            s.producer.finish(timeout_s=10)
        _await_whole(streams, 10)
        return {s.direction: s.measure(fault_ns, heal_ns) for s in streams}
    finally:
        for s in streams:
            s.close()


def run_partition_recovery(bus: DockerBus, durations: list[float], repetitions: int, rate: float, out: Path,
                           progress: Callable[[str], None] | None = None, settle_s: float = 2.0,
                           whole_timeout_s: float = 60.0) -> RecoveryResult:
    """Partition the field site for each duration, ``repetitions`` times; writes
    ``out/bench-recovery.json`` (``fmb.bench-recovery/1``, backend docker) and returns it."""
    say = progress or (lambda line: None)
    site = bus.topology.first((s.name for s in bus.topology.sites if s.bridge_to),
                              "field site bridged to a data centre")
    faults = DockerFaults(bus.project, bus.topology)
    entries: list[RecoveryFault] = []
    for seconds in durations:
        trials: dict[str, list[RecoveryTrial]] = {d: [] for d in DIRECTIONS}
        for _ in range(repetitions):
            for direction, trial in _trial(bus, faults, site, seconds, rate, settle_s, whole_timeout_s).items():
                trials[direction].append(trial)
        for direction in DIRECTIONS:
            entries.append({"name": f"partition-{seconds:g}s", "qos": 1, "client": "tuned", "direction": direction,
                            "description": f"{site} site cut off from the data centre for {seconds:g} s (its "
                                           f"brokers leave the dc network), then healed; a steady QoS 1 stream "
                                           f"{direction} across the delivery bridge",
                            "target": {"lost": 0}, "trials": trials[direction]})
            say(fault_line(entries[-1]) + f" [{direction}]")
    result: RecoveryResult = {
        "schema": RESULT_SCHEMA, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "conditions": {"backend": "docker", "repetitions": repetitions, "message_rate_per_s": rate,
                       "partitions_s": durations, "qos": 1, "tls_version": "TLSv1.2+ (mutual)",
                       "client": f"paho-mqtt, MQTT v5; tuned reconnect {TUNED[0]}-{TUNED[1]} s",
                       "consumer": "recorder identity, clean_start false, session expiry 600 s, in the harness",
                       "partition": "DockerFaults.partition: the field brokers disconnected from the dc network; "
                                    f"bridges: cleansession false, keepalive {BRIDGE_KEEPALIVE_S} s, "
                                    f"restart_timeout {BRIDGE_RESTART_S} {BRIDGE_RESTART_S}",
                       "detect": "not measured: no client's own connection breaks in a partition",
                       "streams": "field->dc MeterReadingProfile as the meter; dc->field SingleLineDiagramProfile "
                                  "as the DMS; both at the rate above, at the same time"},
        "faults": entries, "autosave_sweep": [],
        "environment": environment(bus.topology, None, "docker"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-recovery.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
