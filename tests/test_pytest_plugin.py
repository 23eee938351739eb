"""The fmb pytest plugin as a user meets it: the README's example, run by a pytest of its own.

Two of these start a bus in a subprocess (some 10 s each): the README example as it stands,
which must pass, and a scenario that cannot pass, whose report must show the reason, the
timeline table and where the result files are. The rest is cheap: options, the result object,
the assertion helper, and that loading the plugin imports nothing heavy.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brokers.mosquitto import mosquitto_binary
from testbed.core.errors import BrokerError
from testbed.pytest_plugin import ScenarioResult, assert_scenario_passed, docker_problem
from tests.conftest import require

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
TABLE_HEADER = re.compile(r"^\s*n\s+name\s+device\s+plane\s+topic\s+t_ms\s+hop_ms\s*$", re.M)

NEVER_115 = """\
schema = 1
name = "never-115"
description = "The tablet sets 114 V, and the supply is expected to apply 115 V: it never does"
timeout_s = 3.0

[trigger]
device = "tablet"
action = "set_supply"
args = { target = "supply-1", volts = 114.0 }

[[steps]]
name = "Tablet UI commands the supply to 114 V"
device = "tablet"
profile = "SupplyControlProfile"
plane = "control"
where = { setpoint_v = 114.0 }

[[steps]]
name = "Power supply applies 115 V"
device = "supply"
profile = "SupplyStatusProfile"
plane = "delivery"
where = { output_v = 115.0 }

[end]
device = "tablet"
profile = "DisplayStatusProfile"
"""


def readme_example() -> str:
    """The first Python block of the README's section on the plugin: what a user copies."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Scenario regressions in your own CI", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "the README's plugin section has no ```python block"
    return found.group(1)


def _need_mosquitto() -> None:
    try:
        mosquitto_binary()
    except BrokerError as e:
        require(False, str(e))


def test_the_readme_example_passes(pytester: pytest.Pytester) -> None:
    _need_mosquitto()
    example = readme_example()
    pytester.makepyfile(test_grid_regressions=example)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider", timeout=300)
    tests = len(re.findall(r"^def test_", example, re.M))
    assert tests >= 1
    result.assert_outcomes(passed=tests)


def test_a_failing_scenario_shows_the_reason_the_timeline_and_the_files(pytester: pytest.Pytester) -> None:
    _need_mosquitto()
    pytester.makefile(".toml", **{"never-115": NEVER_115})
    pytester.makepyfile(test_user_case="""
        from pathlib import Path

        from testbed.pytest_plugin import assert_scenario_passed


        def test_the_supply_applies_115_volts(fmb_run):
            assert_scenario_passed(fmb_run(Path(__file__).parent / "never-115.toml"))
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fmb-runs", "ci-runs", timeout=300)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "scenario never-115 failed: step 2 (Power supply applies 115 V) not seen within 3 s" in out, out
    assert TABLE_HEADER.search(out), out
    assert re.search(r"^\s*1\s+Tablet UI commands the supply to 114 V\s+tablet-1\s+control\s", out, re.M), out
    assert "FAILED: step 2 (Power supply applies 115 V) not seen within 3 s" in out, out
    files = pytester.path.resolve() / "ci-runs" / "test_user_case.py_test_the_supply_applies_115_volts" / "never-115"
    assert f"result files: {files} (result.json," in out, out
    on_disk = json.loads((files / "result.json").read_text())
    assert not on_disk["passed"] and len(on_disk["steps"]) == 1
    assert (files / "timeline.png").exists() and (files / "summary.txt").exists()


def test_a_bad_backend_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess("--fmb-backend", "bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fmb-backend*is 'bogus': use local or docker*"])
    # A run that does not use the plugin's fixtures does not start any bus, whatever the options.
    result = pytester.runpytest_subprocess("--fmb-backend", "docker", "--fmb-topology", "nowhere.toml")
    result.assert_outcomes(passed=1)


def test_the_options_are_in_the_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*field message bus scenarios*", "*--fmb-backend=local|docker*",
                                 "*--fmb-topology=NAME|PATH*", "*--fmb-runs=DIR*"])


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    probe = ("import sys, pytest, testbed.pytest_plugin\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('testbed', 'matplotlib', 'paho', 'docker', 'cryptography', 'simpy')))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "['testbed', 'testbed.pytest_plugin']", done.stdout


def _result(passed: bool) -> ScenarioResult:
    data = json.loads((ROOT / "tests" / "fixtures" / "scenario" / "result.json").read_text())
    if not passed:
        data.update(passed=False, steps=data["steps"][:3], end=None, e2e_ms=None,
                    failure="step 4 (DMS commands the cap bank to close) not seen within 10 s")
        data["runs"] = [{"rep": 1, "passed": True, "failure": None, "e2e_ms": 9.0},
                        {"rep": 2, "passed": False, "failure": data["failure"], "e2e_ms": None}]
    return ScenarioResult(data, Path("/runs/here"))


def test_the_result_is_the_dict_with_attributes() -> None:
    result = _result(passed=True)
    assert isinstance(result, dict) and result["passed"] is True and result.passed
    assert result.failure is None and result.steps == result["steps"] and len(result.steps) == 9
    assert result.e2e_ms == result["e2e_ms"] and result.out == Path("/runs/here")
    assert TABLE_HEADER.search(result.summary()) and "PASSED" in result.summary()
    assert json.loads(json.dumps(result)) == dict(result)
    clone = copy.deepcopy(result)
    assert clone == result and clone.out == result.out
    assert repr(result) == "<ScenarioResult appendix-a passed, files in /runs/here>"
    assert_scenario_passed(result)  # passes silently


def test_the_assertion_helper_fails_with_reason_table_and_files() -> None:
    result = _result(passed=False)
    assert "FAILED: step 4" in repr(result)
    with pytest.raises(pytest.fail.Exception) as failed:
        assert_scenario_passed(result)
    message = str(failed.value)
    assert message.startswith("scenario appendix-a failed in repetition 2 of 2: step 4 (DMS commands")
    assert TABLE_HEADER.search(message) and "(no steps matched)" not in message
    assert "FAILED: step 4" in message
    assert "result files: /runs/here (result.json, messages.jsonl, timeline.png, summary.txt)" in message
    # A plain dict (a result.json read back) works too; there is no folder to name then.
    with pytest.raises(pytest.fail.Exception) as failed:
        assert_scenario_passed(dict(result))
    assert "result files" not in str(failed.value) and TABLE_HEADER.search(str(failed.value))


def test_docker_problem_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    problem = docker_problem()
    assert problem and "docker is not installed" in problem and "install" in problem


@pytest.mark.docker
@pytest.mark.slow
def test_the_readme_example_on_the_docker_backend(pytester: pytest.Pytester) -> None:
    """The same copyable file with --fmb-backend docker: its Appendix A test passes on a Compose bus
    of its own (the attack test is for the local backend, as the README says, and is not selected)."""
    require(shutil.which("docker") is not None, "docker is not installed")
    images = subprocess.run([str(ROOT / "scripts" / "images")], capture_output=True, text=True, timeout=1200)
    assert images.returncode == 0, images.stderr[-2000:]  # cached when test_docker.py built them
    problem = docker_problem()
    require(problem is None, f"the docker backend cannot run here: {problem}")
    pytester.makepyfile(test_grid_regressions=readme_example())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fmb-backend", "docker",
                                           "-k", "appendix_a", timeout=600)
    result.assert_outcomes(passed=1, deselected=1)
