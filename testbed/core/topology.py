"""The declarative topology: sites, brokers, devices, feeders and bridges, from one TOML file.

Every broker configuration, ACL, certificate and device launch is derived from a
:class:`Topology`. Loading validates the whole file and raises :class:`ConfigError` naming the
file, the field and the fix, so a mistake never reaches a running broker. Each broker's
persistence policy and Mosquitto build come from its site, optionally overridden for one plane
in a ``[sites.delivery]`` or ``[sites.control]`` table (see :data:`BROKER_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from testbed.core.errors import ConfigError
from testbed.core.ports import free_port
from testbed.core.topics import PLANES, PROFILES, ROLES, Plane

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
    """One simulated device."""

    id: str
    role: str
    site: str


@dataclass(frozen=True)
class FeederSpec:
    """The physical coupling of one supply, cap bank and meter (not MQTT traffic)."""

    id: str
    site: str
    supply: str
    capbank: str
    meter: str
    line_drop_v: float = 1.2
    capbank_boost_v: float = 1.2
    supply_delay_s: float = 0.0
    capbank_delay_s: float = 0.0
    meter_deadband_v: float = 0.5
    meter_period_s: float = 5.0


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

    @property
    def brokers(self) -> tuple[BrokerSpec, ...]:
        return tuple(self._broker(s, plane, s.broker_settings(plane)) for s in self.sites for plane in PLANES)

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
            pubs = {d.site for d in self.devices
                    if any(g.profile == profile.name for g in ROLES[d.role].publishes)}
            readers = {d.site for d in self.devices
                       if any(g.profile == profile.name for g in ROLES[d.role].reads)}
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

    def site(self, name: str) -> SiteSpec:
        return _named(self.path, "sites", "site", {s.name: s for s in self.sites}, name)

    def broker(self, name: str) -> BrokerSpec:
        return _named(self.path, "sites", "broker", {b.name: b for b in self.brokers}, name)

    def broker_for(self, site: str, plane: Plane) -> BrokerSpec:
        return self.broker(f"{site}-{plane}")

    def device(self, ident: str) -> DeviceSpec:
        return _named(self.path, "devices", "device", {d.id: d for d in self.devices}, ident)

    def feeder(self, ident: str) -> FeederSpec:
        return _named(self.path, "feeders", "feeder", {f.id: f for f in self.feeders}, ident)

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
        issuers = [d.id for d in self.devices
                   if any(g.profile in commands and PROFILES[g.profile].kind == "command"
                          for g in ROLES[d.role].publishes)]
        return [*issuers, "operator"]

    def identity_role(self, ident: str) -> str | None:
        if ident in HARNESS_IDENTITIES:
            return ident
        for d in self.devices:
            if d.id == ident:
                return d.role
        return None

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
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"is not valid TOML ({e})", "fix the syntax at that line") from None
    top = _Reader(path, "", data)
    top.unknown({"schema", "name", "root", "qos", "limits", "sites", "devices", "feeders"})
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

    sites = tuple(_site(path, i, t) for i, t in enumerate(top.get("sites", list)))
    _unique(path, "sites", [s.name for s in sites])
    names = {s.name for s in sites}
    for i, s in enumerate(sites):
        if s.bridge_to is not None:
            if s.bridge_to not in names or s.bridge_to == s.name:
                raise ConfigError(path, f"sites[{i}].bridge_to", f"is {s.bridge_to!r}",
                                  f"name another site: {', '.join(sorted(names - {s.name}))}")
            target = next(t for t in sites if t.name == s.bridge_to)
            if s.persistent or not target.persistent:
                raise ConfigError(path, f"sites[{i}].bridge_to", "bridges an edge site only",
                                  "set kind = 'edge' here and bridge to a 'datacentre' site")
    ports = [p for s in sites for p in (s.delivery_port, s.control_port)]
    _unique(path, "sites.*_port", [str(p) for p in ports])

    devices = tuple(_device(path, i, t, names) for i, t in enumerate(top.get("devices", list)))
    _unique(path, "devices", [d.id for d in devices])
    by_id = {d.id: d for d in devices}
    feeders = tuple(_feeder(path, i, t, names, by_id) for i, t in enumerate(top.get("feeders", list, [])))
    _unique(path, "feeders", [f.id for f in feeders])

    return Topology(
        path=str(path),
        name=top.get("name", str, path.stem),
        root=root,
        qos=qos,
        message_size_limit=limits.get("message_size_limit", int, 65536),
        max_queued_messages=limits.get("max_queued_messages", int, 10000),
        sites=sites,
        devices=devices,
        feeders=feeders,
    )


def _site(path: Path, i: int, table: Any) -> SiteSpec:
    r = _Reader(path, f"sites[{i}]", table)
    r.unknown({f.name for f in dataclasses.fields(SiteSpec) if f.name != "planes"} | set(PLANES))
    kind = r.get("kind", str)
    if kind not in ("edge", "datacentre"):
        raise ConfigError(path, r.field("kind"), f"is {kind!r}", "use 'edge' or 'datacentre'")
    site = SiteSpec(
        name=_ident(r, "name"),
        kind=kind,
        delivery_port=r.port("delivery_port"),
        control_port=r.port("control_port"),
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


def _device(path: Path, i: int, table: Any, sites: set[str]) -> DeviceSpec:
    r = _Reader(path, f"devices[{i}]", table)
    r.unknown({"id", "role", "site"})
    role = r.get("role", str)
    if role not in DEVICE_ROLES:
        raise ConfigError(path, r.field("role"), f"is {role!r}", f"use one of: {', '.join(DEVICE_ROLES)}")
    assert role in ROLES
    site = r.get("site", str)
    if site not in sites:
        raise ConfigError(path, r.field("site"), f"is {site!r}", f"use one of: {', '.join(sorted(sites))}")
    return DeviceSpec(id=_ident(r, "id"), role=role, site=site)


def _feeder(path: Path, i: int, table: Any, sites: set[str], devices: dict[str, DeviceSpec]) -> FeederSpec:
    r = _Reader(path, f"feeders[{i}]", table)
    r.unknown({f.name for f in dataclasses.fields(FeederSpec)})
    site = r.get("site", str)
    if site not in sites:
        raise ConfigError(path, r.field("site"), f"is {site!r}", f"use one of: {', '.join(sorted(sites))}")
    refs = {}
    for role in ("supply", "capbank", "meter"):
        ident = r.get(role, str)
        if ident not in devices or devices[ident].role != role:
            known = [d.id for d in devices.values() if d.role == role]
            raise ConfigError(path, r.field(role), f"is {ident!r}, not a {role} device",
                              f"use one of: {', '.join(known) or '(declare a ' + role + ' device)'}")
        refs[role] = ident
    numbers: dict[str, Any] = {}  # keyword arguments of FeederSpec, read by field name
    for f in dataclasses.fields(FeederSpec):
        if f.type == "float":
            value = float(r.get(f.name, (int, float), f.default))
            if value < 0:
                raise ConfigError(path, r.field(f.name), f"is {value}", "use a value >= 0")
            numbers[f.name] = value
    return FeederSpec(id=_ident(r, "id"), site=site, **refs, **numbers)


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
