"""The recorder: a read-only identity that records every message on every broker.

It subscribes to every profile of the topic tree on every broker (the ACLs give the
``recorder`` identity read and nothing else), and keeps each message with the broker and
plane it was seen on, its receive time, its decoded payload and its trace context. The same
message seen on a field broker and, through the bridge, on a data-centre broker is one
:class:`Observation` with two sightings. Scenario checks, reports and plots only read this.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho

from testbed.core.errors import BrokerError
from testbed.core.payloads import Message, PayloadError, decode
from testbed.core.topics import parse_topic, subscriptions
from testbed.core.topology import BrokerSpec, Topology
from testbed.transport.health import current
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect, user_properties

__all__ = ["Observation", "Recorder"]

_T = TypeVar("_T")


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
        return {
            "index": self.index, "topic": self.topic, "qos": self.qos, "retain": self.retain,
            "first_recv_ns": self.first_recv_ns, "traceparent": self.traceparent, "signer": self.signer,
            "sightings": [{"broker": b, "plane": p, "recv_ns": t} for b, p, t in self.sightings],
            "payload": self.message.as_dict() if self.message else self.raw.decode("utf-8", "replace"),
            "error": self.error,
        }


class Recorder:
    """Records the bus; thread-safe; :meth:`wait_for` blocks until a condition holds."""

    def __init__(self, topology: Topology, identity: TLSIdentity,
                 endpoints: dict[str, Endpoint]) -> None:
        self.topology = topology
        self.identity = identity
        self.endpoints = endpoints
        self.observations: list[Observation] = []
        self._by_key: dict[tuple[str, str, int], Observation] = {}
        self._cond = threading.Condition()
        self._clients: list[paho.Client] = []
        self.tls_version: str | None = None

    def start(self) -> None:
        for broker in self.topology.brokers:
            subs = subscriptions(self.topology.root, "recorder", "recorder", broker.plane)
            subscribed = threading.Event()

            def on_connect(c: paho.Client, subs: list[tuple[str, int]] = subs,
                           ev: threading.Event = subscribed) -> None:
                c.on_subscribe = lambda *a: ev.set()
                c.subscribe(subs)

            def on_message(c: paho.Client, u: Any, m: paho.MQTTMessage, b: BrokerSpec = broker) -> None:
                self._on_message(b.name, b.plane, m)

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

    def stop(self) -> None:
        heartbeat = current()
        if heartbeat is not None:
            for broker in self.topology.brokers:
                heartbeat.unwatch(f"recorder {broker.name}")
        for c in self._clients:
            c.disconnect()
            c.loop_stop()
        self._clients = []

    def _on_message(self, broker: str, plane: str, msg: paho.MQTTMessage) -> None:
        now = time.time_ns()
        message, error, mrid = None, None, ""
        try:
            _, mrid = parse_topic(self.topology.root, msg.topic)
            message = decode(msg.payload)
        except (ValueError, PayloadError) as e:
            error = str(e)
        with self._cond:
            key = (message.source, message.profile, message.seq) if message else None
            obs = self._by_key.get(key) if key else None
            if obs is None:
                props = user_properties(msg)
                obs = Observation(len(self.observations), msg.topic, mrid, message, bytes(msg.payload),
                                  props.get("traceparent"), props.get("signer"), msg.qos, bool(msg.retain), now,
                                  error=error)
                self.observations.append(obs)
                if key:
                    self._by_key[key] = obs
            obs.sightings.append((broker, plane, now))
            self._cond.notify_all()

    def mark(self) -> int:
        """The index the next observation will have (to look only at what comes after)."""
        with self._cond:
            return len(self.observations)

    def snapshot(self, since: int = 0) -> list[Observation]:
        with self._cond:
            return list(self.observations[since:])

    def wait_for(self, condition: Callable[[list[Observation]], _T], timeout_s: float) -> _T:
        """Re-evaluate ``condition`` on every new observation until it is truthy or time is up."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                result = condition(list(self.observations))
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return result
                self._cond.wait(min(remaining, 0.5))

    def write_jsonl(self, path: Path, since: int = 0) -> None:
        with open(path, "w") as f:
            for obs in self.snapshot(since):
                f.write(json.dumps(obs.as_json()) + "\n")
