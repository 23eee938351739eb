"""``fmb certs init``, ``revoke``, ``reissue`` and ``rotate``: the PKI, and the running bus that uses
it. A revocation reloads the running brokers' CRL; a reissue or a rotation on a running bus
restarts what holds the new certificate, then proves the bus works by running Appendix A.
"""

from __future__ import annotations

import argparse

from testbed.backends.local import LocalBus
from testbed.cli.bus import verify
from testbed.cli.common import Commands, add_backend, paths, running_bus
from testbed.core.topology import load_topology
from testbed.csf.recover import reissue
from testbed.security.pki import PKI
from testbed.security.provision import ensure_pki

__all__ = ["add_certs"]


def cmd_certs_init(args: argparse.Namespace) -> int:
    certs, _ = paths(args)
    pki = ensure_pki(load_topology(args.topology), certs)
    print(f"PKI ready in {pki.directory} (CA {pki.ca_cert})")
    return 0


def cmd_certs_revoke(args: argparse.Namespace) -> int:
    if args.backend == "docker":  # the CA key stays in the pki volume: a one-shot container does it
        with running_bus(args) as bus:
            serial = bus.revoke_certificate(args.name)
            print(f"revoked {args.name} (serial {serial:x}); the new CRL is in every container's volume")
            n = bus.reload_brokers()
        print(f"reloaded {n} running brokers: new TLS handshakes of {args.name} are refused "
              "(a connection already open stays open until evicted: fmb respond evict)")
        return 0
    certs, state = paths(args)
    pki = PKI(certs)
    serial = pki.revoke(args.name)
    print(f"revoked {args.name} (serial {serial:x}); CRL {pki.crl}")
    bus = LocalBus.attach(state)
    if bus is not None:
        n = bus.reload_brokers()
        print(f"reloaded {n} running brokers: new TLS handshakes of {args.name} are refused "
              "(a connection already open stays open until evicted)")
    return 0


def cmd_certs_reissue(args: argparse.Namespace) -> int:
    if args.backend == "docker":
        with running_bus(args) as bus:
            bus.ca("reissue", args.name)
            service = bus.service_of(args.name)
            if service:
                bus.restart(service)
        print(f"reissued {args.name} in the pki volume" + (f"; restarted {service}" if service else ""))
        return verify(args, f"reissue of {args.name}")
    certs, state = paths(args)
    pki = PKI(certs)
    bus = LocalBus.attach(state)
    cert = reissue(pki, args.name, bus)
    print(f"reissued {args.name}: {cert}" + (f"; restarted {args.name}" if bus else ""))
    return verify(args, f"reissue of {args.name}") if bus else 0


def cmd_certs_rotate(args: argparse.Namespace) -> int:
    """New keys and certificates without stopping the bus: brokers reload theirs on SIGHUP, devices
    restart one at a time with theirs, bridges take theirs at their broker's next restart."""
    if args.backend == "docker":
        return _rotate_containers(args)
    certs, state = paths(args)
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
    return verify(args, "rotation")


def _rotate_containers(args: argparse.Namespace) -> int:
    """``rotate --backend docker``: in the one-shot container that holds the CA, then brokers reloaded and
    the services holding a new certificate restarted one at a time."""
    with running_bus(args) as bus:
        topology = bus.container_topology
        bridges = {b.name for b in topology.bridges}
        names = args.names or [b.name for b in topology.brokers] + [
            d.id for d in topology.devices if not d.fleet] + list(topology.web_servers())
        for line in bus.ca("rotate", *names):
            print(line)
        if args.revoke_old:
            print("--revoke-old: not on the Compose bus yet (the old serials are not kept); rotated without it")
        print(f"reloaded {bus.reload_brokers()} brokers (server certificates and CRL)")
        services = []
        for name in names:
            service = bus.service_of(name[:-3] if name.endswith("-ui") else name)
            if service and service not in services and name not in bridges:
                services.append(service)
        for service in services:
            bus.restart(service)
            print(f"restarted {service} with its new certificate")
    return verify(args, "rotation")


def add_certs(commands: Commands) -> None:
    def certs_help(a: argparse.Namespace) -> int:  # `fmb certs` without an action
        certs.print_help()
        return 2

    certs = commands.add("certs", certs_help, "manage the PKI")
    csub = certs.add_subparsers(dest="certs_command", metavar="ACTION")
    init = csub.add_parser("init", parents=[commands.common], help="create the CA and every certificate")
    init.set_defaults(func=cmd_certs_init)
    revoke = csub.add_parser("revoke", parents=[commands.common], help="revoke an identity's certificate")
    revoke.add_argument("name", help="identity (certificate CN), e.g. meter-1")
    add_backend(revoke)
    revoke.set_defaults(func=cmd_certs_revoke)
    reissue = csub.add_parser("reissue", parents=[commands.common], help="a fresh certificate for a revoked identity")
    reissue.add_argument("name", help="identity (certificate CN), e.g. meter-1")
    add_backend(reissue)
    reissue.set_defaults(func=cmd_certs_reissue)
    rotate = csub.add_parser("rotate", parents=[commands.common],
                             help="new keys and certificates without stopping the bus")
    rotate.add_argument("names", nargs="*", help="identities to rotate (default: every broker and client)")
    rotate.add_argument("--revoke-old", action="store_true",
                        help="put the old certificates on the CRL (bridges keep theirs until their broker restarts)")
    add_backend(rotate)
    rotate.set_defaults(func=cmd_certs_rotate)
