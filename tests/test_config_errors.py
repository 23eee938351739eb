"""A broken topology or scenario file, or a missing broker binary: one clear line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.core.errors import ConfigError
from testbed.core.scenario import load_scenario
from testbed.core.topology import DEFAULT_TOPOLOGY, load_topology

GOOD = DEFAULT_TOPOLOGY.read_text()


def _topology(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("edit", "field", "fix"), [
    (lambda t: t.replace('role = "meter"', 'role = "metre"'), "devices[2].role", "use one of"),
    (lambda t: t.replace("delivery_port = 18883", 'delivery_port = "18883"'), "sites[1].delivery_port",
     "give a int"),
    (lambda t: t.replace("control_port = 18884", "control_port = 70000"), "sites[1].control_port",
     "use a TCP port"),
    (lambda t: t.replace('bridge_to = "dc"', 'bridge_to = "cloud"'), "sites[1].bridge_to",
     "name another site"),
    (lambda t: t.replace('meter = "meter-1"', 'meter = "supply-1"'), "feeders[0].meter",
     "use one of: meter-1"),
    (lambda t: t.replace("qos = 1 ", "qos = 3 "), "qos", "use 0, 1 or 2"),
    (lambda t: t.replace('id = "dms-1"', 'id = "dms/1"'), "devices[4].id", "letters, digits"),
    (lambda t: t.replace("line_drop_v = 1.2", "line_drop_v = -1.2"), "feeders[0].line_drop_v", ">= 0"),
    (lambda t: t + "\n[[devices]]\nid = \"meter-1\"\nrole = \"meter\"\nsite = \"field\"\n", "devices",
     "unique"),
    (lambda t: t.replace("[limits]", "[limits]\nmessage_size = 10"), "limits.message_size",
     "remove it"),
    (lambda t: t.replace("[[sites]]", "[[sites]\n", 1), "", "fix the syntax"),
])
def test_broken_topology_names_file_field_and_fix(tmp_path: Path, edit, field: str, fix: str) -> None:
    path = _topology(tmp_path, edit(GOOD))
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    err = info.value
    assert err.path == str(path)
    assert err.field == field
    assert fix in str(err), str(err)


def test_default_topology_loads() -> None:
    t = load_topology()
    assert {b.name for b in t.brokers} == {"dc-delivery", "dc-control", "field-delivery", "field-control"}
    assert [b.name for b in t.bridges] == ["bridge-field-delivery", "bridge-field-control"]
    assert {d.role for d in t.devices} == {"tablet", "supply", "meter", "capbank", "dms"}


def test_a_topology_without_what_code_needs_says_so() -> None:
    t = load_topology()
    assert t.first((d.id for d in t.devices if d.role == "dms"), "DMS") == "dms-1"
    with pytest.raises(ConfigError, match=r"appendix-a.toml: has no field site with a DMS; this needs one"):
        t.first((d for d in t.devices if d.role == "dms" and d.site == "field"), "field site with a DMS")


@pytest.mark.parametrize(("edit", "field", "fix"), [
    (lambda t: t.replace('profile = "MeterReadingProfile"', 'profile = "MeterReading"', 1),
     "steps[2].profile", "use one of"),
    (lambda t: t.replace('device = "capbank"\nprofile = "CapBankStatusProfile"\nplane = "delivery"',
                         'device = "capbank"\nprofile = "CapBankStatusProfile"\nplane = "control"'),
     "steps[4].plane", "write plane = 'delivery'"),
    (lambda t: t.replace("voltage_v = { lt = 114.0 }", "voltage_v = { below = 114.0 }"),
     "steps[2].where.voltage_v", "use one of"),
    (lambda t: t.replace("after = 6", "after = 9"), "steps[7].after", "name an earlier step"),
    (lambda t: t.replace('device = "dms"', 'device = "scada"', 1), "steps[3].device", "use one of"),
    (lambda t: t.replace("timeout_s = 10.0", "timeout_s = -1"), "timeout_s", "seconds > 0"),
])
def test_broken_scenario_names_file_field_and_fix(tmp_path: Path, edit, field: str, fix: str) -> None:
    good = (Path(__file__).parent.parent / "scenarios" / "appendix-a.toml").read_text()
    path = tmp_path / "broken.toml"
    text = edit(good)
    assert text != good, "the edit did not apply"
    path.write_text(text)
    t = load_topology()
    with pytest.raises(ConfigError) as info:
        load_scenario(path, {d.id: d.role for d in t.devices})
    assert info.value.field == field, str(info.value)
    assert fix in str(info.value), str(info.value)


def _fmb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_cli_reports_a_broken_topology_in_one_line(tmp_path: Path) -> None:
    path = _topology(tmp_path, GOOD.replace('role = "meter"', 'role = "metre"'))
    out = _fmb("up", "--topology", str(path), "--certs", str(tmp_path / "c"), "--state", str(tmp_path / "s"))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert str(path) in lines[0] and "devices[2].role" in lines[0] and "use one of" in lines[0]


def test_cli_reports_a_missing_mosquitto_in_one_line(tmp_path: Path) -> None:
    out = _fmb("demo", "--certs", str(tmp_path / "c"), "--state", str(tmp_path / "s"),
               env={"FMB_MOSQUITTO": str(tmp_path / "no-such-mosquitto")})
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "mosquitto is not installed" in lines[0] and "apt-get install mosquitto" in lines[0]
    assert not (tmp_path / "s" / "bus.json").exists()


def test_cli_reports_an_unknown_scenario_in_one_line(bus, tmp_path: Path) -> None:
    out = _fmb("run", "no-such-scenario", "--state", str(bus.state_dir), "--certs", str(bus.pki.directory))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "use one of: appendix-a" in out.stderr
