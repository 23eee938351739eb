"""Versioned JSON payloads of the bus, and their validation.

Every message is an envelope ``{"v": 1, "profile", "source", "seq", "ts_ns", "body"}``: the
publishing device's mRID (for a status, also the topic's mRID; for a command the topic names
the target), its per-device sequence number (for loss and duplicate counting),
its publish time in nanoseconds since the epoch, and a profile-specific body. Trace context
does not ride in the payload: it is a W3C ``traceparent`` in the MQTT v5 user properties.

:func:`decode` checks the envelope and the body against the profile's schema and raises
:class:`PayloadError` with the reason, so a device can reject bad input and carry on.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from testbed.core.errors import PayloadError
from testbed.core.topics import PROFILES

__all__ = [
    "BODY_RULES",
    "PAYLOAD_VERSION",
    "Message",
    "PayloadError",
    "decode",
    "encode",
    "new_traceparent",
    "child_traceparent",
]

PAYLOAD_VERSION = 1
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
    "SingleLineDiagramProfile": {"feeders": ("dict",), "version": ("int",)},
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


def decode(payload: bytes | bytearray, profile: str | None = None, source: str | None = None) -> Message:
    """Parse and validate a payload; ``profile``/``source`` are what the topic says they must be."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PayloadError(f"not JSON ({e})") from None
    if not isinstance(data, dict):
        raise PayloadError(f"not a JSON object but {type(data).__name__}")
    if data.get("v") != PAYLOAD_VERSION:
        raise PayloadError(f"payload version {data.get('v')!r}, expected {PAYLOAD_VERSION}")
    for key, kind in (("profile", str), ("source", str), ("seq", int), ("ts_ns", int), ("body", dict)):
        if key not in data:
            raise PayloadError(f"missing field {key!r}")
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise PayloadError(f"field {key!r} is {type(data[key]).__name__}, expected {kind.__name__}")
    if profile is not None and data["profile"] != profile:
        raise PayloadError(f"profile {data['profile']!r} on a {profile} topic")
    if source is not None and data["source"] != source:
        raise PayloadError(f"source {data['source']!r} on the topic of {source!r}")
    if data["profile"] not in PROFILES:
        raise PayloadError(f"unknown profile {data['profile']!r}")
    _check_body(data["profile"], data["body"])
    return Message(data["profile"], data["source"], data["seq"], data["ts_ns"], data["body"])


def _check_body(profile: str, body: dict[str, Any]) -> None:
    for name, rule in BODY_RULES[profile].items():
        if name not in body:
            raise PayloadError(f"{profile} body misses field {name!r}")
        value, kind = body[name], rule[0]
        if kind == "volts":
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise PayloadError(f"{profile}.{name} is {value!r}, not a number of volts")
            if not rule[1] <= value <= rule[2]:
                raise PayloadError(
                    f"{profile}.{name} = {value} V is outside the plausible {rule[1]:g}-{rule[2]:g} V"
                )
        elif kind == "enum":
            if value not in rule[1:]:
                raise PayloadError(f"{profile}.{name} is {value!r}, expected one of {list(rule[1:])}")
        elif kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise PayloadError(f"{profile}.{name} is {value!r}, not an integer")
        elif kind == "str":
            if not isinstance(value, str):
                raise PayloadError(f"{profile}.{name} is {value!r}, not a string")
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
