"""The recorder: a read-only identity that records every message on every broker.

It subscribes to every profile of the topic tree on every broker (the ACLs give the
``recorder`` identity read and nothing else), and keeps each message with the broker and
plane it was seen on, its receive time, its decoded payload and its trace context. The same
message seen on a field broker and, through the bridge, on a data-centre broker is one
:class:`Observation` with two sightings. Scenario checks, reports and plots only read this.

Memory is bounded whatever the message rate: the recorder holds the newest ``capacity``
observations (a ring) and the newest one of each known device and profile (what a scenario's
initial and final states are checked against); every observation that leaves the ring is
written to a spool file on disk, so :meth:`Recorder.write_jsonl` still writes them all. A
recorder for a few devices of a large bus (Appendix A on one substation) can be told to keep
only those devices' messages (``devices``) and to watch only some sites' brokers (``sites``).
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import paho.mqtt.client as paho

from testbed.core.errors import BrokerError, TestbedError
from testbed.core.payloads import Message, PayloadError, decode
from testbed.core.topics import Plane, parse_topic, subscriptions
from testbed.core.topology import BrokerSpec, Topology
from testbed.transport.health import current
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect, user_properties

__all__ = ["DEFAULT_CAPACITY", "MAX_SIGHTINGS", "Observation", "Recorder"]

DEFAULT_CAPACITY = 20_000  # observations held in memory (a few KB each): about 20 s of a 1,000 msg/s bus
MAX_SIGHTINGS = 64  # per observation: a replayed message's copies are counted, not all kept

_T = TypeVar("_T")
_TIMING_KEYS = ("recv_ns", "feeder_ns", "sent_ns")


@dataclass
class Observation:
    """One message, wherever it was seen."""

    index: int
    topic: str
    mrid: str
    message: Message | None  # None: the payload did not decode
    raw: bytes
    traceparent: str | None
    signer: str | None  # the Ed25519 signer a command claims (checked by the actuator, not here)
    qos: int
    retain: bool
    first_recv_ns: int
    sightings: list[tuple[str, str, int]] = field(default_factory=list)  # (broker, plane, recv_ns)
    error: str | None = None
    unkept_sightings: int = 0  # sightings beyond MAX_SIGHTINGS (the same bytes replayed), counted only
    timing: dict[str, int] = field(default_factory=dict)  # the publisher's recv_ns / feeder_ns claims (figures only)
    cause: str | None = None  # the publisher's claim: the message it was handling, "<source>/<seq>"

    @property
    def planes(self) -> set[str]:
        return {plane for _, plane, _ in self.sightings}

    @property
    def decoded(self) -> Message:
        """``message``, of an observation known to have decoded (as every one a scenario matched has)."""
        if self.message is None:
            raise ValueError(f"observation {self.index} on {self.topic} did not decode: {self.error}")
        return self.message

    def as_json(self) -> dict[str, Any]:
        doc = {
            "index": self.index, "topic": self.topic, "qos": self.qos, "retain": self.retain,
            "first_recv_ns": self.first_recv_ns, "traceparent": self.traceparent, "signer": self.signer,
            "sightings": [{"broker": b, "plane": p, "recv_ns": t} for b, p, t in self.sightings],
            "payload": self.message.as_dict() if self.message else self.raw.decode("utf-8", "replace"),
            "error": self.error,
        }
        if self.unkept_sightings:
            doc["unkept_sightings"] = self.unkept_sightings
        if self.timing:
            doc["timing"] = self.timing
        if self.cause:
            doc["cause"] = self.cause
        return doc


def _timing(props: dict[str, str]) -> dict[str, int]:
    """The timing claims a publisher attached (``devices.base.Device.publish``): nanosecond counts of
    at most 19 digits; anything else is dropped (a property is input like any other)."""
    return {k: int(v) for k in _TIMING_KEYS if (v := props.get(k)) is not None and v.isascii() and v.isdigit()
            and len(v) <= 19}


def _cause(props: dict[str, str]) -> str | None:
    """The ``cause`` a publisher claims, if it looks like one (``<source>/<seq>``, printable, short)."""
    value = props.get("cause")
    return value if value and len(value) <= 200 and value.isprintable() and "/" in value else None


class Recorder:
    """Records the bus; thread-safe; :meth:`wait_for` blocks until a condition holds.

    ``capacity`` observations stay in memory (older ones are on disk only); ``devices``, if
    given, keeps only messages about those devices (on their topic or sent by them); ``sites``,
    if given, subscribes only on those sites' brokers; ``topics_of``, if given, subscribes only to
    the topics of those mRIDs (devices and feeders) instead of every mRID, so that the brokers do
    not send what would be dropped (a substation's 1,000 meters reading by exception at once kept
    a whole-tree recorder seconds behind the scenario); ``spool_dir`` is where the spool file of
    observations that left memory lives (an unnamed temporary file; default the system's).
    """

    def __init__(self, topology: Topology, identity: TLSIdentity, endpoints: dict[str, Endpoint], *,
                 capacity: int = DEFAULT_CAPACITY, devices: Collection[str] | None = None,
                 sites: Collection[str] | None = None, topics_of: Collection[str] | None = None,
                 spool_dir: Path | None = None) -> None:
        if capacity < 1:
            raise TestbedError(f"recorder capacity {capacity} must be >= 1 (observations held in memory)")
        unknown = sorted(set(sites or ()) - {s.name for s in topology.sites})
        if unknown:
            raise TestbedError(f"the recorder cannot watch site(s) {', '.join(unknown)}: not in {topology.path}; "
                               f"use one of {', '.join(s.name for s in topology.sites)}")
        self.topology = topology
        self.identity = identity
        self.endpoints = endpoints
        self.capacity = capacity
        self.devices = frozenset(devices) if devices is not None else None
        self.brokers = [b for b in topology.brokers if sites is None or b.site in sites]
        self.topics_of = sorted(set(topics_of)) if topics_of is not None else None
        if self.topics_of is not None and (not self.topics_of or any(
                not m or any(c in m for c in "+#/") for m in self.topics_of)):
            raise TestbedError(f"recorder topics_of {self.topics_of!r}: give one or more mRIDs without '/', '+' or '#'")
        self.tls_version: str | None = None
        self.ignored = 0  # messages about devices outside ``devices``, not recorded
        self._held: deque[Observation] = deque()
        self._first = 0  # the index of _held[0]
        self._by_key: dict[tuple[str, str, int], Observation] = {}  # of the held observations only
        self._by_raw: dict[tuple[bytes, bytes], Observation] = {}  # (topic, payload) -> held decoded observation
        self._latest: dict[tuple[str, str], Observation] = {}  # (source, profile) -> newest, known devices only
        self._known = frozenset(topology.client_identities())
        self._spool: IO[str] = tempfile.TemporaryFile(  # noqa: SIM115 (open for the recorder's life)
            "w+", encoding="utf-8", dir=spool_dir, prefix="fmb-recorder-", suffix=".jsonl")
        self._cond = threading.Condition()
        self._clients: list[paho.Client] = []

    def start(self) -> None:
        for broker in self.brokers:
            subs = self._subscriptions(broker.plane)
            subscribed = threading.Event()

            def on_connect(c: paho.Client, subs: list[tuple[str, int]] = subs,
                           ev: threading.Event = subscribed) -> None:
                c.on_subscribe = lambda *a: ev.set()
                c.subscribe(subs)

            def on_message(c: paho.Client, u: Any, m: paho.MQTTMessage, b: BrokerSpec = broker) -> None:
                self.on_message(b.name, b.plane, m)

            client = connect(
                f"recorder-{broker.name}-{time.monotonic_ns() % 10**9}", self.identity,
                self.endpoints[broker.name],
                on_message=on_message,
                on_connect=on_connect,
            )
            self._clients.append(client)
            heartbeat = current()  # a long-lived harness process (the Compose runner) says how its recorder is
            if heartbeat is not None:
                heartbeat.watch(f"recorder {broker.name}", client)
            if not subscribed.wait(10):
                raise BrokerError(f"the recorder could not subscribe on {broker.name} in 10 s: check that the "
                                  "broker runs and accepts the recorder's certificate")
            sock = client.socket()
            if self.tls_version is None and sock is not None and hasattr(sock, "version"):
                self.tls_version = sock.version()

    def _subscriptions(self, plane: Plane) -> list[tuple[str, int]]:
        subs = subscriptions(self.topology.root, "recorder", "recorder", plane)
        if self.topics_of is None:
            return subs
        return [(f"{t[:-1]}{mrid}", q) if t.endswith("/+") else (t, q)
                for t, q in subs for mrid in (self.topics_of if t.endswith("/+") else [""])]

    def stop(self) -> None:
        heartbeat = current()
        if heartbeat is not None:
            for broker in self.brokers:
                heartbeat.unwatch(f"recorder {broker.name}")
        for c in self._clients:
            c.disconnect()
            c.loop_stop()
        self._clients = []

    def close(self) -> None:
        """Stop, and delete the spool file (what :meth:`write_jsonl` has not copied is gone)."""
        self.stop()
        with self._cond:
            self._spool.close()

    # -- recording ------------------------------------------------------------------------------

    def on_message(self, broker: str, plane: str, msg: paho.MQTTMessage) -> None:
        """Record one message seen on ``broker`` (the MQTT clients' handler; a test may call it)."""
        now = time.time_ns()
        raw = bytes(msg.payload)
        with self._cond:  # the same bytes seen on another broker (the bridge): a sighting, decoded once
            seen = self._by_raw.get((msg._topic, raw))  # the topic's bytes: .topic raises on bad UTF-8
            if seen is not None:
                self._sight(seen, broker, plane, now)
                return
        message, error, mrid = None, None, ""
        try:
            _, mrid = parse_topic(self.topology.root, msg.topic)
            message = decode(msg.payload)
        except (ValueError, PayloadError) as e:
            error = str(e)
        if self.devices is not None and mrid not in self.devices and (
                message is None or message.source not in self.devices):
            with self._cond:
                self.ignored += 1
            return
        with self._cond:
            key = (message.source, message.profile, message.seq) if message else None
            obs = self._by_key.get(key) if key else None
            if obs is None:
                props = user_properties(msg)
                obs = Observation(self._first + len(self._held), msg.topic, mrid, message, raw,
                                  props.get("traceparent"), props.get("signer"), msg.qos, bool(msg.retain), now,
                                  error=error, timing=_timing(props), cause=_cause(props))
                self._hold(obs, key)
            self._sight(obs, broker, plane, now)

    def _sight(self, obs: Observation, broker: str, plane: str, now: int) -> None:
        if len(obs.sightings) < MAX_SIGHTINGS:
            obs.sightings.append((broker, plane, now))
        else:
            obs.unkept_sightings += 1
        self._cond.notify_all()

    def _hold(self, obs: Observation, key: tuple[str, str, int] | None) -> None:
        if len(self._held) >= self.capacity:  # the oldest goes to disk: no more sightings expected of it
            old = self._held.popleft()
            self._first += 1
            if self._by_raw.get((old.topic.encode(), old.raw)) is old:
                del self._by_raw[(old.topic.encode(), old.raw)]
            self._spool.write(json.dumps(old.as_json()) + "\n")
            if old.message is not None:
                old_key = (old.message.source, old.message.profile, old.message.seq)
                if self._by_key.get(old_key) is old:
                    del self._by_key[old_key]
        self._held.append(obs)
        m = obs.message
        if m is None:  # each sighting of what did not decode stays an observation of its own, as ever
            return
        self._by_raw.setdefault((obs.topic.encode(), obs.raw), obs)
        if key is not None:
            self._by_key[key] = obs
        if m.source in self._known:  # a claimed source no certificate has would grow this without bound
            newest = self._latest.get((m.source, m.profile))
            if newest is None or newest.decoded.ts_ns <= m.ts_ns:
                self._latest[(m.source, m.profile)] = obs

    # -- reading --------------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """How many observations have left memory (they are in the spool file, and in write_jsonl's)."""
        with self._cond:
            return self._first

    def held(self) -> int:
        """How many observations are in memory now (at most ``capacity``)."""
        with self._cond:
            return len(self._held)

    def mark(self) -> int:
        """The index the next observation will have (to look only at what comes after)."""
        with self._cond:
            return self._first + len(self._held)

    def snapshot(self, since: int = 0) -> list[Observation]:
        """The observations held in memory whose index is ``since`` or later, oldest first."""
        with self._cond:
            return self._since(since)

    def _since(self, since: int) -> list[Observation]:
        return list(itertools.islice(self._held, max(0, since - self._first), None))

    def latest(self, device: str, profile: str, until_ns: int | None = None) -> Observation | None:
        """The newest decoded observation of ``device``'s ``profile`` (published at or before
        ``until_ns``), whether or not it is still in the ring."""
        with self._cond:
            kept = self._latest.get((device, profile))  # the newest of all (a known device's)
            if kept is not None and (until_ns is None or kept.decoded.ts_ns <= until_ns):
                return kept
            # An older one (until_ns), or a device no certificate names: what the ring still holds.
            fits = [o for o in self._held if o.message is not None and o.message.source == device
                    and o.message.profile == profile and (until_ns is None or o.message.ts_ns <= until_ns)]
            return max(fits, key=lambda o: o.decoded.ts_ns, default=None)

    def wait_for(self, condition: Callable[[list[Observation]], _T], timeout_s: float, since: int = 0) -> _T:
        """Re-evaluate ``condition`` on the held observations from index ``since`` on (see
        :meth:`snapshot`) on every new observation, until it is truthy or time is up. While
        nothing has left memory, position ``i`` of the list is observation ``i``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                result = condition(self._since(since))
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return result
                self._cond.wait(min(remaining, 0.5))

    def write_jsonl(self, path: Path, since: int = 0) -> None:
        """Every observation from index ``since`` on, the ones on disk included, one JSON line each."""
        with self._cond, open(path, "w", encoding="utf-8") as out:
            self._spool.flush()
            if since < self._first:
                self._spool.seek(0)
                if since <= 0:
                    shutil.copyfileobj(self._spool, out)
                else:
                    for line in self._spool:
                        if json.loads(line)["index"] >= since:
                            out.write(line)
                self._spool.seek(0, 2)  # appends go on at the end
            for obs in self._since(since):
                out.write(json.dumps(obs.as_json()) + "\n")
