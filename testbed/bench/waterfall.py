"""Where the time of one Appendix A run goes: the latency waterfall of its critical path.

Every payload carries its publisher's timestamp, and every device says, in user properties beside
the trace context, when the message it reacts to reached it (``recv_ns``) and, for the meter, when
the feeder model applied the change it reports (``feeder_ns``; ``devices.base.Device.publish``);
the recorder sees each message on every broker it crosses. All on one machine's clock. So each
link of the critical path (trigger to the tablet's display) splits, with no probe in a device, into:

* ``bus``: a message handed to paho by its publisher (``sent_ns``: the one-hop baseline, too,
  starts its clock before ``publish()``) to its arrival in the receiving device's handler: one
  broker traversal at the publisher's site, two through the Mosquitto bridge to another site;
* ``device``: a device's arrival of the message to its handing its own message to paho (decode,
  validate, verify the signature, decide, encode, sign: ``sent_ns``); for the supply in front of
  the feeder model, to the model's applying the change; the first segment is the tablet's own,
  from its payload's timestamp (the trigger's time) to handing it to paho;
* ``feeder``: the feeder model applying a change to the meter's receiving the new state (its
  Unix socket and the meter's watch);
* ``display``: the diagram's arrival at the tablet to the tablet showing it.

The segments of one repetition telescope: they sum to its end-to-end time exactly (a residual
is a gap or an overlap in the chain, and is checked). Percentiles of segments do not add, so the
waterfall also reports how far the sum of the segments' p50s is from the end-to-end p50 (the
issue asks for 5 %); their means add exactly. The recorder's own sightings are not used to split a
bridged transit between its two brokers: the recorder is one more Python subscriber on a shared
machine and its sighting came after the remote device's arrival in about half the repetitions
here. A message without the timing properties (a device of another make) falls back to the
recorder's sighting on the receiver's broker. A repetition in which a step followed another
message than the one the scenario says (the DMS's final diagram published on the supply's status
because it came after the meter's reading) took another path: it is counted ``incomplete``, why.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from testbed.core.results import Percentiles, Repetition, ScenarioStep, Waterfall, WaterfallSegment
from testbed.core.stats import percentiles, rounded
from testbed.core.topics import PROFILES, ROLES, parse_topic
from testbed.core.topology import Topology
from testbed.harness.recorder import Observation

__all__ = ["KINDS", "SUM_TOLERANCE", "Incomplete", "Segment", "split", "summarise"]

KINDS: Final = ("bus", "device", "feeder", "display")
SUM_TOLERANCE: Final = 0.05  # the issue's: the parts sum to the end-to-end time within 5 %
_DIGITS = 4


class Incomplete(Exception):
    """A repetition whose waterfall cannot be drawn (the recorder missed a message it needs); why."""


@dataclass(frozen=True)
class Segment:
    """One part of one repetition's critical path, in ms."""

    key: str  # stable across repetitions: "3>4 bus", "4 dms-1"
    step: int  # the step whose time it belongs to (the trailing display leg: the last step + 1)
    kind: str  # one of KINDS
    who: str  # the broker, "<from> -> <to>" over a bridge, or the device
    what: str  # a line a reader understands
    ms: float
    traversals: int = 0  # brokers a bus segment crosses (1, or 2 over a bridge); 0 for the others


def _index(observations: Sequence[Observation]) -> dict[tuple[str, str, int], Observation]:
    return {(o.decoded.source, o.topic, o.decoded.seq): o for o in observations if o.message is not None}


def _seen(obs: Observation, broker: str) -> int | None:
    return next((t for b, _, t in obs.sightings if b == broker), None)


def _sent(obs: Observation) -> int:
    """When the publisher handed the message to its MQTT client, encoded and signed (its payload's
    timestamp is taken before either, to be inside the payload)."""
    return obs.timing.get("sent_ns", obs.decoded.ts_ns)


def _reads(topology: Topology, device: str, profile: str) -> bool:
    return any(g.profile == profile for g in ROLES[topology.device(device).role].reads)


def _end(observations: Sequence[Observation], device: str, topic: str, displayed_ns: int) -> Observation | None:
    """The display acknowledgement the runner ended on (its ``displayed_ns``, to the runner's rounding)."""
    return next((o for o in observations if o.message is not None and o.decoded.source == device
                 and o.topic == topic and abs(int(o.decoded.body.get("displayed_ns", 0)) - displayed_ns) < 1000),
                None)


def _path(steps: Sequence[ScenarioStep], found: dict[int, Observation | None], last: Observation) -> list[int]:
    """The steps this repetition really went through, trigger first: back from the end, each step to
    the message its publisher says it was handling (``cause``), or, where it claims none (the trigger;
    the meter, which follows the feeder model), to the step the scenario says it follows."""
    ids = {f"{o.decoded.source}/{o.decoded.seq}": n for n, o in found.items() if o is not None}
    diagram = last.decoded.body.get("diagram_seq")
    n = next((m for m, o in found.items() if o is not None and o.decoded.source == last.decoded.body.get("dms")
              and o.decoded.seq == diagram), None)
    if n is None:
        raise Incomplete(f"{last.decoded.source} ended on a diagram (seq {diagram}) that is no step of the scenario")
    path: list[int] = []
    while n:
        if n in path or len(path) > len(steps):
            raise Incomplete(f"the causes of the steps loop at step {n}")
        path.append(n)
        obs = found[n]
        if obs is None:
            raise Incomplete(f"the recorder holds no message of step {n}")
        if obs.cause is None:
            n = steps[n - 1]["after"]
        elif obs.cause in ids:
            n = ids[obs.cause]
        else:
            raise Incomplete(f"step {n} followed a message that is no step of the scenario ({obs.cause})")
    return path[::-1]


def split(topology: Topology, rep: Repetition, observations: Sequence[Observation]) -> tuple[list[int], list[Segment]]:
    """The path one passed repetition took (step numbers, trigger first) and its segments;
    :class:`Incomplete` says why not when a message on it was not seen where it had to be."""
    steps, end = rep["steps"], rep["end"]
    if end is None or rep["e2e_ms"] is None:
        raise Incomplete("the repetition did not end")
    by_key = _index(observations)
    found = {n: by_key.get((s["device"], s["topic"], s["seq"])) for n, s in enumerate(steps, 1)}
    last = _end(observations, end["device"], end["topic"], rep["t0_ns"] + round(rep["e2e_ms"] * 1e6))
    if last is None:
        raise Incomplete(f"the recorder holds no display acknowledgement of {end['device']} at the end's time")
    path = _path(steps, found, last)
    trigger = found[path[0]]
    assert trigger is not None
    segments = [Segment(f"{path[0]} {trigger.decoded.source}", path[0], "device", trigger.decoded.source,
                        f"step {path[0]}: {trigger.decoded.source} encodes, signs, publishes the trigger",
                        (_sent(trigger) - trigger.decoded.ts_ns) / 1e6)]
    chain = [*path, len(steps) + 1]
    for p, n in zip(chain, chain[1:], strict=False):
        cause, effect = found[p], found.get(n) if n <= len(steps) else last
        assert cause is not None and effect is not None
        acted_ns = _sent(effect) if n <= len(steps) else int(last.decoded.body["displayed_ns"])
        # Who took the message off the bus: the step's own device, or (the meter after a supply
        # command) the step that follows the same message and reads it: the supply.
        direct = effect if _reads(topology, effect.decoded.source, cause.decoded.profile) else next(
            (found[m] for m, s in enumerate(steps, 1) if s["after"] == p
             and _reads(topology, s["device"], cause.decoded.profile)), None)
        if direct is None:
            raise Incomplete(f"no step takes step {p}'s message off the bus before step {n}")
        segments += _link(topology, p, n, cause, direct, effect, acted_ns, is_end=n > len(steps))
    return path, segments


def _link(topology: Topology, p: int, n: int, cause: Observation, direct: Observation, effect: Observation,
          acted_ns: int, is_end: bool) -> list[Segment]:
    """Step ``p``'s message to what follows from it: ``direct`` took it off the bus, ``effect`` is
    step ``n`` (``acted_ns``: its publish, or the display)."""
    message = cause.decoded
    profile = PROFILES[message.profile]
    receiver = direct.decoded.source
    here = topology.broker_for(topology.device(message.source).site, profile.plane).name
    there = topology.broker_for(topology.device(receiver).site, profile.plane).name
    arrived = direct.timing.get("recv_ns", _seen(cause, there))
    if arrived is None:
        raise Incomplete(f"{receiver} did not say when step {p}'s message reached it, nor was it seen on {there}")
    name = parse_topic(topology.root, cause.topic)[0].name
    hops = 1 if there == here else 2
    route = here if hops == 1 else f"{here} -> {there}"
    parts = [Segment(f"{p}>{n} bus", n, "bus", route,
                     f"step {p} ({message.source} {name}): {route} -> {receiver}", (arrived - _sent(cause)) / 1e6,
                     hops)]
    if is_end:
        return [*parts, Segment(f"{n} {receiver}", n, "display", receiver,
                                f"{receiver} shows the diagram (the end)", (acted_ns - arrived) / 1e6)]
    actor = effect.decoded.source
    if direct is effect:
        return [*parts, Segment(f"{n} {actor}", n, "device", actor, f"step {n}: {actor} handles {name}, publishes",
                                (acted_ns - arrived) / 1e6)]
    applied, seen_by = effect.timing.get("feeder_ns"), effect.timing.get("recv_ns")
    if applied is None or seen_by is None:  # no timing from the meter: the physics and both devices in one
        return [*parts, Segment(f"{n} {actor}", n, "feeder", actor,
                                f"step {n}: {receiver}, the feeder model and {actor}", (acted_ns - arrived) / 1e6)]
    return [*parts,
            Segment(f"{n} {receiver}", n, "device", receiver, f"step {n}: {receiver} handles {name}, drives the feeder",
                    (applied - arrived) / 1e6),
            Segment(f"{n} feeder", n, "feeder", "feeder model", f"step {n}: the feeder model's new state -> {actor}",
                    (seen_by - applied) / 1e6),
            Segment(f"{n} {actor}", n, "device", actor, f"step {n}: {actor} reports the new voltage",
                    (acted_ns - seen_by) / 1e6)]


def _stats(samples: Sequence[float]) -> Percentiles:
    return rounded(percentiles(samples, (50, 90, 99)), _DIGITS)


def summarise(per_rep: Sequence[tuple[list[int], list[Segment]] | str], e2e_ms: Sequence[float],
              traversals: int, one_hop_p50_ms: float) -> Waterfall:
    """Percentiles over the repetitions of every segment, the sums checked against end to end.

    ``per_rep[i]`` and ``e2e_ms[i]`` are repetition i's (a string: incomplete, why; left out). The
    waterfall is that of the path most repetitions took; the others are counted in ``paths``.
    """
    taken = Counter("-".join(map(str, r[0])) for r in per_rep if not isinstance(r, str))
    reasons = sorted({r for r in per_rep if isinstance(r, str)})
    if not taken:
        raise ValueError(f"no repetition has a complete waterfall: {'; '.join(reasons)}")
    main = taken.most_common(1)[0][0]
    path = [int(n) for n in main.split("-")]
    complete = [(r[1], e) for r, e in zip(per_rep, e2e_ms, strict=True)
                if not isinstance(r, str) and "-".join(map(str, r[0])) == main]
    reasons += [f"{k} took the path {p}" for p, k in taken.items() if p != main]
    order = [s.key for s in complete[0][0]]
    if any([s.key for s in segs] != order for segs, _ in complete):
        raise ValueError("the critical path's segments differ between repetitions; the scenario is not one path")
    first = complete[0][0]
    columns = {k: [segs[i].ms for segs, _ in complete] for i, k in enumerate(order)}
    residuals = [e - math.fsum(s.ms for s in segs) for segs, e in complete]
    segments: list[WaterfallSegment] = [
        {"key": s.key, "step": s.step, "kind": s.kind, "who": s.who, "what": s.what, "traversals": s.traversals,
         "ms": _stats(columns[s.key]), "samples_ms": [round(v, _DIGITS) for v in columns[s.key]]}
        for s in first]
    e2e = [e for _, e in complete]
    e2e_p50 = percentiles(e2e, (50,))["p50"]
    sum_p50 = math.fsum(s["ms"].get("p50", 0.0) for s in segments)
    by_kind = {k: round(math.fsum(s["ms"].get("p50", 0.0) for s in segments if s["kind"] == k), _DIGITS)
               for k in KINDS}
    mean_by_kind = {k: round(math.fsum(s["ms"]["mean"] for s in segments if s["kind"] == k), _DIGITS)
                    for k in KINDS}
    devices: dict[str, list[float]] = {}
    for s in first:
        if s.kind in ("device", "display"):
            devices.setdefault(s.who, []).extend(columns[s.key])
    bus_p50 = by_kind["bus"]
    deviation = (sum_p50 - e2e_p50) / e2e_p50
    return {
        "path": path,
        "paths": dict(taken),
        "repetitions": len(complete),
        "incomplete": len(per_rep) - len(complete),
        "incomplete_reasons": reasons[:5],
        "segments": segments,
        "p50_by_kind_ms": by_kind,
        "mean_by_kind_ms": mean_by_kind,
        "sum_of_p50_ms": round(sum_p50, _DIGITS),
        "e2e_p50_ms": round(e2e_p50, _DIGITS),
        "sum_deviation": round(deviation, 4),
        "sums_within_tolerance": abs(deviation) <= SUM_TOLERANCE,
        "sum_tolerance": SUM_TOLERANCE,
        "max_repetition_residual_ms": round(max(abs(r) for r in residuals), _DIGITS),
        "device_ms": {d: _stats(v) for d, v in devices.items()},
        "bus_p50_ms": round(bus_p50, _DIGITS),
        "bus_over_one_hop": round(bus_p50 / (traversals * one_hop_p50_ms), 3),
    }
