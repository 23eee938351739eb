"""The types, checked: mypy (strict, ``[tool.mypy]`` in ``pyproject.toml``) passes on our packages, and
the committed result files have the shapes ``testbed/core/results.py`` gives them.

mypy checks that every writer builds its result as its TypedDict says and that every reader uses
only keys it has; it cannot see files written by an older version of the code. The fixtures in
``tests/fixtures/`` are such files (the notebooks and ``fmb report`` tests read them), so each is
checked here against its schema's TypedDict: every key it must have, no key the schema lacks,
every value of its declared type.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from testbed.core import results

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("testbed", "devices", "brokers")
FIXTURES = ROOT / "tests" / "fixtures"


def test_mypy_reports_no_error() -> None:
    # The cache (.mypy_cache, git-ignored) stays in the checkout: a second run takes a second.
    done = subprocess.run([sys.executable, "-m", "mypy", *PACKAGES], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"mypy failed (exit {done.returncode}):\n{done.stdout[-6000:]}{done.stderr[-2000:]}"


# -- the result files against their TypedDicts ----------------------------------------------------

def _schemas() -> dict[object, type]:
    """Every result TypedDict of testbed.core.results, by the value of its ``schema`` key."""
    found: dict[object, type] = {}
    for name in results.__all__:
        td = getattr(results, name)
        if typing.is_typeddict(td) and "schema" in td.__required_keys__:
            (value,) = typing.get_args(typing.get_type_hints(td)["schema"])
            found[value] = td
    return found


def _problems(value: Any, kind: Any, where: str) -> list[str]:
    """Where ``value`` does not have type ``kind`` (the types results.py uses), one line each."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if typing.is_typeddict(kind):
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not an object"]
        hints = typing.get_type_hints(kind)
        out = [f"{where}.{k}: missing" for k in sorted(kind.__required_keys__ - value.keys())]
        out += [f"{where}.{k}: not in {kind.__name__}" for k in sorted(value.keys() - hints.keys())]
        for k in sorted(value.keys() & hints.keys()):
            out += _problems(value[k], hints[k], f"{where}.{k}")
        return out
    if origin in (typing.Union, types.UnionType):
        checked = [_problems(value, arm, where) for arm in args]
        return [] if any(not p for p in checked) else [f"{where}: {value!r} is none of {kind}"]
    if origin is typing.Literal:
        return [] if any(value == a and type(value) is type(a) for a in args) else [f"{where}: {value!r} not {kind}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not a list"]
        return [p for i, item in enumerate(value) for p in _problems(item, args[0], f"{where}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not an object"]
        return [p for k, item in value.items()
                for p in [*_problems(k, args[0], f"{where} key"), *_problems(item, args[1], f"{where}.{k}")]]
    if kind is object:
        return []
    if kind is type(None):
        return [] if value is None else [f"{where}: {value!r} is not null"]
    if kind is float:  # JSON writes 94.0 as 94: an int is a float (as for mypy)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind in (str, bool):
        ok = isinstance(value, kind)
    else:
        raise TypeError(f"{where}: {kind} is not a type this check knows; teach _problems()")
    return [] if ok else [f"{where}: {value!r} is not {kind.__name__}"]


def _fixtures() -> list[Path]:
    return sorted(FIXTURES.rglob("*.json"))


def test_every_fixture_has_a_schema() -> None:
    schemas = _schemas()
    assert len(schemas) >= 6, schemas  # scenario, latency, prioritization, recovery, wan, ui (and respond)
    unknown = {p.name: json.loads(p.read_text()).get("schema") for p in _fixtures()}
    assert {name: s for name, s in unknown.items() if s not in schemas} == {}
    assert len(unknown) >= 6


@pytest.mark.parametrize("path", _fixtures(), ids=lambda p: str(p.relative_to(FIXTURES)))
def test_fixture_has_its_schemas_shape(path: Path) -> None:
    document = json.loads(path.read_text())
    schema = _schemas()[document["schema"]]
    problems = _problems(document, schema, "$")
    assert problems == [], f"{path.relative_to(ROOT)} does not fit {schema.__name__}:\n" + "\n".join(problems[:40])


def test_the_shape_check_finds_what_does_not_fit() -> None:
    document = json.loads((FIXTURES / "scenario" / "result.json").read_text())
    document.pop("lanes")
    document["steps"][0]["t_ms"] = "0.0"
    document["steps"][1]["colour"] = "red"
    document["end"] = None  # allowed: a failed run has no end
    document["environment"]["qos"] = [0, 1]  # allowed: the latency benchmark's list of levels
    document["runs"][0]["passed"] = 1
    assert _problems(document, results.ScenarioResultDoc, "$") == [
        "$.lanes: missing",
        "$.runs[0].passed: 1 is not bool",
        "$.steps[0].t_ms: '0.0' is not float",
        "$.steps[1].colour: not in ScenarioStep",
    ]
