"""paho's MQTT v5 properties, with the same checks and bytes, at a tenth of the cost.

paho 2.2's :class:`~paho.mqtt.properties.Properties` builds its two tables of all 27 property
kinds anew for every instance, and each property set, each name lookup and each pack walks all
27 names (a list comprehension per ``__setattr__``). Every PUBLISH received goes through that in
the network thread, before the handler runs: issue 13 measured 0.5 ms of it per message with five
user properties on this (loaded) machine, and PUBLISH properties built for sending cost as much.
:class:`FastProperties` shares the tables and looks names up in dictionaries; anything but a plain
valid property (an unknown name, a property the packet type does not allow, a value paho checks
for range) goes to paho's own ``__setattr__``, so the errors are paho's. :func:`install` makes
paho's packet decoder (``paho.mqtt._packet``, a private module: ``pyproject.toml`` pins paho and
``tests/test_transport_properties.py`` compares the two classes) build these.
"""

from __future__ import annotations

import re
from typing import Any, Final

import paho.mqtt._packet as paho_packet
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers, readInt16, writeUTF

__all__ = ["FastProperties", "install", "packed_publish_properties"]

_TABLES: Final = Properties(PacketTypes.PUBLISH)  # paho's tables: read, never written
_IDENT: Final = {name.replace(" ", ""): ident for name, ident in _TABLES.names.items()}
_NAME: Final = {ident: name for name, ident in _TABLES.names.items()}
_MULTIPLE: Final = frozenset({11, 38})  # Subscription Identifier and User Property may repeat
_PRIVATE: Final = frozenset({"packetType", "types", "names", "properties"})
_RANGED: Final = frozenset({"ReceiveMaximum", "TopicAlias", "TopicAliasMaximum", "MaximumPacketSize",
                            "SubscriptionIdentifier", "RequestResponseInformation", "RequestProblemInformation",
                            "PayloadFormatIndicator"})  # paho checks their values: left to it
_UTF8: Final = _TABLES.types.index("UTF-8 Encoded String")
_PAIR: Final = _TABLES.types.index("UTF-8 String Pair")
# What MQTT forbids in a string (paho's readUTF checks it a character at a time, in Python).
_FORBIDDEN: Final = re.compile("[\x00\ud800-\udfff\ufeff]")


def _read_utf(buffer: bytes, maxlen: int) -> tuple[str, int]:
    """paho's ``readUTF``, the same checks and errors, the character scan done by ``re``."""
    if maxlen < 2:
        raise MalformedPacket("Not enough data to read string length")
    length = readInt16(buffer)
    if length > maxlen - 2:
        raise MalformedPacket("Length delimited string too long")
    text = buffer[2:2 + length].decode("utf-8")
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        c = ord(bad.group())
        if c == 0:
            raise MalformedPacket("[MQTT-1.5.4-2] Null found in UTF-8 data")
        if c == 0xFEFF:
            raise MalformedPacket("[MQTT-1.5.4-3] U+FEFF in UTF-8 data")
        raise MalformedPacket("[MQTT-1.5.4-1] D800-DFFF found in UTF-8 data")
    return text, length + 2


class FastProperties(Properties):
    """:class:`~paho.mqtt.properties.Properties` with shared tables and dictionary lookups."""

    def __init__(self, packetType: int) -> None:  # noqa: N803 - paho's name
        object.__setattr__(self, "packetType", packetType)
        for attr in ("types", "names", "properties"):
            object.__setattr__(self, attr, getattr(_TABLES, attr))

    def __setattr__(self, name: str, value: Any) -> None:
        name = name.replace(" ", "")
        ident = _IDENT.get(name)
        if (name in _PRIVATE or ident is None or self.packetType not in self.properties[ident][1]
                or (name in _RANGED and not isinstance(value, list))):
            Properties.__setattr__(self, name, value)  # paho's checks, errors and messages
            return
        if ident in _MULTIPLE:
            if not isinstance(value, list):
                value = [value]
            if hasattr(self, name):
                value = object.__getattribute__(self, name) + value
        object.__setattr__(self, name, value)

    def getIdentFromName(self, compressedName: str) -> int:  # noqa: N802, N803 - paho's names
        return _IDENT.get(compressedName, -1)

    def getNameFromIdent(self, identifier: int) -> str | None:  # noqa: N802 - paho's name
        return _NAME.get(identifier)

    def allowsMultiple(self, compressedName: str) -> bool:  # noqa: N802, N803 - paho's names
        return _IDENT.get(compressedName) in _MULTIPLE

    def readProperty(self, buffer: bytes, type: int, propslen: int) -> tuple[Any, int]:  # noqa: A002, N802
        if type == _UTF8:
            return _read_utf(buffer, propslen)
        if type == _PAIR:
            key, used = _read_utf(buffer, propslen)
            value, more = _read_utf(buffer[used:], propslen - used)
            return (key, value), used + more
        return Properties.readProperty(self, buffer, type, propslen)  # type: ignore[no-any-return]

    def clear(self) -> None:
        for name in [n for n in vars(self) if n in _IDENT]:
            delattr(self, name)


def packed_publish_properties(content_type: str, pairs: list[tuple[str, str]]) -> FastProperties:
    """PUBLISH properties of a content type and user properties, packed once (paho packs on every
    send and resend, walking every name): what every device and harness client publishes with."""
    for key, value in pairs:
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"a user property is a pair of strings, not {key!r}: {value!r}")
    props = FastProperties(PacketTypes.PUBLISH)
    props.ContentType = content_type
    if pairs:
        props.UserProperty = list(pairs)
    buffer = b"\x03" + writeUTF(content_type)  # Content Type (3), then a User Property (38) per pair
    for key, value in pairs:
        buffer += b"\x26" + writeUTF(key) + writeUTF(value)
    packed = VariableByteIntegers.encode(len(buffer)) + buffer
    object.__setattr__(props, "pack", lambda: packed)
    return props


def install() -> None:
    """Have paho's packet decoder build :class:`FastProperties` (idempotent)."""
    paho_packet.Properties = FastProperties  # type: ignore[attr-defined]
