"""What runs inside the Compose bus's containers: the volume set-up and the launchers.

``init`` (the one-shot service; the command line is :mod:`testbed.cli.containers`) creates the
PKI in its private volume when there is none (the CA key never leaves that volume), then copies
to each container's own volume only what that container needs: a broker gets its configuration
(rendered by :func:`brokers.mosquitto.render_broker` with container paths and the Compose
service names as bridge peers), its server certificate and key, its bridges' client
certificates and a health-check identity with no topic rights; a device gets its certificate
and key (and its command-signing key if it issues commands); the harness gets the
``recorder`` and ``operator`` identities. Signers' public keys go to every device and the
harness. It starts as root only to hand the fresh, root-owned volumes to uid 10001, then drops
to 10001 for everything else.

``device ID`` and ``feeder ID`` derive a device's or feeder model's ``FMB_*`` environment from
the topology (:func:`testbed.backends.local.device_environment`, the same as for a local
process) and exec it; ``fleet NAME`` writes the fleet file of a substation's meters (their
certificates in the fleet's one volume) and execs ``devices.fleet``. :class:`ContainerBus` is
the bus as the harness sees it from inside (the scenario and runner services of
:mod:`testbed.harness.service`). The topology is the packaged
Appendix A one unless ``FMB_TOPOLOGY`` names another file (the Compose file of another topology
mounts it at :data:`TOPOLOGY_MOUNT`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath

from brokers.mosquitto import BrokerFiles, connection_budget, render_broker
from testbed.backends.local import DYNSEC_PLUGIN, device_environment
from testbed.core.errors import TestbedError
from testbed.core.topics import ROLES
from testbed.core.topology import BrokerSpec, Topology, load_topology
from testbed.security.blocklist import Blocklist
from testbed.security.pki import PKI
from testbed.security.provision import issuers_for
from testbed.security.signing import SigningKeys
from testbed.transport.mqtt import Endpoint, TLSIdentity

__all__ = ["ALERTS_FILE", "CA_ACTIONS", "DYNSEC_STATE_DIR", "LOGS_DIR", "LOG_DIR", "MONITOR", "RESPONDER",
           "RUNNER_IDENTITIES", "TOPOLOGY_MOUNT", "UI_DIR", "ContainerBus", "ca_operation", "container_topology",
           "device_env", "exec_module", "feeder_dir", "feeder_socket", "fleet_env", "fleet_volume",
           "health_identity", "init_volumes", "log_file", "log_volume", "logged", "monitor_env"]

UID = GID = 10001
PKI_DIR = Path("/pki")  # the CA and every certificate: mounted only in the init service
OUT_DIR = Path("/out")  # /out/<broker | device | "harness">: each container's own volume
CONFIG_DIR = PurePath("/mosquitto/config")  # a broker's volume, read-only in the broker
DATA_DIR = PurePath("/mosquitto/data")
CERTS_DIR = Path("/certs")  # a device's (or the harness's) volume, read-only
RUN_DIR = Path("/run/fmb")  # a tmpfs: ready files
FEEDER_DIR = Path("/feeder")  # /feeder/<feeder>: a shared tmpfs volume per feeder, the model's Unix socket
UI_DIR = Path("/ui")  # a shared tmpfs volume: the tablets' operator input sockets and console URLs
UI_PORT = 8443  # the tablet's web console inside its container (compose publishes it)
RUNS_DIR = Path("/runs")  # a shared volume: the runner writes scenario runs, the tablets read them
RUNNER_SOCKET = UI_DIR / "runner.sock"  # the runner service takes run requests here
RUNNER_SCENARIOS = ("appendix-a",)  # what a tablet's button may ask the runner for, nothing else
RUN_TIMEOUT_S = 120.0
HARNESS = "harness"  # the volume of the services that run scenarios (scenario, runner)
RUNNER_IDENTITIES = ("recorder", "operator")  # the harness identities those services hold
TOPOLOGY_MOUNT = Path("/etc/fmb/topology.toml")  # where a Compose file mounts a topology other than the default
FLEET_FILE = RUN_DIR / "fleet.json"  # written by `fleet NAME` for devices.fleet (a tmpfs)
MONITOR = "monitor"  # the monitor service's identity and the volume of its certificate
RESPONDER = "responder"  # the identity that evicts (dynamic-security); its volume only init mounts
DYNSEC_STATE_DIR = PurePath("/mosquitto/dynsec")  # a broker's tmpfs: the plugin rewrites its state file
LOG_DIR = Path("/log")  # a broker's or reading device's own log volume, the only writer of it
LOGS_DIR = Path("/logs")  # /logs/<name>: every such volume, read-only, in the monitor only
ALERTS_FILE = RUN_DIR / "alerts.jsonl"  # the monitor's alerts (a tmpfs; also published as AlertProfile)


def health_identity(broker: str) -> str:
    """The identity a broker's health check connects as (listed in no ACL: no topic rights)."""
    return f"health-{broker}"


def fleet_volume(fleet: str) -> str:
    """The volume holding a fleet's meters' certificates and keys: ``certs-<fleet>``."""
    return f"certs-{fleet}"


def feeder_dir(feeder: str) -> Path:
    """Where a feeder model's volume is mounted, in the model's container and its devices'."""
    return FEEDER_DIR / feeder


def feeder_socket(feeder: str) -> Path:
    """The feeder model's Unix socket, on its volume."""
    return feeder_dir(feeder) / "feeder.sock"


def log_volume(name: str) -> str:
    """The volume of ``name``'s log (a broker, or a device that reads): ``log-<name>``."""
    return f"log-{name}"


def log_file(name: str) -> Path:
    """Where ``name`` writes its log, inside its own container."""
    return LOG_DIR / f"{name}.log"


def logged(topology: Topology) -> list[str]:
    """Whose logs the monitor reads: every broker, and every device that reads (actuators log the
    commands they refuse, every reader the payloads it rejects), as on the local bus
    (:func:`testbed.backends.local.monitor_environment`); a fleet's meters read nothing."""
    readers = [d.id for d in topology.devices if not d.fleet and ROLES[d.role].reads]
    return [b.name for b in topology.brokers] + readers


def container_topology() -> Topology:
    """The topology the Compose bus runs: ``FMB_TOPOLOGY``, else the packaged Appendix A one."""
    return load_topology(os.environ.get("FMB_TOPOLOGY") or None)


# -- the init service -------------------------------------------------------------------------

def init_volumes(topology: Topology, pki_dir: Path = PKI_DIR, out: Path = OUT_DIR,
                 operation: Callable[[PKI], list[str]] | None = None) -> list[str]:
    """Create the PKI if missing, apply ``operation`` to it (a CA operation, :func:`ca_operation`), and
    fill every container's volume; returns the PKI's news."""
    solo = [d for d in topology.devices if not d.fleet]
    fleet_meters = topology.fleets
    targets = ([b.name for b in topology.brokers] + [d.id for d in solo] + list(fleet_meters)
               + [HARNESS, MONITOR, RESPONDER])
    missing = [t for t in targets if not (out / t).is_dir()]
    if missing:
        raise TestbedError(f"no volume mounted at {out}/{missing[0]}: the Compose file and the "
                           f"topology {topology.path} disagree (give each broker and device one)")
    if os.geteuid() == 0:
        _drop_root([pki_dir, *(out / t for t in targets)])
    pki = PKI(pki_dir)
    health = [health_identity(b.name) for b in topology.brokers]
    # A substation's devices under its intermediate CA, as on the local bus (testbed.security.provision).
    created = pki.init({b.name: [b.name, "localhost"] for b in topology.brokers} | topology.web_servers(),
                       topology.client_identities() + health, issuers_for(topology))
    signing = SigningKeys(pki_dir)
    created += [f"signing key {n}" for n in signing.ensure(topology.command_signers())]
    if operation is not None:
        created += operation(pki)
    blocks = Blocklist.load(pki_dir)  # the responder's blocks, kept beside the CA (testbed.csf.respond)
    for broker in topology.brokers:
        _fill_broker(topology, broker, pki, out / broker.name, blocks)
    for device in solo:
        web = [name for name in topology.web_servers() if name == f"{device.id}-ui"]
        _fill(out / device.id, pki, clients=[device.id], servers=web)
        _fill_signing(out / device.id, signing, device.id)
    for fleet, meters in fleet_meters.items():  # meters read no command: no signing keys
        _fill(out / fleet, pki, clients=[m.id for m in meters])
    _fill(out / HARNESS, pki, clients=list(RUNNER_IDENTITIES))
    _fill(out / MONITOR, pki, clients=[MONITOR])  # reads every profile (its ACL), publishes alerts, nothing else
    # The host's tools' identities: the responder's (dynamic-security evictions only), the benchmarks'
    # (`bench`), and those a CA operation issued for the host (`ca issue`: a benchmark's intruder); no
    # running service mounts this volume.
    extra = [p.stem for p in (out / RESPONDER / "clients").glob("*.pem")] if (out / RESPONDER / "clients").is_dir() \
        else []
    _fill(out / RESPONDER, pki, clients=sorted({RESPONDER, "bench", *extra}))
    for ident in RUNNER_IDENTITIES:
        _fill_signing(out / HARNESS, signing, ident)
    return created


CA_ACTIONS = ("revoke", "issue", "reissue", "rotate", "block", "unblock")


def ca_operation(topology: Topology, action: str, names: Sequence[str], pki_dir: Path = PKI_DIR,
                 out: Path = OUT_DIR) -> list[str]:
    """One CA operation in the one-shot container that alone mounts the CA (``init``'s volumes), then
    every volume re-filled: the new CRL, certificates and ACLs reach every container (the brokers
    take them on SIGHUP, a device on restart). ``revoke|issue|reissue|rotate NAME...``: a client or
    broker certificate; ``block|unblock TARGET``: an identity or a topic in the blocklist kept in the
    pki volume. Returns one line per thing done."""
    if action not in CA_ACTIONS:
        raise TestbedError(f"CA action {action!r}: use one of {', '.join(CA_ACTIONS)}")
    if not names:
        raise TestbedError(f"`ca {action}` needs at least one name")

    def operate(pki: PKI) -> list[str]:
        done = []
        for name in names:
            if action == "revoke":
                done.append(f"revoked {name} serial {pki.revoke(name):x}")
            elif action in ("issue", "reissue"):
                pki.issue_client(name)
                if action == "issue":  # for the host: into the responder's volume, which nothing runs with
                    _fill(out / RESPONDER, pki, clients=[name])
                done.append(f"issued {name}")
            elif action == "rotate":
                old, new = pki.rotate(name)
                done.append(f"rotated {name} serial {old:x} -> {new:x}")
            else:
                blocks = Blocklist.load(pki_dir)
                bucket = blocks.topics if "/" in name else blocks.identities
                if action == "block" and name not in bucket:
                    bucket.append(name)
                if action == "unblock" and name in bucket:
                    bucket.remove(name)
                blocks.save(pki_dir)
                done.append(f"{action}ed {name}")
        return done

    return init_volumes(topology, pki_dir, out, operation=operate)


def _fill_signing(target: Path, signing: SigningKeys, name: str) -> None:
    """Every command signer's public key (not secret), and ``name``'s own key if it signs."""
    for pub in sorted(signing.directory.glob("*.pub")):
        _copy(pub, target / "signing" / pub.name, 0o644)
    if signing.key_path(name).exists():
        _copy(signing.key_path(name), target / "signing" / f"{name}.key", 0o600)


def _drop_root(volumes: list[Path]) -> None:
    """Give the (root-owned, fresh) volumes to uid 10001, then become uid 10001 for good."""
    for v in volumes:
        v.mkdir(parents=True, exist_ok=True)
        if v.stat().st_uid == UID:  # handed over by an earlier run (a rerun of init, a CA operation)
            continue
        os.chmod(v, 0o700)  # before the chown: root without CAP_FOWNER owns it only until then
        os.chown(v, UID, GID)
    os.setgroups([])
    os.setgid(GID)
    os.setuid(UID)


def _fill(target: Path, pki: PKI, clients: Sequence[str] = (), servers: Sequence[str] = ()) -> None:
    """Copy the CA certificate, the CRL and the named identities into ``target`` (PKI layout)."""
    _copy(pki.ca_cert, target / "ca" / "ca.pem", 0o644)
    _copy(pki.crl, target / "crl.pem", 0o644)
    for kind, names, get in (("servers", servers, pki.server), ("clients", clients, pki.client)):
        for name in names:
            paths = get(name)
            _copy(paths.cert, target / kind / f"{name}.pem", 0o644)
            _copy(paths.key, target / kind / f"{name}.key", 0o600)


def _fill_broker(topology: Topology, broker: BrokerSpec, pki: PKI, target: Path, blocks: Blocklist) -> None:
    bridges = [b.name for b in topology.bridges
               if any(topology.bridge_endpoints(b, way)[0] == broker.name for way in topology.bridge_connections(b))]
    _fill(target / "certs", pki, clients=[*bridges, health_identity(broker.name)],
          servers=[broker.name])
    # max_connections below the open-files limit the Compose file gives the container (ulimits).
    # The log goes to the broker's own log volume, which the monitor mounts read-only, and still to
    # stderr (`docker logs`). Debug logging on the control plane only, as on the local bus: it is how
    # Mosquitto reports denied and oversize publishes (testbed/csf/README-monitor.md).
    files = BrokerFiles(certs=CONFIG_DIR / "certs", directory=CONFIG_DIR, log=log_file(broker.name), bind="0.0.0.0",
                        peer_hosts={b.name: b.name for b in topology.brokers},
                        data=DATA_DIR, max_connections=connection_budget(topology, broker),
                        debug_log=broker.plane == "control", dynsec_plugin=PurePath(DYNSEC_PLUGIN),
                        dynsec_state=DYNSEC_STATE_DIR / "dynamic-security.json",
                        blocked_identities=tuple(blocks.identities), blocked_topics=tuple(blocks.topics))
    for name, text in render_broker(topology, broker, files).items():
        if name == "mosquitto.conf":
            text += "log_dest stderr\n"
        _write(target / name, text.encode(), 0o644)
    ident = health_identity(broker.name)
    certs = CONFIG_DIR / "certs"
    # Connects over mutual TLS as an identity with no rights: proves TLS, the CA, the CRL
    # and the listener work. mosquitto_pub exits non-zero only when the connection fails.
    _write(target / "healthcheck", (
        "#!/bin/sh\n"
        f"# health check of {broker.name}: a mutual-TLS MQTT v5 connection as {ident}\n"
        f"exec mosquitto_pub -q 0 -V mqttv5 -h localhost -p {broker.port} -i {ident} "
        f"--cafile {certs}/ca/ca.pem --cert {certs}/clients/{ident}.pem "
        f"--key {certs}/clients/{ident}.key -t {topology.root}/health -n\n").encode(), 0o755)


def _copy(src: Path, dst: Path, mode: int) -> None:
    _write(dst, src.read_bytes(), mode)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically with a file that has ``mode`` from its creation."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
    os.replace(tmp, path)


# -- launchers --------------------------------------------------------------------------------

def device_env(topology: Topology, device_id: str) -> dict[str, str]:
    """The ``FMB_*`` environment of a device container: service names, mounted paths."""
    device = topology.device(device_id)
    env = device_environment(topology, device, CERTS_DIR, RUN_DIR,
                             hosts={b.name: b.name for b in topology.brokers})
    env["FMB_READY_FILE"] = str(RUN_DIR / "ready")  # the container's health check looks here
    if device.id in logged(topology):
        env["FMB_LOG_FILE"] = str(log_file(device.id))  # its log volume, which the monitor reads
    feeder = topology.feeder_of(device.id)
    if feeder is not None:
        env["FMB_FEEDER_SOCKET"] = str(feeder_socket(feeder.id))
    if "FMB_UI_SOCKET" in env:
        env["FMB_UI_SOCKET"] = str(UI_DIR / f"{device.id}.sock")
        # The console listens inside the container; Compose publishes it on the host's loopback.
        env["FMB_UI_HTTP"] = f"0.0.0.0:{UI_PORT}"
        env["FMB_UI_URL_FILE"] = str(UI_DIR / f"{device.id}.url")
        # The button asks the runner service (which holds the harness identities) for a run;
        # the tablet itself holds none, and may ask only for RUNNER_SCENARIOS.
        env["FMB_UI_RUNS"] = str(RUNS_DIR)
        env["FMB_UI_RUN_COMMAND"] = json.dumps(["python", "-m", "testbed.cli.containers", "request-run", "appendix-a"])
    return env


def fleet_env(topology: Topology, fleet: str, fleet_file: Path = FLEET_FILE) -> dict[str, str]:
    """Write the fleet file of ``fleet``'s meters (their certificates on the fleet's volume, their
    feeders' sockets) and return the ``FMB_*`` environment of ``python -m devices.fleet``."""
    meters = topology.fleets.get(fleet)
    if not meters:
        known = ", ".join(topology.fleets) or "(none)"
        raise TestbedError(f"no fleet {fleet!r} in topology {topology.path}: use one of: {known}")
    entries = []
    for m in meters:
        feeder = topology.feeder_of(m.id)
        entry: dict[str, object] = {"id": m.id, "cert": str(CERTS_DIR / "clients" / f"{m.id}.pem"),
                                    "key": str(CERTS_DIR / "clients" / f"{m.id}.key")}
        if feeder is not None:  # else no physics: the fleet reports a nominal voltage (devices/fleet.py)
            entry.update(feeder_socket=str(feeder_socket(feeder.id)), deadband_v=feeder.meter_deadband_v,
                         period_s=feeder.meter_period_s)
        entries.append(entry)
    _write(fleet_file, json.dumps({"root": topology.root, "qos": topology.qos, "meters": entries}).encode(), 0o600)
    delivery = topology.broker_for(meters[0].site, "delivery")
    return {
        "FMB_FLEET_ID": fleet,
        "FMB_DELIVERY": f"{delivery.name}:{delivery.port}",  # the service name
        "FMB_CA": str(CERTS_DIR / "ca" / "ca.pem"),
        "FMB_FLEET_FILE": str(fleet_file),
        "FMB_READY_FILE": str(RUN_DIR / "ready"),  # the container's health check looks here
    }


def monitor_env(topology: Topology) -> dict[str, str]:
    """The ``FMB_*`` environment of the monitor service (:mod:`testbed.csf.monitor`): every broker by
    its service name, every log of :func:`logged` from its volume under :data:`LOGS_DIR` (read-only),
    its own certificate, alerts on its tmpfs. No response policy: the monitor in a container holds no
    CA key and no Docker socket, so it detects; ``fmb respond --backend docker`` acts."""
    return {
        "FMB_DEVICE_ID": MONITOR,
        "FMB_BROKERS": json.dumps({b.name: f"{b.name}:{b.port}" for b in topology.brokers}),
        "FMB_CA": str(CERTS_DIR / "ca" / "ca.pem"),
        "FMB_CERT": str(CERTS_DIR / "clients" / f"{MONITOR}.pem"),
        "FMB_KEY": str(CERTS_DIR / "clients" / f"{MONITOR}.key"),
        "FMB_TOPOLOGY": topology.path,
        "FMB_MONITOR_LOGS": json.dumps({n: f"file:{LOGS_DIR / n / log_file(n).name}" for n in logged(topology)}),
        "FMB_MONITOR_ALERTS": str(ALERTS_FILE),
        "FMB_READY_FILE": str(RUN_DIR / "ready"),  # the container's health check looks here
    }


def exec_module(module: str, env: dict[str, str]) -> None:
    sys.stdout.flush()
    os.execvpe(sys.executable, [sys.executable, "-m", module], {**os.environ, **env})


# -- the harness inside the Compose bus ------------------------------------------------------

class ContainerBus:
    """The Compose bus as seen from a container on its networks (the ``scenario`` service)."""

    def __init__(self, topology: Topology, certs: Path = CERTS_DIR, ui: Path = UI_DIR) -> None:
        self.topology = topology
        self.certs = certs
        self.ui = ui
        self.pki = PKI(certs)  # the runner finds the operator's signing key beside it

    def identity(self, name: str) -> TLSIdentity:
        return TLSIdentity(self.certs / "ca" / "ca.pem", self.certs / "clients" / f"{name}.pem",
                           self.certs / "clients" / f"{name}.key")

    def endpoint(self, broker: str) -> Endpoint:
        return Endpoint(broker, self.topology.broker(broker).port)  # the service name

    def ui_socket(self, device_id: str) -> Path:
        return self.ui / f"{device_id}.sock"
