"""Respond: revoke an identity, block an identity or a topic, evict live sessions.

A CRL reload alone leaves a connected client connected (DESIGN.md, "Facts that bite"), so every
action that cuts an identity off ends with an eviction through Mosquitto's dynamic-security
plugin, loaded beside our acl_file (which stays authoritative for access, checked on 2.0.11):
the ``responder`` identity, whose only right is the plugin's control topic, sends
``createClient`` + ``disableClient`` for the identity, and the broker drops its sessions.

* :meth:`Responder.revoke`: CRL updated, brokers reloaded (SIGHUP, waited for), sessions evicted;
  reconnecting fails at the TLS handshake.
* :meth:`Responder.block`: an identity loses every ACL right (it may still connect, but can
  neither publish nor read) and is evicted; a topic is denied to everyone (``topic deny``,
  applied to connected clients by the reload). Blocks are kept in ``<state>/blocklist.json`` so a
  restarted broker keeps them; :meth:`Responder.unblock` lifts one.

Each action returns a dict of what was done and how long each step took.

On the Compose bus (:class:`~testbed.backends.compose.DockerBus`) the same actions run with the
CA key where it lives, in the ``pki`` volume: the bus runs the CA operation (revoke, block) in a
one-shot container that alone mounts it and re-fills every container's volume (CRL, ACLs), then
SIGHUPs the broker containers and waits for their logs to say they reloaded; the eviction is the
same dynamic-security message, sent as ``responder`` to the brokers' published ports.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from brokers.mosquitto import DYNSEC_TOPIC, render_acl
from testbed.core.errors import TestbedError
from testbed.core.waiting import wait_until
from testbed.security.blocklist import Blocklist
from testbed.transport.mqtt import connect

__all__ = ["Responder"]


class Responder:
    """The actions, on a running :class:`~testbed.backends.local.LocalBus` or Compose bus."""

    def __init__(self, bus: Any) -> None:  # a LocalBus or DockerBus; Any keeps this module free of the process code
        self.bus = bus
        self.topology = bus.topology
        # The Compose bus does its CA and ACL work in a one-shot container (its `ca` method).
        self.containers = callable(getattr(bus, "ca", None))

    # -- actions ------------------------------------------------------------------------------

    def revoke(self, identity: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        serial = self.bus.revoke_certificate(identity) if self.containers else self.bus.pki.revoke(identity)
        t1 = time.perf_counter()
        reloaded = self.reload()
        t2 = time.perf_counter()
        evicted = self.evict(identity)
        t3 = time.perf_counter()
        return {"action": "revoke", "identity": identity, "serial": f"{serial:x}",
                "brokers_reloaded": reloaded, "evicted_on": evicted,
                "ms": {"crl": _ms(t0, t1), "reload": _ms(t1, t2), "evict": _ms(t2, t3), "total": _ms(t0, t3)}}

    def block(self, target: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        is_topic = "/" in target
        if not is_topic and target not in self.topology.client_identities() and not _issued(self.bus, target):
            raise TestbedError(f"{target!r} is neither an identity of the bus nor a topic (a topic has a '/')")
        if self.containers:
            self.bus.ca("block", target)  # the blocklist beside the CA, the ACLs re-rendered into each broker's volume
        else:
            blocks = Blocklist.load(self.bus.state_dir)
            bucket = blocks.topics if is_topic else blocks.identities
            if target not in bucket:
                bucket.append(target)
            blocks.save(self.bus.state_dir)
            self.write_acls(blocks)
        t1 = time.perf_counter()
        reloaded = self.reload()
        t2 = time.perf_counter()
        evicted = [] if is_topic else self.evict(target)
        t3 = time.perf_counter()
        return {"action": "block", "topic" if is_topic else "identity": target, "brokers_reloaded": reloaded,
                "evicted_on": evicted, "ms": {"acl": _ms(t0, t1), "reload": _ms(t1, t2), "evict": _ms(t2, t3),
                                              "total": _ms(t0, t3)}}

    def unblock(self, target: str) -> dict[str, Any]:
        if self.containers:
            self.bus.ca("unblock", target)
            return {"action": "unblock", "target": target, "brokers_reloaded": self.reload()}
        blocks = Blocklist.load(self.bus.state_dir)
        blocks.identities = [i for i in blocks.identities if i != target]
        blocks.topics = [t for t in blocks.topics if t != target]
        blocks.save(self.bus.state_dir)
        self.write_acls(blocks)
        return {"action": "unblock", "target": target, "brokers_reloaded": self.reload()}

    # -- mechanisms ---------------------------------------------------------------------------

    def write_acls(self, blocks: Blocklist) -> None:
        for broker in self.topology.brokers:
            acl = self.bus.state_dir / "brokers" / broker.name / "acl"
            tmp = acl.with_suffix(".tmp")
            tmp.write_text(render_acl(self.topology, broker, tuple(blocks.identities), tuple(blocks.topics)))
            tmp.replace(acl)

    def reload(self, timeout_s: float = 5.0) -> int:
        """SIGHUP every running broker and wait until each has logged that it reloaded."""
        if self.containers:
            return int(self.bus.reload_brokers(timeout_s))
        brokers = [p for p in self.bus.processes if p.kind == "broker" and self.bus.alive(p.name)]
        offsets = {p.name: Path(p.log).stat().st_size for p in brokers}
        for p in brokers:
            self.bus.signal(p.name, signal.SIGHUP)
        waiting = set(offsets)

        def reloaded() -> bool:
            for name in list(waiting):
                with open(self.bus.log_dir / f"{name}.log", "rb") as f:
                    f.seek(offsets[name])
                    if b"Reloading config" in f.read():
                        waiting.discard(name)
            return not waiting

        wait_until(reloaded, timeout_s, interval_s=0.002,
                   what=lambda: f"brokers {', '.join(sorted(waiting))} did not reload in {timeout_s:g} s")
        return len(brokers)

    def evict(self, identity: str, timeout_s: float = 5.0) -> list[str]:
        """Drop every live session of ``identity`` on every broker (dynamic-security disableClient)."""
        commands = [{"command": "createClient", "username": identity},
                    {"command": "disableClient", "username": identity}]
        done: list[str] = []
        for broker in self.topology.brokers:
            try:
                replies = self.control(broker.name, commands, timeout_s)
            except TestbedError as e:
                raise TestbedError(f"{broker.name} did not answer the eviction of {identity}: {e}") from None
            failed = [r for r in replies if r.get("command") == "disableClient" and r.get("error")]
            if failed:
                raise TestbedError(f"{broker.name} refused to evict {identity}: {failed[0]['error']}")
            done.append(broker.name)
        return done

    def control(self, broker: str, commands: list[dict[str, Any]], timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """Send dynamic-security ``commands`` to ``broker`` as the responder; the plugin's replies."""
        answered = threading.Event()
        replies: list[dict[str, Any]] = []

        def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
            replies.extend(json.loads(msg.payload).get("responses", []))
            answered.set()

        subscribed = threading.Event()

        def on_connect(c: paho.Client) -> None:
            c.on_subscribe = lambda *a: subscribed.set()
            c.subscribe(DYNSEC_TOPIC + "/response", 1)

        client = connect(f"responder-{broker}-{time.monotonic_ns() % 10**9}", self.bus.identity("responder"),
                         self.bus.endpoint(broker), on_message=on_message, on_connect=on_connect)
        try:
            if not subscribed.wait(timeout_s):
                raise TestbedError(f"responder could not subscribe to {DYNSEC_TOPIC}/response on {broker}")
            client.publish(DYNSEC_TOPIC, json.dumps({"commands": commands}), 1)
            if not answered.wait(timeout_s):
                raise TestbedError(f"no answer in {timeout_s:g} s; is the dynamic-security plugin loaded "
                                   "(see brokers/mosquitto.py)?")
        finally:
            client.disconnect()
            client.loop_stop()
        return replies

    def act(self, action: str, alert: dict[str, Any]) -> dict[str, Any]:
        """Take a policy ``action`` on an alert (its subject: an identity, or a topic for block-topic)."""
        subject = alert.get("subject") or alert.get("identity")
        if action == "block-topic":
            subject = alert.get("evidence", {}).get("topic") or subject
        if not subject:
            raise TestbedError(f"alert {alert['kind']} names no identity or topic to act on")
        if subject in ("responder", "monitor") or subject.startswith("bridge-"):
            raise TestbedError(f"refusing to {action} {subject!r}: the bus's own infrastructure")
        if action == "revoke":
            return self.revoke(subject)
        if action in ("block", "block-topic"):
            return self.block(subject)
        if action == "evict":
            return {"action": "evict", "identity": subject, "evicted_on": self.evict(subject)}
        raise TestbedError(f"unknown action {action!r}")


def _issued(bus: Any, name: str) -> bool:
    try:
        return bool(bus.pki.client(name).cert.exists())
    except TestbedError:
        return False


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000, 2)
