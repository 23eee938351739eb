"""``fmb model calibrate | run | validate | answers``: the capacity model (testbed/model/).

``calibrate`` measures real brokers (it starts its own, on free ports) and writes the calibration
JSON; the other three only simulate, from a calibration file (default: the committed one), and
write their JSON and figures into ``--out``. Every setting is checked before anything runs.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from testbed.cli.common import ROOT, Commands, paths, stamp
from testbed.core.errors import TestbedError
from testbed.core.results import LatencyResult
from testbed.core.topology import DEFAULT_TOPOLOGY, load_topology
from testbed.model.answers import answer
from testbed.model.bus import from_topology, parse_settings, run_model
from testbed.model.calibration import DEFAULT_CALIBRATION, load_calibration
from testbed.model.validate import validate

__all__ = ["add_model"]

FIXTURES = ROOT / "tests" / "fixtures"


def _out(args: argparse.Namespace, name: str) -> Path:
    out = Path(args.out) if args.out else ROOT / "runs" / f"model-{name}-{stamp()}"
    if out.exists() and not out.is_dir():
        raise TestbedError(f"--out {out} is a file; give a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write(out: Path, name: str, doc: Any) -> Path:
    path = out / name
    tmp = path.with_name(f".{name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def _calibration(args: argparse.Namespace) -> tuple[Any, str]:
    path = Path(args.calibration) if args.calibration else DEFAULT_CALIBRATION
    source = path.resolve()
    return load_calibration(path), str(source.relative_to(ROOT)) if source.is_relative_to(ROOT) else str(source)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from testbed.model.measure import calibrate  # starts brokers: only this command needs it

    if args.messages < 100 or args.handshakes < 5:
        raise TestbedError(f"--messages {args.messages}, --handshakes {args.handshakes}: give at least 100 and 5")
    latency_path = Path(args.latency) if args.latency else FIXTURES / "bench-latency.json"
    try:
        latency: LatencyResult = json.loads(latency_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TestbedError(f"--latency {latency_path}: cannot read it as JSON ({e}); give a bench-latency result") \
            from None
    # /3 is /2 with each QoS level's waterfall added: what the calibration reads is in both.
    if not isinstance(latency, dict) or latency.get("schema") not in ("fmb.bench-latency/2", "fmb.bench-latency/3"):
        raise TestbedError(f"--latency {latency_path}: not an fmb.bench-latency/2 or /3 result")
    certs, _ = paths(args)
    out = _out(args, "calibration")
    print(f"calibration: real brokers, {args.messages} messages per point, {args.handshakes} handshakes")
    source = latency_path.resolve()
    shown = str(source.relative_to(ROOT)) if source.is_relative_to(ROOT) else str(source)
    doc = calibrate(certs, out / "work", latency, shown, args.messages, args.handshakes)
    print(f"result: {_write(out, 'model-calibration.json', doc)}")
    return 0


def _topology_path(name: str | None) -> str | None:
    """A topology file, or the name of one in brokers/topologies/ (``utility``, ``utility-small``)."""
    if name is None or Path(name).exists() or "/" in name or name.endswith(".toml"):
        return name
    shipped = DEFAULT_TOPOLOGY.with_name(f"{name}.toml")
    return str(shipped) if shipped.exists() else name


def cmd_run(args: argparse.Namespace) -> int:
    topology = load_topology(_topology_path(args.topology_file or args.topology))
    settings = parse_settings(args.set or [], from_topology(topology))
    calibration, name = _calibration(args)
    run = run_model(settings, calibration, topology.name, name)
    out = _out(args, "run")
    for flow in run["flows"]:
        lat = flow["latency_ms"]
        print(f"{flow['flow']:20} sent {flow['sent']:>9} delivered {flow['delivered']:>9} lost {flow['lost']:>7}  "
              f"p50 {lat.get('p50', '-')} ms  p99 {lat.get('p99', '-')} ms")
    for b in run["brokers"]:
        print(f"{b['broker']:20} utilisation {b['utilisation']:.3f}  mean in system {b['mean_in_system']}  "
              f"max queue {b['max_queue']}")
    if "storm" in run:
        print(f"storm: {run['storm']}")
    print(f"{run['messages']} messages, {run['simulated_s']} simulated s in {run['wall_s']} s")
    print(f"result: {_write(out, 'model-run.json', run)}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    calibration, name = _calibration(args)
    scale = [Path(p) for p in args.scale] if args.scale else [FIXTURES / "bench-scale.json"]
    prioritization = ([Path(p) for p in args.prioritization] if args.prioritization
                      else [FIXTURES / "bench-prioritization.json"])
    if args.seconds < 2:
        raise TestbedError(f"--seconds {args.seconds:g}; give 2 or more simulated seconds per point")
    doc = validate(calibration, name, scale, prioritization, not args.no_contention, args.seconds, args.seed)
    doc["measurements"] = [m.replace(f"{ROOT}/", "") for m in doc["measurements"]]  # as the checkout names them
    out = _out(args, "validation")
    from testbed.model.plots import validation_plot, validation_table

    print(validation_table(doc))
    print(f"result: {_write(out, 'model-validation.json', doc)}; {validation_plot(doc, out)}")
    return 0


def cmd_answers(args: argparse.Namespace) -> int:
    calibration, name = _calibration(args)
    doc = answer(calibration, name, quick=args.quick)
    out = _out(args, "answers")
    from testbed.model.plots import answer_plots

    figures = answer_plots(doc, out)
    print(f"result: {_write(out, 'model-answers.json', doc)}; figures: {', '.join(p.name for p in figures)}")
    return 0


def add_model(commands: Commands) -> None:
    def model_help(a: argparse.Namespace) -> int:
        model.print_help()
        return 2

    model = commands.add("model", model_help, "the capacity model: calibrate on real brokers, run, validate, answer")
    sub = model.add_subparsers(dest="model_command", metavar="ACTION")
    calibration_help = f"calibration JSON (default {DEFAULT_CALIBRATION.relative_to(ROOT)})" \
        if DEFAULT_CALIBRATION.is_relative_to(ROOT) else "calibration JSON"

    cal = sub.add_parser("calibrate", parents=[commands.common], help="measure service times on real brokers")
    cal.add_argument("--messages", type=int, default=3000, help="messages per measured point (default 3000)")
    cal.add_argument("--handshakes", type=int, default=40, help="TLS connections timed (default 40)")
    cal.add_argument("--latency", help="a bench-latency result for client overheads and device times "
                                       "(default tests/fixtures/bench-latency.json)")
    cal.add_argument("--out", help="directory for model-calibration.json (default runs/model-calibration-TIME)")
    cal.set_defaults(func=cmd_calibrate)

    run = sub.add_parser("run", parents=[commands.common], help="simulate a topology")
    run.add_argument("topology_file", nargs="?", metavar="TOPOLOGY",
                     help="topology name or file (default --topology, else Appendix A)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="change a setting, e.g. --set substations=300 --set meters=2000 --set interval_s=60")
    run.add_argument("--calibration", help=calibration_help)
    run.add_argument("--out", help="directory for model-run.json (default runs/model-run-TIME)")
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", parents=[commands.common], help="predictions against benchmark results")
    val.add_argument("--scale", action="append", metavar="FILE", help="a bench-scale result (repeatable; default the "
                                                                       "committed fixture)")
    val.add_argument("--prioritization", action="append", metavar="FILE",
                     help="a bench-prioritization result (repeatable; default the committed fixture)")
    val.add_argument("--calibration", help=calibration_help)
    val.add_argument("--seconds", type=float, default=30.0, help="simulated seconds per point (default 30)")
    val.add_argument("--seed", type=int, default=1)
    val.add_argument("--no-contention", action="store_true",
                     help="ignore the measured runs' load average (each broker a core of its own)")
    val.add_argument("--out", help="directory for model-validation.json and its plot")
    val.set_defaults(func=cmd_validate)

    ans = sub.add_parser("answers", parents=[commands.common], help="answer the utility-scale questions")
    ans.add_argument("--calibration", help=calibration_help)
    ans.add_argument("--quick", action="store_true", help="a smoke of seconds: 30 substations, short runs")
    ans.add_argument("--out", help="directory for model-answers.json and its figures")
    ans.set_defaults(func=cmd_answers)
