"""Versioned JSON payloads of the bus, and their validation.

Every message is an envelope ``{"v": 1, "profile", "source", "seq", "ts_ns", "body"}``: the
publishing device's mRID (for a status, also the topic's mRID; for a command the topic names
the target), its per-device sequence number (for loss and duplicate counting),
its publish time in nanoseconds since the epoch, and a profile-specific body. Trace context
does not ride in the payload: it is a W3C ``traceparent`` in the MQTT v5 user properties.

:func:`decode` checks the envelope and the body against the profile's schema and raises
:class:`PayloadError` with the reason, so a device can reject bad input and carry on. Every
payload is untrusted, even from an authenticated identity, so parsing is bounded before and while
``json`` runs: size (the brokers' ``message_size_limit``), UTF-8, nesting depth (counted by a
linear scan before ``json.loads`` recurses), string length, control characters, number size,
non-finite numbers and duplicate keys. :class:`PayloadError` is the only exception it raises,
whatever the bytes (``tests/test_payload_fuzz.py``).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from testbed.core.errors import PayloadError
from testbed.core.topics import PROFILES

__all__ = [
    "BODY_RULES",
    "MAX_DEPTH",
    "MAX_NUMBER_CHARS",
    "MAX_PAYLOAD_BYTES",
    "MAX_STRING_CHARS",
    "PAYLOAD_VERSION",
    "Message",
    "PayloadError",
    "decode",
    "encode",
    "new_traceparent",
    "child_traceparent",
]

PAYLOAD_VERSION = 1
# The bounds of decode(). The size is the brokers' message_size_limit (the topologies' default,
# brokers/topologies/appendix-a.toml): no broker delivers more. An envelope nests 4 deep (the
# tablet's display of its feeders); an alert's evidence a little more. The longest legitimate string is a broker
# log line in an alert's evidence; the longest number a nanosecond timestamp (19 digits).
MAX_PAYLOAD_BYTES = 65536
MAX_DEPTH = 16
MAX_STRING_CHARS = 8192
MAX_NUMBER_CHARS = 32
_INT_RANGE = (-(2**63), 2**63 - 1)  # what a timestamp or a sequence number can be anywhere else
NOMINAL_V = 120.0
MAX_PLAUSIBLE_V = 2 * NOMINAL_V  # beyond this a 120 V service reading is a fault, not data

_VOLTS = ("volts", 0.0, MAX_PLAUSIBLE_V)
_RANGE_A_STATES = ("low", "normal", "high", "unknown")

# Field -> (kind, *constraint); kinds: volts (number in range), enum, int, str, dict
BODY_RULES: dict[str, dict[str, tuple[Any, ...]]] = {
    "SupplyControlProfile": {"setpoint_v": _VOLTS},
    "SupplyStatusProfile": {"setpoint_v": _VOLTS, "output_v": _VOLTS},
    "MeterReadingProfile": {"voltage_v": _VOLTS, "reason": ("enum", "exception", "periodic")},
    "CapBankControlProfile": {"action": ("enum", "open", "close")},
    "CapBankStatusProfile": {"state": ("enum", "open", "closed")},
    # One feeder's diagram: what the DMS knows of it, its meters summarised (devices/dms.py).
    "SingleLineDiagramProfile": {"feeder": ("str",), "version": ("int",), "range_a": ("enum", *_RANGE_A_STATES),
                                 "meters": ("dict",)},
    "DisplayStatusProfile": {"diagram_seq": ("int",), "dms": ("str",), "displayed_ns": ("int",),
                             "feeders": ("dict",)},
    "AlertProfile": {"kind": ("str",), "evidence": ("dict",), "time_ns": ("int",)},
}


@dataclass(frozen=True)
class Message:
    """A decoded, validated message."""

    profile: str
    source: str
    seq: int
    ts_ns: int
    body: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"v": PAYLOAD_VERSION, "profile": self.profile, "source": self.source,
                "seq": self.seq, "ts_ns": self.ts_ns, "body": self.body}


def encode(profile: str, source: str, seq: int, body: dict[str, Any], ts_ns: int | None = None) -> bytes:
    """The JSON payload of one message (validated, so a device cannot send what it would reject)."""
    msg = Message(profile, source, seq, time.time_ns() if ts_ns is None else ts_ns, body)
    _check_body(profile, body)
    return json.dumps(msg.as_dict(), separators=(",", ":")).encode()


def decode(payload: bytes | bytearray, profile: str | None = None, source: str | None = None,
           about: str | None = None) -> Message:
    """Parse and validate a payload; ``profile``/``source`` are what the topic says they must be;
    ``about``, for a diagram, the feeder its topic names (a DMS publishes it, so the topic's mRID is
    not the source: who may publish it is the ACL's business, and the reader's)."""
    data = _parse(payload)
    if not isinstance(data, dict):
        raise PayloadError(f"not a JSON object but {type(data).__name__}")
    if data.get("v") != PAYLOAD_VERSION:
        raise PayloadError(f"payload version {_show(data.get('v'))}, expected {PAYLOAD_VERSION}")
    for key, kind in (("profile", str), ("source", str), ("seq", int), ("ts_ns", int), ("body", dict)):
        if key not in data:
            raise PayloadError(f"missing field {key!r}")
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise PayloadError(f"field {key!r} is {type(data[key]).__name__}, expected {kind.__name__}")
    if profile is not None and data["profile"] != profile:
        raise PayloadError(f"profile {_show(data['profile'])} on a {profile} topic")
    if source is not None and data["source"] != source:
        raise PayloadError(f"source {_show(data['source'])} on the topic of {source!r}")
    if data["profile"] not in PROFILES:
        raise PayloadError(f"unknown profile {_show(data['profile'])}")
    _check_body(data["profile"], data["body"])
    if about is not None and data["body"].get("feeder") != about:
        raise PayloadError(f"diagram of feeder {_show(data['body'].get('feeder'))} on the topic of {about!r}")
    return Message(data["profile"], data["source"], data["seq"], data["ts_ns"], data["body"])


# A JSON string (complete, escapes included), a bracket, or a quote that opens no complete string.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}"]', re.DOTALL)
# C0 and C1 controls and DEL (log and display injection), lone surrogates (not encodable: any later
# .encode() of the string would raise).
_FORBIDDEN_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _parse(payload: Any) -> Any:
    """The JSON value of ``payload``, within every bound; :class:`PayloadError` otherwise."""
    if not isinstance(payload, bytes | bytearray | memoryview | str):
        raise PayloadError(f"payload is {type(payload).__name__}, not bytes")
    size = len(payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload))
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {size} bytes, over the limit of {MAX_PAYLOAD_BYTES}")
    try:
        text = payload if isinstance(payload, str) else bytes(payload).decode("utf-8")
    except UnicodeDecodeError as e:
        raise PayloadError(f"not JSON (not UTF-8: {e.reason} at byte {e.start})") from None
    _check_depth(text)
    try:
        data = json.loads(text, object_pairs_hook=_object, parse_int=_int, parse_float=_float,
                          parse_constant=_constant)
    except json.JSONDecodeError as e:
        raise PayloadError(f"not JSON ({e})") from None
    _check_strings(data)
    return data


def _check_depth(text: str) -> None:
    # json.loads recurses once per nesting level and lets RecursionError escape: the depth is
    # counted first, in one pass that skips strings (a bracket inside one is not structure).
    if text.count("[") + text.count("{") <= MAX_DEPTH:  # every envelope: no scan needed
        return
    depth = 0
    for m in _TOKENS.finditer(text):
        c = text[m.start()]
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise PayloadError(f"nested deeper than {MAX_DEPTH} levels (at character {m.start()})")
        elif c in "]}":
            depth -= 1
        elif m.end() - m.start() == 1:  # a quote that opens no string: json.loads says where
            return


def _check_strings(data: Any) -> None:
    stack = [data]  # depth is bounded already; a stack anyway, so that no input can make this recurse
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            if len(value) > MAX_STRING_CHARS:
                raise PayloadError(f"a string of {len(value)} characters, over the limit of {MAX_STRING_CHARS}")
            bad = _FORBIDDEN_CHARS.search(value)
            if bad:
                raise PayloadError(f"control character or lone surrogate U+{ord(bad.group()):04X} in the "
                                   f"string {_show(value)}")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise PayloadError(f"duplicate key {_show(key)} (parsers differ on which one counts)")
        obj[key] = value
    return obj


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise PayloadError(f"a number of {len(text)} digits, over the limit of {MAX_NUMBER_CHARS}")
    value = int(text)
    if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        raise PayloadError(f"the integer {text} is outside the 64-bit range")
    return value


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise PayloadError(f"a number of {len(text)} characters, over the limit of {MAX_NUMBER_CHARS}")
    value = float(text)
    if not math.isfinite(value):
        raise PayloadError(f"the number {text} is not finite as a double")
    return value


def _constant(text: str) -> float:
    raise PayloadError(f"{text} is not JSON (non-finite numbers are refused)")


def _show(value: Any, limit: int = 40) -> str:
    """``value`` for an error message: repr'd (so one line), cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_body(profile: str, body: dict[str, Any]) -> None:
    for name, rule in BODY_RULES[profile].items():
        if name not in body:
            raise PayloadError(f"{profile} body misses field {name!r}")
        value, kind = body[name], rule[0]
        if kind == "volts":
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise PayloadError(f"{profile}.{name} is {_show(value)}, not a number of volts")
            if not rule[1] <= value <= rule[2]:
                raise PayloadError(
                    f"{profile}.{name} = {value} V is outside the plausible {rule[1]:g}-{rule[2]:g} V"
                )
        elif kind == "enum":
            if value not in rule[1:]:
                raise PayloadError(f"{profile}.{name} is {_show(value)}, expected one of {list(rule[1:])}")
        elif kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise PayloadError(f"{profile}.{name} is {_show(value)}, not an integer")
        elif kind == "str":
            if not isinstance(value, str):
                raise PayloadError(f"{profile}.{name} is {_show(value)}, not a string")
        elif kind == "dict" and not isinstance(value, dict):
            raise PayloadError(f"{profile}.{name} is {type(value).__name__}, not an object")


def new_traceparent() -> str:
    """A fresh W3C trace context: version 00, random trace and span ids, sampled."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def child_traceparent(parent: str | None) -> str:
    """A new span in the same trace as ``parent`` (a fresh trace if there is none or it is bad)."""
    parts = (parent or "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        return f"00-{parts[1]}-{os.urandom(8).hex()}-01"
    return new_traceparent()
