"""The ``fmb`` command as a user types it: up, run on the running bus, status, down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from testbed.core.topology import DEFAULT_TOPOLOGY, load_topology


def _fmb(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ), cwd=cwd)


def _free_port_topology(tmp_path: Path) -> Path:
    """The default topology on ports free now, so the test can run beside anything else."""
    text = DEFAULT_TOPOLOGY.read_text()
    for site in load_topology().with_free_ports().sites:
        default = load_topology().site(site.name)
        text = text.replace(f"delivery_port = {default.delivery_port}", f"delivery_port = {site.delivery_port}")
        text = text.replace(f"control_port = {default.control_port}", f"control_port = {site.control_port}")
    path = tmp_path / "topology.toml"
    path.write_text(text)
    return path


def test_up_run_status_down(tmp_path: Path) -> None:
    topo = _free_port_topology(tmp_path)
    dirs = ["--certs", str(tmp_path / "certs"), "--state", str(tmp_path / "state")]
    up = _fmb("up", "--topology", str(topo), "--ui-port", "0", *dirs)
    try:
        assert up.returncode == 0, up.stderr
        assert "bus up" in up.stdout and "field-control" in up.stdout
        assert "tablet UI tablet-1: https://127.0.0.1:" in up.stdout and "?token=" in up.stdout
        state = json.loads((tmp_path / "state" / "bus.json").read_text())
        pids = [p["pid"] for p in state["processes"]]
        assert len(pids) == 4 + 1 + 5 + 1  # brokers, feeder, devices, monitor

        again = _fmb("up", "--topology", str(topo), *dirs)
        assert again.returncode == 1 and "already running" in again.stderr

        out = tmp_path / "run"
        run = _fmb("run", "appendix-a", "--repeat", "3", "--out", str(out), *dirs)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "starting" not in run.stdout  # it used the running bus
        assert "PASSED" in run.stdout
        result = json.loads((out / "result.json").read_text())
        assert result["passed"] and result["repetitions"] == 3

        status = _fmb("status", *dirs)
        assert status.returncode == 0 and status.stdout.count(" up ") == 11
    finally:
        down = _fmb("down", *dirs)
    assert down.returncode == 0 and "bus stopped" in down.stdout
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert not (tmp_path / "state" / "bus.json").exists()
    # What the tablet's run button asks for: the running bus, never one of its own.
    alone = _fmb("run", "appendix-a", "--no-start", *dirs)
    assert alone.returncode == 1 and "no bus running" in alone.stderr and "fmb up" in alone.stderr


def test_run_without_a_bus_starts_and_stops_one(tmp_path: Path) -> None:
    topo = _free_port_topology(tmp_path)
    dirs = ["--certs", str(tmp_path / "certs"), "--state", str(tmp_path / "state")]
    run = _fmb("run", "scenarios/appendix-a.toml", "--topology", str(topo), "--out", str(tmp_path / "r"),
               *dirs, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "starting 4 brokers and 5 devices" in run.stdout
    assert "stopped the brokers and devices" in run.stdout
    assert not (tmp_path / "state" / "bus.json").exists()
    assert (tmp_path / "r" / "timeline.png").exists()
