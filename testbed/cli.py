"""``fmb``: the testbed's command line. Thin: it parses, calls the library, prints.

Every failure the library reports (a :class:`TestbedError`) becomes one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testbed.bus import LocalBus
from testbed.errors import TestbedError
from testbed.pki import PKI
from testbed.topology import Topology, load_topology

__all__ = ["main"]

_SOURCE_ROOT = Path(__file__).resolve().parent.parent
# In a source checkout, generated material lives beside the code (and is git-ignored);
# an installed package uses the current directory.
ROOT = _SOURCE_ROOT if (_SOURCE_ROOT / "pyproject.toml").exists() else Path.cwd()


def _paths(args: argparse.Namespace) -> tuple[Path, Path]:
    certs = Path(args.certs or os.environ.get("FMB_CERTS_DIR") or ROOT / "certs")
    state = Path(args.state or os.environ.get("FMB_STATE_DIR") or ROOT / "var")
    return certs, state


def ensure_pki(topology: Topology, certs: Path) -> PKI:
    """The PKI in ``certs`` with every identity of ``topology`` (created where missing)."""
    pki = PKI(certs)
    created = pki.init({b.name: [b.host] for b in topology.brokers}, topology.client_identities())
    if created:
        print(f"PKI in {certs}: created {', '.join(created)}")
    return pki


@contextmanager
def _bus(args: argparse.Namespace) -> Iterator[LocalBus]:
    """The running bus if there is one, else a bus started for this command and stopped after."""
    certs, state = _paths(args)
    running = LocalBus.attach(state)
    if running is not None:
        if args.topology:
            print(f"using the bus already running from {state} (its topology: {running.topology.path})")
        yield running
        return
    topology = load_topology(args.topology)
    bus = LocalBus(topology, ensure_pki(topology, certs), state)
    print(f"starting {len(topology.brokers)} brokers and {len(topology.devices)} devices "
          f"({topology.name}) ...", flush=True)
    bus.start()
    try:
        yield bus
    finally:
        bus.stop()
        print("stopped the brokers and devices started for this run")


def cmd_certs_init(args: argparse.Namespace) -> int:
    certs, _ = _paths(args)
    pki = ensure_pki(load_topology(args.topology), certs)
    print(f"PKI ready in {pki.directory} (CA {pki.ca_cert})")
    return 0


def cmd_certs_revoke(args: argparse.Namespace) -> int:
    certs, state = _paths(args)
    pki = PKI(certs)
    serial = pki.revoke(args.name)
    print(f"revoked {args.name} (serial {serial:x}); CRL {pki.crl}")
    bus = LocalBus.attach(state)
    if bus is not None:
        n = bus.reload_brokers()
        print(f"reloaded {n} running brokers: new TLS handshakes of {args.name} are refused "
              "(a connection already open stays open until evicted)")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    certs, state = _paths(args)
    if LocalBus.attach(state) is not None:
        raise TestbedError(f"a bus is already running from {state}; `fmb down` first")
    topology = load_topology(args.topology)
    bus = LocalBus(topology, ensure_pki(topology, certs), state)
    bus.start()
    print(f"bus up ({topology.name}), state in {state}")
    for b in topology.brokers:
        print(f"  broker {b.name:16} mqtts://{b.host}:{b.port}  ({b.plane} plane, "
              f"{'persistent' if b.persistent else 'non-persistent'})")
    for d in topology.devices:
        print(f"  device {d.id:16} {d.role:8} site {d.site}   log {bus.device_log(d.id)}")
    print("run a scenario with `fmb run appendix-a`; stop with `fmb down`")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    _, state = _paths(args)
    bus = LocalBus.attach(state)
    if bus is None:
        print(f"no bus running from {state}")
        return 0
    bus.stop()
    print("bus stopped")
    return 0


def _progress(repeat: int) -> Any:
    def show(rep: dict[str, Any]) -> None:
        if repeat > 1 and (rep["rep"] % 10 == 0 or rep["rep"] == repeat or not rep["passed"]):
            e2e = f"{rep['e2e_ms']:.2f} ms" if rep["e2e_ms"] is not None else "-"
            print(f"  repetition {rep['rep']}/{repeat}: {'passed' if rep['passed'] else 'FAILED'}, "
                  f"e2e {e2e}", flush=True)
    return show


def _run(args: argparse.Namespace, scenario_name: str) -> int:
    from testbed.report import summary_table
    from testbed.runner import ScenarioRunner
    from testbed.scenario import load_scenario

    if args.repeat < 1:
        raise TestbedError(f"--repeat is {args.repeat}; give 1 or more")
    with _bus(args) as bus:
        topology = bus.topology
        scenario = load_scenario(scenario_name, {d.id: d.role for d in topology.devices})
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(args.out) if args.out else ROOT / "runs" / f"{scenario.name}-{stamp}"
        with ScenarioRunner(bus, scenario) as runner:
            result = runner.run(args.repeat, out, progress=_progress(args.repeat))
        print(summary_table(result))
        print(f"results: {out}/ (result.json, messages.jsonl, timeline.png, summary.txt)")
    return 0 if result["passed"] else 1


def cmd_run(args: argparse.Namespace) -> int:
    return _run(args, args.scenario)


def cmd_demo(args: argparse.Namespace) -> int:
    print("Appendix A demo: tablet sets 114 V, DMS closes the cap bank and restores 120 V")
    return _run(args, "appendix-a")


def cmd_bench(args: argparse.Namespace) -> int:
    from testbed.bench.latency import run_latency, summary
    from testbed.scenario import load_scenario

    if args.name != "latency":
        raise TestbedError(f"unknown benchmark {args.name!r}; available: latency")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else ROOT / "runs" / f"bench-{args.name}-{stamp}"
    with _bus(args) as bus:
        scenario = load_scenario("appendix-a", {d.id: d.role for d in bus.topology.devices})
        result = run_latency(bus, scenario, args.repeat, args.warmup, args.hops, out,
                             progress=_progress(args.repeat))
    print(summary(result))
    print(f"result: {out}/bench-latency.json")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _, state = _paths(args)
    bus = LocalBus.attach(state)
    if bus is None:
        print(f"no bus running from {state}")
        return 1
    for p in bus.processes:
        print(f"{p.kind:7} {p.name:18} pid {p.pid:<8} {'up' if bus.alive(p.name) else 'DOWN'}  {p.log}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmb", description="Field Message Bus testbed")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--topology", help="topology file (default: the Appendix A topology)")
    common.add_argument("--certs", help="PKI directory (default ./certs, or FMB_CERTS_DIR)")
    common.add_argument("--state", help="runtime state directory (default ./var, or FMB_STATE_DIR)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    for p in (add("demo", cmd_demo, "run the Appendix A scenario once on a bus of local processes"),
              add("run", cmd_run, "run a scenario (on the running bus, or on one started for it)")):
        if p.prog.endswith("run"):
            p.add_argument("scenario", help="scenario name (scenarios/<name>.toml) or file path")
        p.add_argument("--repeat", type=int, default=1, help="repetitions (default 1)")
        p.add_argument("--out", help="result directory (default runs/<scenario>-<time>)")
    bench = add("bench", cmd_bench, "run a benchmark (not a test): figures as JSON with their conditions")
    bench.add_argument("name", choices=["latency"], help="which benchmark")
    bench.add_argument("--repeat", type=int, default=100, help="scenario repetitions (default 100)")
    bench.add_argument("--warmup", type=int, default=5, help="warm-up repetitions (default 5)")
    bench.add_argument("--hops", type=int, default=1000, help="one-hop baseline messages (default 1000)")
    bench.add_argument("--out", help="result directory (default runs/bench-<name>-<time>)")
    add("up", cmd_up, "start brokers and devices and leave them running")
    add("down", cmd_down, "stop the running bus")
    add("status", cmd_status, "show the running bus's processes")
    certs = add("certs", lambda a: certs.print_help() or 2, "manage the PKI")
    csub = certs.add_subparsers(dest="certs_command", metavar="ACTION")
    init = csub.add_parser("init", parents=[common], help="create the CA and every certificate")
    init.set_defaults(func=cmd_certs_init)
    revoke = csub.add_parser("revoke", parents=[common], help="revoke an identity's certificate")
    revoke.add_argument("name", help="identity (certificate CN), e.g. meter-1")
    revoke.set_defaults(func=cmd_certs_revoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except TestbedError as e:
        red, reset = ("\033[31m", "\033[0m") if sys.stderr.isatty() else ("", "")
        print(f"{red}fmb: error: {e}{reset}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fmb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
