"""Results as text: the scenario's step table for terminals and CI logs, and Markdown per benchmark.

Everything here is plain strings, with no matplotlib: the processes that only print (``fmb``, the
Compose harness, the benchmarks while they run) load this, not the figures of
:mod:`testbed.reporting.scenario` and :mod:`testbed.reporting.plots`, and start fast in read-only
containers. :mod:`testbed.reporting.render` puts the two together for ``fmb report``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from testbed.core.results import (
    CrashResult,
    LatencyResult,
    LatencyResultV3,
    PrioritizationResult,
    RecoveryFault,
    RecoveryResult,
    RecoveryTime,
    ScaleResult,
    ScenarioResultDoc,
    SoakResult,
    UiResult,
    WanResult,
)
from testbed.core.stats import percentiles

__all__ = [
    "RECOVERY_TIMES",
    "conditions_markdown",
    "crash_markdown",
    "failure_reason",
    "format_ms",
    "latency_markdown",
    "waterfall_markdown",
    "markdown_table",
    "percentiles_line",
    "prioritization_markdown",
    "recovery_markdown",
    "scale_markdown",
    "scenario_markdown",
    "soak_markdown",
    "summary_table",
    "ui_markdown",
    "verdict",
    "wan_markdown",
]

Result = Mapping[str, Any]  # any result document; each schema's own type is in testbed.core.results

# The recovery times a trial records, and their labels (the Markdown table's and the figure's columns).
RECOVERY_TIMES: tuple[tuple[RecoveryTime, str], ...] = (
    ("detect_s", "detect"), ("reconnect_s", "reconnect"), ("whole_s", "delivery whole"))

# (key, alignment) of each table column, in order.
_COLUMNS = (
    ("n", ">"),
    ("name", "<"),
    ("device", "<"),
    ("plane", "<"),
    ("topic", "<"),
    ("t_ms", ">"),
    ("hop_ms", ">"),
)
_PERCENTILE_KEYS: tuple[Literal["p50", "p90", "p99", "max"], ...] = ("p50", "p90", "p99", "max")


def format_ms(value: float | None) -> str:
    """Format a millisecond figure with 2 decimals, or ``-`` when it is missing."""
    return "-" if value is None else f"{float(value):.2f}"


def failure_reason(result: ScenarioResultDoc) -> str:
    """Return the failure reason of a result as one line, whatever shape it was recorded in."""
    failure = result.get("failure")
    if isinstance(failure, Mapping):
        failure = failure.get("reason") or failure.get("message") or dict(failure)
    return " ".join(str(failure).split()) if failure else "no reason recorded"


def verdict(result: ScenarioResultDoc) -> str:
    """Return ``PASSED`` or ``FAILED: <reason>``."""
    return "PASSED" if result.get("passed") else f"FAILED: {failure_reason(result)}"


def percentiles_line(result: ScenarioResultDoc) -> str | None:
    """Return ``n=20  p50=… p90=… p99=… max=… ms``, or None for a single run."""
    present = [key for key in _PERCENTILE_KEYS if result.get(key) is not None]
    if not present:
        return None
    figures = " ".join(f"{key}={format_ms(result[key])}" for key in present)
    return f"n={result.get('repetitions', '?')}  {figures} ms"


def summary_table(result: ScenarioResultDoc) -> str:
    """Return the steps of ``result`` as a fixed-width plain-text table with its verdict."""
    header = [key for key, _ in _COLUMNS]
    rows = [
        [
            str(step.get("n", "")),
            str(step.get("name", "")),
            str(step.get("device", "")),
            str(step.get("plane", "")),
            str(step.get("topic", "")),
            format_ms(step.get("t_ms")),
            format_ms(step.get("hop_ms")),
        ]
        for step in result.get("steps") or []
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            f"{cell:{align}{width}}"
            for cell, (_, align), width in zip(cells, _COLUMNS, widths, strict=True)
        ).rstrip()

    lines = [f"scenario {result.get('scenario', '?')}", line(header)]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend(line(row) for row in rows)
    if not rows:
        lines.append("(no steps matched)")
    lines.append(f"e2e_ms={format_ms(result.get('e2e_ms'))}")
    percentiles = percentiles_line(result)
    if percentiles:
        lines.append(percentiles)
    lines.append(verdict(result))
    return "\n".join(lines) + "\n"


# -- Markdown helpers ---------------------------------------------------------------------------

def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats to 3 decimals (1 from 10 up), None as –."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _flatten(prefix: str, value: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _flatten(f"{prefix}.{k}" if prefix else str(k), v)
    else:
        yield prefix, ", ".join(map(str, value)) if isinstance(value, list) else value


def conditions_markdown(result: Result) -> str:
    """The result's ``conditions`` and ``environment`` as one key/value table."""
    rows = [*_flatten("", result.get("conditions") or {}), *_flatten("", result.get("environment") or {})]
    if result.get("created"):
        rows.insert(0, ("created", result["created"]))
    return markdown_table(["condition", "value"], rows)


# -- scenario results (fmb.scenario-result/1) ---------------------------------------------------

def scenario_markdown(result: ScenarioResultDoc) -> str:
    """The scenario's step table and verdict, as the terminal prints it."""
    return "```\n" + summary_table(result) + "```\n"


# -- latency (fmb.bench-latency/2) --------------------------------------------------------------

def latency_markdown(result: LatencyResult | LatencyResultV3) -> str:
    """Headline table per QoS, then the per-step table (p50 / p90 / p99 / max, ms)."""
    target = result["target_ratio"]
    out = [markdown_table(
        ["QoS", "e2e p50", "p90", "p99", "max", "one hop p50", "p90", "p99", "max", "traversals",
         "traversals × hop p50", f"ratio (target ≤ {target})", "met"],
        [[q["qos"], *(q["e2e_ms"][k] for k in ("p50", "p90", "p99", "max")),
          *(q["one_hop_ms"][k] for k in ("p50", "p90", "p99", "max")), q["critical_path"]["total"],
          q["critical_path_one_hop_ms"], q["overhead_ratio"], q["meets_target"]] for q in result["by_qos"]])]
    out.append("\nMilliseconds. Ratio = end-to-end p50 ÷ (broker traversals on the critical path × one-hop p50); "
               f"critical path: steps {result['by_qos'][0]['critical_path']['path']}.\n\n"
               "Per step (time from the publish of the step it follows to its own publish; `display` is the "
               "diagram's publish to the tablet showing it), p50 / p99 ms:\n\n")
    levels = result["by_qos"]
    names = [(s["n"], s["name"], s["plane"], s["traversals"]) for s in levels[0]["steps"]]
    rows = []
    for i, (n, name, plane, traversals) in enumerate(names):
        on_path = levels[0]["steps"][i]["on_critical_path"]
        rows.append([n, name, plane, f"{traversals}{'' if on_path else ' (off path)'}",
                     *(f"{q['steps'][i]['hop_ms']['p50']:.2f} / {q['steps'][i]['hop_ms']['p99']:.2f}" for q in levels)])
    rows.append(["–", "display", "–", "–",
                 *(f"{q['display_ms']['p50']:.2f} / {q['display_ms']['p99']:.2f}" for q in levels)])
    out.append(markdown_table(["step", "name", "plane", "traversals", *(f"QoS {q['qos']}" for q in levels)], rows))
    if result["schema"] == "fmb.bench-latency/3":
        out.append("\n\n" + waterfall_markdown(result))
    return "".join(out)


def waterfall_markdown(result: LatencyResultV3) -> str:
    """The critical path's segments, p50 / p99 ms per QoS, then the sums checked against end to end."""
    levels = result["by_qos"]
    segments = levels[0]["waterfall"]["segments"]
    rows = [[s["step"], s["kind"], s["traversals"] or "", s["what"],
             *(f"{q['waterfall']['segments'][i]['ms'].get('p50', 0.0):.3f} / "
               f"{q['waterfall']['segments'][i]['ms'].get('p99', 0.0):.3f}" for q in levels)]
            for i, s in enumerate(segments)]
    out = ["Waterfall of the critical path (each device's receive and send times, one clock): `bus` is a message "
           "handed to paho to its arrival in the receiver's handler (1 broker, or 2 over the bridge), `device` a "
           "device's receive to its send (decode, verify, decide, encode, sign), `feeder` the feeder model's new "
           "state to the meter, `display` the tablet showing the diagram. p50 / p99 ms:\n\n",
           markdown_table(["step", "kind", "traversals", "segment", *(f"QoS {q['qos']}" for q in levels)], rows),
           "\n\nSums of the segments' p50s (ms), against the end-to-end p50 of the same repetitions:\n\n"]
    kinds = list(levels[0]["waterfall"]["p50_by_kind_ms"])
    out.append(markdown_table(
        ["QoS", *kinds, "sum", "e2e p50", "deviation", "within 5 %", "bus ÷ (traversals × one hop)",
         "complete reps"],
        [[q["qos"], *(q["waterfall"]["p50_by_kind_ms"][k] for k in kinds), q["waterfall"]["sum_of_p50_ms"],
          q["waterfall"]["e2e_p50_ms"], f"{q['waterfall']['sum_deviation']:+.1%}",
          q["waterfall"]["sums_within_tolerance"], q["waterfall"]["bus_over_one_hop"],
          f"{q['waterfall']['repetitions']} (+{q['waterfall']['incomplete']} incomplete)"] for q in levels]))
    out.append("\n\nEach device's processing (all its segments on the path), p50 / p99 ms (aim: p50 ≤ 0.5):\n\n")
    devices = list(levels[0]["waterfall"]["device_ms"])
    out.append(markdown_table(["device", *(f"QoS {q['qos']}" for q in levels)],
                              [[d, *(f"{q['waterfall']['device_ms'][d].get('p50', 0.0):.3f} / "
                                     f"{q['waterfall']['device_ms'][d].get('p99', 0.0):.3f}" for q in levels)]
                               for d in devices]))
    return "".join(out)


# -- prioritisation (fmb.bench-prioritization/1) -----------------------------------------------

def prioritization_markdown(result: PrioritizationResult) -> str:
    """Control p50 / p99 and throughput per flood rate and configuration, then the targets."""
    rows = []
    for name, steps in result["results"].items():
        for s in steps:
            c = s["control_ms"]
            rows.append([name, s["offered_rate"], s["achieved_rate"], c.get("p50"), c.get("p99"), c.get("max"),
                         c.get("lost")])
    out = [markdown_table(["configuration", "flood offered /s", "delivered /s", "control p50 ms", "p99 ms",
                           "max ms", "unacked"], rows)]
    headline = result.get("headline") or {}
    if headline:
        out.append("\nAt the highest flood rate:\n\n" + markdown_table(
            ["configuration", "idle p99 ms", "saturation p99 ms", "saturation ÷ idle", "delivered /s"],
            [[name, h.get("idle_p99_ms"), h.get("saturation_p99_ms"), h.get("saturation_over_idle"),
              h.get("saturation_achieved_rate")] for name, h in headline.items()]))
    targets = result.get("targets")
    if targets:
        out.append("\nTargets:\n\n" + markdown_table(["target", "value"], list(targets.items())))
    return "".join(out)


# -- recovery (fmb.bench-recovery/1, proposed shape) --------------------------------------------

def _met(fault: RecoveryFault) -> bool | None:
    target = fault.get("target")
    if not target:
        return None
    ok = True
    for t in fault["trials"]:
        if "lost" in target and t.get("lost") is not None:
            ok &= t["lost"] <= target["lost"]
        if "whole_s" in target and (whole := t.get("whole_s")) is not None:
            ok &= whole <= target["whole_s"]
    return ok


def recovery_markdown(result: RecoveryResult) -> str:
    """Per fault: median and worst times, messages lost and duplicated over the trials, the target."""
    rows = []
    for f in result["faults"]:
        times = []
        for key, _ in RECOVERY_TIMES:
            values = [v for t in f["trials"] if (v := t.get(key)) is not None]
            times.append(f"{percentiles(values, (50,))['p50']:.3f} / {max(values):.3f}" if values else None)
        name = f"{f['name']} ({f['direction']})" if f.get("direction") else f["name"]
        rows.append([name, f.get("qos"), len(f["trials"]), *times, sum(t.get("lost", 0) for t in f["trials"]),
                     sum(t.get("duplicated", 0) for t in f["trials"]), _met(f)])
    out = [markdown_table(["fault", "QoS", "trials", "detect s (median / worst)", "reconnect s", "whole s",
                           "lost (all trials)", "duplicated", "target met"], rows)]
    sweep = result.get("autosave_sweep")
    if sweep:
        out.append("\nAutosave sweep (data-centre broker `kill -9`):\n\n" + markdown_table(
            ["autosave interval s", "throughput /s", "lost median", "lost max"],
            [[p["autosave_interval_s"], p["throughput_per_s"], percentiles(p["lost"], (50,))["p50"], max(p["lost"])]
             for p in sweep]))
    return "".join(out)


# -- crash of a persistent broker (fmb.bench-crash/1) -------------------------------------------

def crash_markdown(result: CrashResult) -> str:
    """Per policy: the loss window of a kill -9 (median / worst), messages lost, throughput, costs, verdict."""
    target = result["conditions"]["target"]
    rows: list[list[Any]] = []
    for p in result["policies"]:
        w, lost, tput, cpu = p["window_s"], p["lost"], p["throughput"], p["cpu"]
        floor = any(t["all_lost"] for t in p["kills"])
        rows.append([p["policy"], p["mosquitto_version"] or p["mosquitto"], p["runtime"], len(p["kills"]),
                     f"{w.get('p50', 0):.3f} / {'>= ' if floor else ''}{w.get('max', 0):.3f}" if w else "everything",
                     f"{lost.get('p50', 0):g} / {lost.get('max', 0):g}" if lost else None, p["bound_s"],
                     tput.get("p50") if tput else None,
                     f"{p['cost'] * 100:.0f} %" if p["cost"] is not None else None,
                     cpu.get("p50") if cpu else None,
                     f"{p['cpu_cost'] * 100:+.0f} %" if p["cpu_cost"] is not None else None, p["meets_target"]])
    table = markdown_table(["policy", "Mosquitto", "runtime", "kills", "window s (median / worst)",
                            "lost (median / worst)", "bound s", "QoS 1 msg/s", "cost", "broker CPU µs/msg",
                            "CPU cost", "target met"], rows)
    c = result["conditions"]
    return (table + f"\nTarget: a kill -9 loses at most {target['window_s']:g} s of traffic at no more than "
            f"{target['cost'] * 100:.0f} % throughput cost. Offered {c['offered_rate_per_s']:g} msg/s of "
            f"{c['payload_bytes']} bytes for {c['fill_s'][0]:g}-{c['fill_s'][1]:g} s before each kill; `>=` marks a "
            "policy that lost everything since the session was saved (its window is at least the fill); `bound` "
            "is the window the policy allows by construction; `cost` is the throughput lost against no "
            "persistence on the same build, `CPU cost` the broker's extra CPU time per message (less skewed by a "
            "busy machine). Load average "
            f"{c['load_average_start'][0]:g} at the start, {c['load_average_end'][0]:g} at the end ({c['cores']} "
            "cores): final figures need a quiet machine.\n")


# -- WAN link (fmb.bench-wan/1) -----------------------------------------------------------------

def wan_markdown(result: WanResult) -> str:
    """Control p50 / p99 and what crossed the link, per configuration and step."""
    rows = []
    for name, steps in result["results"].items():
        for s in steps:
            c = s["control_ms"]
            rows.append([name, s["step"], s["offered_rate"], s["delivered_rate"],
                         round(sum(s["link_bits_per_s"].values()) / 1e3, 1), c.get("p50"), c.get("p99"),
                         c.get("max"), c.get("missing")])
    out = [markdown_table(["configuration", "step", "flood offered /s", "delivered /s", "link kbit/s",
                           "control p50 ms", "p99 ms", "max ms", "missing"], rows)]
    out.append(f"\nNo priority ÷ priority, control p99 under flood: "
               f"{_cell(result.get('no_priority_over_priority_p99'))}. Delay: {result['conditions'].get('delay')}.\n")
    return "".join(out)


def ui_markdown(result: UiResult) -> str:
    """Percentiles of what the operator saw, the browser, and the screenshot."""
    rows = [[label, *(stats.get(p) for p in ("n", "p50", "p90", "p99", "max"))]
            for stats, label in ((result["closed_ms"], "cap bank shown closed"),
                                 (result["restored_ms"], "meter shown back at 120 V"))]
    return (markdown_table(["after pressing Set voltage (114 V)", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows)
            + f"\n{result['what']}. {result['conditions']['browser']}; {result['conditions']['page']}. "
              f"Screenshot: `{Path(result['screenshot']).name}`.\n")


# -- soak (fmb.bench-soak/1) ----------------------------------------------------------------------

def soak_markdown(result: SoakResult) -> str:
    """The verdict, every stream's ledger, every fault, the ledger per fault kind and every violation."""
    c = result["conditions"]
    invariants = result["invariants"]
    out = [f"**{len(invariants)} invariant checks, {result['violations']} violated**; ledger complete: "
           f"{_cell(result['ledger_complete'])}. {c['backend']} backend, {c['minutes']:g} min, seed {c['seed']}, "
           f"{c['rate_per_s']:g} msg/s per stream; load average {c['load_average_before'][0]:g} before, "
           f"{c['load_average_after'][0]:g} after.\n\n"]
    out.append(markdown_table(
        ["stream", "QoS", "as", "path", "sent", "delivered", "lost", "unacked", "duplicated", "reordered", "complete"],
        [[s["name"], s["qos"], s["publisher"], f"{s['source_broker']} → {s['consumer_broker']}", s["sent"],
          s["delivered"], s["lost"], s["unacknowledged"], s["duplicated"], s["reordered"], s["complete"]]
         for s in result["streams"]]))
    names = [s["name"] for s in result["streams"]]
    by = {(r["fault"], r["stream"]): r for r in result["ledger"]}
    rows = []
    for f in result["faults"]:
        check = f["scenario_after"]
        after = (f"passed in {check['seconds_to_pass']:.1f} s" + (f" ({check['attempts']} runs)"
                 if check["attempts"] > 1 else "") if check["seconds_to_pass"] is not None else "**failed**")
        undelivered = [by[(f["n"], n)]["lost"] + by[(f["n"], n)]["unacknowledged"] for n in names if (f["n"], n) in by]
        whole = [v for v in f["whole_s"].values() if v is not None]
        rows.append([f["n"], f["kind"], f["target"], f["start_s"], f["downtime_s"] or None, after,
                     " / ".join(str(u) for u in undelivered), max(whole) if whole else None, f["error"]])
    out.append(f"\nFaults (not delivered per stream: {' / '.join(names)}; whole: worst stream, seconds from the "
               f"recovery, for reference against the recovery benchmark's {c['graceful_whole_target_s']:g} s):\n\n")
    out.append(markdown_table(["#", "kind", "target", "at s", "down s", "Appendix A after", "not delivered",
                               "whole s", "error"], rows))
    kinds: dict[tuple[str, str], list[int]] = {}
    for r in result["ledger"]:
        totals = kinds.setdefault((r["kind"], r["stream"]), [0, 0, 0, 0, 0, 0, 0])
        for i, value in enumerate((r["published"], r["delivered"], r["lost"], r["unacknowledged"], r["duplicated"],
                                   r["reordered"], 1)):
            totals[i] += value
    out.append("\nThe ledger per fault kind (every message attributed to the window it was published in):\n\n")
    out.append(markdown_table(["window", "windows", "stream", "published", "delivered", "lost", "unacked",
                               "duplicated", "reordered"],
                              [[k, t[6], s, *t[:6]] for (k, s), t in sorted(kinds.items())]))
    tally: dict[tuple[str, str], list[int]] = {}
    for invariant in invariants:
        count = tally.setdefault((invariant["invariant"], invariant["kind"]), [0, 0])
        count[0 if invariant["holds"] else 1] += 1
    out.append("\nInvariants:\n\n" + markdown_table(
        ["invariant", "window", "held", "violated"],
        [[name, kind, held, violated] for (name, kind), (held, violated) in sorted(tally.items())]))
    broken = [i for i in invariants if not i["holds"]]
    if broken:
        out.append("\nViolations:\n\n" + markdown_table(
            ["fault", "kind", "invariant", "stream", "counts", "detail"],
            [[i["fault"], i["kind"], i["invariant"], i["stream"],
              ", ".join(f"{k} {v:g}" for k, v in i["counts"].items() if v), i["detail"]] for i in broken]))
    runs = result["appendix_a"]
    quiet = [r for r in runs if r["after_fault"] is None]
    recovering = [r for r in runs if r["after_fault"] is not None]
    out.append(f"\nAppendix A: {sum(r['passed'] for r in quiet)} of {len(quiet)} runs between faults passed, "
               f"{sum(r['passed'] for r in recovering)} of {len(recovering)} after recoveries. Recovery target: "
               f"{c['recovery_target']}. Crash window: {c['crash_window_s']:g} s ({c['crash_window_source']}).\n")
    if c["unavailable"]:
        out.append("\nNot on this backend: " + "; ".join(f"{k} ({v})" for k, v in c["unavailable"].items()) + ".\n")
    return "".join(out)


# -- scale (fmb.bench-scale/1) ----------------------------------------------------------------------

def scale_markdown(result: ScaleResult) -> str:
    """The ramp per substation, the steady states, the storms, and each target with its verdict."""
    ramp, t = result["ramp"], result["targets"]
    out = [f"**Connection ramp**: {ramp['meters']:,} meters over {ramp['substations']} substations, each fleet "
           f"opening {ramp['connect_rate_per_fleet']:g} connections/s; all connected: "
           f"{'in ' + _cell(ramp['seconds_to_all']) + ' s' if ramp['all_connected'] else '**no**'} "
           f"({_cell(ramp['handshakes_per_s'])} handshakes/s in all). CPU over the ramp: "
           + ", ".join(f"{k} {v['seconds']:g} s ({v['percent_of_a_core']:g} % of a core)"
                       for k, v in ramp["cpu"].items())
           + ".\n\n",
           markdown_table(["broker", "meters", "connected", "all in s", "handshakes/s", "peak /s", "broker RSS KiB "
                           "before → after", "broker KiB/conn", "fleet RSS MiB", "fleet KiB/conn"],
                          [[r["broker"], r["meters"], r["connected"], r["seconds_to_all"], r["handshakes_per_s"],
                            r["peak_handshakes_per_s"], f"{_cell(r['broker_rss_kb_before'])} → "
                            f"{_cell(r['broker_rss_kb_after'])}", r["broker_kb_per_connection"],
                            None if r["fleet_rss_kb"] is None else r["fleet_rss_kb"] / 1024,
                            r["fleet_kb_per_connection"]] for r in ramp["brokers"]]),
           "\nFleet KiB per connection is the whole process's RSS over its meters (the interpreter included).\n",
           "\n**Steady state** (meter's timestamp → the DMS side on the data centre's delivery broker):\n\n",
           markdown_table(["meters", "substations", "every s", "offered /s", "published /s", "delivered /s",
                           "p50 ms", "p90 ms", "p99 ms", "max ms", "lost", "duplicated", "brokers CPU %",
                           "fleets CPU %"],
                          [[p["meters"], p["substations"], p["interval_s"], p["offered_per_s"], p["published_per_s"],
                            p["delivered_per_s"], *(p["latency_ms"].get(k) for k in _PERCENTILE_KEYS), p["lost"],
                            p["duplicated"], *(c["percent_of_a_core"] if (c := p["cpu"].get(group)) else None
                                               for group in ("brokers", "fleets"))] for p in result["steady"]]),
           "\n**Reconnect storm** (one substation's delivery broker restarted with all its meters connected; "
           "times from the broker accepting connections again):\n\n",
           markdown_table(["control plane", "broker", "meters", "down s", "all reconnected s", "all reported s",
                           "reported", "control p50 ms idle", "p99 idle", "p50 storm", "p99 storm", "max storm",
                           "unacked"],
                          [[s["config"], s["broker"], s["meters"], s["down_s"], s["reconnected_s"], s["reported_s"],
                            s["reported"], s["control_idle_ms"].get("p50"), s["control_idle_ms"].get("p99"),
                            s["control_ms"].get("p50"), s["control_ms"].get("p99"), s["control_ms"].get("max"),
                            s["control_ms"]["sent"] - s["control_ms"]["acked"]] for s in result["storm"]]),
           _appendix_a_markdown(result),
           "\n**Targets** (issue 12, this machine):\n\n",
           markdown_table(["target", "met"], [
               [f">= {t['meters_min']:,} meters over >= {t['substations_min']} substations, all connected",
                t["all_connected_met"]],
               [f"{t['readings_per_s_min']:,.0f} readings/s, meter -> DMS p99 <= {t['latency_p99_max_ms']:g} ms",
                t["steady_met"]],
               [f"{t['storm_meters_min']:,}-meter storm back <= {t['storm_back_max_s']:g} s, control p99 <= "
                f"{t['storm_control_p99_max_ms']:g} ms segregated", t["storm_met"]],
               ["memory per connection reported (brokers and fleets)", t["memory_reported"]]])]
    return "".join(out)


def _appendix_a_markdown(result: ScaleResult) -> str:
    a = result["appendix_a"]
    if not a["ran"]:
        return f"\n**Appendix A on one substation under load**: not run ({a['why']}).\n"
    rows = [[config, runs["passed"], runs["failed"], *(runs.get(k) for k in _PERCENTILE_KEYS), runs["failure"]]
            for config, runs in (("loaded", a.get("loaded")), ("idle", a.get("idle"))) if runs is not None]
    return (f"\n**Appendix A on {a.get('substation')}** (the whole bus as local processes, up in "
            f"{_cell(a.get('bus_start_s'))} s; {a['why']}):\n\n"
            + markdown_table(["configuration", "passed", "failed", "e2e p50 ms", "p90 ms", "p99 ms", "max ms",
                              "first failure"], rows)
            + f"\nLoaded ÷ idle, p99: {_cell(a.get('loaded_over_idle_p99'))}.\n")
