"""``fmb bench broker``: bad arguments refused in one line before anything starts, and a short
docker smoke run whose document passes ``check()`` with sane figures, the containers and the
network gone afterwards, also when a broker fails to start. The numbers are the benchmark's, not
these tests'."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testbed.bench.bottleneck import check
from testbed.bench.broker import CONFIGS, BrokerBenchOptions, run_broker_bench
from testbed.core.errors import TestbedError
from testbed.security.pki import PKI
from tests.conftest import require


@pytest.mark.parametrize(("changes", "error"), [
    ({"rates": (100.0, 200.0)}, "--rates must start with 0"),
    ({"rates": (0.0,)}, "--rates needs a load after the idle 0"),
    ({"rates": (0.0, 500.0, 200.0)}, "give rising msg/s"),
    ({"rates": (0.0, float("inf"))}, "give rising msg/s"),
    ({"quota": 0.0}, "--quota is 0"),
    ({"quota": 100.0}, "--quota is 100"),
    ({"step_seconds": -1.0}, "--step-seconds is -1"),
    ({"publishers": 0}, "--publishers is 0"),
    ({"command_rate": 5000.0}, "--command-rate is 5000"),
    ({"configs": ("shared", "fast")}, "--configs has fast"),
])
def test_options_are_checked(changes: dict[str, Any], error: str) -> None:
    options = dataclasses.replace(BrokerBenchOptions(), **changes)
    with pytest.raises(TestbedError, match=error.replace("+", r"\+")):
        options.check()


def test_publishers_grow_with_the_offered_rate() -> None:
    options = BrokerBenchOptions(publishers=2, per_publisher_rate=250)
    assert [options.publishers_for(r) for r in (100, 500, 501, 4000)] == [2, 2, 3, 16]
    assert BrokerBenchOptions().flood_qos == 0  # open loop unless asked: the module docstring says why


@pytest.mark.parametrize(("args", "error"), [
    (["--rates", "0,fast"], "--rates is '0,fast'"),
    (["--quota", "-0.5"], "--quota is -0.5"),
])
def test_cli_refuses_bad_arguments_in_one_line(tmp_path: Path, args: list[str], error: str) -> None:
    run = subprocess.run([sys.executable, "-m", "testbed", "bench", "broker", *args, "--certs", str(tmp_path / "certs"),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and error in lines[0], run.stderr
    assert not (tmp_path / "certs").exists() and not (tmp_path / "out").exists()  # nothing was started or made


def _docker() -> Any:
    from testbed.pytest_plugin import docker_problem

    problem = docker_problem()
    require(problem is None, f"the broker benchmark needs a Docker engine: {problem}")
    from testbed.backends.compose import docker_client

    client = docker_client()
    images = {tag for image in client.images.list() for tag in image.tags}
    require("fmb-broker:latest" in images, "image fmb-broker:latest is missing: run scripts/images")
    return client


def _leftovers(client: Any) -> list[str]:
    """This process's benchmark containers and networks still there (by the labels the benchmark sets)."""
    labels = {"label": ["org.fmb.bench=broker", f"org.fmb.bench.pid={os.getpid()}"]}
    return ([f"container {c.short_id}" for c in client.containers.list(all=True, filters=labels)]
            + [f"network {n.name}" for n in client.networks.list(filters=labels)])


@pytest.mark.docker
@pytest.mark.slow
def test_broker_bench_smoke(tmp_path: Path) -> None:
    client = _docker()
    # A broker at a tenth of a core saturates below 1,500 msg/s of QoS 1 over TLS even on a fast machine.
    # QoS 1 publishers (closed loop) cost the generator least for a saturated broker: a few seconds is all it needs.
    options = BrokerBenchOptions(rates=(0, 1500), quota=0.1, step_seconds=1.0, settle_s=0.3, command_rate=40,
                                 publishers=2, per_publisher_rate=500, flood_qos=1)
    result = run_broker_bench(PKI(tmp_path / "certs"), "fmb", options, tmp_path / "out")
    assert not _leftovers(client)
    doc = json.loads((tmp_path / "out" / "bench-broker.json").read_text())
    check(doc, "bench-broker.json")
    assert doc == json.loads(json.dumps(result))
    assert doc["bottleneck"] == "broker" and doc["load_axis"] == "rising"
    assert [c["config"] for c in doc["curves"]] == ["shared", "segregated", "segregated+priority"]
    for curve in doc["curves"]:
        idle, top = curve["points"]
        assert [idle["load"], top["load"]] == [0, 1500]
        assert idle["delivery_rate"] == 0 and not idle["saturated"]
        # The quota'd broker carried less than the top rate offered, and stayed within its quota.
        assert 0 < top["delivery_rate"] < 1500, (curve["config"], top)
        ev = top["evidence"]
        assert 0 < ev["delivery_broker_cpu_cores"] <= 0.1 * 1.25, ev
        assert ev["delivery_broker_quota_cores"] == 0.1 and ev["publishers"] == 3
        assert "control_broker_cpu_cores" in ev if curve["config"] != "shared" else "control_broker_cpu_cores" not in ev
        for point in curve["points"]:
            c = point["control_ms"]
            assert c["sent"] == 40 and c["acked"] + c["lost"] == c["sent"] and c["acked"] > 0, point
            assert 0 < c["p50"] <= c["p99"] <= c["max"], point
        assert curve["idle_p99_ms"] == idle["control_ms"]["p99"]
    assert doc["curves"][2]["points"][1]["evidence"]["control_broker_quota_cores"] == 0.2  # twice, with priority
    cond = doc["conditions"]
    assert cond["tls_version"].startswith("TLS") and cond["broker_mosquitto"].startswith("2.")
    assert cond["broker_quota_cores"] == 0.1 and len(cond["load_average_after"]) == 3 and cond["flood_qos"] == 1
    assert set(doc["targets"]["met"]) == {"segregated_saturation_over_idle", "shared_over_segregated", "delivery_kept"}


@pytest.mark.docker
def test_a_broker_that_fails_to_start_leaves_nothing_behind(tmp_path: Path) -> None:
    client = _docker()
    # The base image's command is bash, which exits at once without a terminal: a broker that died at start.
    require(any("debian:bookworm-slim" in image.tags for image in client.images.list()),
            "debian:bookworm-slim is missing: run scripts/images")
    options = BrokerBenchOptions(rates=(0, 100), step_seconds=0.5, image="debian:bookworm-slim", configs=("shared",))
    with pytest.raises(TestbedError, match="exited at start"):
        run_broker_bench(PKI(tmp_path / "certs"), "fmb", options, tmp_path / "out")
    assert not _leftovers(client)
    assert not (tmp_path / "out").exists()


def test_the_committed_fixture_is_a_valid_document() -> None:
    """tests/fixtures/bench-broker.json (a real run's output, which the report reads) passes check() and
    says its conditions: the quota, the load average, the generator check."""
    doc = json.loads((Path(__file__).parent / "fixtures" / "bench-broker.json").read_text())
    check(doc, "tests/fixtures/bench-broker.json")
    assert doc["bottleneck"] == "broker" and [c["config"] for c in doc["curves"]] == list(CONFIGS)
    cond = doc["conditions"]
    assert cond["broker_quota_cores"] > 0 and len(cond["load_average_before"]) == 3
    assert isinstance(cond["generator_check"]["broker_was_the_limit"], bool)
    for curve in doc["curves"]:
        assert curve["points"][0]["load"] == 0
        for point in curve["points"]:
            assert "delivery_broker_cpu_cores" in point["evidence"]
