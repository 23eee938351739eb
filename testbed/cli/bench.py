"""``fmb bench NAME``: a benchmark (latency, prioritization, recovery, crash, soak, wan, ui, scale) and its result JSON.

Each starts its own buses or brokers, so every argument is checked first: a typo costs a line,
not a bus started and stopped. A benchmark that starts local buses refuses to run beside a bus
already up from ``--state``, which would share the cores with the measured one.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Callable
from pathlib import Path

from testbed.backends.compose import compose_bus
from testbed.backends.local import LocalBus
from testbed.bench import crash, latency, partition, prioritization, recovery, scale, soak, ui, wan, wancurve
from testbed.cli.common import ROOT, Commands, paths, stamp
from testbed.core.errors import TestbedError
from testbed.core.scenario import load_scenario
from testbed.core.topology import DEFAULT_TOPOLOGY, load_topology
from testbed.security.provision import ensure_pki

__all__ = ["add_bench"]


def _render(out: Path) -> None:
    # Deliberately here: rendering loads matplotlib, which only the benchmarks that draw need.
    from testbed.reporting.render import render_run

    render_run(out)


def _say(line: str) -> None:
    print(line, flush=True)


def _refuse_beside_running_bus(state: Path, benchmark: str) -> None:
    """A benchmark that starts its own buses needs the machine to itself: a running bus's brokers and
    devices would share the cores with the measured ones and skew the figures."""
    if LocalBus.attach(state) is not None:
        raise TestbedError(f"a bus is running from {state}: {benchmark} starts its own and needs the machine "
                           "to itself; `fmb down` first")


def _reps(args: argparse.Namespace, default: int) -> int:
    """--repeat, whose default depends on the benchmark."""
    return default if args.repeat is None else args.repeat


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse a number no benchmark can use (latency and ui check theirs before they start anything)."""
    if args.name == "recovery" and args.repeat is not None and args.repeat < 1:
        raise TestbedError(f"--repeat is {args.repeat}; give 1 or more trials per fault")
    for option, value, fine, want in (
        ("--step-seconds", args.step_seconds, args.step_seconds > 0, "seconds > 0"),
        ("--command-rate", args.command_rate, args.command_rate > 0, "commands per second > 0"),
        ("--rate", args.rate, args.rate > 0, "messages per second > 0"),
        ("--payload", args.payload, args.payload >= 0, "bytes >= 0"),
        ("--publishers", args.publishers, args.publishers >= 1, "1 or more"),
    ):
        if not fine:
            raise TestbedError(f"{option} is {value:g}; give {want}")


def _bench_latency(args: argparse.Namespace, out: Path) -> int:
    certs, state = paths(args)
    qos_levels = latency.parse_qos_levels(args.qos)
    _refuse_beside_running_bus(state, "the latency benchmark")
    topology = load_topology(args.topology)
    scenario = load_scenario("appendix-a", {d.id: d.role for d in topology.devices})
    result = latency.run_latency(latency.local_buses(topology, ensure_pki(topology, certs)), topology, scenario,
                                 qos_levels, _reps(args, 200), args.warmup, args.hops, out)
    print(latency.summary(result))
    _render(out)
    print(f"result: {out}/{latency.RESULT_FILE}; figures and report.md beside it")
    return 0


def _bench_ui(args: argparse.Namespace, out: Path) -> int:
    certs, state = paths(args)
    _refuse_beside_running_bus(state, "the UI benchmark")
    topology = load_topology(args.topology)
    scenario = load_scenario("appendix-a", {d.id: d.role for d in topology.devices})
    repeat = _reps(args, 20)
    result = ui.run_ui(topology, ensure_pki(topology, certs), scenario, repeat, out, log=_say)
    print(ui.summary(result))
    print(f"result: {out}/{ui.RESULT_FILE}")
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _bench_wan(args: argparse.Namespace, out: Path) -> int:
    command_rate = args.command_rate if args.command_rate != 50.0 else 10.0  # 50/s would take a third of 1 Mbit/s
    if args.backend == "docker":
        return _bench_wan_docker(args, out, command_rate)
    rate_bps, delay_ms = wan.parse_wan(args.wan or "1mbit,20ms")
    factors = (0.0, 3.0) if args.quick else wancurve.parse_factors(args.load_factors)
    seconds, settle_s = (1.0, 1.0) if args.quick else (args.step_seconds, 2.0)
    _refuse_beside_running_bus(paths(args)[1], "the WAN benchmark")
    print(f"WAN benchmark on a link of this host: {rate_bps / 1e6:g} Mbit/s both ways, {delay_ms:g} ms each way; "
          f"flood at {', '.join(f'{f:g}' for f in factors)} x the link's capacity, {seconds:g} s per step", flush=True)
    # SIGTERM as an exception: the run's namespaces, shaping and processes are removed on the way out.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        result = wancurve.run_wan_curve(rate_bps, delay_ms, out, factors=factors, seconds=seconds,
                                        settle_s=settle_s, command_rate=command_rate, payload_bytes=args.payload,
                                        publishers=args.publishers, progress=_say)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(wancurve.summary(result))
    print(f"result: {out}/{wancurve.RESULT_FILE}")
    return 0


def _bench_wan_docker(args: argparse.Namespace, out: Path, command_rate: float) -> int:
    """The Compose bus's comparison at one rate, with and without the priority class (dc -> field only)."""
    rate_bps, delay_ms = wan.parse_wan(args.wan or "1mbit")
    wan.check_wan(delay_ms)
    print(f"WAN benchmark on the Compose bus: link {rate_bps / 1e6:g} Mbit/s (DC -> field), "
          f"{args.step_seconds:g} s per step", flush=True)
    with compose_bus(topology_path=args.topology) as bus:
        result = wan.run_wan(bus, rate_bps, delay_ms, args.step_seconds, command_rate, args.payload,
                             args.publishers, out, progress=_say)
    _render(out)
    print(wan.summary(result))
    print(f"result: {out}/bench-wan.json; figures and report.md beside it")
    return 0


def _bench_recovery_docker(args: argparse.Namespace, out: Path) -> int:
    try:
        durations = [float(x) for x in args.partitions.split(",") if x.strip()]
    except ValueError:
        durations = []
    if not durations or min(durations) <= 0:
        raise TestbedError(f"--partitions is {args.partitions!r}; give seconds, e.g. 5,30")
    reps = _reps(args, 1)
    rate = args.rate if args.rate != 200.0 else 20.0  # a steady stream, not a load test
    print(f"recovery benchmark (docker): partitions {durations} s, {reps} trial(s) each, {rate:g} msg/s "
          "each way", flush=True)
    with compose_bus(topology_path=args.topology) as bus:
        result = partition.run_partition_recovery(bus, durations, reps, rate, out, progress=_say)
    _render(out)
    print(recovery.summary(result))
    print(f"result: {out}/bench-recovery.json; figures and report.md beside it")
    return 0


def _bench_recovery(args: argparse.Namespace, out: Path) -> int:
    if args.backend == "docker":
        return _bench_recovery_docker(args, out)
    certs, state = paths(args)
    _refuse_beside_running_bus(state, "the recovery benchmark")
    try:
        autosaves = [int(x) for x in args.autosave.split(",") if x.strip()]
    except ValueError:
        raise TestbedError(f"--autosave is {args.autosave!r}; give seconds, e.g. 1,5,30") from None
    topology = load_topology(args.topology)
    pki = ensure_pki(topology, certs)
    reps = _reps(args, 3)
    print(f"recovery benchmark: {reps} trials per fault, {args.rate:g} msg/s, autosave sweep {autosaves} s", flush=True)
    result = recovery.run_recovery(pki, certs, topology.root, reps, args.rate, args.payload, autosaves, out,
                                   progress=_say)
    _render(out)
    print(recovery.summary(result))
    print(f"result: {out}/bench-recovery.json; figures and report.md beside it")
    return 0


def _bench_crash(args: argparse.Namespace, out: Path) -> int:
    policies = crash.parse_policies(args.policies)
    crash.check_runtime(policies, args.runtime)
    if args.repeat is not None and args.repeat < 1:
        raise TestbedError(f"--repeat is {args.repeat}; give 1 or more kills per policy")
    certs, state = paths(args)
    _refuse_beside_running_bus(state, "the crash benchmark")
    topology = load_topology(args.topology)
    reps = _reps(args, 3)
    print(f"crash benchmark ({args.runtime}): {len(policies)} policies, {reps} kill -9 each at {args.rate:g} msg/s, "
          f"3 throughput rounds; load average now {os.getloadavg()[0]:.2f}", flush=True)
    result = crash.run_crash(ensure_pki(topology, certs), topology.root, policies, args.runtime, reps, 3, args.rate,
                             args.payload, 20000, (2.0, 4.0), out, progress=_say)
    _render(out)
    print(crash.summary(result))
    print(f"result: {out}/{crash.RESULT_FILE}; figures and report.md beside it")
    return 0


def _bench_prioritization(args: argparse.Namespace, out: Path) -> int:
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
    unknown = [c for c in configs if c not in prioritization.CONFIGS]
    if unknown:
        raise TestbedError(f"--configs has {', '.join(unknown)}; use {', '.join(prioritization.CONFIGS)}")
    certs, _ = paths(args)
    topology = load_topology(args.topology)
    pki = ensure_pki(topology, certs)
    print(f"prioritization benchmark: {len(configs)} configurations x {len(rates)} flood rates x "
          f"{args.step_seconds:g} s", flush=True)
    result = prioritization.run_prioritization(
        pki, topology.root, rates, args.step_seconds, 1.0, args.command_rate, args.payload, args.flood_qos,
        args.command_qos, args.publishers, out, configs, progress=_say)
    print(prioritization.summary(result))
    print(f"result: {out}/bench-prioritization.json")
    return 0


BENCHMARKS: dict[str, Callable[[argparse.Namespace, Path], int]] = {
    "latency": _bench_latency, "prioritization": _bench_prioritization, "recovery": _bench_recovery,
    "wan": _bench_wan, "ui": _bench_ui, "crash": _bench_crash}


def _bench_soak(args: argparse.Namespace, out: Path) -> int:
    rate = args.rate if args.rate != 200.0 else soak.DEFAULT_RATE  # a steady stream each way, not a load test
    soak.check_options(args.minutes, rate, args.crash_window_s)
    seed = args.seed if args.seed is not None else int(stamp().replace("-", "")) % 10**6
    options = {"rate": rate, "crash_window_s": args.crash_window_s, "progress": _say}
    if args.backend == "docker":
        result = soak.docker_soak(args.topology, args.minutes, seed, out, **options)
    else:
        certs, state = paths(args)
        _refuse_beside_running_bus(state, "the soak")
        topology = load_topology(args.topology)
        result = soak.local_soak(topology, ensure_pki(topology, certs), args.minutes, seed, out, **options)
    _render(out)
    print(soak.summary(result))
    print(f"result: {out}/{soak.RESULT_FILE}, every message in {out}/{soak.LEDGER_FILE}; figures and report.md "
          f"beside them (seed {seed}: --seed {seed} draws the same schedule)")
    return 0


BENCHMARKS["soak"] = _bench_soak
SCALE_TOPOLOGY = DEFAULT_TOPOLOGY.with_name("utility.toml")


def _bench_scale(args: argparse.Namespace, out: Path) -> int:
    intervals = scale.parse_intervals(args.interval)
    base = scale.ScaleOptions.quick_smoke() if args.quick else scale.ScaleOptions()
    options = scale.ScaleOptions(
        substations=base.substations if args.substations is None else args.substations,
        meters=base.meters if args.meters is None else args.meters, storm_meters=args.storm_meters,
        intervals_s=base.intervals_s if args.quick and args.interval == "10" else intervals,
        duration_s=base.duration_s if args.duration is None else args.duration,
        connect_rate=base.connect_rate if args.connect_rate is None else args.connect_rate,
        command_rate=base.command_rate if args.command_rate == 50.0 else args.command_rate,  # 50/s: prioritization's
        idle_control_s=base.idle_control_s, quick=args.quick,
        appendix_a_runs=base.appendix_a_runs if args.appendix_a is None else args.appendix_a,
        backoff=scale.parse_backoff(args.backoff) if args.backoff else base.backoff)
    options.check()
    certs, state = paths(args)
    _refuse_beside_running_bus(state, "the scale benchmark")
    topology = Path(args.topology) if args.topology else SCALE_TOPOLOGY
    result = scale.run_scale(topology, certs, options, out, progress=_say)
    _render(out)
    print(scale.summary(result))
    print(f"result: {out}/{scale.RESULT_FILE}; figures and report.md beside it")
    return 0


BENCHMARKS["scale"] = _bench_scale


def cmd_bench(args: argparse.Namespace) -> int:
    _check_numbers(args)
    out = Path(args.out) if args.out else ROOT / "runs" / f"bench-{args.name}-{stamp()}"
    return BENCHMARKS[args.name](args, out)


def add_bench(commands: Commands) -> None:
    bench = commands.add("bench", cmd_bench, "run a benchmark (not a test): figures as JSON with their conditions")
    bench.add_argument("name", choices=list(BENCHMARKS), help="which benchmark")
    bench.description = (bench.description or "") + (
        ". latency: for each --qos level a fresh bus of local processes is started on free ports in a "
        "temporary state directory (PKI from --certs), the Appendix A scenario is repeated after a warm-up, "
        "then a one-hop baseline runs on the same brokers; it refuses to run beside a bus already up from "
        "--state, which would compete for the cores.")
    bench.add_argument("--repeat", type=int, help="latency: scenario repetitions per QoS (default 200); recovery: "
                       "trials per fault (default 3; docker: 1); crash: kills per policy (default 3); ui: presses "
                       "of Set voltage (default 20)")
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
                       help="prioritization: control commands per second (default 50; wan: 10; scale: 20)")
    bench.add_argument("--payload", type=int, default=256,
                       help="prioritization, wan, crash: payload bytes (default 256)")
    bench.add_argument("--flood-qos", type=int, choices=[0, 1, 2], default=1, help="prioritization: flood QoS")
    bench.add_argument("--command-qos", type=int, choices=[0, 1, 2], default=1, help="prioritization: command QoS")
    bench.add_argument("--publishers", type=int, default=3, help="prioritization, wan: flood publisher processes")
    bench.add_argument("--rate", type=float, default=200.0,
                       help="recovery, crash: producer messages per second (default 200; recovery on docker: 20)")
    bench.add_argument("--autosave", default="1,5,30", help="recovery: autosave intervals to sweep, seconds")
    bench.add_argument("--backend", choices=["local", "docker"], default="local",
                       help="recovery: local processes (default), or field <-> data-centre partitions on the "
                            "Compose bus (started for the run if not up); soak: the local bus (no partition or link "
                            "loss) or the Compose bus (every fault); wan: a link built on this host with network "
                            "namespaces (default: shared, segregated, segregated+priority over a rising flood, "
                            "bench-wan-curve.json) or the Compose bus (segregated with and without the class, "
                            "bench-wan.json)")
    bench.add_argument("--partitions", default="5,30",
                       help="recovery --backend docker: partition lengths in seconds (default 5,30)")
    bench.add_argument("--wan",
                       help="wan: the link, RATE[,DELAY each way] (default 1mbit,20ms; --backend docker: the DC -> "
                            "field direction only, and no delay, which needs netem)")
    bench.add_argument("--load-factors", default=",".join(f"{f:g}" for f in wancurve.DEFAULT_FACTORS),
                       help="wan: the flood offered, as multiples of the link's estimated capacity, ascending from 0 "
                            "(default %(default)s)")
    bench.add_argument("--policies", default=",".join(crash.DEFAULT_POLICIES),
                       help="crash: VERSION/none, /snapshot=S, /changes=N, /usr1=MS, /sqlite=S[,sync=off|normal|full] "
                            "(default: %(default)s)")
    bench.add_argument("--runtime", choices=["docker", "host"], default="docker",
                       help="crash: brokers in containers (default; 2.0 and 2.1 alike) or the host's Mosquitto 2.0")
    bench.add_argument("--out", help="result directory (default runs/bench-<name>-<time>)")
    bench.add_argument("--minutes", type=float, default=30.0,
                       help="soak: how long streams (four, at --rate msg/s each, default 10) flow and faults "
                            "strike (default 30; CI runs 2)")
    bench.add_argument("--seed", type=int,
                       help="soak: the seed of the fault schedule (default: drawn from the time, and printed)")
    bench.add_argument("--substations", type=int,
                       help="scale: substations (default: the topology's; utility.toml has 10; --quick 2)")
    bench.add_argument("--meters", type=int,
                       help="scale: meters per substation (default: the topology's; utility.toml 1,000; --quick 20)")
    bench.add_argument("--storm-meters", type=int,
                       help="scale: give the reconnect storm's substation this many meters (the target: 2000; "
                            "default: as the others)")
    bench.add_argument("--interval", default="10",
                       help="scale: seconds between a meter's readings, or a list (10,5: a steady state each; "
                            "default 10: 10,000 meters give 1,000 readings/s)")
    bench.add_argument("--duration", type=float,
                       help="scale: seconds measured per steady state (default 30; --quick 3)")
    bench.add_argument("--connect-rate", type=float,
                       help="scale: connections each fleet opens per second at start (default 200)")
    bench.add_argument("--appendix-a", type=int,
                       help="scale: Appendix A runs on one substation of the whole bus, with every fleet reporting "
                            "and idle (default 20 each; --quick 3; 0: not run)")
    bench.add_argument("--backoff",
                       help="scale: the meters' reconnect backoff, BASE,CAP seconds (full jitter; default 0.5,20, "
                            "the fleet's own)")
    bench.add_argument("--quick", action="store_true",
                       help="scale: a smoke of seconds (2 substations x 20 meters, readings every second); wan: "
                            "idle and 3 x the link's capacity, 1 s each (about half a minute)")
    bench.add_argument("--crash-window-s", type=float,
                       help="soak: what a kill -9 of a persistent broker may lose, seconds of traffic (default: "
                            "the window its persistence policy gives, 0.5 s for Appendix A's data centre)")
