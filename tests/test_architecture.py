"""The layout's rules, checked: imports go one way, no cycles, no private names across modules.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``); the README's code map says
what each package is for and what it may import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("testbed", "devices", "brokers")


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _library_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_no_private_name_is_imported_from_another_module() -> None:
    offences = []
    for path in _library_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                offences += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{a.name}"
                             for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offences, "private names imported across modules (make them public or move them):\n" + "\n".join(
        offences)


def test_every_package_is_in_the_layers_contract() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["id"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in layer.split("|")}
    packages = {f"testbed.{p.name}" for p in (ROOT / "testbed").iterdir() if (p / "__init__.py").exists()}
    packages |= {f"testbed.{p.stem}" for p in (ROOT / "testbed").glob("*.py") if not p.stem.startswith("__")}
    assert packages - named == set(), "add every package of testbed/ to the layers contract in pyproject.toml"
    assert {"devices", "brokers"} <= named


def test_the_command_lines_do_not_load_matplotlib() -> None:
    """``fmb`` starts fast, and the Compose services' command line runs in read-only containers
    where matplotlib cannot even import (it needs a writable configuration directory): only
    figure-drawing code (``testbed.reporting.scenario``, ``plots``, ``render``) may load it."""
    probe = ("import sys, testbed.cli.fmb, testbed.cli.containers, testbed.harness.service, "
             "testbed.bench.recovery; print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('matplotlib', 'playwright', 'docker')))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"heavy modules loaded by the command lines: {done.stdout}"
