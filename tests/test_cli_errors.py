"""Every ``fmb`` subcommand given bad input: one line on stderr, no traceback, a non-zero exit.

The list of subcommands comes from ``build_parser()``, so a new subcommand without a case here
fails :func:`test_every_subcommand_has_a_case`. Each case is a real ``python -m testbed``
process with ``FMB_CERTS_DIR``/``FMB_STATE_DIR`` in a temporary directory and ``FMB_MOSQUITTO``
a wrapper that notes every broker started before it runs Mosquitto: the bad inputs are chosen to
be caught before anything starts, and every case checks that nothing did. The in-container
command line (``python -m testbed.cli.containers``) is held to the same rule.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brokers.mosquitto import mosquitto_binary
from testbed.cli.fmb import build_parser
from testbed.core.topology import DEFAULT_TOPOLOGY, load_topology
from testbed.security.provision import ensure_pki
from tests.conftest import require

# One or more cases per leaf of the parser: (arguments, text the error line must hold). In the
# arguments, {tmp} is the case's own directory and {pki} a PKI of the default topology.
CASES: dict[tuple[str, ...], list[tuple[list[str], str]]] = {
    ("demo",): [(["demo", "--topology", "{tmp}/missing.toml"], "no such file")],
    ("run",): [
        (["run", "no-such-scenario", "--topology", "{tmp}/topology.toml"], "use one of: appendix-a"),
        (["run", "{tmp}/broken-scenario.toml", "--topology", "{tmp}/topology.toml"], "is not valid TOML"),
        (["run", "appendix-a", "--repeat", "many"], "invalid int value: 'many'"),
        (["run", "appendix-a", "--repeat", "0"], "--repeat is 0"),
        (["run", "no-such-scenario", "--backend", "docker", "--topology", "{tmp}/topology.toml"],
         "use one of: appendix-a"),
    ],
    ("bench",): [
        (["bench", "latency", "--qos", "7"], "--qos is '7'"),
        (["bench", "latency", "--topology", "{tmp}/broken.toml"], "is not valid TOML"),
        (["bench", "prioritization", "--rates", "5000"], "--rates must start with 0"),
        (["bench", "prioritization", "--publishers", "0"], "--publishers is 0"),
        (["bench", "recovery", "--autosave", "soon"], "--autosave is 'soon'"),
        (["bench", "crash", "--policies", "2.0/sqlite=0"], "the sqlite plugin needs Mosquitto 2.1"),
        (["bench", "crash", "--runtime", "host", "--policies", "2.1/none"], "--runtime host runs the host's"),
        (["bench", "recovery", "--backend", "docker", "--partitions", "5,long"], "--partitions is '5,long'"),
        (["bench", "wan", "--wan", "fast"], "rate 'fast'"),
        (["bench", "wan", "--backend", "docker", "--wan", "1mbit,40ms"], "netem"),
        (["bench", "wan", "--wan", "1mbit,soon"], "--wan delay 'soon'"),
        (["bench", "wan", "--load-factors", "0.5,3"], "--load-factors '0.5,3'"),
        (["bench", "wan", "--step-seconds", "0"], "--step-seconds is 0"),
        (["bench", "ui", "--repeat", "1"], "--repeat is 1"),
        (["bench", "soak", "--minutes", "0"], "--minutes is 0"),
        (["bench", "scale", "--meters", "0"], "--meters is 0"),
        (["bench", "scale", "--interval", "often"], "--interval is 'often'"),
        (["bench", "scale", "--backoff", "5,1"], "--backoff is 5,1"),
        (["bench", "nonsense"], "invalid choice: 'nonsense'"),
    ],
    ("model", "calibrate"): [(["model", "calibrate", "--messages", "10"], "--messages 10"),
                             (["model", "calibrate", "--latency", "{tmp}/broken.json"], "broken.json")],
    ("model", "run"): [
        (["model", "run", "utility-small", "--set", "nope=1"], "nope: no such setting"),
        (["model", "run", "--set", "substations=0"], "substations = 0; give 1 or more"),
        (["model", "run", "--set", "qos"], "give KEY=VALUE"),
        (["model", "run", "--set", "interval_s=soon"], "interval_s=soon: not a float"),
        (["model", "run", "--set", "restart=dc-nowhere"], "no such broker"),
        (["model", "run", "--calibration", "{tmp}/broken.json"], "not JSON"),
        (["model", "run", "{tmp}/broken.toml"], "is not valid TOML"),
    ],
    ("model", "validate"): [(["model", "validate", "--seconds", "0"], "--seconds 0"),
                            (["model", "validate", "--scale", "{tmp}/broken.json"], "broken.json")],
    ("model", "answers"): [(["model", "answers", "--calibration", "{tmp}/missing.json"], "no such file")],
    ("report",): [(["report", "{tmp}/no-such-run"], "is not a directory")],
    ("up",): [
        (["up", "--topology", "{tmp}/broken.toml"], "is not valid TOML"),
        (["up", "--topology", "{tmp}/topology.toml", "--ui-port", "70000"], "--ui-port is 70000"),
    ],
    ("down",): [(["down", "--state", "{tmp}/corrupt-state"], "bus.json")],
    ("status",): [(["status", "--state", "{tmp}/corrupt-state"], "bus.json")],
    ("profile",): [(["profile", "--evidence", "{tmp}/broken.json", "--out", "{tmp}/profile"], "broken.json")],
    ("inventory",): [(["inventory", "--topology", "{tmp}/missing.toml", "--out", "{tmp}/inventory"],
                      "no such file")],
    ("certs", "init"): [(["certs", "init", "--topology", "{tmp}/broken.toml"], "is not valid TOML")],
    ("certs", "revoke"): [(["certs", "revoke", "nobody", "--certs", "{pki}"], "no certificate named 'nobody'")],
    ("certs", "reissue"): [(["certs", "reissue", "meter-1", "--certs", "{pki}"], "revoke it first")],
    ("certs", "rotate"): [(["certs", "rotate", "nobody", "--certs", "{pki}"], "certificate to rotate")],
    ("recover",): [(["recover"], "nothing to recover")],
    ("backup",): [(["backup", "--file", "{tmp}/backup.tar.gz"], "no PKI in")],
    ("restore",): [(["restore", "{tmp}/no-such-backup.tar.gz"], "is not a backup made by `fmb backup`")],
    ("respond",): [
        (["respond", "revoke", "meter-1"], "no bus running"),
        (["respond", "block"], "needs a target"),
    ],
    ("monitor",): [
        (["monitor"], "no bus running"),
        (["monitor", "--last", "many"], "invalid int value: 'many'"),
    ],
    ("deadletters",): [(["deadletters", "--last", "0"], "--last is 0")],
    ("compose",): [
        (["compose", "--topology", "{tmp}/broken.toml"], "is not valid TOML"),
        (["compose", "-o", "{tmp}/no-such-dir/docker-compose.yml"], "no directory"),
        (["compose", "-o", "{tmp}/corrupt-state"], "is a directory"),
    ],
    (): [([], "the following arguments are required: COMMAND")],
}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The command paths of ``parser`` that take no further subcommand (``certs init``, ``up``, ...)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [path]
    return [leaf for sub in subs for name, child in sub.choices.items() for leaf in _leaves(child, (*path, name))]


def test_every_subcommand_has_a_case() -> None:
    leaves = set(_leaves(build_parser()))
    assert len(leaves) >= 18  # the parser really was walked: demo ... monitor, four certs actions
    missing = sorted(leaves - set(CASES))
    assert not missing, f"give these subcommands a bad-input case in CASES: {missing}"
    assert set(CASES) - leaves == {()}, "CASES names a subcommand the parser does not have"


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    certs = tmp_path_factory.mktemp("pki")
    ensure_pki(load_topology(), certs)
    return certs


@pytest.fixture
def case_dir(tmp_path: Path) -> Path:
    """Bad (and good) inputs for one case, and a Mosquitto that notes each start in ``started``."""
    require(shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists(),
            "mosquitto is not installed (sudo apt-get install mosquitto)")
    text = DEFAULT_TOPOLOGY.read_text()
    for site in load_topology().with_free_ports().sites:  # startable beside any other bus
        default = load_topology().site(site.name)
        text = text.replace(f"delivery_port = {default.delivery_port}", f"delivery_port = {site.delivery_port}")
        text = text.replace(f"control_port = {default.control_port}", f"control_port = {site.control_port}")
    (tmp_path / "topology.toml").write_text(text)
    (tmp_path / "broken.toml").write_text("[[sites]\n")
    (tmp_path / "broken-scenario.toml").write_text("schema = 1\n[trigger\n")
    (tmp_path / "broken.json").write_text('{"results": ')
    (tmp_path / "corrupt-state").mkdir()
    (tmp_path / "corrupt-state" / "bus.json").write_text('{"topology": ')
    real = os.environ.get("FMB_MOSQUITTO") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    wrapper = tmp_path / "mosquitto"
    wrapper.write_text(f'#!/bin/sh\necho "$$ $*" >> {tmp_path}/started\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return tmp_path


def _env(case: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FMB_", "COMPOSE_", "DOCKER_"))}
    # No Docker engine either: a --backend docker case that got as far as Compose fails fast, and says so.
    return {**env, "FMB_CERTS_DIR": str(case / "certs"), "FMB_STATE_DIR": str(case / "state"),
            "FMB_MOSQUITTO": str(case / "mosquitto"), "FMB_EVIDENCE": str(case / "evidence.json"),
            "DOCKER_HOST": f"unix://{case}/no-docker.sock"}


def test_the_broker_wrapper_notes_a_start(case_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check below can fail: the testbed starts the wrapper, and the wrapper notes it."""
    monkeypatch.setenv("FMB_MOSQUITTO", str(case_dir / "mosquitto"))
    assert mosquitto_binary() == str(case_dir / "mosquitto")
    subprocess.run([str(case_dir / "mosquitto"), "-h"], capture_output=True, timeout=10)
    assert (case_dir / "started").read_text().strip().endswith("-h")


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode != 0, done.stdout + done.stderr
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{done.stderr}"
    return lines[0]


@pytest.mark.parametrize(("argv", "expected"), [
    pytest.param(argv, expected, id=" ".join(argv).replace("{tmp}/", "") or "(no command)")
    for cases in CASES.values() for argv, expected in cases])
def test_bad_input_is_one_line_and_starts_nothing(case_dir: Path, pki_dir: Path, argv: list[str],
                                                  expected: str) -> None:
    args = [a.format(tmp=case_dir, pki=pki_dir) for a in argv]
    done = subprocess.run([sys.executable, "-m", "testbed", *args], capture_output=True, text=True,
                          timeout=60, env=_env(case_dir), cwd=case_dir)
    line = _one_line_error(done)
    assert "error" in line and expected in line, line
    assert not (case_dir / "started").exists(), f"a broker was started: {(case_dir / 'started').read_text()}"
    assert not (case_dir / "state" / "bus.json").exists()
    assert not (case_dir / "state" / "logs").exists()  # where a started bus's processes log


def _containers(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMB_")}  # the packaged topology
    return subprocess.run([sys.executable, "-m", "testbed.cli.containers", *args], capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize(("args", "expected"), [
    (["device", "no-such-device"], "no device 'no-such-device'"),
    (["feeder", "no-such-feeder"], "no feeder 'no-such-feeder'"),
    (["fleet", "no-such-fleet"], "no fleet 'no-such-fleet'"),  # Appendix A has none: "use one of: (none)"
    (["launch"], "unknown command 'launch'"),
    (["device"], "wrong arguments for device"),
    ([], "give a command"),
])
def test_in_container_command_line_errors_are_one_line(args: list[str], expected: str) -> None:
    line = _one_line_error(_containers(*args))
    assert expected in line, line
    if len(args) == 2:
        assert "use one of:" in line
    if len(args) == 2 and args[0] != "fleet":
        assert "meter-1" in line or "feeder-1" in line, line  # names what exists


def test_in_container_help_is_the_usage() -> None:
    done = _containers("--help")
    assert done.returncode == 0 and "device ID" in done.stdout and not done.stderr
