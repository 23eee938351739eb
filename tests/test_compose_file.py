"""The Compose file generated from the topology (``fmb compose``): up to date, deterministic, and read
by Compose as meant.

No container starts here (tests/test_docker.py runs the Appendix A file, tests/test_compose_scale.py a
scale topology): Compose itself reads the generated files (``config``), which needs the Compose
client but no engine; without it these skip, and fail with ``CI`` set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testbed.backends.compose import COMPOSE_FILE, compose_command, device_image
from testbed.backends.composefile import render_compose
from testbed.backends.containers import HARNESS, LOG_DIR, LOGS_DIR, MONITOR, RESPONDER, logged
from testbed.backends.yamltext import Comment, Flow, Note, dump
from testbed.core.errors import ConfigError, TestbedError
from testbed.core.topology import DEFAULT_TOPOLOGY, load_topology
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent


def _config(compose_file: Path, version: str = "v2", env: dict[str, str] | None = None) -> dict[str, Any]:
    """What Compose ``version`` makes of ``compose_file`` (``config``, as JSON through v2; v1 only validates)."""
    try:
        command = compose_command(version)
    except TestbedError as e:
        require(False, f"needs Docker Compose {version}: {e}")
    fmt = ["--format", "json"] if version == "v2" else ["-q"]
    done = subprocess.run([*command, "-p", "fmbtest-config", "-f", str(compose_file), "config", *fmt],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return json.loads(done.stdout) if version == "v2" else {}


def test_the_checked_in_compose_file_is_the_generated_one() -> None:
    generated = render_compose(load_topology())
    assert COMPOSE_FILE.read_text() == generated, (
        "compose/docker-compose.yml is stale (the topology or the generator changed): run "
        "`fmb compose -o compose/docker-compose.yml` and commit it")


def test_fmb_compose_prints_it_and_writes_it(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "testbed", "compose"]
    printed = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert printed.returncode == 0 and printed.stdout == COMPOSE_FILE.read_text(), printed.stderr
    written = subprocess.run([*run, "--topology", str(DEFAULT_TOPOLOGY), "-o", str(tmp_path / "c.yml")],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert written.returncode == 0 and written.stdout == "", written.stderr
    assert (tmp_path / "c.yml").read_text() == COMPOSE_FILE.read_text()


def test_another_topology_is_mounted_into_the_containers_from_beside_the_file(tmp_path: Path) -> None:
    """Not the packaged default: every container that reads the topology gets it, read-only, with
    FMB_TOPOLOGY; Compose resolves the relative path from the file's folder."""
    (tmp_path / "topologies").mkdir()
    topology = tmp_path / "topologies" / "two.toml"
    topology.write_text(DEFAULT_TOPOLOGY.read_text().replace('name = "appendix-a"', 'name = "two"'))
    out = tmp_path / "compose" / "two.yml"
    out.parent.mkdir()
    done = subprocess.run([sys.executable, "-m", "testbed", "compose", "--topology", str(topology), "-o", str(out)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "../topologies/two.toml:/etc/fmb/topology.toml:ro" in out.read_text()
    services = _config(out)["services"]
    readers = {name for name, s in services.items() if s.get("environment", {}).get("FMB_TOPOLOGY")}
    # Every service that runs our code reads it; brokers get rendered files from init instead.
    assert readers == {name for name, s in services.items() if s["image"] == device_image()}, readers
    for name in readers:
        assert services[name]["environment"]["FMB_TOPOLOGY"] == "/etc/fmb/topology.toml"
        mount = next(v for v in services[name]["volumes"] if v["target"] == "/etc/fmb/topology.toml")
        assert mount["type"] == "bind" and mount["source"] == str(topology) and mount["read_only"], (name, mount)
    with pytest.raises(ConfigError, match="give the containers its path"):
        render_compose(load_topology(topology))  # no path for the containers: refused, not a broken file


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_both_compose_versions_read_the_generated_file(version: str) -> None:
    _config(COMPOSE_FILE, version)


def test_what_compose_reads_matches_the_topology() -> None:
    """Ports, images, networks and volumes come from the topology; init fills exactly the volumes
    init_volumes expects; brokers get an open-files limit above their max_connections."""
    topology = load_topology()
    config = _config(COMPOSE_FILE, env={"FMB_FIELD_CONTROL_PORT": "40001", "FMB_DC_DELIVERY_IMAGE": "custom:1"})
    services = config["services"]
    for b in topology.brokers:
        s = services[b.name]
        published = 40001 if b.name == "field-control" else b.port
        assert s["ports"] == [{"mode": "ingress", "host_ip": "127.0.0.1", "target": b.port,
                               "published": str(published), "protocol": "tcp"}], s["ports"]
        assert s["image"] == ("custom:1" if b.name == "dc-delivery" else b.image)
        assert s["ulimits"]["nofile"]["soft"] > 1024 and s["read_only"] and s["cap_drop"] == ["ALL"]
        site = topology.site(b.site)
        assert set(s["networks"]) == {b.site, f"{b.site}-access", *([site.bridge_to] if site.bridge_to else [])}
        assert any(v["target"] == "/mosquitto/data" for v in s["volumes"]) == b.persistent
    init = {v["target"].removeprefix("/out/") for v in services["init"]["volumes"] if v["target"].startswith("/out/")}
    assert init == {b.name for b in topology.brokers} | {d.id for d in topology.devices} | {HARNESS, MONITOR, RESPONDER}
    for d in topology.devices:
        assert set(services[d.id]["networks"]) - {"ui-access"} == {d.site}, d.id
        assert services[d.id]["command"][-2:] == ["device", d.id]
    assert {n for n, net in config["networks"].items() if net.get("internal")} == {s.name for s in topology.sites}


def test_each_log_has_one_writer_and_the_monitor_reads_them_all() -> None:
    """The monitor's least privilege: every log it reads is a volume only its writer may write, mounted
    read-only in the monitor; the monitor mounts no CA, no Docker socket, nothing else of anyone's."""
    topology = load_topology()
    services = _config(COMPOSE_FILE)["services"]
    names = logged(topology)
    assert set(names) >= {b.name for b in topology.brokers} | {"supply-1", "capbank-1", "dms-1", "tablet-1"}
    for name in names:
        volume = f"log-{name}"
        users = {s: v for s, svc in services.items() for v in svc.get("volumes", []) if v.get("source") == volume}
        assert set(users) == {name, MONITOR}, (volume, set(users))
        assert users[name]["target"] == str(LOG_DIR) and not users[name].get("read_only"), users[name]
        assert users[MONITOR]["target"] == f"{LOGS_DIR}/{name}" and users[MONITOR]["read_only"], users[MONITOR]
    monitor = services[MONITOR]
    assert {v["source"] for v in monitor["volumes"]} == {f"certs-{MONITOR}", *(f"log-{n}" for n in names)}
    assert monitor["read_only"] and monitor["cap_drop"] == ["ALL"] and "user" not in monitor
    assert set(monitor["networks"]) == {s.name for s in topology.sites}
    # The responder's identity lives in a volume no running service mounts: only init (and the host's fmb respond).
    assert {s for s, svc in services.items() for v in svc.get("volumes", [])
            if v.get("source") == f"certs-{RESPONDER}"} == {"init"}
    assert {s for s, svc in services.items() for v in svc.get("volumes", []) if v.get("source") == "pki"} == {"init"}


def test_the_yaml_writer_quotes_what_yaml_would_read_as_something_else(tmp_path: Path) -> None:
    """Compose (v2, and v1's PyYAML) reads back every tricky string as that string."""
    tricky = ["0:0", "yes", "No", "on", "null", "~", "3", "1e5", "0x1f", ".5", "-m", "a: b", "#x", "x #y",
              "${FMB_X:-a:b}", "10m", "no-new-privileges:true", "key=value,other", "tab\there", "ünï", "*star", "&amp"]
    labels = {f"l{i}": t for i, t in enumerate(tricky)}
    doc = {Comment("a comment\n\nwith a blank line"): None,
           "services": {"s": {"image": "x", "labels": labels, "command": Flow(tricky),
                              "environment": Note(Flow({"A": "0:0"}), "trailing # comment")}}}
    path = tmp_path / "tricky.yml"
    path.write_text(dump(doc))
    assert dump(doc) == path.read_text()  # deterministic
    # Compose interpolates ${...}; what must come back literally is everything else.
    service = _config(path, env={"FMB_X": "interpolated"})["services"]["s"]
    expected = [t if not t.startswith("${") else "interpolated" for t in tricky]
    assert service["command"] == expected
    assert [service["labels"][f"l{i}"] for i in range(len(tricky))] == expected
    assert service["environment"] == {"A": "0:0"}
    _config(path, "v1", env={"FMB_X": "interpolated"})


def test_a_scale_topology_gets_one_fleet_container_per_substation(tmp_path: Path) -> None:
    """utility-small: each substation's meters in one fleet service on its own network, their
    certificates in the fleet's volume (which init fills), brokers sized for their clients."""
    from brokers.mosquitto import connection_budget
    from testbed.backends.composefile import FILE_RESERVE

    source = DEFAULT_TOPOLOGY.parent / "utility-small.toml"
    topology = load_topology(source)
    out = tmp_path / "utility-small.yml"
    out.write_text(render_compose(topology, str(source)))
    assert render_compose(topology, str(source)) == out.read_text()  # deterministic
    services = _config(out)["services"]
    groups = topology.fleets
    assert len(groups) == len(topology.substations) == 3
    for fleet, meters in groups.items():
        site = meters[0].site
        s = services[fleet]
        assert s["command"][-2:] == ["fleet", fleet] and set(s["networks"]) == {site}
        assert {v["source"] for v in s["volumes"] if v["target"] == "/certs"} == {f"certs-{fleet}"}
        assert s["ulimits"]["nofile"]["soft"] >= len(meters) + FILE_RESERVE
        assert f"{site}-delivery" in s["depends_on"] and f"{site}-control" not in s["depends_on"]
        assert not any(m.id in services for m in meters)  # no container per fleet meter
        delivery = topology.broker_for(site, "delivery")
        budget = connection_budget(topology, delivery)
        assert budget >= 2 * len(meters)
        assert services[delivery.name]["ulimits"]["nofile"]["hard"] == budget + FILE_RESERVE
    init = {v["target"].removeprefix("/out/") for v in services["init"]["volumes"] if v["target"].startswith("/out/")}
    solo = {d.id for d in topology.devices if not d.fleet}
    assert init == {b.name for b in topology.brokers} | solo | set(groups) | {HARNESS, MONITOR, RESPONDER}
    assert set(services["scenario"]["networks"]) == {s.name for s in topology.sites}
    _config(out, "v1")
