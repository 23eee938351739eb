"""Recover: restart what crashed, reissue what was revoked, restore a backup, and verify each.

Each test runs a bus of its own (it kills and restores things), on free ports in tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tarfile
import urllib.parse
from pathlib import Path

import pytest
from cryptography import x509

from testbed.backends.processes import ProcessRecord, alive
from testbed.core.waiting import wait_until
from tests.test_cli import _free_port_topology


def _fmb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], capture_output=True, text=True,
                          timeout=180, env=dict(os.environ))


@pytest.fixture
def bus_dirs(tmp_path: Path):  # type: ignore[no-untyped-def]
    topo = _free_port_topology(tmp_path)
    dirs = ["--topology", str(topo), "--certs", str(tmp_path / "certs"), "--state", str(tmp_path / "state")]
    up = _fmb("up", "--ui-port", "0", *dirs)  # any free port: 8443 may be another bus's console
    assert up.returncode == 0, up.stderr
    try:
        yield tmp_path, dirs
    finally:
        _fmb("down", *dirs)


def _record(tmp_path: Path, name: str) -> ProcessRecord:
    state = json.loads((tmp_path / "state" / "bus.json").read_text())
    return next(ProcessRecord(**p) for p in state["processes"] if p["name"] == name)


def test_recover_restarts_crashed_broker_and_dms_and_verifies(bus_dirs) -> None:
    tmp_path, dirs = bus_dirs
    for name in ("dc-delivery", "dms-1"):
        record = _record(tmp_path, name)
        os.kill(record.pid, signal.SIGKILL)  # a crash: no clean exit, no save
        wait_until(lambda record=record: not alive(record), 5, interval_s=0.02,
                   what=f"{name} still running 5 s after SIGKILL")
    out = _fmb("recover", *dirs)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "restarted: dc-delivery, dms-1" in out.stdout
    assert "recovery: verified, the scenario passes" in out.stdout


def test_recover_restarts_a_device_that_lives_on_with_a_dead_network_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMB_TEST_HOOKS", "kill-loop")  # SIGUSR2 ends a device's MQTT network threads
    topo = _free_port_topology(tmp_path)
    dirs = ["--topology", str(topo), "--certs", str(tmp_path / "certs"), "--state", str(tmp_path / "state")]
    up = _fmb("up", "--ui-port", "0", *dirs)
    assert up.returncode == 0, up.stderr
    try:
        record = _record(tmp_path, "meter-1")
        os.kill(record.pid, signal.SIGUSR2)
        wait_until(lambda: "unhealthy" in _fmb("status", *dirs).stdout, 15, what="meter-1 never shown unhealthy")
        out = _fmb("recover", *dirs)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "restarted: meter-1" in out.stdout
        assert "recovery: verified, the scenario passes" in out.stdout
        assert _record(tmp_path, "meter-1").pid != record.pid
        assert _fmb("status", *dirs).returncode == 0
    finally:
        _fmb("down", *dirs)


def test_reissue_after_revocation_and_verify(bus_dirs) -> None:
    tmp_path, dirs = bus_dirs
    old = (tmp_path / "certs" / "clients" / "meter-1.pem").read_bytes()
    revoke = _fmb("certs", "revoke", "meter-1", *dirs)
    assert revoke.returncode == 0, revoke.stderr
    early = _fmb("certs", "reissue", "dms-1", *dirs)  # not revoked: refused, one line
    assert early.returncode == 1 and "revoke it first" in early.stderr
    out = _fmb("certs", "reissue", "meter-1", *dirs)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "certs" / "clients" / "meter-1.pem").read_bytes() != old
    assert "reissue of meter-1: verified, the scenario passes" in out.stdout


def test_backup_and_restore_bring_back_the_same_pki_and_verify(bus_dirs) -> None:
    tmp_path, dirs = bus_dirs
    archive = tmp_path / "backup.tar.gz"
    out = _fmb("backup", "--file", str(archive), *dirs)
    assert out.returncode == 0, out.stderr
    assert archive.stat().st_mode & 0o077 == 0
    ca = (tmp_path / "certs" / "ca" / "ca.pem").read_bytes()
    assert _fmb("down", *dirs).returncode == 0
    shutil.rmtree(tmp_path / "certs")
    shutil.rmtree(tmp_path / "state" / "brokers")
    out = _fmb("restore", str(archive), *dirs)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "certs" / "ca" / "ca.pem").read_bytes() == ca  # the same CA, not a new one
    assert (tmp_path / "certs" / "ca" / "ca.key").stat().st_mode & 0o077 == 0
    assert "restore: verified, the scenario passes" in out.stdout
    assert list((tmp_path / "state" / "brokers").glob("dc-*/data/mosquitto.db"))


def test_restore_refuses_a_foreign_archive(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    evil = tmp_path / "evil"
    evil.write_text("x")
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(evil, arcname="certs/../../evil")
    out = _fmb("restore", str(bad), "--certs", str(tmp_path / "c"), "--state", str(tmp_path / "s"))
    assert out.returncode == 1 and "unexpected entry" in out.stderr
    assert not (tmp_path.parent / "evil").exists()


def test_rotation_without_stopping_the_bus(bus_dirs) -> None:
    tmp_path, dirs = bus_dirs
    before = {n: (tmp_path / "certs" / sub / f"{n}.pem").read_bytes()
              for sub, n in (("servers", "field-control"), ("clients", "capbank-1"), ("clients", "dms-1"))}
    records = {n: _record(tmp_path, n) for n in ("field-control", "dc-delivery")}
    run = _fmb("run", "appendix-a", *dirs)
    assert run.returncode == 0, run.stdout + run.stderr
    out = _fmb("certs", "rotate", "--revoke-old", *dirs)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rotation: verified, the scenario passes" in out.stdout
    after = {n: (tmp_path / "certs" / sub / f"{n}.pem").read_bytes()
             for sub, n in (("servers", "field-control"), ("clients", "capbank-1"), ("clients", "dms-1"))}
    assert all(before[n] != after[n] for n in before)
    assert {n: _record(tmp_path, n) for n in records} == records  # the brokers kept running throughout
    # The tablet's web console came back with its new certificate, at the same address.
    assert "rotated tablet-1-ui" in out.stdout
    url = urllib.parse.urlsplit((tmp_path / "state" / "run" / "tablet-1.url").read_text().strip())
    served = x509.load_pem_x509_certificate(ssl.get_server_certificate(
        (url.hostname, url.port), ca_certs=str(tmp_path / "certs" / "ca" / "ca.pem")).encode())  # verified
    issued = x509.load_pem_x509_certificate((tmp_path / "certs" / "servers" / "tablet-1-ui.pem").read_bytes())
    assert served.serial_number == issued.serial_number
