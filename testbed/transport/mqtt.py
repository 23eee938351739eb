"""MQTT v5 clients over mutual TLS, set up the one way every part of the testbed needs.

Devices, the recorder, the operator and the tests all connect through :func:`connect`: TLS
with the project's CA, hostname checked, a client certificate whose CN is the identity,
TCP_NODELAY on the socket (paho never sets it, and Nagle adds ~40 ms to request/response),
MQTT v5 with an explicit session expiry, a bounded reconnect backoff, and paho's client with
the fixes of :class:`~testbed.transport.reliable.ReliableClient`, so that no QoS 2 message is
lost or falsely reported delivered across reconnects.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import testbed.transport.guard as guard
from testbed.core.errors import TestbedError
from testbed.transport.properties import install, packed_publish_properties
from testbed.transport.reliable import ReliableClient

__all__ = ["Endpoint", "TLSIdentity", "connect", "publish_properties", "tls_context", "user_properties"]

install()  # paho decodes every received message's properties with testbed.transport.properties

RECONNECT_MIN_S = 0.25  # paho's defaults are 1 s and 120 s: see `fmb bench recovery`
RECONNECT_MAX_S = 5.0
PAHO_DEFAULT_RECONNECT_S = (1.0, 120.0)
# A QoS 2 publisher's session must outlive a broker restart and the reconnect backoff; an hour, like
# the data centre's central services (the topology's session_expiry_s default).
EXACTLY_ONCE_SESSION_S = 3600


@dataclass(frozen=True)
class TLSIdentity:
    """The files a client presents: the CA to trust, its certificate and key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class Endpoint:
    """Where a broker listens."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{text!r} is not host:port")
        return cls(host, int(port))


def tls_context(identity: TLSIdentity) -> ssl.SSLContext:
    """A client TLS context: verifies the broker against our CA and its hostname, TLS >= 1.2."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(identity.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(identity.cert), str(identity.key))
    return ctx


def _nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    with contextlib.suppress(OSError):  # not a TCP socket (not with our transports); never fatal
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(
    client_id: str,
    identity: TLSIdentity,
    endpoint: Endpoint,
    *,
    on_message: Callable[[paho.Client, Any, paho.MQTTMessage], None] | None = None,
    on_connect: Callable[[paho.Client], object] | None = None,  # what it returns is ignored
    clean_start: bool = True,
    session_expiry_s: int = 0,
    wait_s: float | None = 20.0,
    keepalive_s: int = 30,
    reconnect_s: tuple[float, float] = (RECONNECT_MIN_S, RECONNECT_MAX_S),
    exactly_once: bool = False,
    client_class: type[paho.Client] = ReliableClient,
) -> paho.Client:
    """A started paho client; with ``wait_s`` it blocks until the first CONNACK succeeds.

    ``on_connect`` runs after every successful (re)connection: subscribe there, so that a
    clean session resubscribes after a broker restart. ``exactly_once`` is for a client that
    publishes at QoS 2: what the broker PUBREC'd must survive a reconnect and a broker restart,
    so its session outlives the connection (at least ``EXACTLY_ONCE_SESSION_S``) and every
    CONNECT, the first included, has clean start 0: Mosquitto 2.0 writes a session to disk only
    when the CONNECT that opened it had clean start 0, whatever its expiry. ``client_class=paho.Client``
    gives stock paho, for comparison (tests/test_qos2.py).
    """
    client = client_class(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.tls_set_context(tls_context(identity))
    client.on_socket_open = _nodelay
    # paho annotates the delays as int, but takes (and the tuned backoff needs) fractions of a second.
    client.reconnect_delay_set(min_delay=reconnect_s[0], max_delay=reconnect_s[1])  # type: ignore[arg-type]
    connected = threading.Event()
    refused: list[str] = []
    if on_message is not None:  # whatever a message makes it raise, it must not end paho's network thread
        on_message = guard.contain(on_message, client_id)

    def _on_connect(c: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            return
        if on_connect is not None:
            on_connect(c)
        connected.set()

    client.on_connect = _on_connect
    if on_message is not None:
        client.on_message = on_message
    if exactly_once:
        clean_start, session_expiry_s = False, max(session_expiry_s, EXACTLY_ONCE_SESSION_S)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    client.connect_async(
        endpoint.host, endpoint.port, keepalive=keepalive_s, clean_start=clean_start, properties=props
    )
    client.loop_start()
    if wait_s is not None and not connected.wait(wait_s):
        client.loop_stop()
        why = refused[-1] if refused else "no answer"
        raise TestbedError(
            f"{client_id} could not connect to {endpoint.host}:{endpoint.port} in {wait_s:g} s "
            f"({why}); is the bus up (fmb up) and is {identity.cert.name} valid and not revoked?"
        )
    return client


def publish_properties(traceparent: str | None, extra: list[tuple[str, str]] | None = None) -> Properties:
    """PUBLISH properties: JSON content type, the trace context and ``extra`` as user properties."""
    pairs = [("traceparent", traceparent)] if traceparent else []
    pairs += extra or []
    return packed_publish_properties("application/json", pairs)


def user_properties(message: paho.MQTTMessage) -> dict[str, str]:
    """The user properties of a received message as a dict (last value wins)."""
    props = getattr(message, "properties", None)
    return dict(getattr(props, "UserProperty", None) or [])
