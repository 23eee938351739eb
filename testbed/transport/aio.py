"""An asyncio MQTT v5 client over mutual TLS (gmqtt), for processes that hold thousands of identities.

One :class:`AioClient` is one connection with one identity: its own certificate and key in its own
``ssl.SSLContext`` (:func:`testbed.transport.mqtt.tls_context`: the project's CA, hostname checked,
TLS >= 1.2), TCP_NODELAY (asyncio sets it on every TCP transport; :meth:`AioClient.nodelay` reads it
back), a clean or persistent session, and PUBLISH with the ``traceparent`` as an MQTT v5 user
property. It is made here so that it gets the treatment every client of the testbed gets
(``tests/test_qos2.py`` refuses an MQTT client made anywhere else); gmqtt is not imported elsewhere.

What it changes in gmqtt 0.8 (checked in its source, pinned in ``pyproject.toml``):

- Reconnection. gmqtt retries after a fixed delay (6 s) with no jitter, so a whole substation
  whose broker restarts retries in lockstep. Its own reconnect is disabled (``reconnect`` only
  reports the loss) and :meth:`AioClient.run` reconnects with full-jitter exponential backoff
  (:class:`Backoff`: a uniform delay in [0, min(cap, base * 2^attempt)], the attempt count reset
  once a connection has lasted ``stable_s``).
- PUBACK reason codes. gmqtt ignores them, so a publish the broker refuses (0x87, not authorised)
  looks delivered; here it is counted (:attr:`AioClient.refused`) and :meth:`AioClient.publish_acked`
  returns it.
- Packet identifiers. After a CONNACK without a session gmqtt drops its unacknowledged messages but
  keeps their identifiers in use; with Mosquitto's Receive Maximum of 20 a client that lost 19 in
  flight across reconnects could never publish again. They are released here.

QoS 2 is refused (:class:`AioClient` raises :class:`~testbed.core.errors.TestbedError` for it).
``tests/test_qos2.py`` shows what breaks exactly-once against Mosquitto 2.0 across reconnects, and
``testbed.transport.reliable`` fixes it for paho; gmqtt has the same faults and more: it logs and
drops a PUBREC >= 0x80 (so 0x97, quota exceeded, is a silent loss, not a retry), replays its whole
in-flight set after a reconnect, keeps it in memory only, has no publish-acknowledged callback, and
reports nothing of a refused QoS 2 flow. Re-implementing the QoS 2 state machine over its private
handler would be a second ReliableClient to maintain for a case no fleet needs: meters publish on
edge brokers that keep nothing across a restart (exactly-once cannot survive that anyway), and
their readings carry per-meter sequence numbers, so QoS 1's duplicates are counted, not harmful.
A QoS 2 publisher uses :func:`testbed.transport.mqtt.connect` (paho with ReliableClient).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from asyncio import sslproto
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv50

from testbed.core.errors import TestbedError
from testbed.transport.guard import one_line
from testbed.transport.mqtt import Endpoint, TLSIdentity, tls_context

__all__ = ["REFUSED_QOS2", "AioClient", "Backoff", "small_tls_buffers"]

log = logging.getLogger("aio")

REFUSED_QOS2 = ("QoS 2 is refused by the asyncio client: gmqtt drops a refused PUBREC (0x97 quota "
                "exceeded included) and cannot report delivery, so exactly-once is not kept; use QoS 1 "
                "(readings carry sequence numbers) or testbed.transport.mqtt.connect")
TLS_READ_BUFFER = 16384  # one TLS record (16 KiB) per read: see small_tls_buffers
CONNECT_TIMEOUT_S = 10.0  # TCP + TLS handshake + CONNACK; a broker busy with a storm answers well within it


def small_tls_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Make every asyncio TLS connection of this process allocate a ``size``-byte read buffer.

    asyncio's SSLProtocol allocates (and zero-fills) 256 KiB per connection: measured, 346 KB of RSS per
    meter connection, 105 KB with 16 KiB. For a process of thousands of connections that each receive a
    few bytes (a fleet); it applies to the whole process, so call it only from such a process's main.
    """
    if not 4096 <= size <= 1 << 20:
        raise ValueError(f"TLS read buffer of {size} bytes: give 4096-1048576")
    sslproto.SSLProtocol.max_size = size


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential reconnect backoff: the n-th retry waits U(0, min(cap, base * 2^n))."""

    base_s: float = 0.5
    cap_s: float = 20.0
    stable_s: float = 10.0  # a connection that lasted this long resets the attempt count

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError(f"backoff base {self.base_s!r} s and cap {self.cap_s!r} s: need 0 < base <= cap")
        if self.stable_s < 0:
            raise ValueError(f"backoff stable_s {self.stable_s!r}: give seconds >= 0")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before retry number ``attempt`` (0 for the first after a loss)."""
        return rng.uniform(0.0, min(self.cap_s, self.base_s * 2.0 ** min(attempt, 30)))


class _Gmqtt(gmqtt.Client):  # type: ignore[misc]  # gmqtt ships no types
    """gmqtt's client with its reconnection handed to :class:`AioClient` and PUBACK reasons read."""

    def __init__(self, owner: AioClient, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner
        # gmqtt looks handlers up by name on its package handler: these shadow its own.
        self._package_handler._handle_puback_packet = self._handle_puback

    async def reconnect(self, delay: bool = False) -> None:
        """gmqtt calls this when the connection is lost or refused: only report it."""
        self._owner._connection_lost()

    def _handle_puback(self, cmd: int, packet: bytes) -> None:
        mid = int.from_bytes(packet[:2], "big")
        reason = packet[2] if len(packet) > 2 else 0  # absent means success (MQTT v5 3.4.2.1)
        self._package_handler.id_generator.free_id(mid)
        self._remove_message_from_queue(mid)
        self._owner._acknowledged(mid, reason)

    def publish_mid(self, message: gmqtt.Message) -> int | None:
        """gmqtt's ``publish``, returning the packet identifier (None at QoS 0)."""
        mid, package = self._connection.publish(message)
        if message.qos > 0:
            self._persistent_storage.push_message(mid, package)
            return int(mid)
        return None

    def in_flight(self) -> int:
        """Outbound QoS 1 messages awaiting their PUBACK."""
        return len(self._persistent_storage.get_all())

    def release_identifiers(self) -> None:
        """With nothing in flight, no packet identifier is in use (gmqtt keeps those of dropped messages)."""
        self._package_handler.id_generator._used_ids.clear()

    def transport(self) -> asyncio.BaseTransport | None:
        connection = self._connection
        return None if connection is None else connection._transport

    def loss_reason(self) -> BaseException | None:
        """Why the current connection was lost (the TLS alert of a refused certificate), if known."""
        protocol = getattr(self._connection, "_protocol", None)
        reader = getattr(protocol, "_hard_reader", None)  # gmqtt's StreamReader, which keeps the exception
        reason = reader.exception() if reader is not None else None
        return reason if isinstance(reason, BaseException) else None

    async def close_transport(self) -> None:
        """Close what is left of the current connection (before a new one), without a DISCONNECT."""
        connection = self._connection
        if connection is not None and not connection.is_closing():
            with contextlib.suppress(Exception):  # it is being replaced; nothing to save
                await asyncio.wait_for(connection.close(), 2.0)


class AioClient:
    """One MQTT v5 identity over mutual TLS on asyncio; :meth:`run` keeps it connected."""

    def __init__(self, client_id: str, tls: TLSIdentity | ssl.SSLContext, endpoint: Endpoint, *,
                 clean_start: bool = True, session_expiry_s: int = 0, keepalive_s: int = 30,
                 backoff: Backoff | None = None, rng: random.Random | None = None,
                 on_connect: Callable[[AioClient], object] | None = None) -> None:
        self.client_id = client_id
        self.endpoint = endpoint
        self.keepalive_s = keepalive_s
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.on_connect = on_connect  # after every successful (re)connection; what it returns is ignored
        self.context = tls if isinstance(tls, ssl.SSLContext) else tls_context(tls)
        self.connections = 0  # successful CONNACKs
        self.failed = 0  # connection attempts that failed (refused, TLS, timeout, no broker)
        self.refused = 0  # publishes the broker answered with a reason code >= 0x80
        self.last_error = ""
        self._acks: dict[int, asyncio.Future[int]] = {}
        self._lost = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self._connected = False
        self._gm = _Gmqtt(self, client_id, clean_session=clean_start,
                          session_expiry_interval=session_expiry_s)

    # -- state -------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the loss of that connection."""
        return self._connected and not self._lost.is_set()

    @property
    def reconnects(self) -> int:
        """Successful connections after the first."""
        return max(0, self.connections - 1)

    def nodelay(self) -> bool:
        """Whether TCP_NODELAY is set on the current connection's socket."""
        transport = self._gm.transport()
        sock = None if transport is None else transport.get_extra_info("socket")
        return sock is not None and bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    # -- connecting ----------------------------------------------------------------------------------

    async def connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
        """One connection attempt; returns whether the broker accepted it (why not: :attr:`last_error`)."""
        self._lost.clear()
        self._connected = False
        try:
            await self._gm.close_transport()
            await self._handshake(timeout_s)
        except (TimeoutError, OSError, gmqtt.MQTTConnectError) as e:
            self.failed += 1
            self.last_error = one_line(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            await self._gm.close_transport()
            return False
        if self._lost.is_set():  # lost again before we looked
            self.failed += 1
            self.last_error = "connection lost right after CONNACK"
            return False
        self._release_identifiers()
        self._connected = True
        self.connections += 1
        if self.on_connect is not None:
            try:
                self.on_connect(self)
            except Exception:  # a callback's bug must not end the connection loop
                log.exception("%s: on_connect failed", self.client_id)
        return True

    async def _handshake(self, timeout_s: float) -> None:
        # gmqtt's connect() waits for the CONNACK without watching the connection: a broker that
        # closes it first (a revoked certificate's alert comes after the client's side of the TLS
        # handshake) would leave it waiting for ever. Race it against the loss.
        connecting = asyncio.ensure_future(self._gm.connect(self.endpoint.host, self.endpoint.port,
                                                            ssl=self.context, keepalive=self.keepalive_s,
                                                            version=MQTTv50))
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({connecting, lost}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if connecting in done:
                connecting.result()  # raises what refused it
            elif lost in done:
                raise self._gm.loss_reason() or ConnectionError("the broker closed the connection before CONNACK")
            else:
                raise TimeoutError(f"no CONNACK in {timeout_s:g} s")
        finally:
            for task in (connecting, lost):
                if not task.done():
                    task.cancel()
            with contextlib.suppress(BaseException):  # retrieved, so asyncio does not log it as lost
                await asyncio.gather(connecting, lost, return_exceptions=True)

    def _release_identifiers(self) -> None:
        # After a CONNACK without the session gmqtt has emptied its in-flight store; with the session
        # it has replayed it and connect() returned once all were acknowledged. Either way an empty
        # store means no identifier is in use and no acknowledgement is coming.
        if not self._gm.in_flight():
            self._gm.release_identifiers()
            for future in self._acks.values():
                if not future.done():
                    future.set_exception(TestbedError(f"{self.client_id}: the connection was lost before "
                                                      "the acknowledgement"))

    async def connect_or_raise(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """:meth:`connect`, or a one-line :class:`TestbedError` with the broker's reason."""
        if not await self.connect(timeout_s):
            raise TestbedError(f"{self.client_id} could not connect to {self.endpoint.host}:{self.endpoint.port} "
                               f"({self.last_error}); is the broker up and the certificate valid and not revoked?")

    async def run(self) -> None:
        """Connect, and reconnect with jittered backoff after every loss, until :meth:`stop`."""
        attempt = 0
        while not self._stopping:
            if not await self.connect():
                await self._pause(self.backoff.delay(attempt, self.rng))
                attempt += 1
                continue
            up_since = time.monotonic()
            await self._lost.wait()
            self._connected = False
            if self._stopping:
                return
            if time.monotonic() - up_since >= self.backoff.stable_s:
                attempt = 0
            log.debug("%s: connection lost; retrying", self.client_id)
            await self._pause(self.backoff.delay(attempt, self.rng))
            attempt += 1

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Disconnect (a DISCONNECT when connected) and end :meth:`run`."""
        self._stopping = True
        self._stopped.set()
        was = self.connected
        self._connected = False
        self._lost.set()
        if was:
            with contextlib.suppress(Exception):  # going away; a broken connection is no error here
                await asyncio.wait_for(self._gm.disconnect(), timeout_s)
        else:
            await self._gm.close_transport()

    # -- callbacks from _Gmqtt ----------------------------------------------------------------------

    def _connection_lost(self) -> None:
        self._lost.set()

    def _acknowledged(self, mid: int, reason: int) -> None:
        if reason >= 0x80:
            self.refused += 1
        future = self._acks.get(mid)
        if future is not None and not future.done():
            future.set_result(reason)

    # -- publishing ---------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1, *, traceparent: str | None = None,
                extra: list[tuple[str, str]] | None = None, retain: bool = False) -> int | None:
        """Send one PUBLISH (JSON content type, ``traceparent`` and ``extra`` as user properties).

        Returns the packet identifier (None at QoS 0). Raises :class:`TestbedError` when not connected,
        for QoS 2 (see the module's docstring) and when Receive Maximum messages are unacknowledged.
        """
        if qos not in (0, 1):
            raise TestbedError(REFUSED_QOS2 if qos == 2 else f"QoS {qos!r}: use 0 or 1")
        if not self.connected:
            raise TestbedError(f"{self.client_id} is not connected")
        pairs = ([("traceparent", traceparent)] if traceparent else []) + (extra or [])
        props: dict[str, Any] = {"content_type": "application/json"}
        if pairs:
            props["user_property"] = pairs
        try:
            return self._gm.publish_mid(gmqtt.Message(topic, payload, qos=qos, retain=retain, **props))
        except OverflowError:  # gmqtt's id pool: Receive Maximum - 1 messages await their PUBACK
            raise TestbedError(f"{self.client_id}: the broker's Receive Maximum of unacknowledged messages "
                               "is reached; publish less often or wait") from None

    async def publish_acked(self, topic: str, payload: bytes, *, traceparent: str | None = None,
                            timeout_s: float = 5.0) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code (0 accepted, 0x87 not authorised...)."""
        mid = self.publish(topic, payload, 1, traceparent=traceparent)
        assert mid is not None
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._acks[mid] = future
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise TestbedError(f"{self.client_id}: no PUBACK for {topic} in {timeout_s:g} s") from None
        finally:
            self._acks.pop(mid, None)
