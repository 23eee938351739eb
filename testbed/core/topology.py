"""The declarative topology: sites, brokers, devices, feeders and bridges, from one TOML file.

Every broker configuration, ACL, certificate and device launch is derived from a
:class:`Topology`. Loading validates the whole file and raises :class:`ConfigError` naming the
file, the field and the fix, so a mistake never reaches a running broker. Each broker's
persistence policy and Mosquitto build come from its site, optionally overridden for one plane
in a ``[sites.delivery]`` or ``[sites.control]`` table (see :data:`BROKER_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from testbed.core.errors import ConfigError
from testbed.core.ports import free_port
from testbed.core.topics import PLANES, PROFILES, ROLES, Grant, Plane

__all__ = [
    "BROKER_FIELDS",
    "DEFAULT_TOPOLOGY",
    "MOSQUITTO_IMAGES",
    "PERSISTENCE_MODES",
    "SQLITE_SYNC",
    "BridgeSpec",
    "BrokerSpec",
    "DeviceSpec",
    "FeederSpec",
    "SiteSpec",
    "SubstationTemplate",
    "Topology",
    "load_topology",
]

DEFAULT_TOPOLOGY = Path(__file__).resolve().parents[2] / "brokers" / "topologies" / "appendix-a.toml"
DEVICE_ROLES = ("tablet", "supply", "meter", "capbank", "dms")
HARNESS_IDENTITIES = ("recorder", "operator", "bench", "monitor", "responder")
# none: nothing on disk. snapshot: Mosquitto's built-in database, written whole on clean exit, on
# SIGUSR1 and per autosave policy (a kill -9 loses what came since). sqlite: Mosquitto 2.1's
# persist-sqlite plugin, every change written as it happens, committed every flush period.
PERSISTENCE_MODES = ("none", "snapshot", "sqlite")
SQLITE_SYNC = ("off", "normal", "full", "extra")  # the plugin's plugin_opt_sync (SQLite PRAGMA synchronous)
# The broker build a `mosquitto` value selects, as a container image; "2.0" is also the host's
# Mosquitto (Debian bookworm's 2.0.11) on the local backend. Any other value is an image name.
MOSQUITTO_IMAGES = {"2.0": "fmb-broker:latest", "2.1": "fmb-broker-2.1:latest"}
# The fields a site sets for both its brokers and a [sites.<plane>] table may override for one.
BROKER_FIELDS = ("persistence", "autosave_interval_s", "autosave_on_changes", "snapshot_every_ms", "flush_period_s",
                 "sync", "mosquitto")
# Ports of sites that name none: pairs from this base up, skipping those the file names ([ports] base).
DEFAULT_PORT_BASE = 20000
# Bounds of a [[substations]] template, so that a typo cannot ask for a million brokers.
MAX_SUBSTATIONS = 1000
MAX_FEEDERS_PER_SUBSTATION = 100
MAX_METERS_PER_FEEDER = 100_000
MAX_DEVICES = 1_000_000
_T = TypeVar("_T")


@dataclass(frozen=True)
class SiteSpec:
    """A site with one delivery-plane and one control-plane broker."""

    name: str
    kind: str  # "edge" (nothing on disk) or "datacentre" (persistent)
    delivery_port: int
    control_port: int
    host: str = "127.0.0.1"
    bridge_to: str | None = None
    autosave_interval_s: int = 60
    session_expiry_s: int = 3600
    persistence: str = ""  # "" : by kind (snapshot in a data centre, none at the edge)
    autosave_on_changes: int = 0  # > 0: save after that many changes instead of every autosave_interval_s
    snapshot_every_ms: int = 0  # > 0: also a SIGUSR1 every so many ms (testbed.backends.saver)
    flush_period_s: int = 5
    sync: str = "normal"
    mosquitto: str = "2.0"
    # Per-plane overrides of the fields above: ((plane, ((field, value), ...)), ...)
    planes: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    @property
    def persistent(self) -> bool:
        return self.kind == "datacentre"

    def broker_settings(self, plane: str) -> dict[str, Any]:
        """The persistence and build fields of this site's broker for ``plane``, overrides applied."""
        settings = {name: getattr(self, name) for name in BROKER_FIELDS}
        settings["persistence"] = settings["persistence"] or ("snapshot" if self.persistent else "none")
        settings.update(dict(dict(self.planes).get(plane, ())))
        return settings


@dataclass(frozen=True)
class BrokerSpec:
    """One Mosquitto broker: a site's broker for one plane."""

    name: str
    site: str
    plane: Plane
    host: str
    port: int
    persistent: bool
    autosave_interval_s: int
    persistence: str = "none"  # PERSISTENCE_MODES
    autosave_on_changes: int = 0
    snapshot_every_ms: int = 0
    flush_period_s: int = 5
    sync: str = "normal"
    mosquitto: str = "2.0"  # "2.0", "2.1" or an image name

    @property
    def image(self) -> str:
        """The container image of this broker's Mosquitto build."""
        return MOSQUITTO_IMAGES.get(self.mosquitto, self.mosquitto)

    @property
    def policy(self) -> str:
        """The persistence policy in a few words, as reports and benchmarks name it."""
        if self.persistence == "snapshot":
            every = (f"{self.autosave_on_changes} changes" if self.autosave_on_changes
                     else f"{self.autosave_interval_s} s")
            if self.snapshot_every_ms:
                return f"snapshot every {self.snapshot_every_ms} ms (SIGUSR1) and every {every}"
            return f"snapshot every {every}"
        if self.persistence == "sqlite":
            return f"sqlite flush {self.flush_period_s} s, sync {self.sync}"
        return "none"


@dataclass(frozen=True)
class BridgeSpec:
    """A bridge from a field broker to its data-centre counterpart, over mutual TLS."""

    name: str  # also the bridge's certificate identity
    local: str  # broker that opens the bridge connection
    remote: str
    plane: Plane


@dataclass(frozen=True)
class DeviceSpec:
    """One simulated device; a meter with a ``fleet`` runs in that fleet's process (devices/fleet.py).

    An ``external`` device is one the testbed does not start: real equipment connected from outside,
    or an endpoint of the harness. It has its identity, ACL and bridge topics like any other."""

    id: str
    role: str
    site: str
    fleet: str = ""
    external: bool = False


@dataclass(frozen=True)
class FeederSpec:
    """The physical coupling of one supply, cap bank and its meters (not MQTT traffic)."""

    id: str
    site: str
    supply: str
    capbank: str
    meters: tuple[str, ...]
    line_drop_v: float = 1.2
    capbank_boost_v: float = 1.2
    supply_delay_s: float = 0.0
    capbank_delay_s: float = 0.0
    meter_deadband_v: float = 0.5
    meter_period_s: float = 5.0

    @property
    def meter(self) -> str:
        """The regulating (end-of-line) meter: the first of ``meters``."""
        return self.meters[0]

    @property
    def devices(self) -> tuple[str, ...]:
        """Every device the feeder couples: supply, cap bank, meters."""
        return (self.supply, self.capbank, *self.meters)


@dataclass(frozen=True)
class SubstationTemplate:
    """A ``[[substations]]`` table: ``count`` edge sites alike, each with a tablet and ``feeders``
    feeders of a supply, a cap bank and ``meters_per_feeder`` meters that run as one fleet."""

    name: str
    count: int
    bridge_to: str
    feeders: int = 1
    meters_per_feeder: int = 1
    tablet: bool = True
    feeder_settings: tuple[tuple[str, float], ...] = ()  # FeederSpec numbers for every feeder
    site_settings: tuple[tuple[str, Any], ...] = ()  # SiteSpec fields for every site (host, persistence...)

    def site_names(self) -> list[str]:
        width = max(3, len(str(self.count)))
        return [f"{self.name}-{i:0{width}d}" for i in range(1, self.count + 1)]


@dataclass(frozen=True)
class Topology:
    """The whole bus: sites, devices and feeders; brokers and bridges are derived."""

    path: str
    name: str
    root: str
    qos: int
    message_size_limit: int
    max_queued_messages: int
    sites: tuple[SiteSpec, ...]
    devices: tuple[DeviceSpec, ...]
    feeders: tuple[FeederSpec, ...]
    templates: tuple[SubstationTemplate, ...] = ()

    # Indexes, built once per (frozen) topology: a bus of 10,000 meters is looked up per device.
    @functools.cached_property
    def brokers(self) -> tuple[BrokerSpec, ...]:
        return tuple(self._broker(s, plane, s.broker_settings(plane)) for s in self.sites for plane in PLANES)

    @functools.cached_property
    def _sites_by_name(self) -> dict[str, SiteSpec]:
        return {s.name: s for s in self.sites}

    @functools.cached_property
    def _brokers_by_name(self) -> dict[str, BrokerSpec]:
        return {b.name: b for b in self.brokers}

    @functools.cached_property
    def _devices_by_id(self) -> dict[str, DeviceSpec]:
        return {d.id: d for d in self.devices}

    @functools.cached_property
    def _feeders_by_id(self) -> dict[str, FeederSpec]:
        return {f.id: f for f in self.feeders}

    @functools.cached_property
    def _feeder_by_device(self) -> dict[str, FeederSpec]:
        return {d: f for f in self.feeders for d in f.devices}

    @functools.cached_property
    def _devices_by_site(self) -> dict[str, tuple[DeviceSpec, ...]]:
        out: dict[str, list[DeviceSpec]] = {s.name: [] for s in self.sites}
        for d in self.devices:
            out[d.site].append(d)
        return {k: tuple(v) for k, v in out.items()}

    @functools.cached_property
    def _roles_by_site(self) -> dict[str, frozenset[str]]:
        return {site: frozenset(d.role for d in devices) for site, devices in self._devices_by_site.items()}

    @functools.cached_property
    def fleets(self) -> dict[str, tuple[DeviceSpec, ...]]:
        """Fleet name -> its meters, in order (meters declared one by one belong to none)."""
        out: dict[str, list[DeviceSpec]] = {}
        for d in self.devices:
            if d.fleet:
                out.setdefault(d.fleet, []).append(d)
        return {k: tuple(v) for k, v in out.items()}

    @property
    def substations(self) -> tuple[SiteSpec, ...]:
        """The edge sites bridged to a data centre."""
        return tuple(s for s in self.sites if s.bridge_to)

    def devices_at(self, site: str) -> tuple[DeviceSpec, ...]:
        """The devices of ``site``, in file order."""
        return self._devices_by_site.get(site, ())

    def feeders_at(self, site: str) -> tuple[FeederSpec, ...]:
        """The feeders of ``site``, in file order."""
        return tuple(f for f in self.feeders if f.site == site)

    def feeder_of(self, device_id: str) -> FeederSpec | None:
        """The feeder that couples ``device_id``, if any."""
        return self._feeder_by_device.get(device_id)

    def fleet_site(self, fleet: str) -> str:
        """The site whose meters fleet ``fleet`` runs."""
        return _named(self.path, "devices", "fleet", self.fleets, fleet)[0].site

    @staticmethod
    def _broker(s: SiteSpec, plane: Plane, settings: dict[str, Any]) -> BrokerSpec:
        return BrokerSpec(
            name=f"{s.name}-{plane}",
            site=s.name,
            plane=plane,
            host=s.host,
            port=s.delivery_port if plane == "delivery" else s.control_port,
            persistent=settings["persistence"] != "none",
            **settings,
        )

    @property
    def bridges(self) -> tuple[BridgeSpec, ...]:
        return tuple(
            BridgeSpec(f"bridge-{s.name}-{plane}", f"{s.name}-{plane}", f"{s.bridge_to}-{plane}", plane)
            for s in self.sites
            if s.bridge_to
            for plane in PLANES
        )

    def bridge_directions(self, bridge: BridgeSpec) -> dict[str, str]:
        """Which profiles of the bridge's plane must cross it, and which way (in, out, both).

        Derived from where publishers and readers sit, so nothing crosses that no device
        on the other side reads (least privilege), and a profile crosses one way only
        unless devices on both sides publish and read it.
        """
        here = self.broker(bridge.local).site
        directions = {}
        for profile in PROFILES.values():
            if profile.plane != bridge.plane:
                continue
            pubs = {site for site, roles in self._roles_by_site.items()  # a site-wide right stays in its site
                    if any(g.profile == profile.name and g.scope != "site" for r in roles for g in ROLES[r].publishes)}
            readers = {site for site, roles in self._roles_by_site.items()
                       if any(g.profile == profile.name for r in roles for g in ROLES[r].reads)}
            out = here in pubs and bool(readers - {here})
            inward = here in readers and bool(pubs - {here})
            if out or inward:
                directions[profile.name] = "both" if out and inward else "out" if out else "in"
        return directions

    def bridge_connections(self, bridge: BridgeSpec) -> dict[str, list[str]]:
        """The bridge's connections, ``{"out": [profiles], "in": [profiles]}``, empty ones left out.

        One connection per direction (profiles crossing both ways ride the inward one): see
        ``brokers.mosquitto`` for why a connection that only sends is faster, and
        :meth:`bridge_endpoints` for which broker opens each.
        """
        ways: dict[str, list[str]] = {}
        for profile, d in self.bridge_directions(bridge).items():
            ways.setdefault("out" if d == "out" else "in", []).append(profile)
        return ways

    def bridge_endpoints(self, bridge: BridgeSpec, way: str) -> tuple[str, str]:
        """(broker that opens the connection, broker it connects to) for one way of a bridge.

        Each side opens the connection that carries what it sends: the field broker pushes its
        outward traffic to the data centre, and the data-centre broker pushes the inward
        traffic to the field. So whatever crosses during a partition waits in the queue of the
        broker that sends it, and the data centre's queue is persistent: Mosquitto 2.0 gives an
        MQTT v5 bridge no session expiry, so a data-centre session *for* a field bridge would
        not outlive the link (measured: messages published while it was down were gone).
        """
        return (bridge.local, bridge.remote) if way == "out" else (bridge.remote, bridge.local)

    def grant_mrids(self, ident: str, grant: Grant) -> list[str]:
        """The mRIDs a grant of identity ``ident`` covers: ``["+"]`` for any, ``[ident]`` for its own,
        every feeder of the bus for "feeders", and for its site's, the site's devices that own the
        profile (a grant of scope "own" on it) and, for a diagram, the site's feeders."""
        if grant.scope == "any":
            return ["+"]
        if grant.scope == "own":
            return [ident]
        if grant.scope == "feeders":  # the diagrams a DMS publishes: every feeder of the bus
            return [f.id for f in self.feeders]
        device = self._devices_by_id.get(ident)
        return self.site_mrids(device.site, grant.profile) if device else []

    def site_mrids(self, site: str, profile: str) -> list[str]:
        """The mRIDs of ``profile`` that belong to ``site`` (see :meth:`grant_mrids`)."""
        return self._site_mrids.get((site, profile), [])

    @functools.cached_property
    def _site_mrids(self) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = {}
        for d in self.devices:
            for g in (*ROLES[d.role].publishes, *ROLES[d.role].reads):
                if g.scope == "own":
                    out.setdefault((d.site, g.profile), []).append(d.id)
        for f in self.feeders:
            for p in PROFILES.values():
                if p.kind == "diagram":
                    out.setdefault((f.site, p.name), []).append(f.id)
        return {k: sorted(set(v)) for k, v in out.items()}

    def bridge_inward_mrids(self, bridge: BridgeSpec, profile: str) -> list[str] | None:
        """The mRIDs of ``profile`` that the bridge's site reads, when it reads only its own
        devices' (commands addressed to them, its feeders' diagrams), so that the bridge carries
        nothing for another substation; None when the site reads the profile for any mRID."""
        site = self.broker(bridge.local).site
        mrids: list[str] = []
        for d in self.devices_at(site):
            for g in ROLES[d.role].reads:
                if g.profile != profile:
                    continue
                if g.scope == "any":
                    return None
                mrids += self.grant_mrids(d.id, g)
        return sorted(set(mrids))

    def site(self, name: str) -> SiteSpec:
        return _named(self.path, "sites", "site", self._sites_by_name, name)

    def broker(self, name: str) -> BrokerSpec:
        return _named(self.path, "sites", "broker", self._brokers_by_name, name)

    def broker_for(self, site: str, plane: Plane) -> BrokerSpec:
        return self.broker(f"{site}-{plane}")

    def device(self, ident: str) -> DeviceSpec:
        return _named(self.path, "devices", "device", self._devices_by_id, ident)

    def feeder(self, ident: str) -> FeederSpec:
        return _named(self.path, "feeders", "feeder", self._feeders_by_id, ident)

    def first(self, items: Iterable[_T], what: str) -> _T:
        """The first of ``items`` (a search of this topology), or a ConfigError saying it has no ``what``.

        For code that needs a kind of thing rather than a named one, e.g. a benchmark that needs
        a field site bridged to a data centre, or a DMS."""
        for item in items:
            return item
        raise ConfigError(self.path, "", f"has no {what}",
                          f"this needs one: add it, or use {DEFAULT_TOPOLOGY.name} (brokers/topologies/)")

    def devices_matching(self, name: str) -> list[DeviceSpec]:
        """Devices whose id or role is ``name``."""
        return [d for d in self.devices if name in (d.id, d.role)]

    def client_identities(self) -> list[str]:
        """Every certificate identity a client presents: devices, bridges, harness."""
        return [d.id for d in self.devices] + [b.name for b in self.bridges] + list(HARNESS_IDENTITIES)

    def web_servers(self) -> dict[str, list[str]]:
        """The HTTPS identities of the tablets' web consoles (``<tablet>-ui``) and their host names."""
        return {f"{d.id}-ui": [d.id] for d in self.devices if d.role == "tablet"}

    def command_signers(self, device: DeviceSpec | None = None) -> list[str]:
        """Who signs commands (every issuer, with the harness's operator); with ``device``, only
        those whose commands that device reads: its authorised signers."""
        commands = {g.profile for g in ROLES[device.role].reads} if device else set(PROFILES)
        issuing = {role for role in {d.role for d in self.devices}
                   if any(g.profile in commands and PROFILES[g.profile].kind == "command"
                          for g in ROLES[role].publishes)}
        return [*(d.id for d in self.devices if d.role in issuing), "operator"]

    def identity_role(self, ident: str) -> str | None:
        if ident in HARNESS_IDENTITIES:
            return ident
        d = self._devices_by_id.get(ident)
        return d.role if d else None

    def with_ports(self, ports: dict[str, tuple[int, int]]) -> Topology:
        """A copy with (delivery, control) ports replaced for the named sites."""
        sites = tuple(
            dataclasses.replace(s, delivery_port=ports[s.name][0], control_port=ports[s.name][1])
            if s.name in ports
            else s
            for s in self.sites
        )
        return dataclasses.replace(self, sites=sites)

    def with_free_ports(self) -> Topology:
        """A copy on ports the kernel says are free now (for tests running side by side)."""
        return self.with_ports({s.name: (free_port(), free_port()) for s in self.sites})


class _Reader:
    """Typed access to one table of the file, with errors that name the field."""

    def __init__(self, path: Path, prefix: str, table: Any) -> None:
        self.path, self.prefix = path, prefix
        if not isinstance(table, dict):
            raise ConfigError(path, prefix, "must be a table", "write it as [table] or [[table]]")
        self.table = table

    def field(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., fix: str = "") -> Any:
        if key not in self.table:
            if default is ...:
                raise ConfigError(self.path, self.field(key), "is missing", fix or f"add {key} = ...")
            return default
        value = self.table[key]
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _tuple(kind))
        if not ok:
            names = " or ".join(k.__name__ for k in _tuple(kind))
            raise ConfigError(
                self.path, self.field(key), f"is {value!r}, not a {names}", fix or f"give a {names}"
            )
        return value

    def port(self, key: str) -> int:
        value = self.get(key, int)
        if not 0 < value < 65536:
            raise ConfigError(self.path, self.field(key), f"is {value}", "use a TCP port 1-65535")
        return int(value)

    def unknown(self, allowed: set[str]) -> None:
        for key in self.table:
            if key not in allowed:
                raise ConfigError(
                    self.path, self.field(key), "is not a known field",
                    f"remove it or use one of: {', '.join(sorted(allowed))}",
                )


def _named(path: str, field: str, what: str, items: dict[str, _T], name: str) -> _T:
    """``items[name]``, or a ConfigError that lists the names there are."""
    if name not in items:
        raise ConfigError(path, field, f"no {what} {name!r}", f"use one of: {', '.join(items) or '(none)'}")
    return items[name]


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def load_topology(path: Path | str | None = None) -> Topology:
    """Load and validate a topology file (the default Appendix A one if ``path`` is None)."""
    path = Path(path) if path else DEFAULT_TOPOLOGY
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file", "give the path of a topology .toml file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(path, "", f"is not valid TOML ({e})", "fix the syntax at that line") from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot be read ({e.strerror})", "give a readable topology .toml file") from None
    top = _Reader(path, "", data)
    top.unknown({"schema", "name", "root", "qos", "limits", "ports", "sites", "substations", "devices", "feeders"})
    if top.get("schema", int) != 1:
        raise ConfigError(path, "schema", f"is {data['schema']}", "this testbed reads schema = 1")
    qos = top.get("qos", int, 1)
    if qos not in (0, 1, 2):
        raise ConfigError(path, "qos", f"is {qos}", "use 0, 1 or 2")
    root = top.get("root", str, "fmb")
    if not root or any(c in root for c in "/+#"):
        raise ConfigError(path, "root", f"is {root!r}", "use one topic level without / + #")
    limits = _Reader(path, "limits", top.get("limits", dict, {}))
    limits.unknown({"message_size_limit", "max_queued_messages"})
    ports_table = _Reader(path, "ports", top.get("ports", dict, {}))
    ports_table.unknown({"base"})
    port_base = ports_table.get("base", int, DEFAULT_PORT_BASE)
    if not 1024 <= port_base <= 65000:
        raise ConfigError(path, "ports.base", f"is {port_base}", "use a port from 1024 to 65000")

    sites = [_site(path, i, t) for i, t in enumerate(top.get("sites", list))]
    templates = tuple(_template(path, i, t) for i, t in enumerate(top.get("substations", list, [])))
    declared_devices = [_device_table(path, i, t) for i, t in enumerate(top.get("devices", list, []))]
    declared_feeders = top.get("feeders", list, [])
    sites += [_template_site(path, t, i, name) for i, t in enumerate(templates) for name in t.site_names()]
    _unique(path, "sites", [s.name for s in sites])
    names = {s.name for s in sites}
    for i, s in enumerate(sites):
        if s.bridge_to is not None:
            field = f"sites[{i}].bridge_to" if i < len(top.table["sites"]) else "substations.bridge_to"
            if s.bridge_to not in names or s.bridge_to == s.name:
                raise ConfigError(path, field, f"is {s.bridge_to!r}",
                                  f"name another site: {', '.join(sorted(names - {s.name}))}")
            target = next(t for t in sites if t.name == s.bridge_to)
            if s.persistent or not target.persistent:
                raise ConfigError(path, field, "bridges an edge site only",
                                  "set kind = 'edge' here and bridge to a 'datacentre' site")
    sites = _allocate_ports(sites, port_base)
    ports = [p for s in sites for p in (s.delivery_port, s.control_port)]
    _unique(path, "sites.*_port", [str(p) for p in ports])

    devices = [_device(path, i, t, names) for i, t in enumerate(declared_devices)]
    generated_devices, generated_feeders = _expand(templates)
    devices += generated_devices
    if len(devices) > MAX_DEVICES:
        raise ConfigError(path, "substations", f"expands to {len(devices)} devices",
                          f"keep a topology under {MAX_DEVICES:,} devices (fewer substations or meters)")
    _unique(path, "devices", [d.id for d in devices])
    by_id = {d.id: d for d in devices}
    feeders = [_feeder(path, i, t, names, by_id) for i, t in enumerate(declared_feeders)]
    feeders += generated_feeders
    _unique(path, "feeders", [f.id for f in feeders])
    coupled: dict[str, str] = {}
    for f in feeders:
        for d in f.devices:
            if d in coupled:
                raise ConfigError(path, "feeders", f"device {d!r} is on feeders {coupled[d]!r} and {f.id!r}",
                                  "couple each device to one feeder")
            coupled[d] = f.id

    return Topology(
        path=str(path),
        name=top.get("name", str, path.stem),
        root=root,
        qos=qos,
        message_size_limit=limits.get("message_size_limit", int, 65536),
        max_queued_messages=limits.get("max_queued_messages", int, 10000),
        sites=tuple(sites),
        devices=tuple(devices),
        feeders=tuple(feeders),
        templates=templates,
    )


def _allocate_ports(sites: list[SiteSpec], base: int) -> list[SiteSpec]:
    """Sites that name no ports get a pair each, from ``base`` up, skipping every port named."""
    taken = {p for s in sites for p in (s.delivery_port, s.control_port) if p}
    free = (p for p in range(base, 65536) if p not in taken)
    out = []
    for s in sites:
        if not s.delivery_port:
            s = dataclasses.replace(s, delivery_port=next(free, 0))
        if not s.control_port:
            s = dataclasses.replace(s, control_port=next(free, 0))
        out.append(s)
    return out


def _template(path: Path, i: int, table: Any) -> SubstationTemplate:
    r = _Reader(path, f"substations[{i}]", table)
    numbers = {f.name for f in dataclasses.fields(FeederSpec) if f.type == "float"}
    site_fields = {"host", "session_expiry_s", *BROKER_FIELDS}
    r.unknown({"name", "count", "bridge_to", "feeders", "meters_per_feeder", "tablet"} | numbers | site_fields)
    name = _ident(r, "name")

    def bounded(key: str, low: int, high: int, default: Any = ...) -> int:
        value: int = r.get(key, int, default)
        if not low <= value <= high:
            raise ConfigError(path, r.field(key), f"is {value}", f"use {low} to {high:,}")
        return value

    settings = []
    for key in sorted(numbers & set(r.table)):
        value = float(r.get(key, (int, float)))
        if value < 0:
            raise ConfigError(path, r.field(key), f"is {value}", "use a value >= 0")
        settings.append((key, value))
    return SubstationTemplate(
        name=name,
        count=bounded("count", 1, MAX_SUBSTATIONS),
        bridge_to=r.get("bridge_to", str, fix="name the data-centre site its brokers bridge to"),
        feeders=bounded("feeders", 0, MAX_FEEDERS_PER_SUBSTATION, 1),
        meters_per_feeder=bounded("meters_per_feeder", 1, MAX_METERS_PER_FEEDER, 1),
        tablet=r.get("tablet", bool, True),
        feeder_settings=tuple(settings),
        site_settings=tuple((k, r.table[k]) for k in sorted(site_fields & set(r.table))),
    )


def _template_site(path: Path, t: SubstationTemplate, i: int, name: str) -> SiteSpec:
    """One instance of template ``t`` as a site table, validated like a hand-written one."""
    table = {"name": name, "kind": "edge", "bridge_to": t.bridge_to, **dict(t.site_settings)}
    try:
        return _site(path, i, table)
    except ConfigError as e:  # name the template's field, not a site the user never wrote
        field = e.field.replace(f"sites[{i}]", f"substations[{i}]")
        raise ConfigError(path, field, e.problem, e.fix) from None


def _expand(templates: tuple[SubstationTemplate, ...]) -> tuple[list[DeviceSpec], list[FeederSpec]]:
    """The devices and feeders of every substation the templates describe."""
    devices: list[DeviceSpec] = []
    feeders: list[FeederSpec] = []
    for t in templates:
        width = max(4, len(str(t.meters_per_feeder)))
        for site in t.site_names():
            if t.tablet:
                devices.append(DeviceSpec(f"{site}-tablet", "tablet", site))
            fleet = f"{site}-fleet"
            for j in range(1, t.feeders + 1):
                feeder = f"{site}-f{j}"
                supply, capbank = f"{feeder}-supply", f"{feeder}-capbank"
                meters = tuple(f"{feeder}-m{k:0{width}d}" for k in range(1, t.meters_per_feeder + 1))
                devices += [DeviceSpec(supply, "supply", site), DeviceSpec(capbank, "capbank", site)]
                devices += [DeviceSpec(m, "meter", site, fleet) for m in meters]
                feeders.append(FeederSpec(feeder, site, supply, capbank, meters, **dict(t.feeder_settings)))
    return devices, feeders


def _site(path: Path, i: int, table: Any) -> SiteSpec:
    r = _Reader(path, f"sites[{i}]", table)
    r.unknown({f.name for f in dataclasses.fields(SiteSpec) if f.name != "planes"} | set(PLANES))
    kind = r.get("kind", str)
    if kind not in ("edge", "datacentre"):
        raise ConfigError(path, r.field("kind"), f"is {kind!r}", "use 'edge' or 'datacentre'")
    site = SiteSpec(
        name=_ident(r, "name"),
        kind=kind,
        delivery_port=r.port("delivery_port") if "delivery_port" in r.table else 0,  # 0: allocated
        control_port=r.port("control_port") if "control_port" in r.table else 0,
        host=r.get("host", str, "127.0.0.1"),
        bridge_to=r.get("bridge_to", str, None),
        session_expiry_s=r.get("session_expiry_s", int, 3600),
        **_broker_fields(r, site_level=True),
    )
    _check_broker(r, site.broker_settings(""), kind, set(r.table))
    planes = []
    for plane in PLANES:
        if plane in r.table:
            sub = _Reader(path, r.field(plane), r.table[plane])
            sub.unknown(set(BROKER_FIELDS))
            overrides = _broker_fields(sub, site_level=False)
            planes.append((plane, tuple(overrides.items())))
            site = dataclasses.replace(site, planes=tuple(planes))
            _check_broker(sub, site.broker_settings(plane), kind, set(sub.table))
    return site


def _broker_fields(r: _Reader, site_level: bool) -> dict[str, Any]:
    """The broker fields ``r``'s table sets (at site level every field, with its default)."""
    out: dict[str, Any] = {}
    for name in BROKER_FIELDS:
        if name not in r.table and not site_level:
            continue
        default = next(f.default for f in dataclasses.fields(SiteSpec) if f.name == name)
        value = r.get(name, str if isinstance(default, str) else int, default)
        if isinstance(value, int) and value < 0:
            raise ConfigError(r.path, r.field(name), f"is {value}", "use 0 or more")
        out[name] = value
    if site_level and not out["persistence"]:
        del out["persistence"]  # by kind
    return out


def _check_broker(r: _Reader, settings: dict[str, Any], kind: str, given: set[str]) -> None:
    """A broker's persistence and build, checked together (``given``: the fields this table sets)."""
    mode, version = settings["persistence"], settings["mosquitto"]
    if mode not in PERSISTENCE_MODES:
        raise ConfigError(r.path, r.field("persistence"), f"is {mode!r}", f"use one of: {', '.join(PERSISTENCE_MODES)}")
    if mode != "none" and kind == "edge":
        raise ConfigError(r.path, r.field("persistence"), f"is {mode!r} on an edge site, which keeps nothing on disk",
                          "remove it, or make the site kind = 'datacentre'")
    if settings["sync"] not in SQLITE_SYNC:
        raise ConfigError(r.path, r.field("sync"), f"is {settings['sync']!r}", f"use one of: {', '.join(SQLITE_SYNC)}")
    if version not in MOSQUITTO_IMAGES and not _image_name(version):
        raise ConfigError(r.path, r.field("mosquitto"), f"is {version!r}",
                          "use '2.0' (the host's, or image fmb-broker), '2.1' (image fmb-broker-2.1, "
                          "`scripts/images --broker 2.1`) or an image name such as my-mosquitto:2.1")
    if mode == "sqlite" and version == "2.0":
        raise ConfigError(r.path, r.field("persistence"), "is 'sqlite', a Mosquitto 2.1 plugin, on Mosquitto 2.0",
                          "set mosquitto = '2.1' (it runs in a container), or use persistence = 'snapshot'")
    if {"autosave_interval_s", "autosave_on_changes"} <= given and settings["autosave_on_changes"]:
        raise ConfigError(r.path, r.field("autosave_on_changes"), "is set beside autosave_interval_s",
                          "keep one: Mosquitto saves either every N seconds or after N changes")
    if mode == "sqlite":  # (on a broker without persistence they were always ignored)
        for name in ("autosave_interval_s", "autosave_on_changes", "snapshot_every_ms"):
            if name in given:
                raise ConfigError(r.path, r.field(name), f"applies to persistence = 'snapshot', not {mode!r}",
                                  "remove it, or set persistence = 'snapshot'")
    every_ms = settings["snapshot_every_ms"]
    if "snapshot_every_ms" in given and mode == "none":
        raise ConfigError(r.path, r.field("snapshot_every_ms"), "applies to persistence = 'snapshot', not 'none'",
                          "remove it, or set persistence = 'snapshot' (on a data-centre site)")
    if 0 < every_ms < 100:
        raise ConfigError(r.path, r.field("snapshot_every_ms"), f"is {every_ms}: a whole snapshot that often would "
                          "take the broker's time", "use 0 (off) or 100 ms or more")
    if mode != "sqlite":
        for name in ("flush_period_s", "sync"):
            if name in given:
                raise ConfigError(r.path, r.field(name), f"applies to persistence = 'sqlite', not {mode!r}",
                                  "remove it, or set persistence = 'sqlite' (with mosquitto = '2.1')")


def _image_name(value: str) -> bool:
    """An image reference such as ``fmb-broker-2.1:latest`` or ``registry/mosquitto:2.1`` (a tag or a path)."""
    return (":" in value or "/" in value) and all(c.isalnum() or c in "._-:/@" for c in value) \
        and value == value.strip() and not value.startswith(("-", ":", "/"))


def _device_table(path: Path, i: int, table: Any) -> _Reader:
    r = _Reader(path, f"devices[{i}]", table)
    r.unknown({"id", "role", "site", "external"})
    return r


def _device(path: Path, i: int, r: _Reader, sites: set[str]) -> DeviceSpec:
    role = r.get("role", str)
    if role not in DEVICE_ROLES:
        raise ConfigError(path, r.field("role"), f"is {role!r}", f"use one of: {', '.join(DEVICE_ROLES)}")
    assert role in ROLES
    site = r.get("site", str)
    if site not in sites:
        raise ConfigError(path, r.field("site"), f"is {site!r}", f"use one of: {', '.join(sorted(sites))}")
    return DeviceSpec(id=_ident(r, "id"), role=role, site=site, external=r.get("external", bool, False))


def _feeder(path: Path, i: int, table: Any, sites: set[str], devices: dict[str, DeviceSpec]) -> FeederSpec:
    r = _Reader(path, f"feeders[{i}]", table)
    r.unknown({f.name for f in dataclasses.fields(FeederSpec)} | {"meter"})
    site = r.get("site", str)
    if site not in sites:
        raise ConfigError(path, r.field("site"), f"is {site!r}", f"use one of: {', '.join(sorted(sites))}")

    def ref(field: str, role: str, ident: Any) -> str:
        if not isinstance(ident, str) or ident not in devices or devices[ident].role != role:
            known = [d.id for d in devices.values() if d.role == role][:10]
            raise ConfigError(path, r.field(field), f"is {ident!r}, not a {role} device",
                              f"use one of: {', '.join(known) or '(declare a ' + role + ' device)'}")
        return ident

    supply, capbank = ref("supply", "supply", r.get("supply", str)), ref("capbank", "capbank", r.get("capbank", str))
    if ("meter" in r.table) == ("meters" in r.table):
        raise ConfigError(path, r.field("meters"), "is missing" if "meter" not in r.table else "is set beside meter",
                          "give meter = \"<id>\" or meters = [\"<id>\", ...], one of the two")
    if "meter" in r.table:
        meters: tuple[str, ...] = (ref("meter", "meter", r.get("meter", str)),)
    else:
        listed = r.get("meters", list)
        if not listed:
            raise ConfigError(path, r.field("meters"), "is empty", "list at least one meter; the first regulates")
        meters = tuple(ref(f"meters[{k}]", "meter", m) for k, m in enumerate(listed))
    numbers: dict[str, Any] = {}  # keyword arguments of FeederSpec, read by field name
    for f in dataclasses.fields(FeederSpec):
        if f.type == "float":
            value = float(r.get(f.name, (int, float), f.default))
            if value < 0:
                raise ConfigError(path, r.field(f.name), f"is {value}", "use a value >= 0")
            numbers[f.name] = value
    return FeederSpec(id=_ident(r, "id"), site=site, supply=supply, capbank=capbank, meters=meters, **numbers)


def _ident(r: _Reader, key: str) -> str:
    value: str = r.get(key, str)
    if not value or not all(c.isalnum() or c in "-_" for c in value):
        raise ConfigError(r.path, r.field(key), f"is {value!r}",
                          "use letters, digits, - and _ only (it becomes a topic level and a CN)")
    return value


def _unique(path: Path, field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ConfigError(path, field, f"{n!r} appears twice", "give each one a unique value")
        seen.add(n)
