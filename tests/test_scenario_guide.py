"""The scenario author's guide (scenarios/README.md) is executed, so it cannot drift from the code.

Every ```toml block of the guide is preceded by a marker saying what it is:

    <!-- example: run -->       a complete scenario: it loads and passes on the real bus
    <!-- example: full -->      a complete scenario: it loads
    <!-- example: fragment -->  part of a scenario: spliced into the first ``run`` example, it loads
    <!-- example: error -->     part of a scenario with a mistake: spliced the same way, it raises the
                                ConfigError printed in the ```text block that follows it

Splicing replaces the top-level keys and tables the snippet defines (all of ``steps`` if it has
any ``[[steps]]``). A snippet that is not valid TOML is loaded alone: a syntax error is reported
before anything else is checked, and its line numbers then are the snippet's own.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from testbed.core.errors import ConfigError
from testbed.core.scenario import load_scenario
from testbed.core.topology import load_topology
from testbed.harness.runner import RESULT_SCHEMA, ScenarioRunner
from testbed.reporting.text import summary_table

GUIDE = Path(__file__).resolve().parent.parent / "scenarios" / "README.md"
KINDS = ("run", "full", "fragment", "error")
_BLOCK = re.compile(r"(?:<!-- example: (?P<kind>\w+) -->\n)?```toml\n(?P<toml>.*?)```\n"
                    r"(?:\n*```text\n(?P<text>.*?)```)?", re.S)
# The file name the guide's error messages show; the test's files live in a tmp directory.
FILE_NAME = "my-scenario.toml"


def _examples() -> list[dict[str, Any]]:
    text = GUIDE.read_text()
    return [{"kind": m["kind"], "toml": m["toml"], "expected": m["text"],
             "line": text.count("\n", 0, m.start("toml")) + 1} for m in _BLOCK.finditer(text)]


EXAMPLES = _examples()
DEVICES = {d.id: d.role for d in load_topology().devices}


def _of(kind: str) -> list[Any]:
    return [pytest.param(e, id=f"README.md:{e['line']}") for e in EXAMPLES if e["kind"] == kind]


def _toml(value: Any) -> str:
    """One value as inline TOML (enough for what a scenario holds)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)


def _write(tmp_path: Path, snippet: str, splice: bool) -> Path:
    path = tmp_path / FILE_NAME
    try:
        data = tomllib.loads(snippet)
    except tomllib.TOMLDecodeError:
        path.write_text(snippet)
        return path
    if splice:
        base = next(e["toml"] for e in EXAMPLES if e["kind"] == "run")
        data = {**tomllib.loads(base), **data}
        path.write_text("".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in data.items()))
    else:
        path.write_text(snippet)
    return path


def test_the_guide_has_examples_and_every_toml_block_is_one() -> None:
    kinds = [e["kind"] for e in EXAMPLES]
    unmarked = [e["line"] for e in EXAMPLES if e["kind"] not in KINDS]
    assert not unmarked, f"```toml blocks at README.md lines {unmarked} need <!-- example: {'|'.join(KINDS)} -->"
    # At least one of each, so that this file cannot pass on a guide that lost its examples.
    assert {"run", "fragment", "error"} <= set(kinds), kinds
    assert all(e["expected"] for e in EXAMPLES if e["kind"] == "error"), "an error example needs a ```text block"


@pytest.mark.parametrize("example", _of("full") + _of("run"))
def test_complete_example_loads(example: dict[str, Any], tmp_path: Path) -> None:
    load_scenario(_write(tmp_path, example["toml"], splice=False), DEVICES)


@pytest.mark.parametrize("example", _of("fragment"))
def test_fragment_loads_in_the_example_scenario(example: dict[str, Any], tmp_path: Path) -> None:
    load_scenario(_write(tmp_path, example["toml"], splice=True), DEVICES)


@pytest.mark.parametrize("example", _of("error"))
def test_mistake_gives_the_error_shown(example: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_scenario(_write(tmp_path, example["toml"], splice=True), DEVICES)
    assert str(info.value).replace(f"{tmp_path}/", "") == example["expected"].strip()


@pytest.mark.parametrize("example", _of("run"))
def test_runnable_example_passes_on_the_bus(example: dict[str, Any], bus, topology, tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, example["toml"], splice=False), {d.id: d.role for d in topology.devices})
    with ScenarioRunner(bus, scenario) as runner:
        result = runner.run(1, tmp_path / "out")
    assert result["passed"], summary_table(result)
    # The result files the guide describes.
    assert json.loads((tmp_path / "out" / "result.json").read_text())["schema"] == RESULT_SCHEMA
    for name in ("messages.jsonl", "timeline.png", "summary.txt"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
