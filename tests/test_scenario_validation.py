"""What a scenario file cannot get past the loader: trigger arguments, bodies, device names, ``after``,
and fields that would be ignored where they are written. Each mistake names its field and the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from testbed.core.errors import ConfigError
from testbed.core.payloads import PayloadError, encode
from testbed.core.scenario import SCENARIO_DIR, load_scenario
from testbed.core.topology import load_topology

DEVICES = {d.id: d.role for d in load_topology().devices}
TABLET = 'device = "tablet"\naction = "set_supply"\nargs = { target = "supply-1", volts = 114.0 }'
FIRST_STEP = 'name = "Tablet UI commands the supply to 114 V"\n'
END = '[end]\ndevice = "tablet"\n'
FINAL = '[[final]]\ndevice = "capbank"\n'
EXPECT = '[[initial.expect]]\ndevice = "supply"\n'
COMMAND = '[[initial.commands]]\ndevice = "supply"\n'
DEVICE_NAMES = "use a device id or role: capbank, capbank-1, dms, dms-1, meter, meter-1, supply"


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} is not in the scenario"
    return text.replace(old, new, 1)


def _args(new: str) -> Callable[[str], str]:
    return lambda t: _edit(t, 'args = { target = "supply-1", volts = 114.0 }', f"args = {new}")


def _load(tmp_path: Path, base: str, edit: Callable[[str], str], devices: dict[str, str] | None = DEVICES):
    good = (SCENARIO_DIR / f"{base}.toml").read_text()
    text = edit(good)
    assert text != good, "the edit did not apply"
    path = tmp_path / "broken.toml"
    path.write_text(text)
    return load_scenario(path, devices)


MISTAKES = [
    # 1. trigger.args: the keys each action takes, their types, and who may trigger.
    ("appendix-a", _args('{ target = "supply-1", volt = 114.0 }'), "trigger.args.volt",
     "remove it or use one of: target, volts"),
    ("appendix-a", _args('{ target = "supply-1" }'), "trigger.args.volts", "volts = 114.0"),
    ("appendix-a", _args('{ target = "supply-1", volts = "114" }'), "trigger.args.volts", "volts = 114.0"),
    ("appendix-a", _args('{ target = "supply-1", volts = 500.0 }'), "trigger.args.volts",
     "setpoint_v (a number of volts, 0-240)"),
    ("appendix-a", _args("{ volts = 114.0 }"), "trigger.args.target", 'target = "supply-1"'),
    ("appendix-a", _args('{ target = "supply/1", volts = 114.0 }'), "trigger.args.target", "no /, + or #"),
    ("appendix-a", lambda t: _edit(t, TABLET, TABLET.replace('"tablet"', '"supply"', 1)), "trigger.device",
     "set_supply is an input on a tablet's UI: use one of: tablet, tablet-1"),
    ("appendix-a", lambda t: _edit(t, TABLET, TABLET.replace('"tablet"', '"operator"', 1)), "trigger.device",
     "use one of: tablet, tablet-1"),
    ("attack-forged-command", lambda t: _edit(t, 'sign = "forged"', 'signed = "forged"'), "trigger.args.signed",
     "remove it or use one of: body, profile, repeat, sign, target"),
    ("attack-forged-command", lambda t: _edit(t, 'body = { setpoint_v = 90.0 }, ', ''), "trigger.args.body",
     "body = { ... }"),
    ("attack-false-low-voltage", lambda t: _edit(t, 'device = "meter-1"\naction', 'device = "meter"\naction'),
     "trigger.device", "use one of: bench, capbank-1, dms-1, meter-1, monitor, operator"),
    ("attack-false-low-voltage", lambda t: _edit(t, 'device = "meter-1"\naction', 'device = "meter-9"\naction'),
     "trigger.device", "use one of: bench, capbank-1"),
    ("attack-false-low-voltage", lambda t: _edit(t, 'target = "meter-1"', 'target = "meter-1", sign = "none"'),
     "trigger.args.sign", "remove it"),
    ("attack-replayed-command", lambda t: _edit(t, "repeat = 2", "repeat = true"), "trigger.args.repeat",
     "1 or more"),
    ("attack-replayed-command", lambda t: _edit(t, 'profile = "SupplyControlProfile", target',
                                                'profile = "SupplyControl", target'),
     "trigger.args.profile", "use one of: SupplyControlProfile"),
    # 2. Bodies are checked at load, as the devices check them.
    ("appendix-a", lambda t: _edit(t, "body = { setpoint_v = 120.0 }", "body = { setpoint_v = 1200.0 }"),
     "initial.commands[0].body", "give a SupplyControlProfile body: setpoint_v (a number of volts, 0-240)"),
    ("appendix-a", lambda t: _edit(t, 'body = { action = "open" }', 'body = { state = "open" }'),
     "initial.commands[1].body", "action ('open' or 'close')"),
    ("appendix-a", lambda t: _edit(t, "body = { setpoint_v = 120.0 }", 'body = "120"'),
     "initial.commands[0].body", "as a table"),
    ("appendix-a", lambda t: _edit(t, "{ setpoint_v = 120.0 }", "{ setpoint_v = 120.0, at = 1979-05-27 }"),
     "initial.commands[0].body", "use only strings, numbers, booleans, arrays and tables"),
    ("attack-false-low-voltage", lambda t: _edit(t, 'reason = "exception" }', 'reason = "alarm" }'),
     "trigger.args.body", "reason ('exception' or 'periodic')"),
    ("attack-forged-command", lambda t: _edit(t, "body = { setpoint_v = 90.0 }", "body = { setpoint = 90.0 }"),
     "trigger.args.body", "give a SupplyControlProfile body: setpoint_v"),
    # 3. A harness identity matches no device in the initial and final state.
    ("appendix-a", lambda t: _edit(t, COMMAND, COMMAND.replace('"supply"', '"operator"')),
     "initial.commands[0].device", DEVICE_NAMES),
    ("appendix-a", lambda t: _edit(t, EXPECT, EXPECT.replace('"supply"', '"monitor"')),
     "initial.expect[0].device", DEVICE_NAMES),
    ("appendix-a", lambda t: _edit(t, FINAL, FINAL.replace('"capbank"', '"monitor"')), "final[0].device",
     DEVICE_NAMES),
    # 4. The first step can only follow the trigger.
    ("appendix-a", lambda t: _edit(t, FIRST_STEP, FIRST_STEP + "after = 1\n"), "steps[0].after",
     "the first step can only follow the trigger: write after = 0 or leave it out"),
    ("appendix-a", lambda t: _edit(t, 'name = "Power supply applies 114 V"\n',
                                   'name = "Power supply applies 114 V"\nafter = 2\n'),
     "steps[1].after", "name an earlier step, 1, or 0 for the trigger"),
    # 5. The end follows a step, not the trigger.
    ("appendix-a", lambda t: _edit(t, END, END + "after = 0\n"), "end.after",
     "name the step the end follows, 1-9, or leave it out to follow every step"),
    ("appendix-a", lambda t: _edit(t, END, END + "after = 10\n"), "end.after", "1-9"),
    ("attack-forged-command", lambda t: _edit(t, "[end]\n", "[end]\nafter = 0\n"),
     "end.after", "name the step the end follows, 1, or leave it out"),
    # 6. Fields that mean nothing where they are written.
    ("appendix-a", lambda t: _edit(t, FIRST_STEP, FIRST_STEP + "fresh = false\n"), "steps[0].fresh",
     "remove it: only [[initial.expect]] uses fresh"),
    ("appendix-a", lambda t: _edit(t, END, END + "fresh = true\n"), "end.fresh",
     "remove it: only [[initial.expect]] uses fresh"),
    ("appendix-a", lambda t: _edit(t, FINAL, FINAL + "fresh = false\n"), "final[0].fresh",
     "remove it: only [[initial.expect]] uses fresh"),
    ("appendix-a", lambda t: _edit(t, EXPECT, EXPECT + 'plane = "delivery"\n'), "initial.expect[0].plane",
     "remove it: only [[steps]] and [end] use plane"),
    ("appendix-a", lambda t: _edit(t, FINAL, FINAL + 'plane = "delivery"\n'), "final[0].plane",
     "remove it: only [[steps]] and [end] use plane"),
    ("appendix-a", lambda t: _edit(t, FINAL, FINAL + "after = 1\n"), "final[0].after",
     "remove it: only [[steps]] and [end] use after"),
]


@pytest.mark.parametrize(("base", "edit", "field", "fix"), MISTAKES)
def test_mistake_names_field_and_fix(tmp_path: Path, base: str, edit, field: str, fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, base, edit)
    assert info.value.path == str(tmp_path / "broken.toml")
    assert info.value.field == field, str(info.value)
    assert fix in info.value.fix, str(info.value)


@pytest.mark.parametrize(("base", "edit", "field"), [
    ("appendix-a", lambda t: _edit(t, FINAL, FINAL.replace('"capbank"', '"monitor"')), "final[0].device"),
    ("appendix-a", lambda t: _edit(t, TABLET, TABLET.replace('"tablet"', '"supply"', 1)), "trigger.device"),
    ("attack-false-low-voltage", lambda t: _edit(t, 'device = "meter-1"\naction', 'device = "meter"\naction'),
     "trigger.device"),
    ("attack-forged-command", lambda t: _edit(t, 'sign = "forged"', 'signed = "forged"'), "trigger.args.signed"),
    ("appendix-a", lambda t: _edit(t, END, END + "after = 0\n"), "end.after"),
])
def test_mistakes_are_caught_without_a_topology(tmp_path: Path, base: str, edit, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, base, edit, devices=None)
    assert info.value.field == field, str(info.value)


def test_a_bad_body_reports_the_devices_own_message(tmp_path: Path) -> None:
    with pytest.raises(PayloadError) as expected:
        encode("SupplyControlProfile", "operator", 1, {"setpoint_v": 1200.0})
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, "appendix-a", lambda t: _edit(t, "{ setpoint_v = 120.0 }", "{ setpoint_v = 1200.0 }"))
    assert info.value.problem == str(expected.value)


@pytest.mark.parametrize(("base", "edit"), [
    ("appendix-a", lambda t: _edit(t, FIRST_STEP, FIRST_STEP + "after = 0\n")),
    ("appendix-a", lambda t: _edit(t, END, END + "after = 9\n")),
    ("appendix-a", lambda t: _edit(t, END, END + "after = 2\n")),
    ("appendix-a", lambda t: _edit(t, TABLET, TABLET.replace('"tablet"', '"tablet-1"', 1))),
    ("appendix-a", lambda t: _edit(t, FINAL, FINAL.replace('"capbank"', '"capbank-1"'))),
    ("attack-forged-command", lambda t: _edit(t, 'device = "tablet-1"          #', 'device = "operator"  #')),
    ("attack-false-low-voltage", lambda t: _edit(t, 'reason = "exception" }', 'reason = "exception", x = 1 }')),
])
def test_what_is_right_still_loads(tmp_path: Path, base: str, edit) -> None:
    _load(tmp_path, base, edit)


@pytest.mark.parametrize("path", sorted(SCENARIO_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_scenario_file_loads(path: Path) -> None:
    load_scenario(path, DEVICES)
    load_scenario(path)
