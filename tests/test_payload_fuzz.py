"""The payload decoder against generated input: whatever the bytes, a Message or a PayloadError.

Every message a device, the monitor, the recorder or the tablet receives is untrusted, even from an
authenticated identity (issue 11: one deeply nested array raised RecursionError out of ``decode``
and killed five network threads). Hypothesis generates what a compromised publisher could send:
random bytes, mutations of valid payloads of every profile, deep nesting, huge and non-finite
numbers, wrong types, duplicate keys, control characters and sizes up to the brokers' limit;
:func:`testbed.core.payloads.decode` must return a valid :class:`Message` or raise a one-line
:class:`PayloadError`, and nothing else, in a bounded time. The strategies are shared with
``tests/test_bus_fuzz.py``, which publishes them on a real bus.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.core.payloads import (
    BODY_RULES,
    MAX_DEPTH,
    MAX_NUMBER_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_STRING_CHARS,
    Message,
    PayloadError,
    decode,
    encode,
)
from testbed.core.topology import load_topology

# Deterministic (CI sees the same cases every run) and quick: thousands of cases in seconds.
FUZZ = settings(max_examples=1000, deadline=500, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE_NAMES = sorted(BODY_RULES)

# -- what a legitimate publisher sends --------------------------------------------------------

_safe_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=40)
_leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False,
                                                                                 allow_infinity=False) | _safe_text
_json_value = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(_safe_text, inner, max_size=4), max_leaves=12)


def _field(rule: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    kind = rule[0]
    if kind == "volts":
        return st.floats(rule[1], rule[2])
    if kind == "enum":
        return st.sampled_from(rule[1:])
    if kind == "int":
        return st.integers(-(2**63), 2**63 - 1)
    if kind == "str":
        return _safe_text
    return st.dictionaries(_safe_text, _json_value, max_size=3)  # "dict"


def valid_bodies(profile: str) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies of ``profile`` that its rules accept."""
    return st.fixed_dictionaries({name: _field(rule) for name, rule in BODY_RULES[profile].items()})


@st.composite
def valid_payloads(draw: st.DrawFn, profile: str | None = None, source: str | None = None) -> tuple[str, bytes]:
    """``(profile, payload)``: a payload as ``encode`` makes it, from ``source`` (else a drawn name)."""
    profile = profile or draw(st.sampled_from(PROFILE_NAMES))
    source = source or draw(st.sampled_from(["meter-1", "dms-1", "tablet-1", "monitor"]) | _safe_text)
    seq = draw(st.integers(0, 2**63 - 1))
    return profile, encode(profile, source, seq, draw(valid_bodies(profile)), ts_ns=draw(st.integers(0, 2**63 - 1)))


# -- what a compromised publisher sends ------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, payload: bytes) -> bytes:
    """``payload`` with a few byte-level edits: flips, insertions, deletions, truncation, splices."""
    data = bytearray(payload)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(max_size=8) | st.sampled_from([b"[", b"{", b'"', b"\\", b",", b":", b"\x00"]))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
        elif op == "splice":
            end = draw(st.integers(at, len(data)))
            data[at:at] = data[at:end] * draw(st.integers(1, 3))
    return bytes(data)


def _replace(payload: bytes, path: tuple[str, ...], literal: str) -> bytes:
    """``payload`` with the JSON value at ``path`` replaced by the raw JSON text ``literal``."""
    marker = "\x01MARK\x01"
    doc = json.loads(payload)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = marker
    return json.dumps(doc).replace(json.dumps(marker), literal).encode("utf-8", "surrogatepass")


def _paths(profile: str) -> list[tuple[str, ...]]:
    return [("v",), ("profile",), ("source",), ("seq",), ("ts_ns",), ("body",),
            *(("body", name) for name in BODY_RULES[profile])]


HUGE_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "1.7976931348623157e308",
                "9223372036854775807", "9223372036854775808", "-9223372036854775809", "0" * 33, "9" * 4301,
                "1" * 60000, "0." + "1" * 40000, "1E400", "-0", "1e308"]


# -?digits[.digits][e[+-]digits], up to 80 digits each way (a regex strategy would cost 5x more per case)
_number_literals = st.builds(
    lambda sign, whole, frac, exp: sign + str(whole) + ("" if frac is None else f".{frac}")
    + ("" if exp is None else f"e{exp}"),
    st.sampled_from(["", "-"]), st.integers(0, 10**80), st.none() | st.integers(0, 10**80),
    st.none() | st.integers(-99999, 99999))


@st.composite
def bad_numbers(draw: st.DrawFn) -> bytes:
    profile, payload = draw(valid_payloads())
    literal = draw(st.sampled_from(HUGE_NUMBERS) | _number_literals)
    return _replace(payload, draw(st.sampled_from(_paths(profile))), literal)


@st.composite
def wrong_types(draw: st.DrawFn) -> bytes:
    profile, payload = draw(valid_payloads())
    return _replace(payload, draw(st.sampled_from(_paths(profile))), json.dumps(draw(_json_value)))


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    """Arrays or objects nested up to ~30000 deep (the issue's ~60 KB array), closed or not, alone or as a body."""
    depth = draw(st.integers(MAX_DEPTH - 2, 30000) | st.sampled_from([MAX_DEPTH, MAX_DEPTH + 1, 30000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"a":', "}]")]))
    closed = draw(st.booleans())
    inner = opener * depth + draw(st.sampled_from(["", "1", '"x"', "[]"])) + (closer * depth if closed else "")
    if draw(st.booleans()):
        return inner.encode()
    profile, payload = draw(valid_payloads())
    return _replace(payload, draw(st.sampled_from(_paths(profile))), inner)


@st.composite
def duplicate_keys(draw: st.DrawFn) -> bytes:
    profile, payload = draw(valid_payloads())
    text = payload.decode()
    key = draw(st.sampled_from(["v", "profile", "source", "seq", "ts_ns", "body", *BODY_RULES[profile]]))
    at = text.find(f'"{key}":')
    value = draw(st.sampled_from(["1", '"x"', "null", "{}", "119.5", '"meter-1"']))
    return (text[:at] + f'"{key}":{value},' + text[at:]).encode()


@st.composite
def control_characters(draw: st.DrawFn) -> bytes:
    profile, payload = draw(valid_payloads())
    bad = draw(st.text(st.characters(categories=["Cc", "Cs", "Cf", "Zl", "Zp"]), min_size=1, max_size=5))
    literal = json.dumps(bad) if draw(st.booleans()) else '"' + bad + '"'  # escaped, or raw in the JSON text
    return _replace(payload, draw(st.sampled_from(_paths(profile))), literal)  # raw surrogates: not UTF-8


@st.composite
def near_the_limit(draw: st.DrawFn) -> bytes:
    """A valid payload grown, by a long list in the body or by whitespace, to about the size limit."""
    profile, payload = draw(valid_payloads())
    target = draw(st.sampled_from([MAX_PAYLOAD_BYTES - 1, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES + 1])
                  | st.integers(MAX_PAYLOAD_BYTES - 2000, MAX_PAYLOAD_BYTES + 2000))
    if draw(st.booleans()):
        return payload[:-1] + b" " * max(0, target - len(payload)) + payload[-1:]
    doc = json.loads(payload)
    filler = ["x" * 50] * max(0, (target - len(payload)) // 55)
    doc["body"]["extra"] = filler
    return json.dumps(doc, separators=(",", ":")).encode()


@st.composite
def huge_strings(draw: st.DrawFn) -> bytes:
    profile, payload = draw(valid_payloads())
    n = draw(st.sampled_from([MAX_STRING_CHARS, MAX_STRING_CHARS + 1, 60000]) | st.integers(0, 60000))
    return _replace(payload, draw(st.sampled_from(_paths(profile))), json.dumps("y" * n))


def hostile_payloads() -> st.SearchStrategy[bytes]:
    """Everything above, mixed: what the bus fuzz test publishes."""
    return st.one_of(
        st.binary(max_size=512),
        valid_payloads().flatmap(lambda pp: mutated(pp[1])),
        bad_numbers(), wrong_types(), deep_nesting(), duplicate_keys(), control_characters(),
        near_the_limit(), huge_strings(),
    )


# -- the property -----------------------------------------------------------------------------


def decodes_or_refuses(payload: bytes, profile: str | None = None, source: str | None = None) -> Message | None:
    """``decode`` must return a valid message or raise a one-line PayloadError, quickly; any other
    exception fails the test (with Hypothesis's smallest example)."""
    start = time.perf_counter()
    try:
        message = decode(payload, profile, source)
    except PayloadError as e:
        text = str(e)
        assert text and "\n" not in text and len(text) < 300, text
        message = None
    else:
        assert isinstance(message, Message) and message.profile in BODY_RULES
        assert profile is None or message.profile == profile
        assert source is None or message.source == source
        assert len(payload) <= MAX_PAYLOAD_BYTES
        # What was accepted is what encode would send: a device accepts nothing it could not have sent.
        assert decode(encode(message.profile, message.source, message.seq, message.body, message.ts_ns),
                      message.profile) == message
    # Linear in the size (~10 ms at the limit, alone); a second means a quadratic path, even on a busy machine.
    assert time.perf_counter() - start < 1.0, f"decode took {time.perf_counter() - start:.3f} s"
    return message


@settings(FUZZ, max_examples=3000)
@given(st.binary(max_size=2048))
def test_random_bytes(payload: bytes) -> None:
    decodes_or_refuses(payload)


@FUZZ
@given(st.sampled_from(PROFILE_NAMES).flatmap(lambda p: st.tuples(st.just(p), valid_payloads(p, "meter-1"))))
def test_valid_payloads_of_every_profile_are_accepted(case: tuple[str, tuple[str, bytes]]) -> None:
    profile, (_, payload) = case
    message = decodes_or_refuses(payload, profile, "meter-1")
    assert message is not None and message.profile == profile


@FUZZ
@given(valid_payloads().flatmap(lambda pp: st.tuples(st.just(pp[0]), mutated(pp[1]))))
def test_mutations_of_valid_payloads(case: tuple[str, bytes]) -> None:
    profile, payload = case
    decodes_or_refuses(payload)
    decodes_or_refuses(payload, profile)


@FUZZ
@given(st.one_of(bad_numbers(), wrong_types(), duplicate_keys(), control_characters()))
def test_bad_numbers_types_keys_and_characters(payload: bytes) -> None:
    decodes_or_refuses(payload)


@settings(FUZZ, max_examples=300)
@given(st.one_of(deep_nesting(), near_the_limit(), huge_strings()))
def test_deep_nesting_and_sizes_up_to_the_limit(payload: bytes) -> None:
    decodes_or_refuses(payload)


# -- the reported case and each bound, explicitly ----------------------------------------------


def test_the_reported_poison_message_is_a_payload_error() -> None:
    """Issue 11: a ~60 KB deeply nested array raised RecursionError out of json.loads."""
    payload = b"[" * 30000 + b"]" * 30000
    assert 55000 < len(payload) < MAX_PAYLOAD_BYTES
    with pytest.raises(PayloadError, match=f"nested deeper than {MAX_DEPTH} levels"):
        decode(payload, "MeterReadingProfile", "meter-1")


def _envelope(body: str = '{"voltage_v":119.5,"reason":"periodic"}', seq: str = "1") -> bytes:
    return ('{"v":1,"profile":"MeterReadingProfile","source":"meter-1","seq":' + seq
            + ',"ts_ns":1700000000000000000,"body":' + body + "}").encode()


@pytest.mark.parametrize(("payload", "reason"), [
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper than"),
    (_envelope('{"voltage_v":119.5,"reason":"periodic","x":' + "[" * 20 + "]" * 20 + "}"), "nested deeper than"),
    (_envelope(seq="1" * (MAX_NUMBER_CHARS + 1)), "over the limit of"),
    (_envelope(seq="9" * 5000), "over the limit of"),  # Python's int-digits limit: a ValueError before
    (_envelope(seq="9223372036854775808"), "outside the 64-bit range"),
    (_envelope('{"voltage_v":NaN,"reason":"periodic"}'), "NaN is not JSON"),
    (_envelope('{"voltage_v":-Infinity,"reason":"periodic"}'), "-Infinity is not JSON"),
    (_envelope('{"voltage_v":1e999,"reason":"periodic"}'), "not finite"),
    (_envelope('{"voltage_v":119.5,"voltage_v":90,"reason":"periodic"}'), "duplicate key 'voltage_v'"),
    (_envelope('{"voltage_v":119.5,"reason":"periodic","note":"' + "z" * (MAX_STRING_CHARS + 1) + '"}'),
     f"over the limit of {MAX_STRING_CHARS}"),
    (_envelope('{"voltage_v":119.5,"reason":"periodic\\u0000"}'), "control character"),
    (_envelope('{"voltage_v":119.5,"reason":"periodic\\n[fake log line]"}'), "control character"),
    (_envelope('{"voltage_v":119.5,"reason":"\\ud800"}'), "lone surrogate"),
    (b'{"v":1}' + b" " * MAX_PAYLOAD_BYTES, f"over the limit of {MAX_PAYLOAD_BYTES}"),
    ("\ufeff".encode() + _envelope(), "not JSON"),
    (_envelope().decode().encode("utf-16"), "not UTF-8"),
    (b'["\\"]' + b"[" * 100, "not JSON"),  # brackets after a string that never ends are not counted as depth
])
def test_each_bound_is_a_one_line_payload_error(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason.replace("[", r"\[")) as e:
        decode(payload)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_within_the_bounds_is_accepted() -> None:
    at_limit = _envelope().replace(b"}}", b"}" + b" " * (MAX_PAYLOAD_BYTES - len(_envelope())) + b"}")
    assert len(at_limit) == MAX_PAYLOAD_BYTES
    assert decode(at_limit).body["voltage_v"] == 119.5
    nested = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)  # envelope and body are two levels
    assert decode(_envelope('{"voltage_v":119.5,"reason":"periodic","x":' + nested + "}")).body["x"]
    brackets_in_strings = '{"voltage_v":119.5,"reason":"periodic","a":"p[{\\"]}","b":"' + "[" * 100 + '"}'
    assert decode(_envelope(brackets_in_strings)).body["b"] == "[" * 100
    assert decode(_envelope(seq="9223372036854775807")).seq == 2**63 - 1
    assert decode(_envelope('{"voltage_v":119.5,"reason":"periodic","n":"é ünïcode ✓"}')).body["n"]


def test_the_size_bound_is_the_brokers_message_size_limit() -> None:
    assert load_topology().message_size_limit == MAX_PAYLOAD_BYTES
