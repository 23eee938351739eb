"""A small, deterministic YAML writer for the Compose file: block mappings, flow lists and maps,
anchors, aliases, merge keys and comments.

Why not PyYAML: it is no dependency of the project, and it writes neither comments nor anchors of
our choosing; a reader of the generated file needs both. The subset here is what Compose reads:
keys are plain, a string is plain only when YAML cannot read it as anything else (a number, a
boolean, ``0:0`` as a base-60 integer in YAML 1.1), else double-quoted as JSON (valid YAML).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Alias", "Anchor", "Comment", "Flow", "Note", "dump"]

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_/.:=@-]*")
_KEY = re.compile(r"[A-Za-z0-9_<][A-Za-z0-9_.<-]*")
_UNIT = re.compile(r"[0-9]+[a-z]+")  # 2s, 10m: strings, not numbers, in YAML 1.1 and 1.2
_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}
_FLOW_WIDTH = 100  # a list or map longer than this on one line is written as a block


@dataclass(frozen=True)
class Alias:
    """``*name``: the value anchored as ``name``."""

    name: str


@dataclass(frozen=True)
class Anchor:
    """``&name value``: a value other entries refer to with :class:`Alias`."""

    name: str
    value: Any


@dataclass(frozen=True, eq=False)  # by identity: a mapping may hold several equal comments
class Comment:
    """A mapping key that is written as ``# text`` lines before the entries that follow it ("" a blank line)."""

    text: str


@dataclass(frozen=True)
class Note:
    """A value with a comment at the end of its line (or of its key's line, for a block)."""

    value: Any
    comment: str


@dataclass(frozen=True)
class Flow:
    """A mapping or list written on one line (``{a: 1}``, ``[a, b]``) whatever its length."""

    value: Any


def dump(document: Mapping[Any, Any]) -> str:
    """The YAML text of ``document`` (a mapping), the same for the same input."""
    return "\n".join(_mapping(document, 0)) + "\n"


def scalar(value: Any, in_flow: bool = False) -> str:
    """One scalar: plain when unambiguous, else a JSON (double-quoted YAML) string. Inside ``[...]``
    or ``{...}`` a ``:`` is quoted too (PyYAML, which docker-compose v1 uses, stumbles on it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if not isinstance(value, str):
        raise TypeError(f"not a YAML scalar: {value!r}")
    plain = (_PLAIN.fullmatch(value) and value.lower() not in _WORDS) or _UNIT.fullmatch(value)
    if plain and not value.endswith(":") and not (in_flow and ":" in value):
        return value
    return json.dumps(value)


def _flow(value: Any, in_flow: bool = False) -> str | None:
    """``value`` on one line, or None when it holds something that needs a block."""
    if isinstance(value, Flow):
        value = value.value
    if isinstance(value, Alias):
        return f"*{value.name}"
    if isinstance(value, Mapping):
        parts = []
        for k, v in value.items():
            inner = None if isinstance(k, Comment) else _flow(v, True)
            if inner is None:
                return None
            parts.append(f"{_key(k)}: {inner}")
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = [_flow(v, True) for v in value]
        if any(i is None for i in items):
            return None
        return "[" + ", ".join(str(i) for i in items) + "]"
    if isinstance(value, Anchor | Note):
        return None
    return scalar(value, in_flow)


def _key(key: Any) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"not a plain YAML key: {key!r}")
    return key


def _mapping(mapping: Mapping[Any, Any], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for key, value in mapping.items():
        if isinstance(key, Comment):
            lines += [(pad + "# " + ln).rstrip() if ln else "" for ln in key.text.split("\n")]
            continue
        comment = ""
        if isinstance(value, Note):
            value, comment = value.value, f"  # {value.comment}"
        anchor = ""
        if isinstance(value, Anchor):
            value, anchor = value.value, f" &{value.name}"
        head = f"{pad}{_key(key)}:{anchor}"
        inline = _flow(value)
        forced = isinstance(value, Flow | Alias)
        is_list = isinstance(value, Sequence) and not isinstance(value, str)
        is_scalar = not is_list and not isinstance(value, Mapping)
        short_list = is_list and len(head) + len(inline or "") < _FLOW_WIDTH
        if inline is not None and (forced or is_scalar or not value or short_list):
            lines.append(f"{head} {inline}{comment}")
        elif isinstance(value, Mapping):
            lines.append(head + comment)
            lines += _mapping(value, indent + 2)
        else:
            lines.append(head + comment)
            for item in value:
                item_text = _flow(item)
                if item_text is None:
                    raise ValueError(f"{key}: a list item must fit on one line: {item!r}")
                lines.append(f"{pad}  - {item_text}")
    return lines
