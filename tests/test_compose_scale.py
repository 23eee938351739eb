"""A scale topology on Compose: utility-small (3 substations x 50 meters) from its generated file,
one fleet container per substation, and every meter's reading arrives at the data centre.

The Compose project has a unique name and free loopback ports and is removed (containers,
networks, volumes) at the end; the test fails if anything of it is left. The meters' reading
period is shortened to 2 s in a copy of the topology (mounted into the containers like any
topology), so that every meter reports within the test's bound whatever the file's AMI period.
Without Docker, Compose v2 or the images it skips; with ``CI`` set it fails instead.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from testbed.backends.compose import ComposeProject, DockerBus, compose_command, compose_file_for, docker_client
from testbed.backends.composefile import ui_port_variable
from testbed.core.errors import TestbedError
from testbed.core.ports import free_port
from testbed.core.topics import topic
from testbed.core.topology import DEFAULT_TOPOLOGY, load_topology
from testbed.transport.mqtt import connect
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
UTILITY_SMALL = DEFAULT_TOPOLOGY.parent / "utility-small.toml"
PERIOD_S = 2.0
UP_TIMEOUT_S = 420  # ~170 certificates, then 25 containers start: 2-7 min seen at load average 10-110 here
REPORT_TIMEOUT_S = 60


def _fast_copy(tmp_path: Path) -> Path:
    """utility-small with every meter reporting every PERIOD_S (the copy the containers mount)."""
    text = UTILITY_SMALL.read_text()
    text, n = re.subn(r"(?m)^(\s*meter_period_s\s*=\s*)[0-9.]+", rf"\g<1>{PERIOD_S}", text)
    if n == 0:
        text = re.sub(r"(?m)^(\[\[substations\]\]\s*)$", rf"\1\nmeter_period_s = {PERIOD_S}", text)
    path = tmp_path / "utility-small-fast.toml"
    path.write_text(text)
    path.chmod(0o644)  # read by uid 10001 in the containers
    return path


@pytest.fixture(scope="module")
def images() -> None:
    """The images, rebuilt if the sources changed (cached: seconds)."""
    try:
        docker_client()
        compose_command("v2")
    except TestbedError as e:
        require(False, f"needs a Docker engine and Compose v2: {e}")
    done = subprocess.run([str(ROOT / "scripts" / "images")], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.docker
@pytest.mark.slow
def test_utility_small_on_compose_every_meter_reports_to_the_data_centre(images: None, tmp_path: Path) -> None:
    topology = load_topology(_fast_copy(tmp_path))
    meters = {m.id for ms in topology.fleets.values() for m in ms}
    assert len(topology.fleets) == len(topology.substations) == 3 and len(meters) == 150
    tablets = [d.id for d in topology.devices if d.role == "tablet"]
    name = f"fmbtest-{os.getpid()}-scale-{secrets.token_hex(3)}"
    with compose_file_for(topology) as compose_file:
        project = ComposeProject(name, compose_file, ports={b.name: free_port() for b in topology.brokers},
                                 ui_port=free_port(), compose_version="v2",
                                 variables={ui_port_variable(topology, t): str(free_port()) for t in tablets[1:]})
        bus = None
        try:
            services = [s for s in project.compose("config", "--services").split() if s != "scenario"]
            assert {f"{s.name}-fleet" for s in topology.substations} <= set(services)
            start = time.monotonic()
            project.up(services, timeout_s=UP_TIMEOUT_S)  # every container running, and healthy where checked
            up_s = time.monotonic() - start
            bus = DockerBus(project, topology)
            _check_limits(project, topology)
            seen, first_ns = _readings_at_the_data_centre(bus, topology, meters)
            assert seen == meters, f"{len(meters - seen)} meters never reported: {sorted(meters - seen)[:10]}"
            print(f"utility-small on Compose: up and healthy in {up_s:.0f} s; all {len(meters)} meters' readings "
                  f"at dc-delivery within {(max(first_ns.values()) - min(first_ns.values())) / 1e9:.1f} s")
        finally:
            if bus is not None:
                bus.close()
            project.down()
            left = project.leftovers()
    assert not left, f"left behind: {left}"


def _readings_at_the_data_centre(bus: DockerBus, topology: Any, meters: set[str]) -> tuple[set[str], dict[str, int]]:
    """The meters whose reading reached the data centre's delivery broker (as the read-only recorder)."""
    first_ns: dict[str, int] = {}
    lock = threading.Lock()
    prefix = topic(topology.root, "MeterReadingProfile", "")

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        source = message.topic[len(prefix):] if message.topic.startswith(prefix) else ""
        if source in meters:
            with lock:
                first_ns.setdefault(source, time.time_ns())

    def on_connect(client: Any) -> None:
        client.subscribe(topic(topology.root, "MeterReadingProfile", "+"), qos=1)

    dc = topology.broker_for(topology.substations[0].bridge_to, "delivery").name
    client = connect(f"recorder-scale-{os.getpid()}", bus.identity("recorder"), bus.endpoint(dc),
                     on_message=on_message, on_connect=on_connect)
    try:
        deadline = time.monotonic() + REPORT_TIMEOUT_S
        while time.monotonic() < deadline:
            with lock:
                if len(first_ns) == len(meters):
                    break
            time.sleep(0.5)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return set(first_ns), dict(first_ns)


def _check_limits(project: ComposeProject, topology: Any) -> None:
    """Each broker runs with the open-files limit and the max_connections the generator sized."""
    from brokers.mosquitto import connection_budget
    from testbed.backends.composefile import FILE_RESERVE

    for b in (topology.broker_for(s.name, "delivery") for s in topology.substations):
        container = project.container(b.name)
        limit = container.exec_run(["sh", "-c", "ulimit -n"]).output.decode().strip()
        conf = container.exec_run(["cat", "/mosquitto/config/mosquitto.conf"]).output.decode()
        budget = connection_budget(topology, b)
        assert limit == str(budget + FILE_RESERVE) and f"\nmax_connections {budget}\n" in conf, (b.name, limit)
