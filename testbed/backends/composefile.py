"""The Compose file of a topology (``fmb compose``): one service per broker, device, fleet and feeder.

:func:`render_compose` turns a :class:`~testbed.core.topology.Topology` into the text of a Compose
file; the same topology gives the same bytes, so ``compose/docker-compose.yml`` is exactly the
output for the Appendix A topology and a test fails when it is stale. What it lays out:

- a one-shot ``init`` that creates the PKI and fills each container's own volume
  (:func:`testbed.backends.containers.init_volumes`);
- per site an internal network named after it (no route out, not even to the host) and an
  ``<site>-access`` network that carries only its brokers' ports, published on 127.0.0.1; an edge
  site's brokers also sit on the network of the site they bridge to, and nothing else crosses;
- per broker a hardened container with its health check, its Mosquitto build
  (``FMB_<BROKER>_IMAGE``), its published port (``FMB_<BROKER>_PORT``), ``ulimits: nofile`` and
  ``max_connections`` sized for its clients (:func:`brokers.mosquitto.connection_budget`);
- per feeder model a container with no network, serving a Unix socket on a RAM volume that its
  supply, cap bank and meters mount;
- per device one container, except the meters of a fleet: one container per fleet
  (``python -m devices.fleet``), its certificates in a volume of its own;
- the harness: ``scenario`` (runs Appendix A once and exits with its verdict) and ``runner`` (the
  tablets' run button), on every site network as a measurement tap.

A topology other than the packaged default is mounted read-only into the containers that read it
(``FMB_TOPOLOGY``), from the path the caller gives (relative to the Compose file's folder, or
absolute).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from brokers.mosquitto import connection_budget
from testbed.backends.containers import (
    DYNSEC_STATE_DIR,
    LOG_DIR,
    LOGS_DIR,
    MONITOR,
    RESPONDER,
    TOPOLOGY_MOUNT,
    feeder_dir,
    feeder_socket,
    fleet_volume,
    log_volume,
    logged,
)
from testbed.backends.yamltext import Alias, Anchor, Comment, Flow, Note, dump
from testbed.core.errors import ConfigError
from testbed.core.topology import DEFAULT_TOPOLOGY, BrokerSpec, DeviceSpec, FeederSpec, Topology

__all__ = ["DEVICE_IMAGE", "FILE_RESERVE", "image_variable", "is_default", "port_variable", "render_compose",
           "ui_port_variable"]

# The image of every Python container (devices, harness, monitor, init): FMB_DEVICE_IMAGE moves it, e.g. to
# an image built under a tag of one's own while fmb-device:latest serves others on the same engine.
DEVICE_IMAGE = "${FMB_DEVICE_IMAGE:-fmb-device:latest}"
FILE_RESERVE = 64  # open files a broker needs besides its connections: listener, persistence, CRL, log
CONTAINERS = ["python", "-m", "testbed.cli.containers"]
FIRST_UI_PORT = 8443
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_TMPFS_OPTS = {"type": "tmpfs", "device": "tmpfs", "o": "uid=10001,gid=10001,mode=0700"}
# A log in RAM, bounded: Mosquitto does not rotate its log file, and a full volume stops the log, not the broker.
_LOG_OPTS = {"type": "tmpfs", "device": "tmpfs", "o": "uid=10001,gid=10001,mode=0700,size=64m"}
_HEALTHY = Flow({"condition": "service_healthy"})


def port_variable(broker: str) -> str:
    """The Compose variable that sets a broker's published port: FMB_DC_DELIVERY_PORT."""
    return "FMB_" + broker.upper().replace("-", "_").replace(".", "_") + "_PORT"


def image_variable(broker: str) -> str:
    """The Compose variable that sets a broker's image (its Mosquitto build): FMB_DC_DELIVERY_IMAGE."""
    return "FMB_" + broker.upper().replace("-", "_").replace(".", "_") + "_IMAGE"


def ui_port_variable(topology: Topology, tablet: str) -> str:
    """The Compose variable of a tablet console's published port: FMB_UI_PORT for the first tablet
    (Appendix A's one), FMB_<TABLET>_UI_PORT for the others."""
    tablets = [d.id for d in topology.devices if d.role == "tablet"]
    if tablets and tablets[0] == tablet:
        return "FMB_UI_PORT"
    return "FMB_" + tablet.upper().replace("-", "_").replace(".", "_") + "_UI_PORT"


def is_default(topology: Topology) -> bool:
    """Whether ``topology`` is the packaged default, which the images hold (nothing to mount)."""
    return Path(topology.path).resolve() == DEFAULT_TOPOLOGY.resolve()


def _check_names(topology: Topology, names: list[str]) -> None:
    """Every service, network and volume name is a DNS label Compose and the certificates accept."""
    seen: set[str] = set()
    for name in names:
        if not _NAME.fullmatch(name):
            raise ConfigError(topology.path, "", f"{name!r} cannot name a Compose service",
                              "use lower-case letters, digits, '-', '_' and '.' in site, device and feeder names")
        if name in seen:
            raise ConfigError(topology.path, "", f"{name!r} names two things of one kind in the Compose file",
                              "rename one: brokers, devices, fleets, feeders and init/scenario/runner share "
                              "one namespace")
        seen.add(name)


def render_compose(topology: Topology, topology_file: str | None = None) -> str:
    """The Compose file of ``topology``; ``topology_file`` is where the containers' host finds it
    (mounted read-only at TOPOLOGY_MOUNT; None for the packaged default, which the images hold)."""
    if topology_file is None and not is_default(topology):
        raise ConfigError(topology.path, "", "is not the packaged default topology",
                          "give the containers its path (fmb compose does): they cannot read the host's files")
    return _Builder(topology, topology_file).document()


class _Builder:
    """One Compose document being assembled from a topology."""

    def __init__(self, topology: Topology, topology_file: str | None) -> None:
        self.t = topology
        self.topology_file = topology_file
        self.fleets = topology.fleets
        self.solo = [d for d in topology.devices if not d.fleet]
        self.tablets = [d for d in topology.devices if d.role == "tablet"]
        self.logged = logged(topology)
        reserved = ["init", "scenario", "runner", MONITOR, "pki", "ui", "runs", "ui-access", "harness"]
        _check_names(topology, [*reserved, *(b.name for b in topology.brokers), *(d.id for d in self.solo),
                                *self.fleets, *(f.id for f in topology.feeders)])
        _check_names(topology, [*(s.name for s in topology.sites), *(f"{s.name}-access" for s in topology.sites),
                                "ui-access"])
        _check_names(topology, [*(n for n in self._volumes() if isinstance(n, str))])

    # -- the document ---------------------------------------------------------------------------

    def document(self) -> str:
        doc: dict[Any, Any] = {Comment(self._header()): None, Comment(""): None}
        for name, anchor in self._anchors().items():
            doc[name] = anchor
            doc[Comment("")] = None
        doc["services"] = self._services()
        doc[Comment("\nThe site networks are internal: no route out of them, not even to the host. Docker\n"
                    "publishes ports only through a network that is not internal, so each site's brokers (and\n"
                    "nothing else) also sit on an access network that carries their loopback-published ports.")] = None
        doc["networks"] = self._networks()
        doc[Comment("")] = None
        doc["volumes"] = self._volumes()
        return dump(doc)

    def _header(self) -> str:
        t = self.t
        edges = [s for s in t.sites if not s.persistent]
        centres = [s for s in t.sites if s.persistent]
        summary = (f"The {t.name} field message bus in containers: {len(t.brokers)} Mosquitto brokers (a "
                   f"delivery and a control plane in each of {_count(len(centres), 'data centre')} and "
                   f"{_count(len(edges), 'field site')}), {_count(len(self.solo), 'device')}")
        if self.fleets:
            meters = sum(len(m) for m in self.fleets.values())
            summary += f", {_count(len(self.fleets), 'fleet')} of meters ({meters} meters)"
        summary += (f", {_count(len(t.feeders), 'feeder model')}, a one-shot `init` that creates the PKI and "
                    "each container's volume, and a one-shot `scenario` that runs Appendix A once, prints the "
                    "timeline and exits with the verdict (the bus stays up). Build the images first: "
                    "`scripts/images`. See compose/README.md.")
        try:
            source = Path(t.path).resolve().relative_to(DEFAULT_TOPOLOGY.parents[2]).as_posix()
        except ValueError:
            source = Path(t.path).name
        option = "" if self.topology_file is None else f" --topology {source}"
        return (_wrap(summary) + "\n\n" + _wrap(
            f"Generated by `fmb compose{option}` from {source}: edit the topology and regenerate, not this file"
            + (" (tests/test_compose_file.py fails when compose/docker-compose.yml is stale)." if option == "" else ".")
            + " Service names are the "
            "topology's broker names, device ids, fleet and feeder names: the brokers' certificates carry them, "
            "and bridges and devices connect to them. No `version:` key: `docker compose` v2 warns that it is "
            "obsolete, and docker-compose v1 (1.27 and later) reads the file without it as the Compose "
            "Specification."))

    def _anchors(self) -> dict[Any, Any]:
        hardened = {
            "init": True,
            "read_only": True,
            "cap_drop": Flow(["ALL"]),
            "security_opt": Flow(["no-new-privileges:true"]),
            "logging": {"driver": "json-file", "options": Flow({"max-size": "10m", "max-file": "3"})},
        }
        broker = {
            "<<": Alias("hardened"),
            "image": "fmb-broker:latest",
            "restart": "unless-stopped",
            Comment("The dynamic-security plugin (evictions by `fmb respond`) rewrites its state file: it starts\n"
                    "from the read-only configuration's copy on a tmpfs of the container's own."): None,
            "tmpfs": Flow([f"{DYNSEC_STATE_DIR}:uid=10001,gid=10001,mode=0700"]),
            "command": Flow(["sh", "-c", f"cp /mosquitto/config/dynamic-security.json {DYNSEC_STATE_DIR}/ && "
                                         "exec mosquitto-saver /mosquitto/config/mosquitto.conf"]),
            Comment("Mutual-TLS MQTT v5 connection as health-<broker>, an identity with no topic rights."): None,
            "healthcheck": {"test": Flow(["CMD", "/mosquitto/config/healthcheck"]), "interval": "2s",
                            "timeout": "5s", "start_period": "60s", "retries": 10},
        }
        device = {
            "<<": Alias("hardened"),
            "image": DEVICE_IMAGE,
            "restart": "unless-stopped",
            "tmpfs": Flow(["/run/fmb:uid=10001,gid=10001,mode=0700", "/tmp:uid=10001,gid=10001,mode=0700"]),
            Comment("The heartbeat the device rewrites every 0.5 s once its connections are up: unhealthy when\n"
                    "its MQTT network thread died, a plane stayed disconnected past its backoff, or it stopped\n"
                    "beating (testbed/transport/health.py; the same check as `fmb status`). Generous start\n"
                    "period and time-out: on two busy cores, twenty containers starting at once took minutes,\n"
                    "and a Python check seconds; a check that passes ends the start period at once."): None,
            "healthcheck": Anchor("heartbeat", {
                "test": Flow(["CMD", "python", "-m", "testbed.transport.health", "/run/fmb/ready"]),
                "interval": "2s", "timeout": "10s", "start_period": "180s", "retries": 3}),
        }
        return {"x-hardened": Anchor("hardened", hardened), "x-broker": Anchor("broker", broker),
                "x-device": Anchor("device", device)}

    # -- services -------------------------------------------------------------------------------

    def _services(self) -> dict[Any, Any]:
        services: dict[Any, Any] = {}
        services[Comment("Creates the PKI in `pki` when there is none and fills every container's own volume.\n"
                         "Starts as root only to chown the fresh volumes, then runs as uid 10001.")] = None
        services["init"] = self._init()
        for site in self.t.sites:
            brokers = [b for b in self.t.brokers if b.site == site.name]
            if site.persistent:
                title = f"data centre {site.name}: persistent brokers"
            else:
                title = f"field site {site.name}: edge brokers, nothing on disk, bridged to {site.bridge_to}"
            services[Comment("")] = None
            services[Comment(_rule(title))] = None
            if not site.persistent and site.bridge_to:
                services[Comment(f"With the harness, the only services on two site networks (their bridges). Their\n"
                                 f"published ports ride {site.name}-access, so a partition leaves them reachable "
                                 "from the host.")] = None
            for i, b in enumerate(brokers):
                if i:
                    services[Comment("")] = None
                services[b.name] = self._broker(b)
        if self.t.feeders:
            physics = _rule("the physics: no network at all, a Unix socket on a shared RAM volume")
            services[Comment("\n" + physics)] = None
            for i, f in enumerate(self.t.feeders):
                if i:
                    services[Comment("")] = None
                services[f.id] = self._feeder(f)
        for site in self.t.sites:
            here = [d for d in self.solo if d.site == site.name]
            site_fleets = [name for name, meters in self.fleets.items() if meters[0].site == site.name]
            if not here and not site_fleets:
                continue
            services[Comment("\n" + _rule(f"devices of {site.name}: its network only"))] = None
            for i, d in enumerate(here):
                if i:
                    services[Comment("")] = None
                services[d.id] = self._device(d)
            for name in site_fleets:
                services[Comment("")] = None
                services[name] = self._fleet_service(name, self.fleets[name])
        services[Comment("\n" + _rule("Detect: the monitor") + "\n"
                         "Reads every broker's and reading device's log from their own log volumes, read-only\n"
                         "(each volume has one writer), and every profile its ACL lets it read; publishes its\n"
                         "alerts as AlertProfile on the control plane. No Docker socket, no CA key.")] = None
        services[MONITOR] = self._monitor()
        services[Comment("\n" + _rule("the harness: runs Appendix A once and exits with its verdict") + "\n"
                         "A measurement tap on every site network (it forwards nothing), holding only the\n"
                         "recorder's and the operator's identities, and the tablet's operator input.")] = None
        services["scenario"] = self._scenario()
        services[Comment("\nWhat the tablet's \"Run the Appendix A scenario\" button asks: the same harness "
                         "identities\n"
                         "as `scenario`, serving run requests on the shared `ui` volume and writing the runs into\n"
                         "`runs`, which the tablet reads. The tablet can ask for Appendix A, nothing else.")] = None
        services["runner"] = self._runner()
        return services

    def _topology_env(self) -> dict[str, str]:
        return {} if self.topology_file is None else {"FMB_TOPOLOGY": str(TOPOLOGY_MOUNT)}

    def _topology_volume(self) -> list[str]:
        return [] if self.topology_file is None else [f"{self.topology_file}:{TOPOLOGY_MOUNT}:ro"]

    def _init(self) -> dict[Any, Any]:
        volumes = ["pki:/pki", *(f"broker-{b.name}:/out/{b.name}" for b in self.t.brokers),
                   *(f"certs-{d.id}:/out/{d.id}" for d in self.solo),
                   *(f"{fleet_volume(f)}:/out/{f}" for f in self.fleets),
                   "certs-harness:/out/harness", f"certs-{MONITOR}:/out/{MONITOR}",
                   f"certs-{RESPONDER}:/out/{RESPONDER}", *self._topology_volume()]
        service: dict[Any, Any] = {
            "<<": Alias("hardened"),
            "image": DEVICE_IMAGE,
            "user": "0:0",
            "cap_add": Flow(["CHOWN", "SETUID", "SETGID"]),
            "network_mode": "none",
            "command": Flow([*CONTAINERS, "init"]),
        }
        if self.topology_file is not None:
            service["environment"] = self._topology_env()
        service["volumes"] = volumes
        return service

    def _broker(self, b: BrokerSpec) -> dict[Any, Any]:
        site = self.t.site(b.site)
        budget = connection_budget(self.t, b)
        depends: dict[Any, Any] = {"init": Flow({"condition": "service_completed_successfully"})}
        networks = [site.name]
        if site.bridge_to:
            depends[self.t.broker_for(site.bridge_to, b.plane).name] = _HEALTHY
            networks.append(site.bridge_to)
        networks.append(f"{site.name}-access")
        volumes = [f"broker-{b.name}:/mosquitto/config:ro", f"{log_volume(b.name)}:{LOG_DIR}"]
        if b.persistent:
            volumes.append(f"data-{b.name}:/mosquitto/data")
        return {
            "<<": Alias("broker"),
            "image": Note(f"${{{image_variable(b.name)}:-{b.image}}}", "the topology's `mosquitto` build"),
            "depends_on": depends,
            "networks": networks,
            "ports": [f"127.0.0.1:${{{port_variable(b.name)}:-{b.port}}}:{b.port}"],
            "ulimits": Note(Flow({"nofile": {"soft": budget + FILE_RESERVE, "hard": budget + FILE_RESERVE}}),
                            f"max_connections {budget} in its mosquitto.conf"),
            "volumes": volumes,
        }

    def _feeder(self, f: FeederSpec) -> dict[Any, Any]:
        socket = str(feeder_socket(f.id))
        return {
            "<<": Alias("device"),
            "network_mode": "none",
            "command": Flow([*CONTAINERS, "feeder", f.id]),
            **({"environment": self._topology_env()} if self.topology_file else {}),
            "volumes": [f"{f.id}:{feeder_dir(f.id)}", *self._topology_volume()],
            "healthcheck": {"test": Flow(["CMD", "test", "-S", socket]), "interval": "2s", "timeout": "5s",
                            "retries": 20},
        }

    def _site_brokers(self, site: str, planes: tuple[str, ...] = ("delivery", "control")) -> dict[Any, Any]:
        return {f"{site}-{plane}": _HEALTHY for plane in planes}

    def _device(self, d: DeviceSpec) -> dict[Any, Any]:
        service: dict[Any, Any] = {"<<": Alias("device"), "command": Flow([*CONTAINERS, "device", d.id])}
        env = self._topology_env()
        volumes = [f"certs-{d.id}:/certs:ro"]
        if d.id in self.logged:
            volumes.append(f"{log_volume(d.id)}:{LOG_DIR}")
        networks = [d.site]
        depends = self._site_brokers(d.site)
        feeder = self.t.feeder_of(d.id)
        if feeder is not None:
            depends[feeder.id] = _HEALTHY
            volumes.append(f"{feeder.id}:{feeder_dir(feeder.id)}")
        if d.role == "tablet":
            variable = ui_port_variable(self.t, d.id)
            default = FIRST_UI_PORT + self.tablets.index(d)
            ui = "`ui-access` only carries the operator console's HTTPS port, published on 127.0.0.1."
            service[Comment(ui)] = None
            networks.append("ui-access")
            service["networks"] = networks
            service["ports"] = [f"127.0.0.1:${{{variable}:-{default}}}:8443"]
            env = {"FMB_UI_PUBLIC": f"https://127.0.0.1:${{{variable}:-{default}}}", **env}
            volumes += ["ui:/ui", "runs:/runs:ro"]
        else:
            service["networks"] = networks
        if env:
            service["environment"] = Flow(env) if len(env) == 1 else env
        service["depends_on"] = depends
        service["volumes"] = [*volumes, *self._topology_volume()]
        return service

    def _fleet_service(self, name: str, meters: tuple[DeviceSpec, ...]) -> dict[Any, Any]:
        site = meters[0].site
        feeders = sorted({f.id for f in map(self.t.feeder_of, (m.id for m in meters)) if f is not None})
        budget = max(1024, len(meters) + 256)
        service: dict[Any, Any] = {
            Comment(f"{len(meters)} meters in one asyncio process, each its own MQTT v5 connection and certificate\n"
                    f"(CN = its id), to {site}-delivery only (meters read nothing)."): None,
            "<<": Alias("device"),
            "command": Flow([*CONTAINERS, "fleet", name]),
            "networks": [site],
            "ulimits": Flow({"nofile": {"soft": budget + FILE_RESERVE, "hard": budget + FILE_RESERVE}}),
        }
        if self.topology_file is not None:
            service["environment"] = Flow(self._topology_env())
        service["depends_on"] = {f"{site}-delivery": _HEALTHY, **{f: _HEALTHY for f in feeders}}
        service["volumes"] = [f"{fleet_volume(name)}:/certs:ro", *(f"{f}:{feeder_dir(f)}" for f in feeders),
                              *self._topology_volume()]
        return service

    def _monitor(self) -> dict[Any, Any]:
        return {
            "<<": Alias("device"),
            "command": Flow([*CONTAINERS, "monitor"]),
            **({"environment": Flow(self._topology_env())} if self.topology_file else {}),
            "networks": self._harness_networks(),
            "depends_on": {b.name: _HEALTHY for b in self.t.brokers},
            "volumes": [f"certs-{MONITOR}:/certs:ro", *(f"{log_volume(n)}:{LOGS_DIR / n}:ro" for n in self.logged),
                        *self._topology_volume()],
        }

    def _harness_networks(self) -> list[str]:
        return [s.name for s in sorted(self.t.sites, key=lambda s: s.persistent)]

    def _scenario(self) -> dict[Any, Any]:
        waits = [*(d.id for d in self.solo), *self.fleets]
        return {
            "<<": Alias("device"),
            "restart": "no",
            "command": Flow([*CONTAINERS, "scenario", "appendix-a"]),
            "environment": Flow({"MPLCONFIGDIR": "/tmp", **self._topology_env()}),
            "networks": self._harness_networks(),
            "healthcheck": Flow({"disable": True}),
            "depends_on": {w: _HEALTHY for w in waits},
            "volumes": ["certs-harness:/certs:ro", "ui:/ui", *self._topology_volume()],
        }

    def _runner(self) -> dict[Any, Any]:
        waits = [d.id for d in self.solo if d.role in ("tablet", "dms")]
        return {
            "<<": Alias("device"),
            "command": Flow([*CONTAINERS, "runner"]),
            "environment": Flow({"MPLCONFIGDIR": "/tmp", **self._topology_env()}),
            "networks": self._harness_networks(),
            "healthcheck": Note(Alias("heartbeat"), "the runner's: unhealthy when a run's recorder lost a broker"),
            "depends_on": {w: _HEALTHY for w in waits},
            "volumes": ["certs-harness:/certs:ro", "ui:/ui", "runs:/runs", *self._topology_volume()],
        }

    # -- networks and volumes ---------------------------------------------------------------------

    def _networks(self) -> dict[Any, Any]:
        networks: dict[Any, Any] = {s.name: Flow({"internal": True}) for s in self.t.sites}
        networks.update({f"{s.name}-access": Flow({}) for s in self.t.sites})
        if self.tablets:
            networks["ui-access"] = Note(Flow({}), "the tablets' consoles: HTTPS, published on 127.0.0.1")
        return networks

    def _volumes(self) -> dict[Any, Any]:
        volumes: dict[Any, Any] = {"pki": Note(Flow({}), "the CA and every certificate: only `init` mounts it")}
        for i, b in enumerate(self.t.brokers):
            volumes[f"broker-{b.name}"] = Note(Flow({}), "each broker's configuration, certificate, key, CRL") \
                if i == 0 else Flow({})
        for i, b in enumerate(b for b in self.t.brokers if b.persistent):
            volumes[f"data-{b.name}"] = Note(Flow({}), "persistence of the data-centre brokers") if i == 0 else Flow({})
        for i, d in enumerate(self.solo):
            volumes[f"certs-{d.id}"] = Note(Flow({}), "each device's own certificate and key") if i == 0 else Flow({})
        for i, name in enumerate(self.fleets):
            volumes[fleet_volume(name)] = Note(Flow({}), "each fleet's meters' certificates and keys") \
                if i == 0 else Flow({})
        volumes["certs-harness"] = Note(Flow({}), "the recorder's and the operator's")
        volumes[f"certs-{MONITOR}"] = Note(Flow({}), "the monitor's")
        volumes[f"certs-{RESPONDER}"] = Note(Flow({}), "the responder's (evictions): only `init` mounts it")
        volumes[Comment("Each broker's and reading device's log, written by it alone, read by the monitor: RAM")] = None
        for n in self.logged:
            volumes[log_volume(n)] = {"driver_opts": Flow(_LOG_OPTS)}
        volumes[Comment("Unix sockets shared between running containers: RAM only.")] = None
        for f in self.t.feeders:
            volumes[f.id] = {"driver_opts": Flow(_TMPFS_OPTS)}
        volumes["ui"] = {"driver_opts": Flow(_TMPFS_OPTS)}
        volumes[Comment("Scenario runs the tablet's button asked for (result files, timeline): RAM too, gone with "
                        "`down`.")] = None
        volumes["runs"] = {"driver_opts": Flow(_TMPFS_OPTS)}
        return volumes


def _rule(title: str, width: int = 95) -> str:
    """``-- title ----``: a section heading among the services."""
    head = f"-- {title} "
    return head + "-" * max(4, width - 6 - len(head))


def _wrap(text: str, width: int = 93) -> str:
    """``text`` broken at spaces into lines of at most ``width`` characters."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*lines, line])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
