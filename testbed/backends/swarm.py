"""The bus as a Docker Swarm stack (``fmb swarm``): the stack file of a topology and its files.

:func:`write_stack` renders a topology into a directory holding ``stack.yml`` (for ``docker
stack deploy``) and the broker configurations it refers to; certificates and keys stay where the
PKI is (the stack file names them by absolute path, and Swarm copies them into its store at
deploy). The design follows what Swarm does with a Compose file, not what Compose does:

- **No init service, no shared volumes for keys.** Named volumes are node-local, so the Compose
  bus's ``init`` (which fills one volume per container) cannot reach services on other nodes.
  The PKI is made here, on the manager, and every container gets exactly its own files as
  Swarm *configs* (certificates, the CRL, the CA certificate, the signers' public keys, broker
  configurations and ACLs, the topology) and *secrets* (every private key: one secret per key,
  owned by uid 10001, mode 0400). Chosen over a per-substation intermediate CA that mints at
  start: a node that holds an issuing key can mint any identity of its substation, and a
  secret per key keeps each key in one container; the cost is one Swarm object per identity
  (a fleet of a thousand meters is two thousand objects; each far below the 500 KB limit,
  which :func:`write_stack` checks). Config and secret names carry a hash of their content:
  Swarm objects are immutable, so a re-issued certificate or a new CRL is a new object and
  ``docker stack deploy`` rolls the services that use it.
- **Readiness from health checks and retries, not ordering.** ``depends_on`` is dropped by
  ``docker stack deploy``; every service has ``deploy.restart_policy`` (``restart`` is
  ignored) and the processes retry on their own: devices retry their first MQTT connection
  (paho's loop) for 20 s and the feeder socket for 30 s before they exit, and Swarm restarts
  them; Mosquitto's bridges retry every 2 s (``restart_timeout 1 1``); the fleets back off with
  jitter.
- **Placement by node labels.** Every service of a site runs where the node carries the label
  ``fmb.site.<site>=true``: one label per site (rather than one ``fmb.site`` value) lets a node
  hold several sites, as the single-node swarm of the tests does. A feeder model's Unix socket
  and the tablets' operator input ride node-local RAM volumes, so a site's devices and its
  feeder models share a node (the physics is local by nature, the bus between sites is not), and
  the harness runs on the node of the tablet it drives: the first tablet's site, or the
  substation a run asks for (:meth:`testbed.backends.swarmstack.SwarmStack.run` moves it).
- **Overlay networks**, one per site, ``internal: true`` (no route out) and ``attachable`` (a
  harness container may join them); only edge brokers sit on their data centre's network too.
- **Hardening** kept where Swarm supports it: ``read_only``, ``cap_drop: [ALL]``, uid 10001,
  ``init``, ``ulimits`` (the brokers' open files sized for their ``max_connections``), tmpfs
  mounts in the long syntax (Swarm drops the ``tmpfs`` key without a warning). What ``docker
  stack deploy`` (Docker 20.10) cannot do: ``security_opt`` (no ``no-new-privileges``: nothing
  in the images is setuid, and no capability is left), tmpfs ownership (root's, mode 1777),
  ``network_mode: none`` (the feeder models get an internal overlay of their own), ports on a
  loopback address (Swarm publishes on every interface, so no broker port is published: the
  harness runs inside, as the one-shot ``scenario`` service).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from brokers.mosquitto import BrokerFiles, connection_budget, render_broker
from testbed.backends.composefile import FILE_RESERVE, is_default
from testbed.backends.containers import LOG_DIR, TOPOLOGY_MOUNT, feeder_dir, feeder_socket, health_identity
from testbed.backends.yamltext import Comment, Flow, Note, dump
from testbed.core.errors import ConfigError, TestbedError
from testbed.core.topology import BrokerSpec, DeviceSpec, Topology
from testbed.security.pki import PKI
from testbed.security.provision import issuers_for
from testbed.security.signing import SigningKeys

__all__ = ["SECRET_LIMIT", "SITE_LABEL", "StackImages", "ensure_pki", "render_stack", "site_label", "write_stack"]

SECRET_LIMIT = 500 * 1024  # Swarm refuses a config or secret larger than this
SITE_LABEL = "fmb.site."  # node label prefix: fmb.site.<site>=true places <site>'s services there
CONTAINERS = ["python", "-m", "testbed.cli.containers"]
CERTS = PurePath("/certs")
CONFIG = PurePath("/mosquitto/config")
DATA = PurePath("/mosquitto/data")
HARNESS_IDENTITIES = ("recorder", "operator")
UID = "10001"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_TMPFS = {"type": "tmpfs", "device": "tmpfs", "o": "uid=10001,gid=10001,mode=0700"}
_RESTART = {"condition": "any", "delay": "2s"}
# Swarm, unlike Compose, kills and replaces a task whose health check fails `retries` times in a
# row, so a check that only timed out on a loaded machine restarts a working device mid-run (a
# Python check took over 10 s here at load average 50). Patient: a minute of failures, and a
# start period that ends at the first success.
_HEALTH_PACE = {"interval": "3s", "timeout": "20s", "start_period": "180s", "retries": 20}


@dataclass(frozen=True)
class StackImages:
    """The images the stack runs: built by scripts/images (no registry): every node needs them."""

    device: str = "fmb-device:latest"
    broker: str | None = None  # None: each broker's own build from the topology (fmb-broker, fmb-broker-2.1)


def site_label(site: str) -> str:
    """The node label that places ``site``'s services: ``fmb.site.<site>``."""
    return SITE_LABEL + site


def ensure_pki(topology: Topology, certs: Path) -> list[str]:
    """Create in ``certs`` what the stack's containers need and is missing (the same identities as
    the Compose bus's init: brokers named by their service names, health-check identities); the CA
    key stays in ``certs`` on this machine. Returns what was created."""
    pki = PKI(certs)
    health = [health_identity(b.name) for b in topology.brokers]
    created = pki.init({b.name: [b.name, "localhost"] for b in topology.brokers} | topology.web_servers(),
                       topology.client_identities() + health, issuers_for(topology))
    created += [f"signing key {n}" for n in SigningKeys(certs).ensure(topology.command_signers())]
    return created


def write_stack(topology: Topology, certs: Path, out: Path, images: StackImages = StackImages()) -> Path:
    """Write ``out/stack.yml`` and the files it refers to; returns the stack file's path.

    ``certs`` must hold the PKI (:func:`ensure_pki`); ``out`` is created (mode 0700) or reused."""
    if out.exists() and not out.is_dir():
        raise TestbedError(f"{out} is a file: give a directory for the stack file and its configurations")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    generated = out / "generated"
    shutil.rmtree(generated, ignore_errors=True)
    generated.mkdir(mode=0o700)
    text = render_stack(topology, certs.resolve(), generated.resolve(), images)
    path = out / "stack.yml"
    path.write_text(text)
    return path


def render_stack(topology: Topology, certs: Path, generated: Path, images: StackImages = StackImages()) -> str:
    """The stack file of ``topology``; broker configurations are written into ``generated``."""
    return _Stack(topology, certs, generated, images).document()


class _Stack:
    """One stack document being assembled; ``objects`` collects its configs and secrets."""

    def __init__(self, topology: Topology, certs: Path, generated: Path, images: StackImages) -> None:
        self.t = topology
        self.pki = PKI(certs)
        self.signing = SigningKeys(certs)
        self.generated = generated
        self.images = images
        self.configs: dict[str, dict[str, str]] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        self.solo = [d for d in topology.devices if not d.fleet]
        self.fleets = topology.fleets
        self.tablets = [d for d in topology.devices if d.role == "tablet"]
        names = ["scenario", "runner", *(b.name for b in topology.brokers), *(d.id for d in self.solo),
                 *self.fleets, *(f.id for f in topology.feeders), *(s.name for s in topology.sites)]
        for name in names:
            if not _NAME.fullmatch(name):
                raise ConfigError(topology.path, "", f"{name!r} cannot name a Swarm service or network",
                                  "use lower-case letters, digits, '-', '_' and '.' in site, device and feeder names")
        if not self.pki.ca_cert.exists():
            raise TestbedError(f"no PKI in {certs}: run `fmb swarm` (it creates one) or `fmb certs init`")
        # The harness runs where the first tablet is (it reaches the tablet's operator input through
        # the node-local ui volume); without a tablet, in the data centre.
        self.harness_site = self.tablets[0].site if self.tablets else next(s.name for s in topology.sites
                                                                           if s.persistent)
        self.topology_config = None if is_default(topology) else self._config(
            "topology", Path(topology.path).resolve(), TOPOLOGY_MOUNT)

    # -- configs and secrets --------------------------------------------------------------------

    def _object(self, store: dict[str, dict[str, str]], kind: str, label: str, source: Path) -> str:
        data = source.read_bytes()
        if len(data) > SECRET_LIMIT:
            raise TestbedError(f"{source} is {len(data)} bytes; a Swarm {kind} holds at most {SECRET_LIMIT}: "
                               "shrink it (a CRL that large wants a fresh CA)")
        key = f"{label}-{hashlib.sha256(data).hexdigest()[:10]}"
        if len(key) > 50:  # the stack name is prefixed; Swarm names end at 64 characters
            key = f"{label[:30]}-{hashlib.sha256(label.encode()).hexdigest()[:8]}-{key[-10:]}"
        store[key] = {"file": str(source)}
        return key

    def _config(self, label: str, source: Path, target: PurePath, mode: int = 0o444) -> dict[str, Any]:
        key = self._object(self.configs, "config", label, source)
        return {"source": key, "target": str(target), "uid": UID, "gid": UID, "mode": mode}

    def _secret(self, label: str, source: Path, target: PurePath) -> dict[str, Any]:
        key = self._object(self.secrets, "secret", label, source)
        return {"source": key, "target": str(target), "uid": UID, "gid": UID, "mode": 0o400}

    def _identity_files(self, base: PurePath, clients: list[str], servers: list[str] | None = None
                        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(configs, secrets) of the PKI layout under ``base``: CA, CRL, the named identities."""
        configs = [self._config("ca", self.pki.ca_cert, base / "ca" / "ca.pem"),
                   self._config("crl", self.pki.crl, base / "crl.pem")]
        secrets = []
        for kind, names, get in (("servers", servers or [], self.pki.server), ("clients", clients, self.pki.client)):
            for name in names:
                paths = get(name)
                configs.append(self._config(f"cert-{name}", paths.cert, base / kind / f"{name}.pem"))
                secrets.append(self._secret(f"key-{name}", paths.key, base / kind / f"{name}.key"))
        return configs, secrets

    def _signing_files(self, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every signer's public key, and ``name``'s own signing key if it signs."""
        configs = [self._config(f"pub-{pub.stem}", pub, CERTS / "signing" / pub.name)
                   for pub in sorted(self.signing.directory.glob("*.pub"))]
        key = self.signing.key_path(name)
        secrets = [self._secret(f"sign-{name}", key, CERTS / "signing" / f"{name}.key")] if key.exists() else []
        return configs, secrets

    # -- the document -----------------------------------------------------------------------------

    def document(self) -> str:
        services = self._services()
        doc: dict[Any, Any] = {
            Comment(self._header()): None,
            "version": "3.8",
            "services": services,
            Comment("\nOne overlay network per site: internal (no route out), attachable (a harness container may\n"
                    "join). Only edge brokers also sit on their data centre's network (their bridges)."): None,
            "networks": self._networks(),
            Comment("\nNode-local RAM volumes: a feeder model's socket, the tablets' operator input. A site's\n"
                    "services share a node (placement), so each exists where it is used. Persistence of the\n"
                    "data-centre brokers is node-local too: it stays on the node the label places them on.")
            : None,
            "volumes": self._volumes(),
            "configs": dict(sorted(self.configs.items())),
            "secrets": dict(sorted(self.secrets.items())),
        }
        return dump(doc)

    def _header(self) -> str:
        sites = ", ".join(f"{site_label(s.name)}=true" for s in self.t.sites)
        return (f"The {self.t.name} field message bus as a Docker Swarm stack. Generated by `fmb swarm` from\n"
                f"{self.t.path}: edit the topology and regenerate. Deploy with\n"
                "`docker stack deploy -c stack.yml NAME` after labelling the nodes\n"
                f"({sites}) and loading the images on each (scripts/images).\n"
                "See compose/README.md (Docker Swarm).")

    def _placement(self, site: str) -> dict[str, Any]:
        return {"constraints": Flow([f"node.labels.{site_label(site)} == true"])}

    def _deploy(self, site: str, restart: dict[str, Any] | None = None, replicas: int = 1) -> dict[str, Any]:
        return {"replicas": replicas, "restart_policy": Flow(restart or _RESTART), "placement": self._placement(site)}

    def _hardened(self, image: str, user: str = f"{UID}:{UID}") -> dict[str, Any]:
        return {"image": image, "user": user, "init": True, "read_only": True, "cap_drop": Flow(["ALL"])}

    def _topology_env(self) -> dict[str, str]:
        return {} if self.topology_config is None else {"FMB_TOPOLOGY": str(TOPOLOGY_MOUNT)}

    def _topology_configs(self) -> list[dict[str, Any]]:
        return [] if self.topology_config is None else [self.topology_config]

    def _services(self) -> dict[Any, Any]:
        services: dict[Any, Any] = {}
        for b in self.t.brokers:
            services[b.name] = self._broker(b)
        for f in self.t.feeders:
            services[f.id] = self._feeder(f.id, f.site)
        for d in self.solo:
            services[d.id] = self._device(d)
        for name, meters in self.fleets.items():
            services[name] = self._fleet(name, meters)
        services[Comment("The harness: a one-shot, started by `fmb swarm run` (replicas 0 until then); exits with\n"
                         "Appendix A's verdict. FMB_SUBSTATION picks the substation of a large topology.")] = None
        services["scenario"] = self._harness("scenario", restart={"condition": "none"}, replicas=0)
        services[Comment("What the first tablet's \"Run the Appendix A scenario\" button asks (its node's `ui`).")] \
            = None
        services["runner"] = self._harness("runner")
        return services

    def _broker(self, b: BrokerSpec) -> dict[str, Any]:
        site = self.t.site(b.site)
        rendered = self._broker_files(b)
        bridges = [x.name for x in self.t.bridges
                   if any(self.t.bridge_endpoints(x, way)[0] == b.name for way in self.t.bridge_connections(x))]
        configs, secrets = self._identity_files(CONFIG / "certs", [*bridges, health_identity(b.name)], [b.name])
        configs += [self._config(f"{b.name}-{name}", path, CONFIG / name, 0o555 if name == "healthcheck" else 0o444)
                    for name, path in rendered.items()]
        networks = [site.name] + ([site.bridge_to] if site.bridge_to else [])
        service = {
            **self._hardened(self.images.broker or b.image),
            "command": Flow(["mosquitto-saver", str(CONFIG / "mosquitto.conf")]),
            "hostname": b.name,
            "networks": networks,
            "healthcheck": {"test": Flow(["CMD", str(CONFIG / "healthcheck")]), **_HEALTH_PACE},
            "configs": configs,
            "secrets": secrets,
            "deploy": self._deploy(b.site),
        }
        budget = connection_budget(self.t, b)
        service["ulimits"] = Note(Flow({"nofile": {"soft": budget + FILE_RESERVE, "hard": budget + FILE_RESERVE}}),
                                  f"max_connections {budget} in its mosquitto.conf")
        if b.persistent:  # node-local: the broker stays on the node its site's label places it on
            service["volumes"] = [f"data-{b.name}:{DATA}"]
        return service

    def _broker_files(self, b: BrokerSpec) -> dict[str, Path]:
        """Render ``b``'s configuration, ACL and health check into ``generated/<broker>/``."""
        files = BrokerFiles(certs=CONFIG / "certs", directory=CONFIG, log=None, bind="0.0.0.0",
                            peer_hosts={x.name: x.name for x in self.t.brokers}, data=DATA,
                            max_connections=connection_budget(self.t, b))
        texts = dict(render_broker(self.t, b, files))
        ident, certs = health_identity(b.name), CONFIG / "certs"
        texts["healthcheck"] = (
            "#!/bin/sh\n"
            f"# health check of {b.name}: a mutual-TLS MQTT v5 connection as {ident} (no topic rights)\n"
            f"exec mosquitto_pub -q 0 -V mqttv5 -h localhost -p {b.port} -i {ident} "
            f"--cafile {certs}/ca/ca.pem --cert {certs}/clients/{ident}.pem "
            f"--key {certs}/clients/{ident}.key -t {self.t.root}/health -n\n")
        folder = self.generated / b.name
        folder.mkdir(mode=0o700, exist_ok=True)
        paths = {}
        for name, text in texts.items():
            path = folder / name
            path.write_text(text)
            paths[name] = path
        return paths

    @staticmethod
    def _ram(*extra: str) -> list[Any]:
        """The service's writable places: tmpfs mounts (the long syntax: Swarm drops the ``tmpfs`` key
        without a word) and named volumes ``extra``. ``/log`` is where a broker or a reading device of
        the Compose bus also writes its log for the monitor (``containers.log_file``); the stack has no
        monitor, so there it is RAM the task alone sees (the log still goes to ``docker service logs``)."""
        return [*(Flow({"type": "tmpfs", "target": t}) for t in ("/run/fmb", "/tmp", str(LOG_DIR))), *extra]

    def _device_base(self, site: str) -> dict[str, Any]:
        return {
            **self._hardened(self.images.device),
            "healthcheck": {"test": Flow(["CMD", "python", "-m", "testbed.transport.health", "/run/fmb/ready"]),
                            **_HEALTH_PACE},
            "deploy": self._deploy(site),
        }

    def _feeder(self, feeder: str, site: str) -> dict[str, Any]:
        service = self._device_base(site)
        service.update({
            "command": Flow([*CONTAINERS, "feeder", feeder]),
            "networks": Note(["isolated"], "nothing to reach: its Unix socket is on its node-local RAM volume"),
            "healthcheck": {"test": Flow(["CMD", "test", "-S", str(feeder_socket(feeder))]), **_HEALTH_PACE},
            "volumes": self._ram(f"{feeder}:{feeder_dir(feeder)}"),
        })
        if self.topology_config is not None:
            service["environment"] = self._topology_env()
            service["configs"] = self._topology_configs()
        return service

    def _device(self, d: DeviceSpec) -> dict[str, Any]:
        service = self._device_base(d.site)
        service["command"] = Flow([*CONTAINERS, "device", d.id])
        web = [f"{d.id}-ui"] if d.role == "tablet" else []
        configs, secrets = self._identity_files(CERTS, [d.id], web)
        more_configs, more_secrets = self._signing_files(d.id)
        volumes = []
        feeder = self.t.feeder_of(d.id)
        if feeder is not None:
            volumes.append(f"{feeder.id}:{feeder_dir(feeder.id)}")
        if d.role == "tablet":  # node-local: the tablets on one node share them (a socket each)
            volumes += ["ui:/ui", "runs:/runs:ro"]
        service.update({"networks": [d.site], **({"environment": self._topology_env()} if self.topology_config
                                                  else {}),
                        "configs": [*configs, *more_configs, *self._topology_configs()],
                        "secrets": [*secrets, *more_secrets]})
        service["volumes"] = self._ram(*volumes)
        return service

    def _fleet(self, name: str, meters: tuple[DeviceSpec, ...]) -> dict[str, Any]:
        site = meters[0].site
        service = self._device_base(site)
        configs, secrets = self._identity_files(CERTS, [m.id for m in meters])
        feeders = sorted({f.id for f in map(self.t.feeder_of, (m.id for m in meters)) if f is not None})
        service.update({"command": Flow([*CONTAINERS, "fleet", name]), "networks": [site],
                        **({"environment": self._topology_env()} if self.topology_config else {}),
                        "configs": [*configs, *self._topology_configs()], "secrets": secrets})
        budget = max(1024, len(meters) + 256)
        service["ulimits"] = Flow({"nofile": {"soft": budget + FILE_RESERVE, "hard": budget + FILE_RESERVE}})
        service["volumes"] = self._ram(*(f"{f}:{feeder_dir(f)}" for f in feeders))
        return service

    def _harness(self, name: str, restart: dict[str, Any] | None = None, replicas: int = 1) -> dict[str, Any]:
        service = self._device_base(self.harness_site)
        configs, secrets = self._identity_files(CERTS, list(HARNESS_IDENTITIES))
        for ident in HARNESS_IDENTITIES:
            more_configs, more_secrets = self._signing_files(ident)
            configs += [c for c in more_configs if c not in configs]
            secrets += more_secrets
        env = {"MPLCONFIGDIR": "/tmp", **self._topology_env()}
        service.update({
            "command": Flow([*CONTAINERS, name] + (["appendix-a"] if name == "scenario" else [])),
            "environment": env,
            "networks": [s.name for s in sorted(self.t.sites, key=lambda s: s.persistent)],
            "configs": [*configs, *self._topology_configs()],
            "secrets": secrets,
            "volumes": self._ram("ui:/ui", "runs:/runs") if name == "runner" else self._ram("ui:/ui"),
            "deploy": self._deploy(self.harness_site, restart, replicas),
        })
        if name == "scenario":
            service["healthcheck"] = Flow({"disable": True})
        return service

    def _networks(self) -> dict[Any, Any]:
        networks: dict[Any, Any] = {s.name: Flow({"driver": "overlay", "internal": True, "attachable": True})
                                    for s in self.t.sites}
        if self.t.feeders:  # Swarm has no network_mode: none, and a service without networks gets the default one
            networks["isolated"] = Note(Flow({"driver": "overlay", "internal": True}),
                                        "the feeder models' only one: no route, no other service")
        return networks

    def _volumes(self) -> dict[str, Any]:
        volumes: dict[str, Any] = {f"data-{b.name}": Flow({}) for b in self.t.brokers if b.persistent}
        ram = [f.id for f in self.t.feeders] + ["ui", "runs"]
        for name in ram:
            volumes[name] = {"driver_opts": Flow(_TMPFS)}
        return volumes
