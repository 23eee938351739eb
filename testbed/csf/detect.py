"""Detect: the rules that turn broker events and bus messages into alerts.

One rule per item of the Detect table of *MQTT and the NIST Cybersecurity Framework* (section
2.1.3), plus the bus's own evidence (actuators rejecting commands, physically implausible
readings). :class:`Detector` is pure state and arithmetic: the monitor (``testbed/csf/monitor.py``)
feeds it :class:`~testbed.csf.brokerlog.BrokerEvent` objects, the messages it reads and a clock
tick, and publishes what it returns. Thresholds are a frozen :class:`Thresholds`, read from the
``[thresholds]`` table of a monitor configuration file.

    alert kind             evidence
    connection_flood       > connect_attempts new connections from one address in connect_window_s
    tls_failures           >= tls_failures handshakes failing (no certificate, not TLS) from one address
    auth_failures          >= auth_failures certificates refused (unknown CA, revoked) from one address
    topic_scan             one identity denied on >= scan_topics distinct topics in scan_window_s
    undeliverable          >= undeliverable messages on topics nobody (but observers) reads
    idle_client            connected idle_s without sending anything the bus carried
    abnormal_termination   a connection ended without DISCONNECT (socket error, keepalive timeout, ...)
    malformed_packet       the broker dropped a client for a malformed packet, or an oversize publish
    rate_anomaly           one publisher's delivery-plane rate above rate_msgs_per_s and rate_factor x its baseline
    implausible_reading    a meter reading that its feeder's supply and cap bank cannot explain
    command_rejected       an actuator refused a command (bad or missing signature, stale, replayed)
    payload_rejected_burst >= payload_rejects payloads from one sender that devices rejected (did not decode,
                           or their handler failed) in payload_reject_window_s
    session_cap            one identity (not the harness's) holds more than max_sessions sessions on one
                           broker at once: a device or bridge holds one, so its certificate is in other hands
"""

from __future__ import annotations

import dataclasses
import time
import tomllib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brokers.mosquitto import DYNSEC_TOPIC, carried_topics
from testbed.core.errors import ConfigError
from testbed.core.payloads import Message
from testbed.core.topics import PROFILES, ROLES, parse_topic, topic
from testbed.core.topology import HARNESS_IDENTITIES, FeederSpec, Topology
from testbed.csf.brokerlog import BrokerEvent
from testbed.csf.window import SlidingWindow

__all__ = ["ACTIONS", "ALERT_KINDS", "Alert", "Detector", "MonitorConfig", "Thresholds", "load_monitor_config"]

ALERT_KINDS = ("connection_flood", "tls_failures", "auth_failures", "topic_scan", "undeliverable", "idle_client",
               "abnormal_termination", "malformed_packet", "rate_anomaly", "implausible_reading",
               "command_rejected", "payload_rejected_burst", "session_cap")
ACTIONS = ("revoke", "block", "block-topic", "evict")
OBSERVERS = ("monitor", "recorder")  # their subscriptions do not make a message delivered
SWEEP_S = 10.0  # how often tick() forgets state that can no longer raise an alert
_AUTH_REASONS = ("certificate verify failed", "certificate revoked", "unknown ca", "bad certificate")


@dataclass(frozen=True)
class Thresholds:
    """When each rule fires. Windows are seconds; counts are within the window."""

    connect_attempts: int = 30
    connect_window_s: float = 10.0
    tls_failures: int = 3
    auth_failures: int = 3
    failure_window_s: float = 60.0
    scan_topics: int = 5
    scan_window_s: float = 60.0
    undeliverable: int = 3
    undeliverable_window_s: float = 30.0
    idle_s: float = 30.0
    rate_msgs_per_s: float = 200.0
    rate_factor: float = 10.0
    voltage_tolerance_v: float = 3.0
    voltage_grace_s: float = 2.0
    # Without a supply status to compare with (e.g. just after the monitor started), a reading
    # outside these bounds is implausible for a 120 V service (ANSI C84.1 range B is 110-127 V).
    voltage_min_v: float = 100.5
    voltage_max_v: float = 130.0
    payload_rejects: int = 5  # a device's own software never sends a payload the others reject
    payload_reject_window_s: float = 10.0
    # Mosquitto 2.0 cannot refuse a connection per certificate identity (brokers/mosquitto.py): the
    # monitor counts each identity's live sessions per broker, and the policy's response caps them.
    max_sessions: int = 4
    repeat_s: float = 30.0  # the same alert (kind and subject) at most once per repeat_s

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"threshold {f.name} is {getattr(self, f.name)}; it must be > 0")


@dataclass(frozen=True)
class MonitorConfig:
    """Thresholds and the automatic response policy (alert kind -> action)."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    policy: dict[str, str] = field(default_factory=dict)


def load_monitor_config(path: Path | None) -> MonitorConfig:
    """Read ``[thresholds]`` and ``[policy]`` from a TOML file (defaults if ``path`` is None or absent)."""
    if path is None or not path.exists():
        return MonitorConfig()
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"is not valid TOML ({e})", "fix the syntax at that line") from None
    for key in data:
        if key not in ("thresholds", "policy"):
            raise ConfigError(path, key, "is not a known table", "use [thresholds] and [policy]")
    names = {f.name: f.type for f in dataclasses.fields(Thresholds)}
    values: dict[str, Any] = {}  # keyword arguments of Thresholds, read by field name
    for key, value in data.get("thresholds", {}).items():
        if key not in names:
            raise ConfigError(path, f"thresholds.{key}", "is not a known threshold", f"use one of: {', '.join(names)}")
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(path, f"thresholds.{key}", f"is {value!r}", "give a number > 0")
        values[key] = int(value) if names[key] == "int" else float(value)
    policy = {}
    for kind, action in data.get("policy", {}).items():
        if kind not in ALERT_KINDS:
            raise ConfigError(path, f"policy.{kind}", "is not an alert kind", f"use one of: {', '.join(ALERT_KINDS)}")
        if action not in ACTIONS:
            raise ConfigError(path, f"policy.{kind}", f"is {action!r}", f"use one of: {', '.join(ACTIONS)}")
        policy[kind] = action
    return MonitorConfig(Thresholds(**values), policy)


@dataclass(frozen=True)
class Alert:
    """One detection: what, who (identity and/or address), where, when, and the evidence."""

    kind: str
    time_ns: int
    identity: str | None
    address: str | None
    broker: str | None
    evidence: dict[str, Any]
    subject: str = ""  # what a response acts on: an identity or a topic

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "time_ns": self.time_ns,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.time_ns / 1e9))
                + f".{self.time_ns % 10**9 // 10**6:03d}",
                "identity": self.identity, "address": self.address, "broker": self.broker,
                "subject": self.subject, "evidence": self.evidence}


def filter_within(sub: str, pattern: str) -> bool:
    """Whether subscribing to filter ``sub`` stays within ACL pattern ``pattern`` (or a topic matches it)."""
    s, p = sub.split("/"), pattern.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(s) or s[i] == "#" or (level != "+" and (s[i] != level)):
            return False
    return len(s) == len(p)


_Subscriber = tuple[str | None, set[str], bool]  # (identity, filters, persistent session)


def _is_wildcard(pattern: str) -> bool:
    return "+" in pattern or "#" in pattern


class Detector:
    """All rules, with their state; call :meth:`on_event`, :meth:`on_message`, :meth:`tick`.

    Work per message does not grow with the bus: the feeders a device belongs to and the filters
    the subscribers of a broker read are indexed, and state per device is bounded (counters and
    capped windows, swept by :meth:`tick` once they no longer matter).
    """

    def __init__(self, topology: Topology, thresholds: Thresholds | None = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.topology = topology
        self.t = thresholds or Thresholds()
        self.clock = clock  # ns; what on_message and tick call "now" when not told (a test drives it)
        self.known = set(topology.client_identities())
        self._plane = {b.name: b.plane for b in topology.brokers}
        self._recent: dict[tuple[str, ...], int] = {}
        self._windows: dict[tuple[str, ...], SlidingWindow] = {}
        self._subs: dict[str, dict[str, _Subscriber]] = defaultdict(dict)
        # (broker, wildcard?) -> the filters its subscribers (not the observers) read, and how many read each:
        # a topic is looked up among the exact ones and matched against the (few) wildcard ones
        self._reading: dict[tuple[str, bool], Counter[str]] = defaultdict(Counter)
        self._connected: dict[tuple[str, str], tuple[str | None, str | None, int]] = {}
        self._sessions: dict[tuple[str, str], set[str]] = defaultdict(set)  # (broker, identity) -> client ids
        self._last_data: dict[tuple[str, str], int] = {}
        self._rate: dict[tuple[str, str], list[float]] = {}  # (broker, source) -> [second, count, baseline]
        self._feeder_state: dict[str, dict[str, Any]] = {}
        # Feeder -> a reading its statuses did not explain, held for voltage_grace_s:
        # (received ns, broker, meter, volts, seq).
        self._pending: dict[str, tuple[int, str, str, float, int]] = {}
        self._feeders = {f.id: f for f in topology.feeders}
        # device -> (feeder, its part there: supply, capbank, meter (the regulating one) or other_meter)
        self._parts: dict[str, list[tuple[FeederSpec, str]]] = defaultdict(list)
        for f in topology.feeders:
            self._parts[f.supply].append((f, "supply"))
            self._parts[f.capbank].append((f, "capbank"))
            for n, meter in enumerate(f.meters):
                self._parts[meter].append((f, "meter" if n == 0 else "other_meter"))
        self._next_sweep = 0
        permanent: dict[str, set[str]] = defaultdict(set)  # broker -> bridge (out) patterns, and what no device reads
        for bridge in topology.bridges:
            for way, profiles in topology.bridge_connections(bridge).items():
                host = topology.bridge_endpoints(bridge, way)[0]
                directions = topology.bridge_directions(bridge)
                permanent[host] |= {t for p in profiles for t in carried_topics(topology, bridge, p, directions[p])}
        # A profile no device reads by design (the tablet's DisplayStatusProfile is for observers) is
        # delivered by being recorded; only the benchmarks' own profiles stay watched.
        device_reads = {g.profile for d in topology.devices for g in ROLES[d.role].reads}
        for broker in topology.brokers:
            permanent[broker.name] |= {topic(topology.root, p, "+") for p, prof in PROFILES.items()
                                       if p not in device_reads and not p.startswith("Bench")
                                       and prof.plane == broker.plane}
        # A bridge carries some profiles for named mRIDs (a substation's own devices): those are looked up.
        self._permanent = {b: sorted(p for p in patterns if _is_wildcard(p)) for b, patterns in permanent.items()}
        self._permanent_exact = {b: {p for p in patterns if not _is_wildcard(p)} for b, patterns in permanent.items()}

    # -- rights, as the generated ACL gives them -----------------------------------------------

    def reads(self, identity: str | None, broker: str) -> list[str]:
        """The topic patterns ``identity`` may read on ``broker`` (empty for an unknown identity)."""
        plane = self._plane.get(broker)
        if identity is None or identity not in self.known:
            return []
        if identity == "responder":
            return [DYNSEC_TOPIC + "/response"]
        bridge = next((b for b in self.topology.bridges if b.name == identity), None)
        if bridge:  # a bridge only publishes to the broker it connects to; both-way profiles are read too
            return [topic(self.topology.root, p, "+") for p, d in self.topology.bridge_directions(bridge).items()
                    if d == "both"]
        role = self.topology.identity_role(identity)
        if role is None:
            return []
        return [topic(self.topology.root, g.profile, mrid)
                for g in ROLES[role].reads if PROFILES[g.profile].plane == plane
                for mrid in self.topology.grant_mrids(identity, g)]

    def publishes_on(self, identity: str | None, broker: str) -> bool:
        role = self.topology.identity_role(identity or "")
        return role is not None and any(PROFILES[g.profile].plane == self._plane.get(broker)
                                        for g in ROLES[role].publishes)

    # -- plumbing -----------------------------------------------------------------------------

    def _count(self, key: tuple[str, ...], now: int, window_s: float, limit: int, item: str = "") -> SlidingWindow:
        """Add ``item`` to the sliding window ``key`` (kept exact beyond ``limit``, the rule's threshold)."""
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = SlidingWindow(window_s, max(64, limit + 1))
        window.add(now, item)
        return window

    def _subscriber(self, broker: str, client_id: str, entry: _Subscriber | None) -> None:
        """Set (or, with None, remove) one subscriber of ``broker``, keeping the reader index in step."""
        subs = self._subs[broker]
        old = subs.pop(client_id, None)
        if old is not None and old[0] not in OBSERVERS:
            for f in old[1]:
                reading = self._reading[broker, _is_wildcard(f)]
                reading[f] -= 1
                if reading[f] <= 0:
                    del reading[f]
        if entry is not None:
            subs[client_id] = entry
            if entry[0] not in OBSERVERS:
                for f in entry[1]:
                    self._reading[broker, _is_wildcard(f)][f] += 1

    def _read_by_device(self, broker: str, name: str) -> bool:
        """Whether a subscriber other than an observer, a bridge's pattern or design reads topic ``name``."""
        if name in self._reading[broker, False] or name in self._permanent_exact.get(broker, ()):
            return True
        return any(filter_within(name, f) for f in self._permanent.get(broker, ())) or any(
            filter_within(name, f) for f in self._reading[broker, True])

    def _alert(self, kind: str, now: int, key: str, **fields: Any) -> list[Alert]:
        last = self._recent.get((kind, key))
        if last is not None and now - last < self.t.repeat_s * 1e9:
            return []
        self._recent[(kind, key)] = now
        fields.setdefault("subject", fields.get("identity") or "")
        return [Alert(kind, now, fields.pop("identity", None), fields.pop("address", None),
                      fields.pop("broker", None), fields.pop("evidence"), fields.pop("subject"))]

    # -- broker and device log events ---------------------------------------------------------

    def on_event(self, ev: BrokerEvent) -> list[Alert]:
        """Update state with one event; alerts it raises (none while replaying an old log)."""
        subs = self._subs[ev.source]
        if ev.kind == "restarted":
            for cid in [c for c, v in subs.items() if not v[2]]:
                self._subscriber(ev.source, cid, None)
            for key in [k for k in self._sessions if k[0] == ev.source]:
                del self._sessions[key]
            return []
        if ev.kind == "connected" and ev.client_id:
            clean = bool(ev.detail.get("clean_start"))
            old = subs.get(ev.client_id)
            kept = set() if clean or old is None else set(old[1])
            self._subscriber(ev.source, ev.client_id, (ev.identity, kept, not clean))
            self._sessions[(ev.source, ev.identity or "")].add(ev.client_id)
            if not ev.replay:
                self._connected[(ev.source, ev.client_id)] = (ev.identity, ev.address, ev.time_ns)
        if ev.kind in ("disconnected", "evicted") and ev.client_id:
            key = (ev.source, ev.identity or "")
            sessions = self._sessions.get(key)
            if sessions is not None:
                sessions.discard(ev.client_id)
                if not sessions:
                    del self._sessions[key]
            self._connected.pop((ev.source, ev.client_id), None)
            if ev.client_id in subs and not subs[ev.client_id][2]:
                self._subscriber(ev.source, ev.client_id, None)
        if ev.kind in ("subscribe", "unsubscribe") and ev.client_id in subs:
            ident, filters, persistent = subs[ev.client_id]
            changed = filters | {ev.detail["filter"]} if ev.kind == "subscribe" else filters - {ev.detail["filter"]}
            if changed != filters:
                self._subscriber(ev.source, ev.client_id, (ident, changed, persistent))
        if ev.replay:
            return []
        return self._rules(ev)

    def _rules(self, ev: BrokerEvent) -> list[Alert]:
        t, now, who = self.t, ev.time_ns, ev.identity
        base = {"broker": ev.source, "identity": who, "address": ev.address}
        if ev.kind == "connected" and who and who not in HARNESS_IDENTITIES:
            # The harness's identities are shared by its concurrent processes (runs, benchmarks) and
            # live on no field host; every other identity connects once per broker.
            sessions = self._sessions[(ev.source, who)]
            if len(sessions) > t.max_sessions:
                return self._alert("session_cap", now, f"{ev.source}/{who}", **base, evidence={
                    "sessions": len(sessions), "max_sessions": t.max_sessions,
                    "client_ids": sorted(sessions)[:10], "line": ev.line})
        if (ev.kind == "connection" or ev.detail.get("attempt")) and ev.address:
            n = self._count(("conn", ev.address), now, t.connect_window_s, t.connect_attempts).count
            if n > t.connect_attempts:
                alerts = self._alert("connection_flood", now, ev.address, **{**base, "subject": ev.address},
                                     evidence={"connections": n, "window_s": t.connect_window_s, "line": ev.line})
                if ev.kind == "connection":
                    return alerts
                return alerts + self._rules(dataclasses.replace(ev, detail={"reason": ev.detail.get("reason")}))
        if ev.kind == "tls_failure":
            reason = str(ev.detail.get("reason", ""))
            kind = "auth_failures" if any(r in reason.lower() for r in _AUTH_REASONS) else "tls_failures"
            limit = t.auth_failures if kind == "auth_failures" else t.tls_failures
            failures = self._count((kind, ev.address or "?"), now, t.failure_window_s, limit, reason)
            if failures.count >= limit:
                return self._alert(kind, now, ev.address or "?", **{**base, "subject": ev.address or ""}, evidence={
                    "failures": failures.count, "window_s": t.failure_window_s, "reasons": sorted(failures.distinct()),
                    "line": ev.line})
        if ev.kind == "subscribe" and not any(filter_within(ev.detail["filter"], p)
                                              for p in self.reads(who, ev.source)):
            return self._denied(ev, ev.detail["filter"], "SUBSCRIBE (outside the identity's ACL)")
        if ev.kind == "denied":
            return self._denied(ev, ev.detail["topic"], f"{ev.detail['packet']} denied by the broker")
        if ev.kind == "disconnected" and not ev.detail.get("clean"):
            out = self._alert("abnormal_termination", now, f"{ev.source}/{ev.client_id}", **base, evidence={
                "client_id": ev.client_id, "reason": ev.detail.get("reason"), "line": ev.line})
            if ev.detail.get("malformed"):
                out += self._alert("malformed_packet", now, f"{ev.source}/{ev.client_id}/m", **base, evidence={
                    "client_id": ev.client_id, "reason": ev.detail.get("reason"), "line": ev.line})
            return out
        if ev.kind in ("malformed", "oversize"):
            reason = ev.detail.get("reason") or f"PUBLISH of {ev.detail.get('bytes')} bytes over message_size_limit"
            return self._alert("malformed_packet", now, f"{ev.source}/{ev.client_id}/{ev.kind}", **base, evidence={
                "client_id": ev.client_id, "reason": reason, "line": ev.line})
        if ev.kind == "command_rejected":
            return self._alert("command_rejected", now, ev.line, identity=who, address=None, broker=None,
                               subject=who or "", evidence=dict(ev.detail))
        if ev.kind == "payload_rejected":
            return self._payload_rejected(ev)
        return []

    def _payload_rejected(self, ev: BrokerEvent) -> list[Alert]:
        name = str(ev.detail.get("topic", ""))
        try:
            profile, mrid = parse_topic(self.topology.root, name)
        except ValueError:
            profile, mrid = None, ""
        # A status or reading can only have been published by the identity its topic names (the ACL
        # lets no one else write it), so that sender is authenticated and a response may act on it.
        # A command's topic names its target; its sender is only what the payload claims.
        authenticated = profile is not None and profile.kind != "command"
        sender = mrid if authenticated else ev.detail.get("claimed")
        key = sender or f"an unknown sender on {name}"
        window = self._count(("rejects", key), ev.time_ns, self.t.payload_reject_window_s, self.t.payload_rejects,
                             f"{ev.source}\t{name}")
        if window.count < self.t.payload_rejects:
            return []
        seen = window.distinct()
        return self._alert("payload_rejected_burst", ev.time_ns, key, identity=sender, address=None, broker=None,
                           subject=sender if authenticated else "", evidence={
                               "rejections": window.count, "window_s": self.t.payload_reject_window_s,
                               "receivers": sorted({i.split("\t")[0] for i in seen}),
                               "topics": sorted({i.split("\t")[1] for i in seen})[:10],
                               "sender_from": "topic (ACL-enforced)" if authenticated
                               else "payload claim (not authenticated: no automatic response)",
                               "last_reason": ev.detail.get("reason"), "line": ev.line})

    def _denied(self, ev: BrokerEvent, name: str, how: str) -> list[Alert]:
        who = ev.identity or f"client {ev.client_id}"
        topics = self._count(("scan", who), ev.time_ns, self.t.scan_window_s, self.t.scan_topics, name).distinct()
        if len(topics) >= self.t.scan_topics:
            return self._alert("topic_scan", ev.time_ns, who, broker=ev.source, identity=ev.identity,
                               address=ev.address, evidence={"distinct_topics": len(topics), "how": how,
                                                             "topics": sorted(topics)[:20],
                                                             "window_s": self.t.scan_window_s})
        return []

    # -- messages the monitor reads -------------------------------------------------------------

    def on_message(self, broker: str, name: str, message: Message | None, retain: bool,
                   now: int | None = None) -> list[Alert]:
        now = now if now is not None else self.clock()
        source = message.source if message else name.rsplit("/", 1)[-1]
        if source in self.known:  # a claimed source no certificate has would grow this without bound
            self._last_data[(broker, source)] = now
        out: list[Alert] = []
        if not retain:
            out += self._undeliverable(broker, name, source, now)
        if self._plane.get(broker) == "delivery":
            out += self._rate_check(broker, source, name, now)
        if message is not None:
            out += self._plausibility(broker, message, now)
        return out

    def _undeliverable(self, broker: str, name: str, source: str, now: int) -> list[Alert]:
        if self._read_by_device(broker, name):
            return []
        n = self._count(("undeliv", source, name), now, self.t.undeliverable_window_s, self.t.undeliverable).count
        if n >= self.t.undeliverable:
            return self._alert("undeliverable", now, f"{source}:{name}", broker=broker, identity=source,
                               address=None, evidence={"topic": name, "messages": n,
                                                       "window_s": self.t.undeliverable_window_s})
        return []

    def _rate_check(self, broker: str, source: str, name: str, now: int) -> list[Alert]:
        second = now // 10**9
        state = self._rate.setdefault((broker, source), [second, 0, 0.0])
        if state[0] != second:  # close the finished second(s) into the baseline (EWMA, alpha 0.1)
            for _ in range(min(int(second - state[0]), 60)):
                state[2] = 0.9 * state[2] + 0.1 * state[1]
                state[1] = 0
            state[0] = second
        state[1] += 1
        limit = max(self.t.rate_msgs_per_s, self.t.rate_factor * state[2])
        if state[1] > limit:
            return self._alert("rate_anomaly", now, f"{broker}/{source}", broker=broker, identity=source,
                               address=None, subject=name, evidence={
                                   "messages_this_second": int(state[1]), "baseline_per_s": round(state[2], 2),
                                   "limit_per_s": limit, "topic": name})
        return []

    def _plausibility(self, broker: str, m: Message, now: int) -> list[Alert]:
        """Readings that their feeder's supply and cap bank cannot explain. One that disagrees with the
        statuses known is held for ``voltage_grace_s``: a status published at the same moment may
        still be on its way (the meter and the supply publish independently), and if it arrives and
        explains the reading, there is nothing to report. (The meter's next reading agreeing explains
        nothing: a compromised certificate's forged reading is followed by the true meter's.)"""
        out: list[Alert] = []
        for f, part in self._parts.get(m.source, ()):
            s = self._feeder_state.setdefault(f.id, {"supply_v": None, "closed": None, "changed": 0})
            if m.profile == "SupplyStatusProfile" and part == "supply":
                if s["supply_v"] != m.body.get("output_v"):
                    s["supply_v"], s["changed"] = m.body.get("output_v"), now
                    self._explained(f, s)
            elif m.profile == "CapBankStatusProfile" and part == "capbank":
                closed = m.body.get("state") == "closed"
                if s["closed"] != closed:
                    s["closed"], s["changed"] = closed, now
                    self._explained(f, s)
            elif m.profile == "MeterReadingProfile" and part in ("meter", "other_meter"):
                measured = float(m.body.get("voltage_v", 0.0))
                # The feeder model's voltage is the regulating (end-of-line) meter's: another meter of the
                # feeder is held only to the bounds of a 120 V service.
                if s["supply_v"] is None or part == "other_meter":
                    if not self.t.voltage_min_v <= measured <= self.t.voltage_max_v:
                        out += self._implausible(f, s, broker, m.source, measured, None, m.seq, now)
                        break
                    continue
                expected = self._expected(f, s)
                settled = now - s["changed"] > self.t.voltage_grace_s * 1e9
                # A later reading that agrees withdraws nothing: the device itself may follow a forged one.
                if settled and abs(measured - expected) > self.t.voltage_tolerance_v and f.id not in self._pending:
                    self._pending[f.id] = (now, broker, m.source, measured, m.seq)
        return out + self._due(now)

    def _expected(self, f: FeederSpec, s: dict[str, Any]) -> float:
        return float(round(s["supply_v"] - f.line_drop_v + (f.capbank_boost_v if s["closed"] else 0.0), 2))

    def _explained(self, f: FeederSpec, s: dict[str, Any]) -> None:
        """A status changed: a held reading it explains is no longer suspect."""
        held = self._pending.get(f.id)
        if held and abs(held[3] - self._expected(f, s)) <= self.t.voltage_tolerance_v:
            del self._pending[f.id]

    def _due(self, now: int) -> list[Alert]:
        """Held readings still unexplained after ``voltage_grace_s``."""
        out: list[Alert] = []
        for feeder_id, (since, broker, source, measured, seq) in list(self._pending.items()):
            if now - since >= self.t.voltage_grace_s * 1e9:
                del self._pending[feeder_id]
                f = self._feeders[feeder_id]
                s = self._feeder_state[feeder_id]
                out += self._implausible(f, s, broker, source, measured, self._expected(f, s), seq, now)
        return out

    def _implausible(self, f: FeederSpec, s: dict[str, Any], broker: str, source: str, measured: float,
                     expected: float | None, seq: int, now: int) -> list[Alert]:
        return self._alert("implausible_reading", now, source, broker=broker, identity=source, address=None,
                           evidence={"voltage_v": measured, "expected_v": expected,
                                     "bounds_v": [self.t.voltage_min_v, self.t.voltage_max_v],
                                     "supply_output_v": s["supply_v"], "capbank_closed": s["closed"],
                                     "feeder": f.id, "seq": seq, "tolerance_v": self.t.voltage_tolerance_v})

    # -- the clock ----------------------------------------------------------------------------

    def tick(self, now: int | None = None) -> list[Alert]:
        """Clients connected ``idle_s`` without sending anything the bus carried; and, now and then,
        forget the state that can no longer raise an alert (expired windows, quiet publishers)."""
        now = now if now is not None else self.clock()
        out: list[Alert] = self._due(now)
        for (broker, cid), (ident, addr, since) in list(self._connected.items()):
            if now - since < self.t.idle_s * 1e9:
                continue
            del self._connected[(broker, cid)]  # looked at once, when due: one alert per connection at most
            unknown = ident not in self.known
            expected = self._plane.get(broker) == "delivery" and self.publishes_on(ident, broker)
            if not (unknown or expected) or self._last_data.get((broker, ident or ""), 0) > since:
                continue
            out += self._alert("idle_client", now, f"{broker}/{cid}", broker=broker, identity=ident, address=addr,
                               evidence={"client_id": cid, "connected_s": round((now - since) / 1e9, 1),
                                         "why": "identity unknown to the topology" if unknown
                                         else "a publisher that has published nothing since it connected"})
        if now >= self._next_sweep:
            self._sweep(now)
            self._next_sweep = now + int(SWEEP_S * 10**9)
        return out

    def _sweep(self, now: int) -> None:
        for key, window in list(self._windows.items()):
            window.expire(now)
            if window.empty():
                del self._windows[key]
        repeat = now - self.t.repeat_s * 1e9
        for key in [k for k, t in self._recent.items() if t < repeat]:
            del self._recent[key]
        # Every connection older than this has been looked at by the idle rule (it is due after idle_s).
        idle = now - 2 * self.t.idle_s * 1e9
        for key in [k for k, t in self._last_data.items() if t < idle]:
            del self._last_data[key]
        # A baseline quiet for a minute has all but decayed (0.9 ** 60 < 0.2 %): forgetting it is starting afresh.
        second = now // 10**9
        for key in [k for k, v in self._rate.items() if second - v[0] > 60]:
            del self._rate[key]
