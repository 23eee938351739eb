"""testbed.transport.properties against paho's own Properties: the same values, bytes and errors.

paho's class is the oracle: every case is decoded (and, where it makes sense, built and packed) by
both, and the results compared. No broker: the bus tests (test_signed_commands, test_scenario)
carry these properties over real brokers.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt._packet as paho_packet
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers, writeUTF

from testbed.transport.mqtt import publish_properties
from testbed.transport.properties import FastProperties, packed_publish_properties


def _both(packet_type: int, raw: bytes) -> tuple[Any, Any]:
    """Decode ``raw`` with each class: (json, length) or the exception's type and text."""
    out = []
    for cls in (Properties, FastProperties):
        try:
            props, length = cls(packet_type).unpack(raw)
            out.append((props.json(), str(props), length))
        except Exception as e:  # noqa: BLE001 - the comparison is the point
            out.append((type(e).__name__, str(e)))
    return out[0], out[1]


def _wrap(body: bytes) -> bytes:
    return VariableByteIntegers.encode(len(body)) + body


CASES = {
    "empty": b"",
    "content type and user properties": b"\x03" + writeUTF("application/json") + b"\x26" + writeUTF("signer")
    + writeUTF("dms-1") + b"\x26" + writeUTF("sig") + writeUTF("x" * 88),
    "numbers and binary": b"\x01\x01" + b"\x02\x00\x00\x00\x1e" + b"\x09\x00\x03abc" + b"\x0b\x05"
    + b"\x08" + writeUTF("reply/to"),
    "a null in a string": b"\x03\x00\x03a\x00b",
    "a BOM in a user property": b"\x26" + writeUTF("k") + b"\x00\x03\xef\xbb\xbf",
    "a string longer than its packet": b"\x03\x00\x40abc",
    "a length cut short": b"\x03\x00",
    "content type twice": b"\x03" + writeUTF("a") + b"\x03" + writeUTF("b"),
    "a property PUBLISH may not carry": b"\x11\x00\x00\x00\x10",
    "a payload format indicator out of range": b"\x01\x07",
    "not UTF-8": b"\x03\x00\x02\xc3\x28",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_decoding_matches_paho(name: str) -> None:
    paho_result, ours = _both(PacketTypes.PUBLISH, _wrap(CASES[name]))
    assert ours == paho_result


def test_packed_publish_properties_are_pahos_bytes() -> None:
    pairs = [("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"), ("signer", "dms-1"), ("sent_ns", "17")]
    ours = packed_publish_properties("application/json", pairs)
    theirs = Properties(PacketTypes.PUBLISH)
    theirs.ContentType = "application/json"
    theirs.UserProperty = pairs
    assert ours.pack() == theirs.pack() and ours.json() == theirs.json()
    assert publish_properties(None).pack() == b"\x13\x03\x00\x10application/json"  # 19 bytes: id, length, text
    with pytest.raises(TypeError, match="pair of strings"):
        packed_publish_properties("application/json", [("sent_ns", 17)])  # type: ignore[list-item]


def test_setting_what_paho_refuses_raises_pahos_error() -> None:
    for name, value in (("NoSuchProperty", 1), ("SessionExpiryInterval", 10), ("ReceiveMaximum", 0)):
        errors = []
        for cls in (Properties, FastProperties):
            props = cls(PacketTypes.PUBLISH if name != "ReceiveMaximum" else PacketTypes.CONNECT)
            with pytest.raises(Exception) as caught:  # noqa: PT011 - compared with paho's below
                setattr(props, name, value)
            errors.append((type(caught.value), str(caught.value)))
        assert errors[0] == errors[1], name


def test_the_testbed_has_paho_decode_with_it() -> None:
    import testbed.transport.mqtt  # noqa: F401, PLC0415 - importing it installs the class

    assert paho_packet.Properties is FastProperties  # type: ignore[attr-defined]
