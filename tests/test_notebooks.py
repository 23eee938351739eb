"""Every notebook under notebooks/ runs (nbclient) against its committed fixture result.

Each notebook reads the result named by ``FMB_RESULT``; here that is the small fixture in
tests/fixtures/, so a change of result shape or plotting API that breaks a notebook fails here.
Notebooks are stored without outputs, which is checked too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testbed.pytest_plugin import require

try:
    import nbclient
    import nbformat
except ImportError:  # each test says so: a skip, or under CI a failure
    nbclient = nbformat = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FIXTURES = ROOT / "tests" / "fixtures"
# Notebooks over something other than a benchmark's result (the capacity model reads its answers).
FIXTURE_OF = {"model": "model-answers.json"}


@pytest.fixture(autouse=True)
def _dev_extra() -> None:
    require(nbformat is not None and nbclient is not None,
            "notebook tests need the dev extra (pip install -e '.[dev]')")


def test_there_is_a_notebook_per_benchmark() -> None:
    assert {p.stem for p in NOTEBOOKS} >= {"latency", "prioritization", "recovery"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_against_its_fixture(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixture = FIXTURES / FIXTURE_OF.get(path.stem, f"bench-{path.stem}.json")
    assert fixture.is_file(), f"no fixture {fixture} for {path.name}"
    monkeypatch.setenv("FMB_RESULT", str(fixture))
    monkeypatch.setenv("MPLBACKEND", "agg")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=dict(os.environ))
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    figures = sum(1 for c in notebook.cells if c.cell_type == "code" and c.source.startswith("plots."))
    assert len(images) == figures >= 2, f"{path.name}: expected a PNG from each of the {figures} figure cells"
