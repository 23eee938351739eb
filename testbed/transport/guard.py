"""No message can stop a client's network loop: every ``on_message`` handler is contained.

paho calls ``on_message`` in its network thread and, with ``suppress_exceptions`` off (its
default), lets an exception escape: the thread ends, the client is dead while its process lives
on, and a QoS 1 message is never acknowledged (paho sends the PUBACK after ``on_message``
returns), so a persistent session delivers it again after every restart (issue 11: one nested
array took down the DMS, the supply, the cap bank, the tablet and the monitor, the DMS after
each restart). :func:`contain` wraps a handler so that any exception is caught, logged once
(topic, sender, receiver, where it was raised), counted, and the message recorded as a dead
letter (:mod:`testbed.transport.deadletter`); the handler then returns normally and paho
acknowledges the message (PUBACK for QoS 1, PUBCOMP for QoS 2), so a session always drains.
:func:`testbed.transport.mqtt.connect` wraps every client's handler this way. A handler that
refuses a message itself (a payload that does not decode) calls :func:`set_aside`.
:func:`counts` is what a health check can read.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from testbed.core.topics import PROFILES
from testbed.transport.deadletter import claimed_source, dead_letter, process_box, topic_mrid

__all__ = ["contain", "counts", "describe_sender", "one_line", "set_aside"]

log = logging.getLogger("guard")

Handler = Callable[[paho.Client, Any, paho.MQTTMessage], None]

_failures = 0
_lock = threading.Lock()


def one_line(text: str, limit: int = 200) -> str:
    """``text`` safe for one log line: control characters escaped (no forged lines), cut to ``limit``."""
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return safe if len(safe) <= limit else safe[:limit] + "..."


def _topic(message: paho.MQTTMessage) -> str:
    try:
        return message.topic
    except UnicodeDecodeError:  # paho raises it on access; brokers check UTF-8, but a topic is input too
        return "(topic not UTF-8)"


def describe_sender(topic: str, payload: bytes | bytearray) -> str:
    """Who sent a message, as far as its receiver can tell: for a status or reading, the device the
    topic names (the brokers' ACLs let only that identity publish there) and the source the payload
    claims if it differs; for a command (the topic names its target), the source the payload claims."""
    mrid, source = topic_mrid(topic), claimed_source(payload)
    parts = topic.split("/")
    profile = PROFILES.get(parts[2]) if len(parts) == 4 else None
    if profile is not None and profile.kind == "command":
        text = f"{source!r} (the payload's claim; a command to {mrid})" if source else f"? (a command to {mrid})"
    else:
        text = mrid if source in (None, mrid) else f"{mrid} (payload source {source!r})"
    return one_line(text, 140)


def set_aside(message: paho.MQTTMessage, reason: str, receiver: str) -> None:
    """Record ``message`` as a dead letter of ``receiver`` (the caller has logged why)."""
    payload = bytes(message.payload)
    process_box().add(dead_letter(_topic(message), payload, reason, receiver))


def counts() -> dict[str, int]:
    """Handler failures contained and dead letters recorded by this process since it started."""
    with _lock:
        failures = _failures
    return {"handler_failures": failures, "dead_letters": process_box().count}


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "/paho/" not in f.filename] or frames
    if not ours:
        return "?"
    f = ours[-1]  # the innermost frame of our code: where to look
    return f"{Path(f.filename).name}:{f.lineno} in {f.name}"


def contain(handler: Handler, receiver: str) -> Handler:
    """``handler``, except that nothing it raises reaches paho's network thread."""

    def contained(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        global _failures
        try:
            handler(client, userdata, message)
        except KeyboardInterrupt:  # never in a network thread (signals go to the main thread); a caller's
            raise
        except BaseException as e:  # noqa: BLE001 - SystemExit too: it would end the thread just the same
            with _lock:
                _failures += 1
                n = _failures
            topic, payload = _topic(message), bytes(message.payload)
            reason = f"handler failed: {type(e).__name__}: {e}"
            log.error("contained a failure of %s handling a message on %s from %s (%d bytes): %s at %s "
                      "(handler failures so far: %d; set aside as a dead letter)", receiver, one_line(topic),
                      describe_sender(topic, payload), len(payload), one_line(reason), _where(e), n)
            try:
                set_aside(message, one_line(reason, 500), receiver)
            except Exception:  # noqa: BLE001 - recording is best effort; the message is acknowledged anyway
                log.exception("could not record a dead letter")

    contained.__name__ = getattr(handler, "__name__", "on_message")
    contained.__wrapped__ = handler  # type: ignore[attr-defined]
    return contained
