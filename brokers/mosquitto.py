"""Mosquitto configurations and ACLs generated from a :class:`~testbed.core.topology.Topology`.

One broker, one directory: ``mosquitto.conf`` and ``acl``. Every listener is mutual TLS with
the identity taken from the certificate's CN, anonymous access is off, a CRL is checked, and
each identity gets only the topics its role needs (``testbed.core.topics``). Data-centre brokers
persist with an explicit autosave policy; edge brokers keep nothing on disk. Field brokers
are bridged to their data-centre counterpart over mutual TLS (MQTT v5), carrying only the
profiles of their plane that a device on the other side reads, one connection per direction,
opened by the side that sends.

Paths are parameters, so the same generator serves local processes and containers (where
certificates are mounted at ``/certs``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePath

from testbed.core.errors import BrokerError
from testbed.core.topics import PROFILES, ROLES, topic
from testbed.core.topology import HARNESS_IDENTITIES, BridgeSpec, BrokerSpec, Topology

__all__ = ["BRIDGE_KEEPALIVE_S", "BRIDGE_RESTART_S", "DYNSEC_TOPIC", "BrokerFiles", "carried_topics",
           "connection_budget", "expected_clients", "mosquitto_binary", "render_acl", "render_broker", "render_conf"]

DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"
# Where the fmb-broker-2.1 image links Mosquitto 2.1's sqlite persistence plugin (whatever the
# architecture's library folder): compose/images/broker-2.1/Dockerfile.
SQLITE_PLUGIN = PurePath("/usr/local/lib/mosquitto/mosquitto_persist_sqlite.so")
# A comment in mosquitto.conf that asks the images' launcher for a snapshot every N ms.
SAVER_MARK = "# fmb: snapshot every "
# How fast a bridge gets over a partition (`fmb bench recovery --backend docker`). Mosquitto 2.0.11
# sets neither TCP keepalive nor TCP_USER_TIMEOUT on a bridge's socket, whose retransmissions back
# off for minutes: the link is found dead only by MQTT keepalive (a PINGREQ after this long
# without input, the socket closed after as long again; 5 s is Mosquitto's minimum), and then the
# heal waits for the next retry. Retries come every restart_timeout + 1 s (whole seconds, compared
# with `>`); "1 1" is a constant 1 s, where "1 2" drew 1 or 2 and one value alone keeps the default
# backoff (base 5 s, cap 30 s). An idle bridge connection pays one PINGREQ/PINGRESP exchange
# (about 250 bytes on the wire) per keepalive; a busy one none.
BRIDGE_KEEPALIVE_S = 5
BRIDGE_RESTART_S = 1
# The plugin's own state: no clients and no roles, since the acl_file decides access; the
# responder creates a client on demand only to disable (evict) it.
DYNSEC_STATE = ('{"clients": [], "groups": [], "roles": [], "defaultACLAccess": {"publishClientSend": false, '
                '"publishClientReceive": false, "subscribe": false, "unsubscribe": false}}\n')


@dataclass(frozen=True)
class BrokerFiles:
    """Where one broker finds its files (paths as the broker process sees them)."""

    certs: PurePath  # the PKI directory (ca/ca.pem, crl.pem, servers/, clients/)
    directory: PurePath  # mosquitto.conf, acl and the persistence data/ folder
    log: PurePath | None  # None: log to stderr (containers)
    bind: str = "127.0.0.1"
    user: str | None = None  # run as this user (None: Mosquitto's default privilege drop)
    peer_hosts: dict[str, str] | None = None  # broker name -> host for bridges
    data: PurePath | None = None  # persistence folder (None: <directory>/data)
    # Detect and Respond (testbed/csf/monitor.py, testbed/csf/respond.py): debug logging (the only level at
    # which Mosquitto logs denied and oversize publishes; costs broker CPU), the dynamic-security
    # plugin (loaded beside the acl_file only to evict live sessions), and the responder's blocks.
    debug_log: bool = False
    dynsec_plugin: PurePath | None = None
    # Where the plugin keeps its state file, which it rewrites on every change (None: beside the
    # configuration; a container's configuration is read-only, so it starts from a copy on a tmpfs).
    dynsec_state: PurePath | None = None
    blocked_identities: tuple[str, ...] = ()
    blocked_topics: tuple[str, ...] = ()
    # > 0: refuse connections beyond this many (Mosquitto's default is no limit but the process's
    # open-files limit, where accept() fails instead); containers set it with their `ulimits`, the local
    # backend raises that limit to match.
    max_connections: int = 0


def expected_clients(topology: Topology, broker: BrokerSpec) -> int:
    """The connections ``broker`` holds when the whole bus is up: its site's devices (a fleet's
    meters on the delivery plane only), its bridges' connections, the harness's identities, a health check."""
    devices = sum(1 for d in topology.devices_at(broker.site) if broker.plane == "delivery" or not d.fleet)
    bridges = sum(1 for b in topology.bridges for way in topology.bridge_connections(b)
                  if broker.name in topology.bridge_endpoints(b, way))
    return devices + bridges + len(HARNESS_IDENTITIES) + 1


def connection_budget(topology: Topology, broker: BrokerSpec) -> int:
    """``max_connections`` for ``broker``: twice its clients (in a reconnect storm a client's dead
    connection may linger until its keepalive expires while the new one arrives) and 256 for
    tools and benchmarks, never under 1024 (the usual default open-files limit)."""
    return max(1024, 2 * expected_clients(topology, broker) + 256)


def render_broker(topology: Topology, broker: BrokerSpec, files: BrokerFiles) -> dict[str, str]:
    """The files of one broker: ``{"mosquitto.conf": ..., "acl": ...}`` (and the dynamic-security
    plugin's state file when the plugin is loaded)."""
    out = {"mosquitto.conf": render_conf(topology, broker, files),
           "acl": render_acl(topology, broker, files.blocked_identities, files.blocked_topics)}
    if files.dynsec_plugin:
        out["dynamic-security.json"] = DYNSEC_STATE
    return out


def render_conf(topology: Topology, broker: BrokerSpec, files: BrokerFiles) -> str:
    certs, here = files.certs, files.directory
    lines = [
        f"# {broker.name}: {broker.plane} plane of site {broker.site!r}. Generated from",
        f"# {topology.path}; edit the topology, not this file.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {here / 'acl'}",
        f"message_size_limit {topology.message_size_limit}",
        f"max_queued_messages {topology.max_queued_messages}",
        "set_tcp_nodelay true",
        "connection_messages true",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        # Subscriptions are rare and cheap to log; the monitor needs them to see topic scanning
        # and messages nobody reads without the cost of debug logging.
        "log_type subscribe",
        "log_type unsubscribe",
        *(["log_type debug"] if files.debug_log else []),
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        # stderr, not stdout: Mosquitto does not flush stdout, so in a container (a pipe) the
        # log would appear in blocks, minutes late.
        f"log_dest file {files.log}" if files.log else "log_dest stderr",
    ]
    if files.user:
        lines.append(f"user {files.user}")
    if files.dynsec_plugin:
        lines += [
            "# Loaded beside acl_file, which stays authoritative for access (checked on 2.0.11): the",
            "# plugin only gives the responder `disableClient`, which evicts an identity's live sessions.",
            f"plugin {files.dynsec_plugin}",
            f"plugin_opt_config_file {files.dynsec_state or here / 'dynamic-security.json'}",
        ]
    if broker.persistence == "snapshot":
        # autosave_on_changes makes autosave_interval a count of changes instead of seconds.
        lines += [
            "# Persistent queues: sessions and queued QoS>0 messages survive a restart. The",
            "# database is written whole on clean exit, on SIGUSR1 and per the autosave policy: a",
            "# kill -9 loses what arrived since the last save (see `fmb bench crash`).",
            "persistence true",
            f"persistence_location {files.data or here / 'data'}/",
            f"autosave_interval {broker.autosave_on_changes or broker.autosave_interval_s}",
            f"autosave_on_changes {'true' if broker.autosave_on_changes else 'false'}",
        ]
        if broker.snapshot_every_ms:
            # Read by the images' launcher (compose/images/broker/mosquitto-saver); the local backend
            # passes the period itself (testbed.backends.saver).
            lines.append(f"{SAVER_MARK}{broker.snapshot_every_ms} ms by SIGUSR1 from mosquitto-saver")
    elif broker.persistence == "sqlite":
        # Mosquitto 2.1's plugin replaces the built-in snapshot (which stays off): the plugin
        # keeps its database in persistence_location. Options: man mosquitto.conf(5) of 2.1 and
        # the plugin's documentation (plugin_opt_flush_period: seconds, 0 = every loop).
        lines += [
            "# Persistent queues in SQLite (Mosquitto 2.1 persist-sqlite): every change is written",
            f"# as it happens and committed every {broker.flush_period_s} s; a kill -9 loses at most the",
            "# uncommitted ones (see `fmb bench crash`).",
            "persistence false",
            f"persistence_location {files.data or here / 'data'}/",
            f"plugin {SQLITE_PLUGIN}",
            f"plugin_opt_flush_period {broker.flush_period_s}",
            f"plugin_opt_sync {broker.sync}",
        ]
    else:
        lines += ["# Edge broker: nothing on disk; devices re-synchronise from the data centre.",
                  "persistence false"]
    lines += [
        "",
        f"listener {broker.port} {files.bind}",
        f"cafile {certs / 'ca' / 'ca.pem'}",
        f"certfile {certs / 'servers' / (broker.name + '.pem')}",
        f"keyfile {certs / 'servers' / (broker.name + '.key')}",
        f"crlfile {certs / 'crl.pem'}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        *([f"max_connections {files.max_connections}"] if files.max_connections > 0 else []),
    ]
    for bridge in topology.bridges:
        directions = topology.bridge_directions(bridge)
        # One connection per direction, opened by the side that sends (see
        # Topology.bridge_endpoints for the queueing reason). And Mosquitto 2.0 does not set
        # TCP_NODELAY on a bridge's own socket, so a connection that both sent PUBLISHes and
        # PUBACKed received ones would hold the next PUBLISH behind a small unacknowledged PUBACK
        # until the peer's delayed ACK fires (~40 ms, Nagle); a connection that only sends has no
        # such stall.
        for way, profiles in topology.bridge_connections(bridge).items():
            host, peer_name = topology.bridge_endpoints(bridge, way)
            if host != broker.name:
                continue
            peer = topology.broker(peer_name)
            address = (files.peer_hosts or {}).get(peer.name, peer.host)
            lines += [
                "",
                f"# Bridge to {peer.name}, carrying {way}ward traffic, mutual TLS as identity {bridge.name}.",
                f"connection {bridge.name}-{way}",
                f"address {address}:{peer.port}",
                f"remote_clientid {bridge.name}-{way}",
                f"local_clientid {bridge.name}-{way}.local",
                "bridge_protocol_version mqttv50",
                "cleansession false",
                "try_private true",
                "notifications false",
                f"restart_timeout {BRIDGE_RESTART_S} {BRIDGE_RESTART_S}",
                f"keepalive_interval {BRIDGE_KEEPALIVE_S}",
                f"bridge_cafile {certs / 'ca' / 'ca.pem'}",
                f"bridge_certfile {certs / 'clients' / (bridge.name + '.pem')}",
                f"bridge_keyfile {certs / 'clients' / (bridge.name + '.key')}",
                "bridge_tls_version tlsv1.2",
            ]
            # Directions are the host's: traffic a data-centre-hosted connection carries inward
            # leaves that broker ("out").
            flip = {"in": "out", "out": "out", "both": "both"}
            lines += [f"topic {t} {flip[directions[p]]} {topology.qos}"
                      for p in profiles for t in carried_topics(topology, bridge, p, directions[p])]
    return "\n".join(lines) + "\n"


def render_acl(topology: Topology, broker: BrokerSpec, blocked_identities: tuple[str, ...] = (),
               blocked_topics: tuple[str, ...] = ()) -> str:
    """Least-privilege ACL of one broker: only identities that connect to it, only its plane.

    A blocked identity loses every right; a blocked topic is denied to everyone (``topic deny``
    is checked before the grants, and a SIGHUP applies it to connected clients too).
    """
    out = [f"# ACL of {broker.name}, derived from testbed.core.topics. Anything not listed is denied."]
    deny = [f"topic deny {t}" for t in blocked_topics]
    if blocked_identities:
        out.append(f"# Blocked by the responder (no rights at all): {', '.join(blocked_identities)}")
    identities: list[tuple[str, str]] = [
        (d.id, d.role) for d in topology.devices_at(broker.site)
    ] + [(name, name) for name in HARNESS_IDENTITIES]
    for ident, role in identities:
        rights = ROLES[role]
        entries = [
            (access, topic(topology.root, g.profile, mrid))
            for access, grants in (("write", rights.publishes), ("read", rights.reads))
            for g in grants
            if PROFILES[g.profile].plane == broker.plane
            for mrid in topology.grant_mrids(ident, g)
        ]
        if ident == "responder":  # evictions through the dynamic-security plugin, nothing else
            entries = [("write", DYNSEC_TOPIC), ("read", DYNSEC_TOPIC + "/response")]
        if entries and ident not in blocked_identities:  # an identity not listed is denied everything
            out += ["", f"user {ident}", *deny] + [f"topic {a} {t}" for a, t in entries]
    # A bridge connecting *to* this broker writes what it carries here (readwrite if both ways).
    for bridge in topology.bridges:
        directions = topology.bridge_directions(bridge)
        carried = [
            f"topic {'readwrite' if directions[p] == 'both' else 'write'} {t}"
            for way, profiles in topology.bridge_connections(bridge).items()
            if topology.bridge_endpoints(bridge, way)[1] == broker.name
            for p in profiles
            for t in carried_topics(topology, bridge, p, directions[p])
        ]
        if carried:
            out += ["", f"user {bridge.name}", *deny, *carried]
    return "\n".join(out) + "\n"


def carried_topics(topology: Topology, bridge: BridgeSpec, profile: str, direction: str) -> list[str]:
    """The topics of ``profile`` that ``bridge`` carries: inward, only those of the mRIDs its site
    reads (its own devices' commands, its feeders' diagrams), so that nothing addressed to another
    substation ever reaches its brokers; outward, any mRID (the site's ACL lets only its own devices
    publish there)."""
    mrids = topology.bridge_inward_mrids(bridge, profile) if direction == "in" else None
    if mrids is None:
        return [topic(topology.root, profile, "+")]
    return [topic(topology.root, profile, m) for m in mrids]


def mosquitto_binary() -> str:
    """The mosquitto executable, or a one-line error saying how to install it."""
    found = os.environ.get("FMB_MOSQUITTO") or shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not found or not Path(found).exists():
        raise BrokerError("mosquitto is not installed: run `sudo apt-get install mosquitto` "
                          "(Debian's mosquitto 2.0), or set FMB_MOSQUITTO to its path")
    return found
