"""The profile covers every subcategory of the seed's section 2 tables, once, reads evidence, and
names as evidence only tests that exist."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from testbed.csf.profile import COMPOSE_EVIDENCE, SUBCATEGORIES, build_profile, render_markdown
from testbed.pytest_plugin import require

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mqtt-nist-cybersecurity-v1.0.txt"


def _seed_section() -> str:
    text = REFERENCE.read_text()
    return " ".join(text[text.index("2 MQTT Cybersecurity Framework Core Functions"):
                         text.index("Appendix A. Example")].split())


def test_every_seed_subcategory_is_in_the_profile_once() -> None:
    # The seed sits beside the repository in our CI (shared/), not in a user's clone.
    require(REFERENCE.exists(), f"the seed document is not at {REFERENCE}")
    section = _seed_section()
    ours = [" ".join(s.name.split()) for s in SUBCATEGORIES]
    # Every one of ours appears verbatim in the seed's section 2 (tables flattened to text) ...
    assert [o for o in ours if o not in section] == []
    # ... and there are as many as the seed lists: 66 rows, 65 names (one sits under two categories).
    assert len(set(ours)) == 65 and len(ours) == 66
    pairs = [(s.category, s.name) for s in SUBCATEGORIES]
    assert len(pairs) == len(set(pairs))
    for function in ("Identify", "Protect", "Detect", "Respond", "Recover"):
        assert any(s.function == function for s in SUBCATEGORIES)


def test_profile_reads_the_evidence(tmp_path: Path) -> None:
    evidence = tmp_path / "results.json"
    evidence.write_text(json.dumps({"results": {
        "tests/test_inventory.py::test_x": {"outcome": "passed", "at": "t"},
        "tests/test_recover.py::test_backup_and_restore": {"outcome": "failed", "at": "t"},
    }}))
    profile = build_profile(evidence)
    rows = {r["subcategory"]: r for r in profile["subcategories"]}
    assert rows["List of hardware devices"]["current"] == "implemented and verified"
    assert rows["Backup systems"]["current"] == "implemented, failing"
    assert rows["Data-at-rest encryption"]["current"] == "gap"
    assert rows["Formal Training"]["current"] == "out of scope"
    assert profile["tier"]["level"] == 1  # almost nothing verified in this evidence
    md = render_markdown(profile)
    assert "| Recover | Recover Planning | Backup systems |" in md and "failed" in md


def _tests_in(path: Path) -> set[str]:
    """The test functions of a test file (module level and in Test classes), by name."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = [*tree.body, *(n for c in tree.body if isinstance(c, ast.ClassDef) for n in c.body)]
    return {n.name for n in nodes if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and n.name.startswith("test")}


def test_every_evidence_id_names_a_test_that_exists() -> None:
    """An id is a test file, or a file and the start of a test's name (the profile matches node ids by
    prefix): each must match a test, or the subcategory could never be verified."""
    ids = sorted({e for s in SUBCATEGORIES for e in s.evidence} | {e for ev in COMPOSE_EVIDENCE.values() for e in ev})
    assert len(ids) > 20  # the profile does name its evidence
    missing = []
    for evidence in ids:
        file, _, name = evidence.partition("::")
        path = ROOT / file
        if not (file.startswith("tests/test_") and file.endswith(".py") and path.is_file()):
            missing.append(f"{evidence}: no test file {file}")
        elif not any(t.startswith(name) for t in _tests_in(path)):  # name "" (a whole file): any test
            missing.append(f"{evidence}: no test in {file} starts with {name!r}")
    assert missing == [], "evidence in testbed/csf/profile.py that names no test:\n" + "\n".join(missing)


def test_the_profile_names_the_evidence_of_both_backends(tmp_path: Path) -> None:
    """A subcategory proven on the Compose bus too carries that evidence and its own verdict beside the local one."""
    implemented = {s.name for s in SUBCATEGORIES if s.status == "implemented"}
    assert set(COMPOSE_EVIDENCE) <= implemented, set(COMPOSE_EVIDENCE) - implemented
    name = "Revoke lost and/or compromised certificates"
    results = {node: {"outcome": "passed"} for node in
               [*next(s.evidence for s in SUBCATEGORIES if s.name == name), *COMPOSE_EVIDENCE[name][:1]]}
    evidence = tmp_path / "test-results.json"
    evidence.write_text(json.dumps({"results": results}))
    row = next(r for r in build_profile(evidence)["subcategories"] if r["subcategory"] == name)
    assert row["current"] == "implemented and verified"
    assert row["compose"]["current"] == "not run"  # the second Compose test did not run: not verified there
    results[COMPOSE_EVIDENCE[name][1]] = {"outcome": "failed"}
    evidence.write_text(json.dumps({"results": results}))
    profile = build_profile(evidence)
    row = next(r for r in profile["subcategories"] if r["subcategory"] == name)
    assert row["compose"]["current"] == "failing" and row["current"] == "implemented and verified"
    assert "failing: `tests/test_docker_security.py::" in render_markdown(profile)
