"""The bus as a Docker Swarm stack (``fmb swarm``): the stack file as Swarm reads it, and the stack
running on a single-node swarm.

The file tests read the generated stack through Compose's own parser (``docker compose config``:
the Compose client, no engine) and check what ``docker stack deploy`` would otherwise silently
drop or get wrong: no ``depends_on``, ``restart``, ``security_opt`` or published port; every key a
secret of its own (uid 10001, mode 0400) within Swarm's 500 KB; placement by site labels; internal,
attachable overlays. The stack tests make this engine a single-node swarm when it is in none
(``docker swarm init`` on 127.0.0.1) and leave it again, also on failure; each stack has a unique
name and is removed with its networks, secrets and configs, which the test checks. They run
Appendix A on the Appendix A stack, and on each substation of a three-substation topology (a
command from each substation's tablet reaches its supply, each substation's meter reading reaches
the DMS in the data centre, whose command reaches the substation's cap bank). Without Docker they
skip; with ``CI`` set they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brokers.mosquitto import connection_budget
from testbed.backends.compose import compose_command, docker_client
from testbed.backends.composefile import FILE_RESERVE
from testbed.backends.swarm import SECRET_LIMIT, StackImages, ensure_pki, site_label, write_stack
from testbed.backends.swarmstack import SwarmStack, ensure_swarm, label_node, leave_swarm
from testbed.core.errors import TestbedError
from testbed.core.topology import Topology, load_topology
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
THREE = ROOT / "tests" / "fixtures" / "three-substations.toml"
# Every service healthy: 65 s (Appendix A) and 115-257 s (three substations) seen here at load average 24-74.
UP_TIMEOUT_S = 420
RUN_TIMEOUT_S = 120


def _stack_dir(topology: Topology, tmp_path: Path, images: StackImages | None = None) -> Path:
    certs = tmp_path / "pki"
    certs.mkdir(mode=0o700)
    ensure_pki(topology, certs)
    return write_stack(topology, certs, tmp_path / "stack", images or StackImages())


def _config(stack_file: Path) -> dict[str, Any]:
    """The stack as Compose's parser reads it (JSON), or a skip without the Compose client."""
    try:
        command = compose_command("v2")
    except TestbedError as e:
        require(False, f"needs Docker Compose v2 to parse the stack file: {e}")
    done = subprocess.run([*command, "-p", "fmbtest-stack", "-f", str(stack_file), "config", "--format", "json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_the_stack_file_holds_only_what_swarm_honours(tmp_path: Path) -> None:
    topology = load_topology(THREE)
    stack_file = _stack_dir(topology, tmp_path)
    text = stack_file.read_text()
    for dropped in ("depends_on", "restart:", "security_opt", "ports:", "build:", "network_mode"):
        assert dropped not in text, f"{dropped} is in the stack file, which docker stack deploy ignores"
    assert not re.search(r"(?m)^\s+tmpfs:", text), "the tmpfs key, which docker stack deploy drops without a word"
    stack = _config(stack_file)
    services = stack["services"]
    expected = {b.name for b in topology.brokers} | {f.id for f in topology.feeders} | set(topology.fleets)
    expected |= {d.id for d in topology.devices if not d.fleet} | {"scenario", "runner"}
    assert set(services) == expected
    for name, service in services.items():
        site = {"scenario": "sub-001", "runner": "sub-001"}.get(name)
        constraints = service["deploy"]["placement"]["constraints"]
        assert len(constraints) == 1 and constraints[0].startswith(f"node.labels.{site_label(site or '')}"), name
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"] and service["user"] == "10001:10001"
        assert service["deploy"]["restart_policy"]["condition"] == ("none" if name == "scenario" else "any")
        for secret in service.get("secrets", []):
            assert secret["target"].endswith(".key") and secret["mode"] in (0o400, "0400", 256), (name, secret)
            assert str(secret["uid"]) == "10001"
        keys = [c["target"] for c in service.get("configs", []) if c["target"].endswith(".key")]
        assert not keys, f"{name}: a key as a config (readable in the Swarm API): {keys}"
    for b in topology.brokers:  # Swarm (20.10) keeps ulimits: the open files match max_connections
        budget = connection_budget(topology, b)
        assert services[b.name]["ulimits"]["nofile"]["soft"] == budget + FILE_RESERVE
    for name, service in services.items():  # every process writes only to RAM
        tmpfs = {v["target"] for v in service.get("volumes", []) if v["type"] == "tmpfs"}
        assert name.endswith(("delivery", "control")) or tmpfs == {"/run/fmb", "/tmp", "/log"}, (name, tmpfs)
    for name in (s.name for s in topology.sites):
        assert stack["networks"][name]["internal"] is True and stack["networks"][name]["attachable"] is True
    # Each broker only on its own site's network and (an edge broker's bridges) its data centre's.
    assert set(services["sub-002-delivery"]["networks"]) == {"sub-002", "dc"}
    assert set(services["sub-002-f1-supply"]["networks"]) == {"sub-002"}
    assert set(services["dms-1"]["networks"]) == {"dc"}
    # One secret per private key, each within Swarm's limit, and the CA key in none of them.
    sources = [Path(s["file"]) for s in stack["secrets"].values()]
    assert all(p.stat().st_size <= SECRET_LIMIT for p in sources)
    assert not [p for p in sources if "ca" in p.parts and p.name.startswith("ca")]
    meter_keys = [p for p in sources if p.name.startswith("sub-001-f1-m")]
    assert len(meter_keys) == 3


def test_fmb_swarm_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for args, fragment in ((["swarm", "stack", "-o", str(tmp_path / "file")], "is a file"),
                           (["swarm", "run", "Bad Name"], "stack name"),
                           (["swarm", "stack", "-o", str(tmp_path / "x"), "--topology", str(tmp_path / "no.toml")],
                            "no.toml")):
        done = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "testbed", *args],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode != 0 and fragment in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr


# -- on a single-node swarm -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def swarm() -> Iterator[StackImages]:
    """The images (scripts/images, cached) under a tag of this run's own (``:latest`` is shared with
    other users of the engine, who may rebuild it meanwhile), and this engine as a swarm: made here
    (and left again afterwards, also on failure) when it is in none."""
    try:
        client = docker_client()
    except TestbedError as e:
        require(False, f"needs a Docker engine: {e}")
    done = subprocess.run([str(ROOT / "scripts" / "images")], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    tag = f"fmbt-{os.getpid()}"
    for name in ("fmb-device", "fmb-broker"):
        client.images.get(f"{name}:latest").tag(name, tag)
    made = ensure_swarm("127.0.0.1")
    try:
        yield StackImages(device=f"fmb-device:{tag}", broker=f"fmb-broker:{tag}")
    finally:
        try:
            if made:
                leave_swarm()
        finally:
            for name in ("fmb-device", "fmb-broker"):
                client.images.remove(f"{name}:{tag}")  # the tag only: the image stays


def _deploy_and_run(topology: Topology, tmp_path: Path, images: StackImages,
                    substations: list[str | None]) -> list[str]:
    """Deploy ``topology``'s stack, wait until healthy, run the harness per substation; the logs.
    Removes the stack and checks nothing of it is left."""
    stack_file = _stack_dir(topology, tmp_path, images)
    label_node([site_label(s.name) for s in topology.sites])
    stack = SwarmStack(f"fmbt{os.getpid()}{secrets.token_hex(2)}")
    logs, failures = [], []
    try:
        start = time.monotonic()
        stack.deploy(stack_file)
        up_s = stack.wait_healthy(UP_TIMEOUT_S)
        for sub in substations:
            run = stack.run(sub, RUN_TIMEOUT_S)
            logs.append(run.log)
            if run.exit_code != 0:
                failures.append(f"{sub or topology.name}: exit {run.exit_code}, tasks replaced so far "
                                f"{stack.restarts() or 'none'}\n{run.log[-3000:]}")
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        print(f"{topology.name} on Swarm: healthy in {up_s:.0f} s, {len(substations)} run(s) in "
              f"{time.monotonic() - start - up_s:.0f} s (load average {load}); tasks replaced: "
              f"{stack.restarts() or 'none'}")
    finally:
        stack.remove()
        left = stack.leftovers()
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)
    assert not left, f"left behind: {left}"
    return logs


@pytest.mark.docker
@pytest.mark.slow
def test_appendix_a_passes_on_a_swarm_stack(swarm: StackImages, tmp_path: Path) -> None:
    logs = _deploy_and_run(load_topology(), tmp_path, swarm, [None])
    verdict = json.loads(logs[0].strip().splitlines()[-1])
    assert verdict["passed"] is True and verdict["steps"] == 9, logs[0][-2000:]


@pytest.mark.docker
@pytest.mark.slow
def test_three_substations_run_on_swarm(swarm: StackImages, tmp_path: Path) -> None:
    topology = load_topology(THREE)
    substations = [s.name for s in topology.substations]
    assert len(substations) == 3
    logs = _deploy_and_run(topology, tmp_path, swarm, list(substations))
    for sub, log in zip(substations, logs, strict=True):
        verdict = json.loads(log.strip().splitlines()[-1])
        assert verdict["passed"] is True, (sub, log[-2000:])
        # The substation's own devices played: its tablet, supply, cap bank and (a fleet's) meter.
        for device in (f"{sub}-tablet", f"{sub}-f1-supply", f"{sub}-f1-capbank", f"{sub}-f1-m0001"):
            assert device in log, (sub, device)
