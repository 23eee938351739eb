"""The scenario runner: restore the initial state, trigger, match the steps, report.

For each repetition the runner has the harness's ``operator`` identity publish the
scenario's initial commands and waits for the fresh statuses that confirm them; it then sends
the trigger through the tablet UI's input, and watches the recorder until every step has been
seen after the step it follows (by the publishers' timestamps, which follow causality), on the right plane,
with its predicate true, and the end condition holds; last it checks the final state. Step
times are publish times relative to the trigger's publish; the end-to-end time runs from the
trigger's publish to the moment the tablet displayed the final diagram.

The bus is whatever offers ``topology``, ``identity(name)``, ``endpoint(broker)`` and
``ui_socket(device)``: the local processes now, containers later. With a ``substation`` the
scenario's roles are played by that substation's devices (:class:`testbed.harness.cast.Cast`).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from testbed.backends.environment import environment
from testbed.core.errors import ScenarioError
from testbed.core.payloads import decode, encode, new_traceparent
from testbed.core.results import Repetition, RepetitionSpread, ScenarioEnd, ScenarioResultDoc, ScenarioStep
from testbed.core.scenario import Expectation, Scenario
from testbed.core.stats import percentiles, rounded
from testbed.core.topics import PROFILES, ROLES, topic
from testbed.core.topology import Topology
from testbed.harness.cast import Cast
from testbed.harness.recorder import Observation, Recorder
from testbed.reporting.text import summary_table
from testbed.security.signing import CommandSigner, SigningKeys
from testbed.transport.localsock import unix_request
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect, publish_properties

__all__ = ["RESULT_SCHEMA", "Bus", "ScenarioRunner"]

RESULT_SCHEMA: Final = "fmb.scenario-result/1"  # the shape: testbed.core.results.ScenarioResultDoc
LANE_ORDER = ("tablet", "supply", "meter", "dms", "capbank")


class Bus(Protocol):
    """What the runner needs of a running bus, whichever backend runs it."""

    topology: Topology

    def identity(self, name: str) -> TLSIdentity: ...
    def endpoint(self, broker: str) -> Endpoint: ...
    def ui_socket(self, device_id: str) -> Path: ...


@dataclass
class _Match:
    step: Expectation
    obs: Observation


class ScenarioRunner:
    """Runs one scenario on a running bus, as many times as asked."""

    def __init__(self, bus: Bus, scenario: Scenario, substation: str | None = None) -> None:
        self.bus = bus
        self.topology = bus.topology
        self.scenario = scenario
        self.cast = Cast.of(self.topology, substation)  # who plays the scenario's roles
        endpoints = {b.name: bus.endpoint(b.name) for b in self.topology.brokers}
        # On one substation of a large bus the recorder takes only the cast's and its feeders' topics
        # from the cast's sites: the other meters' readings would cost it more than the scenario does.
        narrow = substation is not None
        self.recorder = Recorder(
            self.topology, bus.identity("recorder"), endpoints, sites=self.cast.sites if narrow else None,
            topics_of=self.cast.topics_of(self.topology) if narrow else None)
        self._operator: dict[str, paho.Client] = {}
        # Starts at the time in microseconds: two runners on one bus (the Compose `scenario` and the
        # tablet's button, say) never reuse each other's numbers, and a trigger published under a
        # device's name never takes a number that device's own counter has, so the recorder, which
        # keys messages by (source, profile, seq), never merges two different messages.
        self._operator_seq = time.time_ns() // 1000
        pki = getattr(bus, "pki", None)
        key = SigningKeys(pki.directory).key_path("operator") if pki is not None else None
        self._signer = CommandSigner("operator", key) if key is not None and key.exists() else None

    def __enter__(self) -> ScenarioRunner:
        self.recorder.start()
        for site in self.topology.sites:
            if site.name not in self.cast.sites:
                continue
            broker = self.topology.broker_for(site.name, "control")
            self._operator[site.name] = connect(
                f"operator-{site.name}-{time.monotonic_ns() % 10**9}", self.bus.identity("operator"),
                self.bus.endpoint(broker.name))
        return self

    def __exit__(self, *exc: object) -> None:
        for c in self._operator.values():
            c.disconnect()
            c.loop_stop()
        self.recorder.stop()

    # -- one repetition -------------------------------------------------------------------------

    def restore(self, timeout_s: float = 15.0) -> None:
        """Bring the bus to the scenario's initial state, or raise ScenarioError."""
        start_ns = time.time_ns()
        for cmd in self.scenario.initial_commands:
            for device in self.cast.matching(cmd.device):
                self._operator_seq += 1
                payload = encode(cmd.profile, "operator", self._operator_seq, cmd.body)
                name = topic(self.topology.root, cmd.profile, device.id)
                signature = self._signer.properties(name, payload) if self._signer else None
                info = self._operator[device.site].publish(
                    name, payload, 1, properties=publish_properties(new_traceparent(), signature))
                info.wait_for_publish(5)
        reached = self.recorder.wait_for(lambda _: not self._unmet(start_ns), timeout_s, since=self.recorder.mark())
        if not reached:
            unmet = self._unmet(start_ns)
            raise ScenarioError(
                f"initial state not reached in {timeout_s:g} s: {'; '.join(unmet)} "
                "(are all devices running? see their logs under the state directory)")

    def _unmet(self, start_ns: int) -> list[str]:
        unmet = []
        for exp in self.scenario.initial_expect:
            for device in self.cast.matching(exp.device):
                last = self.recorder.latest(device.id, exp.profile)
                if last is None or (exp.fresh and last.decoded.ts_ns < start_ns) or not exp.matches(
                        last.decoded.body):
                    unmet.append(f"{device.id} {exp.profile} {exp.where}")
        return unmet

    def trigger(self) -> int:
        """Send the trigger; returns the publish time of the message that starts the scenario."""
        trig = self.scenario.trigger
        time.sleep(trig.delay_s)
        if trig.action == "publish":
            identity = self.cast.stand_in(self.topology, trig.device, trig.args["profile"])
            target = self.cast.stand_in(self.topology, trig.args["target"], trig.args["profile"])
            return self._publish_as(identity, {**trig.args, "target": target})
        devices = self.cast.matching(trig.device)
        if not devices:
            raise ScenarioError(f"no device {trig.device!r} in the topology to trigger")
        target = self.cast.stand_in(self.topology, str(trig.args["target"]), "SupplyControlProfile")
        request = {"op": trig.action, **trig.args, "target": target}
        # The Compose bus relays the operator's input inside the tablet's container (no root on this host
        # for the socket on its volume); elsewhere the harness opens the tablet's socket itself.
        relay = getattr(self.bus, "operator_request", None)
        try:
            if relay is not None:
                reply = relay(devices[0].id, request, 10.0)
            else:
                path = self.bus.ui_socket(devices[0].id)
                reply = unix_request(path, request, timeout_s=10)
        except OSError as e:
            raise ScenarioError(f"cannot reach the UI of {devices[0].id}: {e}") from None
        if not reply.get("ok"):
            raise ScenarioError(f"{devices[0].id} refused the trigger: {reply.get('error')}")
        return int(reply["ts_ns"])

    def _publish_as(self, identity: str, args: dict[str, Any]) -> int:
        """Publish with ``identity``'s own certificate (and signing key, unless told to forge or
        not to sign) where that identity connects (a device: its own site's broker; a harness
        identity: the target's), ``repeat`` times the same bytes."""
        profile, target = args["profile"], args["target"]
        publisher = next((d for d in self.topology.devices if d.id == identity), None)
        device = next((d for d in self.topology.devices if d.id == target), None)
        site = (publisher or device or self.topology.devices[0]).site
        broker = self.topology.broker_for(site, PROFILES[profile].plane)
        self._operator_seq += 1
        payload = encode(profile, identity, self._operator_seq, args["body"])
        name = topic(self.topology.root, profile, target)
        signature = None
        # First: on the Compose bus this copies a device's credential (certificate, key and its signing key)
        # out of its volume, which the signature below needs too.
        tls = self.bus.identity(identity)
        if PROFILES[profile].kind == "command" and args.get("sign", "valid") != "none":
            if args.get("sign") == "forged":  # right claim, wrong key: what a stolen credential can do
                sig = Ed25519PrivateKey.generate().sign(name.encode() + b"\n" + payload)
                signature = [("signer", identity), ("sig", base64.b64encode(sig).decode())]
            else:
                pki = getattr(self.bus, "pki", None)
                key = SigningKeys(pki.directory).key_path(identity) if pki else None
                if key is None or not key.exists():
                    raise ScenarioError(f"{identity} has no signing key to sign the trigger with")
                signature = CommandSigner(identity, key).properties(name, payload)
        client = connect(f"trigger-{identity}-{time.monotonic_ns() % 10**9}", tls, self.bus.endpoint(broker.name))
        try:
            for _ in range(int(args.get("repeat", 1))):
                info = client.publish(name, payload, 1, properties=publish_properties(new_traceparent(), signature))
                info.wait_for_publish(5)
        finally:
            client.disconnect()
            client.loop_stop()
        return decode(payload).ts_ns

    def run_once(self, rep: int = 1) -> Repetition:
        """Restore, trigger and check one repetition; the result as a dict."""
        self.restore()
        mark = self.recorder.mark()
        t0 = self.trigger()
        progress = self.recorder.wait_for(lambda obs: self._progress(obs, t0), self.scenario.timeout_s,
                                          since=mark)
        matched, end = progress or self._last_progress  # the partial match on a time-out
        failure = None
        if len(matched) < len(self.scenario.steps):
            step = self.scenario.steps[len(matched)]
            failure = (f"step {len(matched) + 1} ({step.name}) not seen within "
                       f"{self.scenario.timeout_s:g} s")
        elif end is None:
            failure = f"end condition ({self.scenario.end.name}) not seen within {self.scenario.timeout_s:g} s"
        else:
            failure = self._check_final(end)
        steps: list[ScenarioStep] = []
        for n, m in enumerate(matched, 1):
            t_ms = (m.obs.decoded.ts_ns - t0) / 1e6
            prev = steps[m.step.after - 1]["t_ms"] if m.step.after else 0.0
            steps.append({
                "n": n, "name": m.step.name, "device": m.obs.decoded.source,
                "receivers": self._receivers(m.obs), "topic": m.obs.topic,
                "plane": m.step.plane, "t_ms": round(t_ms, 3), "hop_ms": round(t_ms - prev, 3),
                "after": m.step.after, "seq": m.obs.decoded.seq, "traceparent": m.obs.traceparent,
            })
        e2e = None
        end_view: ScenarioEnd | None = None
        if end is not None:
            e2e = (end.decoded.body.get("displayed_ns", end.decoded.ts_ns) - t0) / 1e6
            end_view = {"device": end.decoded.source, "t_ms": round(e2e, 3), "topic": end.topic}
        return {"rep": rep, "passed": failure is None, "failure": failure, "t0_ns": t0,
                "steps": steps, "end": end_view, "e2e_ms": None if e2e is None else round(e2e, 3),
                "first_index": mark}

    def _progress(self, observations: list[Observation], t0: int) -> tuple[list[_Match], Observation | None] | None:
        """Steps matched so far (in publish order) and the end; None while incomplete."""
        ordered = sorted((o for o in observations if o.message and o.message.ts_ns >= t0),
                         key=lambda o: o.decoded.ts_ns)
        matched: list[_Match] = []
        used: set[int] = set()
        for step in self.scenario.steps:
            after_ns = t0 - 1 if step.after == 0 else matched[step.after - 1].obs.decoded.ts_ns
            found = next((o for o in ordered if o.decoded.ts_ns > after_ns and o.index not in used
                          and self._fits(step, o)), None)
            if found is None:
                break
            matched.append(_Match(step, found))
            used.add(found.index)
        end = None
        if len(matched) == len(self.scenario.steps):
            after = self.scenario.end.after
            last_ns = matched[after - 1].obs.decoded.ts_ns if 0 < after < len(matched) else max(
                m.obs.decoded.ts_ns for m in matched)
            end = next((o for o in ordered if o.decoded.ts_ns > last_ns and self._fits(self.scenario.end, o)),
                       None)
        self._last_progress = (matched, end)
        return (matched, end) if end is not None else None

    def _fits(self, exp: Expectation, obs: Observation) -> bool:
        msg = obs.message
        assert msg is not None
        return (msg.profile == exp.profile
                and (msg.source == exp.device
                     or any(d.id == msg.source for d in self.cast.matching(exp.device)))
                and obs.planes == {exp.plane}
                and exp.matches(msg.body))

    def _check_final(self, end: Observation) -> str | None:
        for exp in self.scenario.final:
            for device in self.cast.matching(exp.device):
                last = self.recorder.latest(device.id, exp.profile, until_ns=end.decoded.ts_ns)
                if last is None or not exp.matches(last.decoded.body):
                    got = last.decoded.body if last else "nothing"
                    return f"final state: {device.id} {exp.profile} {exp.where} does not hold (got {got})"
        return None

    def _receivers(self, obs: Observation) -> list[str]:
        profile = PROFILES[obs.decoded.profile]
        return [d.id for d in self.topology.devices
                for g in ROLES[d.role].reads
                if g.profile == profile.name and ("+" in (m := self.topology.grant_mrids(d.id, g)) or obs.mrid in m)]

    # -- many repetitions and the result files ------------------------------------------------

    def run(self, repeat: int = 1, out: Path | None = None, backend: str = "local",
            progress: Callable[[Repetition], object] | None = None) -> ScenarioResultDoc:
        """Run ``repeat`` repetitions; write the result files into ``out`` if given."""
        reps: list[Repetition] = []
        for i in range(1, repeat + 1):
            reps.append(self.run_once(i))
            if progress:
                progress(reps[-1])
            if not reps[-1]["passed"]:
                break
        result = self._summarise(reps, backend)
        if out is not None:
            self.write(result, out)
        return result

    def _summarise(self, reps: list[Repetition], backend: str) -> ScenarioResultDoc:
        shown = next((r for r in reps if not r["passed"]), reps[-1])
        lanes = sorted((d.id for d in self.cast.devices),
                       key=lambda i: (LANE_ORDER.index(self.topology.device(i).role)
                                      if self.topology.device(i).role in LANE_ORDER else 99, i))
        spread: RepetitionSpread = {}
        e2e = [r["e2e_ms"] for r in reps if r["passed"] and r["e2e_ms"] is not None]  # a passed one has it
        if len(reps) > 1 and e2e:
            stats = percentiles(e2e)
            spread = {"p50": round(stats["p50"], 3), "p90": round(stats["p90"], 3), "p99": round(stats["p99"], 3),
                      "max": round(stats["max"], 3), "e2e_stats": rounded(stats, 3)}
            per_step = {}
            for n in range(len(self.scenario.steps)):
                hops = [r["steps"][n]["hop_ms"] for r in reps if r["passed"]]
                per_step[str(n + 1)] = rounded(percentiles(hops), 3)
            spread["hop_stats"] = per_step
        return {
            "schema": RESULT_SCHEMA,
            "scenario": self.scenario.name,
            "scenario_file": self.scenario.path,
            "passed": all(r["passed"] for r in reps),
            "failure": shown["failure"],
            "lanes": lanes,
            "steps": shown["steps"],
            "end": shown["end"],
            "e2e_ms": shown["e2e_ms"],
            "repetitions": len(reps),
            **spread,
            "runs": [{"rep": r["rep"], "passed": r["passed"], "failure": r["failure"], "e2e_ms": r["e2e_ms"]}
                     for r in reps],
            "environment": environment(self.topology, self.recorder.tls_version, backend),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }

    def write(self, result: ScenarioResultDoc, out: Path) -> None:
        # Here, not at the top: the plot needs matplotlib, which running a scenario does not.
        from testbed.reporting.scenario import plot_timeline

        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        self.recorder.write_jsonl(out / "messages.jsonl")
        plot_timeline(result, out / "timeline.png")
        (out / "summary.txt").write_text(summary_table(result) + "\n")

