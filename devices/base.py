"""What every device shares: configuration, the two planes' MQTT v5 clients, publishing.

A device connects to the delivery-plane and the control-plane broker of its site, subscribes
to what its role reads (``testbed.core.topics.ROLES``) on the plane each profile travels on,
validates every payload (rejecting bad ones with a logged error and a dead letter, never
crashing: ``testbed.transport.guard``), and
publishes versioned JSON with a per-device sequence number and a W3C ``traceparent``.

Configuration (environment; ``--help`` of any device prints this list):

    FMB_DEVICE_ID        the device's mRID, also its certificate's CN      (required)
    FMB_DELIVERY         host:port of the site's delivery-plane broker     (required)
    FMB_CONTROL          host:port of the site's control-plane broker      (required)
    FMB_CA, FMB_CERT, FMB_KEY   CA, certificate and key files              (required)
    FMB_ROOT             topic root                                       (default fmb)
    FMB_QOS              QoS of publications and subscriptions            (default 1)
    FMB_SESSION_EXPIRY   seconds; > 0 keeps a persistent session          (default 0)
    FMB_READY_FILE       the heartbeat: written once both planes are connected and subscribed,
                         then every tick (testbed.transport.health)
    FMB_SIGNING_KEY      Ed25519 key that signs this device's commands (issuers: tablet, DMS)
    FMB_SIGNING_DIR      directory of the signers' public keys (<name>.pub)
    FMB_SIGNERS          comma-separated signers whose commands this device executes
    FMB_LOG_LEVEL        DEBUG, INFO, ...                                 (default INFO)
    FMB_LOG_FILE         also append the log to this file (a container's log volume, read by the monitor)
    FMB_DEADLETTERS      where messages it could not handle are recorded  (default <id>.deadletters.jsonl
                         beside FMB_READY_FILE; testbed.transport.deadletter)
    FMB_TEST_HOOKS       tests only: kill-loop makes SIGUSR2 end the MQTT network threads
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import paho.mqtt.client as paho

from testbed.core.errors import BrokerError, DeviceError, TestbedError
from testbed.core.payloads import Message, PayloadError, child_traceparent, decode, encode
from testbed.core.topics import PROFILES, ROLES, Plane, Profile, parse_topic, subscriptions, topic
from testbed.security.signing import CommandRejected, CommandSigner, CommandVerifier, load_trusted
from testbed.transport.guard import counts, describe_sender, one_line, set_aside
from testbed.transport.health import TICK_S, Heartbeat, install
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect, publish_properties, user_properties

__all__ = ["Device", "DeviceConfig", "main"]


@dataclass(frozen=True)
class DeviceConfig:
    """A device's settings, read from ``FMB_*`` environment variables."""

    device_id: str
    delivery: Endpoint
    control: Endpoint
    tls: TLSIdentity
    root: str = "fmb"
    qos: int = 1
    session_expiry_s: int = 0
    ready_file: Path | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DeviceConfig:
        def need(name: str) -> str:
            value = env.get(name, "")
            if not value:
                raise DeviceError(f"set {name} (see --help)")
            return value

        try:
            delivery = Endpoint.parse(need("FMB_DELIVERY"))
            control = Endpoint.parse(need("FMB_CONTROL"))
            qos = int(env.get("FMB_QOS", "1"))
            expiry = int(env.get("FMB_SESSION_EXPIRY", "0"))
        except ValueError as e:
            raise DeviceError(f"{e}; FMB_DELIVERY/FMB_CONTROL are host:port, FMB_QOS 0-2") from None
        tls = TLSIdentity(Path(need("FMB_CA")), Path(need("FMB_CERT")), Path(need("FMB_KEY")))
        for p in (tls.ca, tls.cert, tls.key):
            if not p.is_file():
                raise DeviceError(f"{p} does not exist; create the PKI with `fmb certs init`")
        ready = env.get("FMB_READY_FILE")
        return cls(
            device_id=need("FMB_DEVICE_ID"), delivery=delivery, control=control, tls=tls,
            root=env.get("FMB_ROOT", "fmb"), qos=qos, session_expiry_s=expiry,
            ready_file=Path(ready) if ready else None,
            extra={k: v for k, v in env.items() if k.startswith("FMB_")},
        )


class Device:
    """Base of every role: override :meth:`handle` and, if needed, :meth:`on_started`."""

    role: ClassVar[str]

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.id = config.device_id
        self.log = logging.getLogger(f"{self.role}.{self.id}")
        self.rejected = 0
        self._seq = 0
        self._lock = threading.RLock()  # one message handled at a time, whichever plane
        self._received_ns: int | None = None  # when the message being handled arrived (under _lock)
        self._cause = ""  # that message, "<source>/<seq>": what a publish while handling it follows from
        self._stopped = threading.Event()
        self._clients: dict[Plane, paho.Client] = {}
        self.heartbeat = Heartbeat(config.ready_file, self.id)
        install(self.heartbeat)
        extra = config.extra
        self.signer = CommandSigner(self.id, Path(extra["FMB_SIGNING_KEY"])) if extra.get("FMB_SIGNING_KEY") else None
        self.verifier: CommandVerifier | None = None
        if any(PROFILES[g.profile].kind == "command" for g in ROLES[self.role].reads):
            self.verifier = self._load_verifier(extra)

    def _load_verifier(self, extra: Mapping[str, str]) -> CommandVerifier | None:
        directory, names = extra.get("FMB_SIGNING_DIR"), extra.get("FMB_SIGNERS", "")
        if not directory:
            self.log.warning("FMB_SIGNING_DIR is not set: command signatures are NOT checked")
            return None
        keys = {}
        for name in filter(None, (n.strip() for n in names.split(","))):
            path = Path(directory) / f"{name}.pub"
            if not path.is_file():
                raise DeviceError(f"no public key {path} for signer {name}; run `fmb certs init`")
            keys[name] = path.read_text().strip()
        if not keys:
            raise DeviceError("FMB_SIGNERS names no signer: this device would refuse every command")
        return CommandVerifier(load_trusted(json.dumps(keys)))

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect both planes (blocking until each has subscribed), then :meth:`on_started`."""
        persistent = self.config.session_expiry_s > 0
        planes: tuple[tuple[Plane, Endpoint], ...] = (("control", self.config.control),
                                                      ("delivery", self.config.delivery))
        for plane, endpoint in planes:
            subscribed = threading.Event()

            def on_connect(c: paho.Client, plane: Plane = plane, ev: threading.Event = subscribed) -> None:
                self._subscribe(c, plane, ev)

            self._clients[plane] = connect(
                f"{self.id}-{plane}", self.config.tls, endpoint,
                on_message=self._on_message,
                on_connect=on_connect,
                clean_start=not persistent, session_expiry_s=self.config.session_expiry_s,
                wait_s=None, exactly_once=self.config.qos == 2,
            )
            if not subscribed.wait(30):
                raise BrokerError(f"{self.id} could not connect and subscribe to the "
                                  f"{plane} broker at {endpoint.host}:{endpoint.port} in 30 s")
        self.on_started()
        for plane, client in self._clients.items():
            self.heartbeat.watch(plane, client)
        self._beat()
        self.log.info("ready (delivery %s:%d, control %s:%d)", self.config.delivery.host,
                      self.config.delivery.port, self.config.control.host, self.config.control.port)

    def stop(self) -> None:
        self._stopped.set()
        for c in self._clients.values():
            c.disconnect()
            c.loop_stop()
        self.heartbeat.stop()

    def run(self) -> None:
        """Start, then serve until SIGTERM or SIGINT."""
        signal.signal(signal.SIGTERM, lambda *_: self._stopped.set())
        signal.signal(signal.SIGINT, lambda *_: self._stopped.set())
        kill_loops = self._test_hook_kill_loops()
        self.start()
        while not self._stopped.wait(TICK_S):
            if kill_loops.is_set():
                kill_loops.clear()
                for c in self._clients.values():
                    c.loop_stop()  # the network thread ends, the socket stays: a dead loop, hidden
            self.tick()
            self._beat()
        self.stop()

    def _beat(self) -> None:
        self.heartbeat.counters.update(counts())  # handler failures contained, dead letters
        self.heartbeat.counters["rejected"] = self.rejected
        if self.verifier is not None:
            self.heartbeat.counters["rejected_commands"] = self.verifier.rejected
        self.heartbeat.beat()

    def _test_hook_kill_loops(self) -> threading.Event:
        """With FMB_TEST_HOOKS=kill-loop (tests only), SIGUSR2 ends this device's MQTT network
        threads, as an exception escaping a message callback would (tests/test_health.py)."""
        event = threading.Event()
        if "kill-loop" in self.config.extra.get("FMB_TEST_HOOKS", "").split(","):
            signal.signal(signal.SIGUSR2, lambda *_: event.set())
        return event

    def on_started(self) -> None:
        """Called once both planes are up: publish initial status here."""

    def _resync(self, plane: Plane) -> None:
        with self._lock:
            try:
                self.on_reconnected(plane)
            except Exception:  # never let a re-synchronisation take the device down
                self.log.exception("re-synchronisation after reconnecting the %s plane failed", plane)

    def on_reconnected(self, plane: Plane) -> None:
        """Called after a reconnection: an edge broker keeps nothing, so report current state."""

    def tick(self) -> None:
        """Called about twice a second from the main thread (periodic work)."""

    # -- messages -----------------------------------------------------------------------------

    def _subscribe(self, client: paho.Client, plane: Plane, done: threading.Event) -> None:
        if done.is_set():  # a reconnection: the broker may have restarted with nothing on disk
            threading.Thread(target=self._resync, args=(plane,), daemon=True).start()
        topics = subscriptions(self.config.root, self.role, self.id, plane, self.config.qos)

        def on_subscribe(c: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
            failed = [str(r) for r in reasons if r.is_failure]
            if failed:
                self.log.error("subscription refused on the %s plane: %s", plane, failed)
            done.set()

        if not topics:
            done.set()
            return
        client.on_subscribe = on_subscribe
        client.subscribe(topics)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        received_ns = time.time_ns()  # first: what the device adds is measured from here (recv_ns)
        try:
            profile, mrid = parse_topic(self.config.root, msg.topic)
            # A status or reading is published by the device the topic names; a command names
            # its target in the topic and its sender in the payload; a diagram names its feeder.
            source = None if profile.kind in ("command", "diagram") else mrid
            message = decode(msg.payload, profile.name, source, about=mrid if profile.kind == "diagram" else None)
        except (ValueError, PayloadError) as e:
            self.rejected += 1
            reason = one_line(str(e), 300)
            self.log.error("rejected payload on %s from %s: %s (rejected so far: %d; set aside as a dead letter)",
                           one_line(msg.topic), describe_sender(msg.topic, msg.payload), reason, self.rejected)
            set_aside(msg, f"rejected payload: {reason}", self.id)  # acknowledged all the same: the session drains
            return
        props = user_properties(msg)
        traceparent = props.get("traceparent")
        if profile.kind == "command" and self.verifier is not None:
            try:
                self.verifier.verify(msg.topic, msg.payload, props, message)
            except CommandRejected as e:
                self.log.error("rejected command on %s: %s (rejected commands so far: %d)", msg.topic, e,
                               self.verifier.rejected)
                set_aside(msg, f"rejected command: {one_line(str(e), 300)}", self.id)
                return
        with self._lock:
            self._received_ns, self._cause = received_ns, f"{message.source}/{message.seq}"
            try:
                self.handle(profile, mrid, message, traceparent)
            except Exception as e:  # a bug in one handler must not take the device off the bus
                self.log.exception("failed to handle %s from %s", profile.name, message.source)
                set_aside(msg, one_line(f"handler failed: {type(e).__name__}: {e}", 300), self.id)
            finally:
                self._received_ns, self._cause = None, ""

    def handle(self, profile: Profile, mrid: str, message: Message, traceparent: str | None) -> None:
        """React to one valid message (called with the device lock held)."""

    def publish(self, profile: str, mrid: str, body: dict[str, Any], cause: str | None = None,
                retain: bool = False, timing: Mapping[str, int] | None = None) -> Message:
        """Publish ``body`` on ``profile``/``mrid``, on the profile's plane, in ``cause``'s trace.

        ``timing`` rides in user properties beside the trace context (``recv_ns``: when the cause
        reached this device; by default, while a message is handled, that message's arrival, and
        ``cause``, that message as ``<source>/<seq>``; and always ``sent_ns``, the payload encoded and
        signed, handed to paho), so
        that ``fmb bench latency`` can tell what the device added from what the bus did. A reader
        may use them for figures only: they are the publisher's claim, signed by nothing."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            cause_id = self._cause
            if timing is None and self._received_ns is not None:
                timing = {"recv_ns": self._received_ns}
        message = Message(profile, self.id, seq, time.time_ns(), body)
        payload = encode(profile, self.id, seq, body, ts_ns=message.ts_ns)
        name = topic(self.config.root, profile, mrid)
        signer = self.signer if PROFILES[profile].kind == "command" else None  # only commands are signed
        extra = signer.properties(name, payload) if signer is not None else []
        extra += [(key, str(value)) for key, value in (timing or {}).items()]
        if cause_id:
            extra.append(("cause", cause_id))
        extra.append(("sent_ns", str(time.time_ns())))  # encoded and signed: the rest is paho's and the bus's
        props = publish_properties(child_traceparent(cause), extra)
        client = self._clients[PROFILES[profile].plane]
        info = client.publish(name, payload, self.config.qos, retain=retain, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS and info.rc != paho.MQTT_ERR_NO_CONN:
            self.log.error("publish of %s failed: %s", profile, paho.error_string(info.rc))
        return message


def main(device_class: type[Device], doc: str = "") -> None:
    """Entry point of ``python -m devices.<role>``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m devices.{device_class.role}",
        description=(doc or device_class.__doc__ or "").strip() + "\n\n" + (__doc__ or "").split(
            "Configuration", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr, level=os.environ.get("FMB_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    log_file = os.environ.get("FMB_LOG_FILE")
    if log_file:  # a container's own log volume, which the monitor reads (stderr still goes to `docker logs`)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(handler)
    try:
        device_class(DeviceConfig.from_env(os.environ)).run()
    except TestbedError as e:
        raise SystemExit(f"error: {e}") from None
