"""The NIST CSF functions on the command line: ``fmb inventory`` (Identify), ``profile``, ``monitor``
(Detect), ``respond`` (Respond), ``recover``, ``backup`` and ``restore`` (Recover). Recovery is
verified, not assumed: ``recover`` and ``restore`` end by running Appendix A.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.backends.compose import restore_compose
from testbed.backends.local import LocalBus
from testbed.bench.cutoff import measure_cutoff, write_result
from testbed.cli.bus import verify
from testbed.cli.common import ROOT, Commands, add_backend, paths, running, running_bus, stamp
from testbed.core.errors import TestbedError
from testbed.core.topology import load_topology
from testbed.csf.inventory import build_inventory, plot_data_flows
from testbed.csf.profile import build_profile, render_markdown
from testbed.csf.recover import backup, recover, restore
from testbed.csf.respond import Responder
from testbed.security.pki import PKI
from testbed.security.provision import ensure_pki

__all__ = ["add_backup", "add_inventory", "add_monitor", "add_profile", "add_recover", "add_respond", "add_restore"]


def cmd_inventory(args: argparse.Namespace) -> int:
    certs, state = paths(args)
    bus = LocalBus.attach(state)
    topology = bus.topology if bus else load_topology(args.topology)
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


def cmd_profile(args: argparse.Namespace) -> int:
    evidence = Path(args.evidence or os.environ.get("FMB_EVIDENCE") or ROOT / "var" / "evidence" / "test-results.json")
    if not evidence.exists():
        print(f"no test evidence in {evidence} yet: run scripts/test first; every subcategory shows 'not run'")
    profile = build_profile(evidence)
    out = Path(args.out) if args.out else ROOT / "runs" / "profile"
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(profile, indent=2) + "\n")
    (out / "profile.md").write_text(render_markdown(profile))
    s, t = profile["summary"], profile["tier"]
    print(f"{s['verified']}/{s['technical']} technical subcategories implemented and verified, "
          f"{len(s['gaps'])} gaps, {s['out_of_scope']} out of scope; tier {t['level']} ({t['name']})")
    print(f"profile: {out}/profile.md, profile.json")
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    if args.backend == "docker":
        with running_bus(args) as bus:
            text, where = bus.alerts_text(), "the monitor service's /run/fmb/alerts.jsonl (docker compose logs monitor)"
    else:
        local = running(args)
        path = local.state_dir / "alerts.jsonl"
        text = path.read_text() if path.exists() else ""
        where = f"{path} (monitor log: {local.log_dir / 'monitor.log'})"
    alerts = [json.loads(line) for line in text.splitlines() if line.strip()]
    alerts = [a for a in alerts if not args.kind or a["kind"] == args.kind][-args.last:]
    for a in alerts:
        who = a.get("identity") or a.get("address") or "-"
        r = a.get("response")
        response = f"  -> {r.get('action')} {r.get('error', 'done')}" if r else ""
        print(f"{a['time']}  {a['kind']:20} {who:16} {a.get('broker') or '-':15} "
              f"{json.dumps(a['evidence'])[:100]}{response}")
    print(f"{len(alerts)} alerts shown; all in {where}")
    return 0


def cmd_respond(args: argparse.Namespace) -> int:
    if args.action == "measure":
        with running_bus(args) as bus:
            result = measure_cutoff(bus, repeat=args.repeat, backend=args.backend)
        path = write_result(result, Path(args.out) if args.out else ROOT / "runs" / f"bench-respond-{stamp()}")
        for action, r in result["results"].items():
            c = r["cutoff_ms"]
            print(f"{action:12} alert to cut-off: " + (f"median {c['p50']:.1f} ms, max {c['max']:.1f} ms (n={c['n']})"
                                                     if c else "never cut off") + f", not cut off: {r['not_cut_off']}")
        print(f"result: {path}")
        return 0
    if not args.target:
        raise TestbedError(f"`fmb respond {args.action}` needs a target: an identity (e.g. meter-1) or a topic")
    with running_bus(args) as bus:
        responder = Responder(bus)
        actions: dict[str, Callable[[str], dict[str, Any]]] = {
            "revoke": responder.revoke, "block": responder.block, "unblock": responder.unblock,
            "evict": lambda t: {"action": "evict", "identity": t, "evicted_on": responder.evict(t)}}
        outcome = actions[args.action](args.target)
    print(json.dumps(outcome, indent=2))
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    if args.backend == "docker":
        with running_bus(args) as bus:
            restarted = bus.recover()
        print(f"restarted: {', '.join(restarted)}" if restarted else "every service was running and healthy")
        return verify(args, "recovery")
    certs, state = paths(args)
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
    return verify(args, "recovery")


def cmd_backup(args: argparse.Namespace) -> int:
    certs, state = paths(args)
    archive = Path(args.file) if args.file else ROOT / "var" / "backups" / f"fmb-backup-{stamp()}.tar.gz"
    if args.backend == "docker":
        with running_bus(args) as bus:
            members = bus.backup(archive)
        print(f"backed up {len(members)} files (volume pki and the brokers' persistence volumes) to {archive} "
              "(mode 0600: it holds keys)")
        return 0
    members = backup(certs, state, archive, LocalBus.attach(state))
    print(f"backed up {len(members)} files (PKI and broker persistence) to {archive} (mode 0600: it holds keys)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    if args.backend == "docker":
        restored = restore_compose(Path(args.file), args.topology)
        print(f"restored {len(restored)} files into the Compose project's volumes pki and data-*; bus started")
        return verify(args, "restore")
    certs, state = paths(args)
    restored = restore(Path(args.file), certs, state)
    print(f"restored {len(restored)} files into {certs} and {state / 'brokers'}")
    return verify(args, "restore")


def add_profile(commands: Commands) -> None:
    profile = commands.add("profile", cmd_profile, "the NIST CSF profile of the testbed, backed by the last test run")
    profile.add_argument("--out", help="output directory (default runs/profile)")
    profile.add_argument("--evidence", help="test outcomes file (default var/evidence/test-results.json)")


def add_inventory(commands: Commands) -> None:
    inventory = commands.add("inventory", cmd_inventory,
                             "assets, certificates, rights and data flows as JSON and a diagram")
    inventory.add_argument("--out", help="output directory (default runs/inventory)")


def add_recover(commands: Commands) -> None:
    add_backend(commands.add("recover", cmd_recover,
                             "restart what is down (or the whole recorded bus), then verify with Appendix A"))


def add_backup(commands: Commands) -> None:
    backup_p = commands.add("backup", cmd_backup, "archive the PKI and the brokers' persistence")
    backup_p.add_argument("--file", help="archive path (default var/backups/fmb-backup-<time>.tar.gz)")
    add_backend(backup_p)


def add_restore(commands: Commands) -> None:
    restore_p = commands.add("restore", cmd_restore, "bring back a backup (bus down), then verify with Appendix A")
    restore_p.add_argument("file", help="archive made by `fmb backup`")
    restore_p.add_argument("--backend", choices=["local", "docker"], default="local",
                           help="restore into the local state (bus down), or into the Compose project's volumes "
                                "($COMPOSE_PROJECT_NAME or fmb; stopped, restored, started again)")


def add_respond(commands: Commands) -> None:
    respond = commands.add("respond", cmd_respond, "Respond: revoke, block or evict an identity, block a topic, "
                           "or measure alert-to-cut-off")
    respond.add_argument("action", choices=["revoke", "block", "unblock", "evict", "measure"],
                         help="revoke: CRL + reload + evict; block: no rights (identity) or denied to all (topic); "
                              "evict: drop live sessions; measure: alert-to-cut-off benchmark (JSON)")
    respond.add_argument("target", nargs="?", help="an identity (certificate CN) or, for block, a topic")
    respond.add_argument("--repeat", type=int, default=5, help="measure: repetitions per action (default 5)")
    respond.add_argument("--out", help="measure: result directory (default runs/bench-respond-<time>)")
    add_backend(respond)


def add_monitor(commands: Commands) -> None:
    monitor = commands.add("monitor", cmd_monitor, "Detect: the monitor's alerts on the running bus")
    monitor.add_argument("--kind", help="only alerts of this kind (e.g. topic_scan)")
    monitor.add_argument("--last", type=int, default=50, help="show the last N alerts (default 50)")
    add_backend(monitor)
