"""``fmb``: the testbed's command line. Thin: it parses, calls the library, prints.

Every failure the library reports (a :class:`TestbedError`) becomes one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from testbed.backends.local import LocalBus
from testbed.core.errors import TestbedError
from testbed.core.topology import load_topology
from testbed.security.pki import PKI
from testbed.security.provision import ensure_pki

__all__ = ["main"]

_SOURCE_ROOT = Path(__file__).resolve().parents[2]
# In a source checkout, generated material lives beside the code (and is git-ignored);
# an installed package uses the current directory.
ROOT = _SOURCE_ROOT if (_SOURCE_ROOT / "pyproject.toml").exists() else Path.cwd()
DEFAULT_UI_PORT = 8443


def _paths(args: argparse.Namespace) -> tuple[Path, Path]:
    certs = Path(args.certs or os.environ.get("FMB_CERTS_DIR") or ROOT / "certs")
    state = Path(args.state or os.environ.get("FMB_STATE_DIR") or ROOT / "var")
    return certs, state


@contextmanager
def _bus(args: argparse.Namespace) -> Iterator[LocalBus]:
    """The running bus if there is one, else a bus started for this command and stopped after."""
    certs, state = _paths(args)
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
    bus = LocalBus(topology, ensure_pki(topology, certs), state, ui_port=_ui_port(args, default=0),
                   runs_dir=ROOT / "runs")
    print(f"starting {len(topology.brokers)} brokers and {len(topology.devices)} devices "
          f"({topology.name}) ...", flush=True)
    bus.start()
    try:
        _print_ui(bus, "while this runs")
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
    bus = LocalBus(topology, ensure_pki(topology, certs), state, ui_port=_ui_port(args, default=DEFAULT_UI_PORT),
                   runs_dir=ROOT / "runs")
    bus.start()
    print(f"bus up ({topology.name}), state in {state}")
    for b in topology.brokers:
        print(f"  broker {b.name:16} mqtts://{b.host}:{b.port}  ({b.plane} plane, "
              f"{'persistent' if b.persistent else 'non-persistent'})")
    for d in topology.devices:
        print(f"  device {d.id:16} {d.role:8} site {d.site}   log {bus.device_log(d.id)}")
    _print_ui(bus)
    print("run a scenario with `fmb run appendix-a` (or the page's button); stop with `fmb down`")
    return 0


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
    from testbed.core.scenario import load_scenario
    from testbed.harness.runner import Bus, ScenarioRunner
    from testbed.reporting.scenario import summary_table

    if args.repeat < 1:
        raise TestbedError(f"--repeat is {args.repeat}; give 1 or more")
    buses: AbstractContextManager[Bus]
    if args.backend == "docker":
        from testbed.backends.compose import compose_bus
        buses = compose_bus(topology_path=args.topology)
    else:
        buses = _bus(args)
    with buses as bus:
        topology = bus.topology
        scenario = load_scenario(scenario_name, {d.id: d.role for d in topology.devices})
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(args.out) if args.out else ROOT / "runs" / f"{scenario.name}-{stamp}"
        with ScenarioRunner(bus, scenario) as runner:
            result = runner.run(args.repeat, out, backend=args.backend,
                                progress=_progress(args.repeat))
        print(summary_table(result))
        print(f"results: {out}/ (result.json, messages.jsonl, timeline.png, summary.txt)")
    return 0 if result["passed"] else 1


def cmd_run(args: argparse.Namespace) -> int:
    return _run(args, args.scenario)


def cmd_demo(args: argparse.Namespace) -> int:
    print("Appendix A demo: tablet sets 114 V, DMS closes the cap bank and restores 120 V")
    return _run(args, "appendix-a")


def _bench_latency(args: argparse.Namespace, out: Path) -> int:
    from testbed.bench.latency import RESULT_FILE, local_buses, parse_qos_levels, run_latency, summary
    from testbed.core.scenario import load_scenario
    from testbed.reporting.render import render_run

    certs, state = _paths(args)
    qos_levels = parse_qos_levels(args.qos)
    _refuse_beside_running_bus(state, "the latency benchmark")
    topology = load_topology(args.topology)
    scenario = load_scenario("appendix-a", {d.id: d.role for d in topology.devices})
    result = run_latency(local_buses(topology, ensure_pki(topology, certs)), topology, scenario, qos_levels,
                         _reps(args, 200), args.warmup, args.hops, out)
    print(summary(result))
    render_run(out)
    print(f"result: {out}/{RESULT_FILE}; figures and report.md beside it")
    return 0


def _refuse_beside_running_bus(state: Path, benchmark: str) -> None:
    """A benchmark that starts its own buses needs the machine to itself: a running bus's brokers and
    devices would share the cores with the measured ones and skew the figures."""
    if LocalBus.attach(state) is not None:
        raise TestbedError(f"a bus is running from {state}: {benchmark} starts its own and needs the machine "
                           "to itself; `fmb down` first")


def _reps(args: argparse.Namespace, default: int) -> int:
    """--repeat, whose default depends on the benchmark."""
    return default if args.repeat is None else args.repeat


def cmd_bench(args: argparse.Namespace) -> int:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else ROOT / "runs" / f"bench-{args.name}-{stamp}"
    if args.name == "latency":
        return _bench_latency(args, out)
    if args.name == "prioritization":
        return _bench_prioritization(args, out)
    if args.name == "recovery":
        return _bench_recovery(args, out)
    if args.name == "wan":
        return _bench_wan(args, out)
    if args.name == "ui":
        return _bench_ui(args, out)
    raise TestbedError(f"unknown benchmark {args.name!r}; available: latency, prioritization, recovery, wan, ui")


def _bench_ui(args: argparse.Namespace, out: Path) -> int:
    from testbed.bench.ui import RESULT_FILE, run_ui, summary
    from testbed.core.scenario import load_scenario

    certs, state = _paths(args)
    _refuse_beside_running_bus(state, "the UI benchmark")
    topology = load_topology(args.topology)
    scenario = load_scenario("appendix-a", {d.id: d.role for d in topology.devices})
    repeat = _reps(args, 20)
    result = run_ui(topology, ensure_pki(topology, certs), scenario, repeat, out,
                    log=lambda line: print(line, flush=True))
    print(summary(result))
    print(f"result: {out}/{RESULT_FILE}")
    return 0


def _bench_wan(args: argparse.Namespace, out: Path) -> int:
    from testbed.backends.compose import compose_bus
    from testbed.bench.wan import parse_wan, run_wan, summary
    from testbed.reporting.render import render_run

    rate_bps, delay_ms = parse_wan(args.wan)
    command_rate = args.command_rate if args.command_rate != 50.0 else 10.0  # 50/s would take a third of 1 Mbit/s
    print(f"WAN benchmark on the Compose bus: link {rate_bps / 1e6:g} Mbit/s (DC -> field), "
          f"{args.step_seconds:g} s per step", flush=True)
    with compose_bus(topology_path=args.topology) as bus:
        result = run_wan(bus, rate_bps, delay_ms, args.step_seconds, command_rate, args.payload,
                         args.publishers, out, progress=lambda line: print(line, flush=True))
    render_run(out)
    print(summary(result))
    print(f"result: {out}/bench-wan.json; figures and report.md beside it")
    return 0


def _bench_recovery_docker(args: argparse.Namespace, out: Path) -> int:
    from testbed.backends.compose import compose_bus
    from testbed.bench.partition import run_partition_recovery
    from testbed.bench.recovery import summary
    from testbed.reporting.render import render_run

    try:
        durations = [float(x) for x in args.partitions.split(",") if x.strip()]
    except ValueError:
        raise TestbedError(f"--partitions is {args.partitions!r}; give seconds, e.g. 5,30") from None
    reps = _reps(args, 1)
    rate = args.rate if args.rate != 200.0 else 20.0  # a steady stream, not a load test
    print(f"recovery benchmark (docker): partitions {durations} s, {reps} trial(s) each, {rate:g} msg/s "
          "each way", flush=True)
    with compose_bus(topology_path=args.topology) as bus:
        result = run_partition_recovery(bus, durations, reps, rate, out,
                                        progress=lambda line: print(line, flush=True))
    render_run(out)
    print(summary(result))
    print(f"result: {out}/bench-recovery.json; figures and report.md beside it")
    return 0


def _bench_recovery(args: argparse.Namespace, out: Path) -> int:
    from testbed.bench.recovery import run_recovery, summary
    from testbed.reporting.render import render_run

    if args.backend == "docker":
        return _bench_recovery_docker(args, out)
    certs, state = _paths(args)
    _refuse_beside_running_bus(state, "the recovery benchmark")
    try:
        autosaves = [int(x) for x in args.autosave.split(",") if x.strip()]
    except ValueError:
        raise TestbedError(f"--autosave is {args.autosave!r}; give seconds, e.g. 1,5,30") from None
    topology = load_topology(args.topology)
    pki = ensure_pki(topology, certs)
    reps = _reps(args, 3)
    print(f"recovery benchmark: {reps} trials per fault, {args.rate:g} msg/s, autosave sweep {autosaves} s", flush=True)
    result = run_recovery(pki, certs, topology.root, reps, args.rate, args.payload, autosaves, out,
                          progress=lambda line: print(line, flush=True))
    render_run(out)
    print(summary(result))
    print(f"result: {out}/bench-recovery.json; figures and report.md beside it")
    return 0


def _bench_prioritization(args: argparse.Namespace, out: Path) -> int:
    from testbed.bench.prioritization import CONFIGS, run_prioritization, summary

    def rate(text: str) -> float | None:
        if text == "max":
            return None
        try:
            value = float(text)
        except ValueError:
            raise TestbedError(f"--rates has {text!r}; give numbers of msg/s or 'max'") from None
        if value < 0:
            raise TestbedError(f"--rates has {text}; rates are >= 0")
        return value

    rates = [rate(r.strip()) for r in args.rates.split(",") if r.strip()]
    if not rates or rates[0] != 0:
        raise TestbedError("--rates must start with 0 (the idle baseline), e.g. 0,5000,20000,max")
    configs = tuple(c.strip() for c in args.configs.split(","))
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise TestbedError(f"--configs has {', '.join(unknown)}; use {', '.join(CONFIGS)}")
    certs, _ = _paths(args)
    pki = ensure_pki(load_topology(args.topology), certs)
    print(f"prioritization benchmark: {len(configs)} configurations x {len(rates)} flood rates x "
          f"{args.step_seconds:g} s", flush=True)
    result = run_prioritization(pki, load_topology(args.topology).root, rates, args.step_seconds, 1.0,
                                args.command_rate, args.payload, args.flood_qos, args.command_qos,
                                args.publishers, out, configs, progress=lambda line: print(line, flush=True))
    print(summary(result))
    print(f"result: {out}/bench-prioritization.json")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from testbed.reporting.render import render_run

    report = render_run(Path(args.run_dir))
    for skipped in report.skipped:
        print(f"fmb: not rendered: {skipped}", file=sys.stderr)
    print(f"report: {report.path} ({len(report.figures)} figures beside the result files)")
    return 0 if report.figures or not report.skipped else 1


def cmd_inventory(args: argparse.Namespace) -> int:
    import json

    from testbed.csf.inventory import build_inventory, plot_data_flows

    certs, state = _paths(args)
    running = LocalBus.attach(state)
    topology = running.topology if running else load_topology(args.topology)
    inventory = build_inventory(topology, PKI(certs))
    out = Path(args.out) if args.out else ROOT / "runs" / "inventory"
    out.mkdir(parents=True, exist_ok=True)
    (out / "inventory.json").write_text(json.dumps(inventory, indent=2) + "\n")
    plot_data_flows(inventory, out / "data-flows.png")
    revoked = [c["name"] for c in inventory["certificates"] if c.get("revoked")]
    names = f": {', '.join(revoked)}" if revoked else ""
    print(f"{len(inventory['brokers'])} brokers, {len(inventory['devices'])} devices, "
          f"{len(inventory['bridges'])} bridges, {len(inventory['data_flows'])} data flows, "
          f"{len(inventory['certificates'])} certificates ({len(revoked)} revoked{names})")
    print(f"inventory: {out}/inventory.json, data-flows.png")
    return 0


def _verify(args: argparse.Namespace, what: str) -> int:
    """Recovery is verified, not assumed: run Appendix A once and say whether it passed."""
    args.repeat, args.out, args.backend = 1, None, "local"
    print(f"verifying {what}: running the Appendix A scenario", flush=True)
    code = _run(args, "appendix-a")
    print(f"{what}: {'verified, the scenario passes' if code == 0 else 'NOT verified, the scenario fails'}")
    return code


def cmd_recover(args: argparse.Namespace) -> int:
    from testbed.csf.recover import recover

    certs, state = _paths(args)
    bus = LocalBus.attach(state)
    if bus is None:
        if not (state / "brokers").exists():
            raise TestbedError(f"nothing to recover in {state}: no bus ran there; start one with `fmb up`")
        print(f"no bus running from {state}: starting it again from the brokers' persisted state")
        topology = load_topology(args.topology)
        bus = LocalBus(topology, ensure_pki(topology, certs), state)
        bus.start()
        print(f"bus up ({topology.name}); it stays up (`fmb down` to stop)")
    else:
        restarted = recover(bus)
        print(f"restarted: {', '.join(restarted)}" if restarted else "every process was running")
    return _verify(args, "recovery")


def cmd_certs_reissue(args: argparse.Namespace) -> int:
    from testbed.csf.recover import reissue

    certs, state = _paths(args)
    pki = PKI(certs)
    bus = LocalBus.attach(state)
    cert = reissue(pki, args.name, bus)
    print(f"reissued {args.name}: {cert}" + (f"; restarted {args.name}" if bus else ""))
    return _verify(args, f"reissue of {args.name}") if bus else 0


def cmd_certs_rotate(args: argparse.Namespace) -> int:
    """New keys and certificates without stopping the bus: brokers reload theirs on SIGHUP, devices
    restart one at a time with theirs, bridges take theirs at their broker's next restart."""
    certs, state = _paths(args)
    pki = PKI(certs)
    bus = LocalBus.attach(state)
    topology = bus.topology if bus else load_topology(args.topology)
    bridges = {b.name for b in topology.bridges}
    names = args.names or [b.name for b in topology.brokers] + topology.client_identities() + list(
        topology.web_servers())
    for name in names:
        old, new = pki.rotate(name, revoke_old=args.revoke_old and name not in bridges)
        print(f"rotated {name}: serial {old:x} -> {new:x}" + (" (old revoked)" if args.revoke_old and
                                                              name not in bridges else ""))
    if bus is None:
        return 0
    print(f"reloaded {bus.reload_brokers()} brokers (server certificates and CRL)")
    # A tablet restarts for its MQTT certificate or its web console's (<tablet>-ui), once.
    for p in [p for p in bus.processes if p.kind in ("device", "monitor")
              and (p.name in names or f"{p.name}-ui" in names)]:
        bus.restart(p.name)
        print(f"restarted {p.name} with its new certificate")
    return _verify(args, "rotation")


def cmd_backup(args: argparse.Namespace) -> int:
    from testbed.csf.recover import backup

    certs, state = _paths(args)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    archive = Path(args.file) if args.file else ROOT / "var" / "backups" / f"fmb-backup-{stamp}.tar.gz"
    members = backup(certs, state, archive, LocalBus.attach(state))
    print(f"backed up {len(members)} files (PKI and broker persistence) to {archive} (mode 0600: it holds keys)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from testbed.csf.recover import restore

    certs, state = _paths(args)
    restored = restore(Path(args.file), certs, state)
    print(f"restored {len(restored)} files into {certs} and {state / 'brokers'}")
    return _verify(args, "restore")


def cmd_profile(args: argparse.Namespace) -> int:
    from testbed.csf.profile import build_profile, render_markdown

    evidence = Path(args.evidence or os.environ.get("FMB_EVIDENCE") or ROOT / "var" / "evidence" / "test-results.json")
    if not evidence.exists():
        print(f"no test evidence in {evidence} yet: run scripts/test first; every subcategory shows 'not run'")
    profile = build_profile(evidence)
    out = Path(args.out) if args.out else ROOT / "runs" / "profile"
    out.mkdir(parents=True, exist_ok=True)
    import json

    (out / "profile.json").write_text(json.dumps(profile, indent=2) + "\n")
    (out / "profile.md").write_text(render_markdown(profile))
    s, t = profile["summary"], profile["tier"]
    print(f"{s['verified']}/{s['technical']} technical subcategories implemented and verified, "
          f"{len(s['gaps'])} gaps, {s['out_of_scope']} out of scope; tier {t['level']} ({t['name']})")
    print(f"profile: {out}/profile.md, profile.json")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _, state = _paths(args)
    bus = LocalBus.attach(state)
    if bus is None:
        print(f"no bus running from {state}")
        return 1
    for p in bus.processes:
        print(f"{p.kind:7} {p.name:18} pid {p.pid:<8} {'up' if bus.alive(p.name) else 'DOWN'}  {p.log}")
    _print_ui(bus)
    return 0


def _running(args: argparse.Namespace) -> LocalBus:
    _, state = _paths(args)
    bus = LocalBus.attach(state)
    if bus is None:
        raise TestbedError(f"no bus running from {state}; start one with `fmb up`")
    return bus


def cmd_respond(args: argparse.Namespace) -> int:
    import json

    from testbed.csf.respond import Responder

    if args.action == "measure":
        from testbed.bench.cutoff import measure_cutoff, write_result

        result = measure_cutoff(_running(args), repeat=args.repeat)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = write_result(result, Path(args.out) if args.out else ROOT / "runs" / f"bench-respond-{stamp}")
        for action, r in result["results"].items():
            c = r["cutoff_ms"]
            print(f"{action:12} alert to cut-off: " + (f"median {c['p50']:.1f} ms, max {c['max']:.1f} ms (n={c['n']})"
                                                     if c else "never cut off") + f", not cut off: {r['not_cut_off']}")
        print(f"result: {path}")
        return 0
    if not args.target:
        raise TestbedError(f"`fmb respond {args.action}` needs a target: an identity (e.g. meter-1) or a topic")
    responder = Responder(_running(args))
    actions: dict[str, Callable[[str], dict[str, Any]]] = {
        "revoke": responder.revoke, "block": responder.block, "unblock": responder.unblock,
        "evict": lambda t: {"action": "evict", "identity": t, "evicted_on": responder.evict(t)}}
    outcome = actions[args.action](args.target)
    print(json.dumps(outcome, indent=2))
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    import json

    bus = _running(args)
    path = bus.state_dir / "alerts.jsonl"
    alerts = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    alerts = [a for a in alerts if not args.kind or a["kind"] == args.kind][-args.last:]
    for a in alerts:
        who = a.get("identity") or a.get("address") or "-"
        r = a.get("response")
        response = f"  -> {r.get('action')} {r.get('error', 'done')}" if r else ""
        print(f"{a['time']}  {a['kind']:20} {who:16} {a.get('broker') or '-':15} "
              f"{json.dumps(a['evidence'])[:100]}{response}")
    print(f"{len(alerts)} alerts shown; all in {path} (monitor log: {bus.log_dir / 'monitor.log'})")
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
        p.add_argument("--ui-port", type=int, help="the tablet's web UI port when the bus is started for this "
                       "run (default FMB_UI_PORT or any free port; -1: no web UI)")
        p.add_argument("--no-start", action="store_true",
                       help="fail instead of starting a bus when none is running (what the tablet's run button uses)")
        p.add_argument("--out", help="result directory (default runs/<scenario>-<time>)")
        p.add_argument("--backend", choices=["local", "docker"], default="local",
                       help="local processes (default), or the Compose bus of compose/ (the "
                            "project $COMPOSE_PROJECT_NAME or fmb; started for the run if not up)")
    bench = add("bench", cmd_bench, "run a benchmark (not a test): figures as JSON with their conditions")
    bench.add_argument("name", choices=["latency", "prioritization", "recovery", "wan", "ui"], help="which benchmark")
    bench.description = (bench.description or "") + (
        ". latency: for each --qos level a fresh bus of local processes is started on free ports in a "
        "temporary state directory (PKI from --certs), the Appendix A scenario is repeated after a warm-up, "
        "then a one-hop baseline runs on the same brokers; it refuses to run beside a bus already up from "
        "--state, which would compete for the cores.")
    bench.add_argument("--repeat", type=int, help="latency: scenario repetitions per QoS (default 200); recovery: "
                       "trials per fault (default 3; docker: 1); ui: presses of Set voltage (default 20)")
    bench.add_argument("--warmup", type=int, default=5, help="latency: warm-up repetitions per QoS (default 5)")
    bench.add_argument("--hops", type=int, default=1000,
                       help="latency: one-hop baseline messages per QoS (default 1000)")
    bench.add_argument("--qos", default="0,1,2", help="latency: QoS levels, comma-separated (default 0,1,2)")
    bench.add_argument("--rates", default="0,5000,20000,40000,max",
                       help="prioritization: flood rates in msg/s, from 0, 'max' = as fast as the publishers can")
    bench.add_argument("--configs", default="segregated,shared,segregated+priority",
                       help="prioritization: configurations to compare")
    bench.add_argument("--step-seconds", type=float, default=10.0,
                       help="prioritization, wan: measuring time per step (default 10)")
    bench.add_argument("--command-rate", type=float, default=50.0,
                       help="prioritization: control commands per second (default 50; wan: 10)")
    bench.add_argument("--payload", type=int, default=256,
                       help="prioritization, wan: flood payload bytes (default 256)")
    bench.add_argument("--flood-qos", type=int, choices=[0, 1, 2], default=1, help="prioritization: flood QoS")
    bench.add_argument("--command-qos", type=int, choices=[0, 1, 2], default=1, help="prioritization: command QoS")
    bench.add_argument("--publishers", type=int, default=3, help="prioritization, wan: flood publisher processes")
    bench.add_argument("--rate", type=float, default=200.0,
                       help="recovery: producer messages per second (default 200; docker: 20)")
    bench.add_argument("--autosave", default="1,5,30", help="recovery: autosave intervals to sweep, seconds")
    bench.add_argument("--backend", choices=["local", "docker"], default="local",
                       help="recovery: local processes (default), or field <-> data-centre partitions on the "
                            "Compose bus (started for the run if not up); wan always runs on docker")
    bench.add_argument("--partitions", default="5,30",
                       help="recovery --backend docker: partition lengths in seconds (default 5,30)")
    bench.add_argument("--wan", default="1mbit",
                       help="wan: the DC -> field link, RATE[,DELAY] (default 1mbit; a delay needs netem, "
                            "which this kernel lacks)")
    bench.add_argument("--out", help="result directory (default runs/bench-<name>-<time>)")
    report = sub.add_parser("report", help="render every result JSON of a run directory to PNG and report.md",
                            description="Render every result JSON in RUN_DIR (scenario result.json, bench-*.json) "
                                        "to PNG figures and a Markdown summary, report.md. Nothing is re-measured.")
    report.add_argument("run_dir", metavar="RUN_DIR", help="directory holding result JSON files")
    report.set_defaults(func=cmd_report)
    up = add("up", cmd_up, "start brokers and devices and leave them running")
    up.add_argument("--ui-port", type=int, help=f"the tablet's web UI port (default FMB_UI_PORT or {DEFAULT_UI_PORT}; "
                    "0: any free port; -1: no web UI)")
    add("down", cmd_down, "stop the running bus")
    add("status", cmd_status, "show the running bus's processes")
    profile = add("profile", cmd_profile, "the NIST CSF profile of the testbed, backed by the last test run")
    profile.add_argument("--out", help="output directory (default runs/profile)")
    profile.add_argument("--evidence", help="test outcomes file (default var/evidence/test-results.json)")
    inventory = add("inventory", cmd_inventory, "assets, certificates, rights and data flows as JSON and a diagram")
    inventory.add_argument("--out", help="output directory (default runs/inventory)")
    def certs_help(a: argparse.Namespace) -> int:  # `fmb certs` without an action
        certs.print_help()
        return 2

    certs = add("certs", certs_help, "manage the PKI")
    csub = certs.add_subparsers(dest="certs_command", metavar="ACTION")
    init = csub.add_parser("init", parents=[common], help="create the CA and every certificate")
    init.set_defaults(func=cmd_certs_init)
    revoke = csub.add_parser("revoke", parents=[common], help="revoke an identity's certificate")
    revoke.add_argument("name", help="identity (certificate CN), e.g. meter-1")
    revoke.set_defaults(func=cmd_certs_revoke)
    reissue = csub.add_parser("reissue", parents=[common], help="a fresh certificate for a revoked identity")
    reissue.add_argument("name", help="identity (certificate CN), e.g. meter-1")
    reissue.set_defaults(func=cmd_certs_reissue)
    rotate = csub.add_parser("rotate", parents=[common], help="new keys and certificates without stopping the bus")
    rotate.add_argument("names", nargs="*", help="identities to rotate (default: every broker and client)")
    rotate.add_argument("--revoke-old", action="store_true",
                        help="put the old certificates on the CRL (bridges keep theirs until their broker restarts)")
    rotate.set_defaults(func=cmd_certs_rotate)
    add("recover", cmd_recover, "restart what is down (or the whole recorded bus), then verify with Appendix A")
    backup_p = add("backup", cmd_backup, "archive the PKI and the brokers' persistence")
    backup_p.add_argument("--file", help="archive path (default var/backups/fmb-backup-<time>.tar.gz)")
    restore_p = add("restore", cmd_restore, "bring back a backup (bus down), then verify with Appendix A")
    restore_p.add_argument("file", help="archive made by `fmb backup`")
    respond = add("respond", cmd_respond, "Respond: revoke, block or evict an identity, block a topic, "
                  "or measure alert-to-cut-off")
    respond.add_argument("action", choices=["revoke", "block", "unblock", "evict", "measure"],
                         help="revoke: CRL + reload + evict; block: no rights (identity) or denied to all (topic); "
                              "evict: drop live sessions; measure: alert-to-cut-off benchmark (JSON)")
    respond.add_argument("target", nargs="?", help="an identity (certificate CN) or, for block, a topic")
    respond.add_argument("--repeat", type=int, default=5, help="measure: repetitions per action (default 5)")
    respond.add_argument("--out", help="measure: result directory (default runs/bench-respond-<time>)")
    monitor = add("monitor", cmd_monitor, "Detect: the monitor's alerts on the running bus")
    monitor.add_argument("--kind", help="only alerts of this kind (e.g. topic_scan)")
    monitor.add_argument("--last", type=int, default=50, help="show the last N alerts (default 50)")
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
