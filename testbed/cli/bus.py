"""``fmb up``, ``down``, ``status``, ``demo`` and ``run``: the bus of local processes, and scenarios on it.

A scenario runs on the running bus, or on one started for it and stopped after; the scenario is
checked against the devices it will run with before any bus starts. :func:`run_scenario` and
:func:`verify` are also how the recovery commands (``fmb recover``, ``restore``, ``certs
reissue``, ``certs rotate``) prove that the bus works again.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from testbed.backends.compose import compose_bus
from testbed.backends.fleets import FleetState
from testbed.backends.local import LocalBus
from testbed.cli.common import DEFAULT_UI_PORT, ROOT, Commands, paths, stamp
from testbed.core.errors import TestbedError
from testbed.core.results import Repetition
from testbed.core.scenario import Scenario, load_scenario
from testbed.core.topology import load_topology
from testbed.harness.runner import ScenarioRunner
from testbed.reporting.text import summary_table
from testbed.security.provision import ensure_pki

__all__ = ["SUMMARY_OVER", "add_demo", "add_down", "add_run", "add_status", "add_up", "local_bus", "run_scenario",
           "status_lines", "verify"]

# A bus of more processes than this is summarised: one line per fleet and per site, and every process
# that is not up; a smaller one gets a line per process.
SUMMARY_OVER = 40


@contextmanager
def local_bus(args: argparse.Namespace) -> Iterator[LocalBus]:
    """The running bus if there is one, else a bus started for this command and stopped after."""
    certs, state = paths(args)
    running = LocalBus.attach(state)
    if running is None and getattr(args, "no_start", False):
        raise TestbedError(f"no bus running from {state} (--no-start): start one with `fmb up`")
    if running is not None:
        if args.topology:
            print(f"using the bus already running from {state} (its topology: {running.topology.path})")
        yield running
        return
    topology = load_topology(args.topology)
    # A bus that lives for one run takes any free port for its web UI unless told otherwise.
    port = _ui_port(args, default=0)
    bus = LocalBus(topology, ensure_pki(topology, certs), state, ui_port=port, runs_dir=ROOT / "runs")
    print(f"starting {len(topology.brokers)} brokers and {len(topology.devices)} devices "
          f"({topology.name}) ...", flush=True)
    bus.start()
    try:
        _print_ui(bus, "while this runs")
        yield bus
    finally:
        bus.stop()
        print("stopped the brokers and devices started for this run")


def _ui_port(args: argparse.Namespace, default: int) -> int | None:
    """The first tablet's web UI port: --ui-port, else FMB_UI_PORT, else ``default``; -1 serves none."""
    port = getattr(args, "ui_port", None)
    if port is None:
        try:
            port = int(os.environ.get("FMB_UI_PORT", default))
        except ValueError:
            raise TestbedError(f"FMB_UI_PORT is {os.environ['FMB_UI_PORT']!r}; give a port number") from None
    if not -1 <= port <= 65535:
        raise TestbedError(f"--ui-port is {port}; give a TCP port, 0 for any free one, or -1 for no web UI")
    return None if port == -1 else port


def _print_ui(bus: LocalBus, when: str = "") -> None:
    urls = {d.id: bus.ui_url(d.id) for d in bus.topology.devices if d.role == "tablet"}
    for device, url in urls.items():
        if url:
            print(f"  tablet UI {device}: {url}" + (f"  ({when})" if when else ""))
    if any(urls.values()):
        print(f"    the page's certificate is issued by the testbed's CA ({bus.pki.ca_cert}): import it into "
              "the browser, or accept the warning once")


def _progress(repeat: int) -> Callable[[Repetition], None]:
    def show(rep: Repetition) -> None:
        if repeat > 1 and (rep["rep"] % 10 == 0 or rep["rep"] == repeat or not rep["passed"]):
            e2e = f"{rep['e2e_ms']:.2f} ms" if rep["e2e_ms"] is not None else "-"
            print(f"  repetition {rep['rep']}/{repeat}: {'passed' if rep['passed'] else 'FAILED'}, "
                  f"e2e {e2e}", flush=True)
    return show


def _checked_scenario(args: argparse.Namespace, name: str) -> Scenario:
    """The scenario, checked against the devices it will run with: before any bus starts."""
    running = LocalBus.attach(paths(args)[1]) if args.backend == "local" else None
    topology = running.topology if running is not None else load_topology(args.topology)
    return load_scenario(name, {d.id: d.role for d in topology.devices})


def run_scenario(args: argparse.Namespace, scenario_name: str) -> int:
    """Run a scenario ``args.repeat`` times; 0 if every repetition passed."""
    if args.repeat < 1:
        raise TestbedError(f"--repeat is {args.repeat}; give 1 or more")
    scenario = _checked_scenario(args, scenario_name)
    buses = compose_bus(topology_path=args.topology) if args.backend == "docker" else local_bus(args)
    with buses as bus:
        out = Path(args.out) if args.out else ROOT / "runs" / f"{scenario.name}-{stamp()}"
        with ScenarioRunner(bus, scenario, substation=getattr(args, "substation", None)) as runner:
            result = runner.run(args.repeat, out, backend=args.backend,
                                progress=_progress(args.repeat))
        print(summary_table(result))
        print(f"results: {out}/ (result.json, messages.jsonl, timeline.png, summary.txt)")
    return 0 if result["passed"] else 1


def verify(args: argparse.Namespace, what: str) -> int:
    """Recovery is verified, not assumed: run Appendix A once and say whether it passed (on the
    first substation, where the topology has several)."""
    args.repeat, args.out, args.backend = 1, None, getattr(args, "backend", None) or "local"
    running = LocalBus.attach(paths(args)[1])
    substations = (running.topology if running else load_topology(args.topology)).substations
    args.substation = substations[0].name if len(substations) > 1 else None
    print(f"verifying {what}: running the Appendix A scenario", flush=True)
    code = run_scenario(args, "appendix-a")
    print(f"{what}: {'verified, the scenario passes' if code == 0 else 'NOT verified, the scenario fails'}")
    return code


def cmd_run(args: argparse.Namespace) -> int:
    return run_scenario(args, args.scenario)


def cmd_demo(args: argparse.Namespace) -> int:
    print("Appendix A demo: tablet sets 114 V, DMS closes the cap bank and restores 120 V")
    return run_scenario(args, "appendix-a")


def cmd_up(args: argparse.Namespace) -> int:
    certs, state = paths(args)
    if LocalBus.attach(state) is not None:
        raise TestbedError(f"a bus is already running from {state}; `fmb down` first")
    topology = load_topology(args.topology)
    port = _ui_port(args, default=DEFAULT_UI_PORT)
    bus = LocalBus(topology, ensure_pki(topology, certs), state, ui_port=port, runs_dir=ROOT / "runs")
    bus.start()
    print(f"bus up ({topology.name}), state in {state}")
    for b in topology.brokers:
        print(f"  broker {b.name:16} mqtts://{b.host}:{b.port}  ({b.plane} plane, "
              f"{'persistent' if b.persistent else 'non-persistent'})")
    solo = [d for d in topology.devices if not d.fleet]
    for d in solo[:SUMMARY_OVER]:
        print(f"  device {d.id:16} {d.role:8} site {d.site}   log {bus.device_log(d.id)}")
    if len(solo) > SUMMARY_OVER:
        print(f"  ... and {len(solo) - SUMMARY_OVER} more devices (`fmb status` lists them)")
    for fleet, meters in topology.fleets.items():
        print(f"  fleet  {fleet:16} {len(meters)} meters, site {meters[0].site}   log {bus.device_log(fleet)}")
    _print_ui(bus)
    print("run a scenario with `fmb run appendix-a` (or the page's button); stop with `fmb down`")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    _, state = paths(args)
    bus = LocalBus.attach(state)
    if bus is None:
        print(f"no bus running from {state}")
        return 0
    bus.stop()
    print("bus stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _, state = paths(args)
    bus = LocalBus.attach(state)
    if bus is None:
        print(f"no bus running from {state}")
        return 1
    lines, bad = status_lines(bus)
    for line in lines:
        print(line)
    _print_ui(bus)
    if bad:
        print(f"{bad} of {len(bus.processes)} processes are not up: their logs (above) say why; `fmb recover` "
              "restarts what is down", file=sys.stderr)
    return 1 if bad else 0


def status_lines(bus: LocalBus) -> tuple[list[str], int]:
    """The lines of ``fmb status`` and how many processes are not up."""
    health = {p.name: bus.health(p.name) for p in bus.processes}
    fleets = {p.name: bus.fleet_state(p.name) for p in bus.processes
              if p.kind == "fleet" and health[p.name][0] != "DOWN"}
    lines = []
    for p in bus.processes:
        verdict, why = health[p.name]
        if len(bus.processes) > SUMMARY_OVER and verdict == "up" and p.kind != "fleet":
            continue  # summarised per site below
        shown = f"unhealthy ({why})" if verdict == "unhealthy" else verdict
        fleet = fleets.get(p.name)
        if fleet is not None and fleet.expected is not None:
            shown += f"  {fleet.connected}/{fleet.expected} connected"
        lines.append(f"{p.kind:7} {p.name:18} pid {p.pid:<8} {shown}  {p.log}")
    if len(bus.processes) > SUMMARY_OVER or fleets:
        lines += _site_totals(bus, health, fleets)
    bad = sum(verdict != "up" for verdict, _ in health.values())
    return lines, bad


def _site_totals(bus: LocalBus, health: dict[str, tuple[str, str]], fleets: dict[str, FleetState]) -> list[str]:
    """One line per site: its processes up, and its meters connected of those expected."""
    topology = bus.topology
    site_of = {b.name: b.site for b in topology.brokers}
    site_of.update({d.id: d.site for d in topology.devices if not d.fleet})
    site_of.update({f.id: f.site for f in topology.feeders})
    site_of.update({name: meters[0].site for name, meters in topology.fleets.items()})
    lines = []
    total_up = total = connected = expected = 0
    for site in topology.sites:
        names = [p.name for p in bus.processes if site_of.get(p.name) == site.name]
        up = sum(health[n][0] == "up" for n in names)
        meters = sum(len(m) for f, m in topology.fleets.items() if m[0].site == site.name)
        on = sum(fleets[f].connected or 0 for f in fleets if site_of[f] == site.name)
        what = "substation" if site.bridge_to else "site"
        lines.append(f"{what:10} {site.name:18} {up}/{len(names)} processes up"
                     + (f", {on}/{meters} meters connected" if meters else ""))
        total_up, total, connected, expected = total_up + up, total + len(names), connected + on, expected + meters
    others = [p.name for p in bus.processes if p.name not in site_of]  # the monitor
    total_up += sum(health[n][0] == "up" for n in others)
    total += len(others)
    lines.append(f"{'total':10} {len(topology.sites)} sites{'':9} {total_up}/{total} processes up"
                 + (f", {connected}/{expected} meters connected in {len(topology.fleets)} fleets" if expected else ""))
    return lines


def _scenario_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeat", type=int, default=1, help="repetitions (default 1)")
    p.add_argument("--ui-port", type=int, help="the tablet's web UI port when the bus is started for this "
                   "run (default FMB_UI_PORT or any free port; -1: no web UI)")
    p.add_argument("--no-start", action="store_true",
                   help="fail instead of starting a bus when none is running (what the tablet's run button uses)")
    p.add_argument("--out", help="result directory (default runs/<scenario>-<time>)")
    p.add_argument("--substation", metavar="NAME", help="run on one substation of a large topology: its tablet, "
                   "its first feeder's supply, cap bank and regulating meter (the data centre's devices are shared)")
    p.add_argument("--backend", choices=["local", "docker"], default="local",
                   help="local processes (default), or the Compose bus of compose/ (the "
                        "project $COMPOSE_PROJECT_NAME or fmb; started for the run if not up)")


def add_demo(commands: Commands) -> None:
    _scenario_options(commands.add("demo", cmd_demo, "run the Appendix A scenario once on a bus of local processes"))


def add_run(commands: Commands) -> None:
    p = commands.add("run", cmd_run, "run a scenario (on the running bus, or on one started for it)")
    p.add_argument("scenario", help="scenario name (scenarios/<name>.toml) or file path")
    _scenario_options(p)


def add_up(commands: Commands) -> None:
    up = commands.add("up", cmd_up, "start brokers and devices and leave them running")
    up.add_argument("--ui-port", type=int, help=f"the tablet's web UI port (default FMB_UI_PORT or {DEFAULT_UI_PORT}; "
                    "0: any free port; -1: no web UI)")


def add_down(commands: Commands) -> None:
    commands.add("down", cmd_down, "stop the running bus")


def add_status(commands: Commands) -> None:
    commands.add("status", cmd_status, "show the running bus's processes and their health (exit 1 if any is "
                 "down or unhealthy)")
