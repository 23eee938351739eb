"""Scenario files: a declarative description of a run on the bus, and its predicates.

A scenario (TOML, see ``scenarios/README.md``) has an initial state (commands the harness's
operator publishes and the statuses that confirm them), a trigger (an operator input on a
device's UI), the expected steps in order (who publishes which profile on which plane, with a
predicate on the payload's body), an end condition, a final state and a timeout. Loading
validates everything and raises :class:`ConfigError` naming the file, the field and the fix.

Steps are causal, not a total order: each follows the step named by its ``after`` (by
default the one before it; 0 is the trigger), so two effects of one cause, such as the supply's
status and the meter's new reading, may arrive in either order. The end condition follows every
step unless its own ``after`` names an earlier one (it cannot follow the trigger directly).

A predicate maps a dotted path into the message body (``*`` matches any key) to a condition:
a bare value means equality, or a table of ``eq``, ``ne``, ``lt``, ``le``, ``gt``, ``ge``,
``between = [lo, hi]``, ``in = [...]`` or ``contains = "text"``. With ``*`` the condition holds if any match does.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from testbed.core.errors import ConfigError
from testbed.core.payloads import BODY_RULES, PayloadError, decode, encode
from testbed.core.topics import PLANES, PROFILES
from testbed.core.topology import DEVICE_ROLES, HARNESS_IDENTITIES

__all__ = ["SCENARIO_DIR", "Expectation", "Scenario", "Step", "find_scenario", "load_scenario", "matches"]

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "scenarios"
TRIGGER_ACTIONS = ("set_supply", "publish")
TRIGGER_ARGS = {"set_supply": ("target", "volts"), "publish": ("profile", "target", "body", "sign", "repeat")}
# Where each expectation is written, and the fields only some of them use.
_SECTIONS = {"initial": "[[initial.expect]]", "step": "[[steps]]", "end": "[end]", "final": "[[final]]"}
_ONLY = {"fresh": ("initial",), "plane": ("step", "end"), "after": ("step", "end")}
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda v, a: v == a,
    "ne": lambda v, a: v != a,
    "lt": lambda v, a: _num(v) and v < a,
    "le": lambda v, a: _num(v) and v <= a,
    "gt": lambda v, a: _num(v) and v > a,
    "ge": lambda v, a: _num(v) and v >= a,
    "between": lambda v, a: _num(v) and a[0] <= v <= a[1],
    "in": lambda v, a: v in a,
    "contains": lambda v, a: isinstance(v, str) and a in v,
}


def _num(v: Any) -> TypeGuard[float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True)
class Expectation:
    """A message some device publishes: its profile, plane and a predicate on its body."""

    device: str  # a device id or a role
    profile: str
    where: dict[str, Any] = field(default_factory=dict)
    plane: str | None = None
    name: str = ""
    fresh: bool = True  # only messages published after the phase began count
    # steps: the step (1-based) this one must follow, 0 the trigger; end: 1 to the number of steps,
    # the last one meaning after every step's message
    after: int = 0

    def matches(self, body: dict[str, Any]) -> bool:
        return matches(self.where, body)


Step = Expectation


@dataclass(frozen=True)
class Command:
    """A command the operator publishes to every device matching ``device``."""

    device: str
    profile: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Trigger:
    """What starts the scenario: an operator's input on a device's UI (``set_supply``), or a
    message an identity publishes with its own certificate (``publish``: an attack, say)."""

    device: str  # set_supply: the device whose UI takes the input; publish: the identity (CN)
    action: str
    args: dict[str, Any]
    delay_s: float = 0.0  # wait this long after the initial state holds, then trigger


@dataclass(frozen=True)
class Scenario:
    """A whole scenario, validated."""

    path: str
    name: str
    description: str
    timeout_s: float
    initial_commands: tuple[Command, ...]
    initial_expect: tuple[Expectation, ...]
    trigger: Trigger
    steps: tuple[Expectation, ...]
    end: Expectation
    final: tuple[Expectation, ...]


def matches(where: dict[str, Any], body: dict[str, Any]) -> bool:
    """True if every condition of ``where`` holds on ``body``."""
    for path, cond in where.items():
        values = _lookup(body, path.split("."))
        ops = cond if isinstance(cond, dict) else {"eq": cond}
        if not any(all(_OPS[op](v, arg) for op, arg in ops.items()) for v in values):
            return False
    return True


def _lookup(obj: Any, parts: list[str]) -> list[Any]:
    if not parts:
        return [obj]
    head, rest = parts[0], parts[1:]
    if isinstance(obj, dict):
        children = list(obj.values()) if head == "*" else [obj[head]] if head in obj else []
    elif isinstance(obj, list) and head == "*":
        children = obj
    else:
        children = []
    return [v for c in children for v in _lookup(c, rest)]


def find_scenario(name_or_path: str) -> Path:
    """A scenario file from its name (``scenarios/<name>.toml``) or its path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or "/" in name_or_path:
        return path
    candidate = SCENARIO_DIR / f"{name_or_path}.toml"
    if not candidate.exists():
        known = sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))
        raise ConfigError(name_or_path, "", "is no scenario name or file",
                          f"use one of: {', '.join(known)}, or a path to a .toml file")
    return candidate


def load_scenario(name_or_path: str | Path, devices: dict[str, str] | None = None) -> Scenario:
    """Load and validate a scenario; ``devices`` (id -> role) lets names be checked too."""
    path = find_scenario(str(name_or_path))
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file", "give a scenario name or a .toml path") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"is not valid TOML ({e})", "fix the syntax at that line") from None
    v = _Validator(path, devices)
    v.known(data, "", {"schema", "name", "description", "timeout_s", "initial", "trigger", "steps",
                       "end", "final"})
    if data.get("schema") != 1:
        raise ConfigError(path, "schema", f"is {data.get('schema')!r}", "write schema = 1")
    timeout = data.get("timeout_s", 10.0)
    if not _num(timeout) or timeout <= 0:
        raise ConfigError(path, "timeout_s", f"is {timeout!r}", "give a number of seconds > 0")
    initial = v.table(data, "initial", required=False)
    v.known(initial, "initial", {"commands", "expect"})
    commands = tuple(v.command(t, f"initial.commands[{i}]")
                     for i, t in enumerate(v.array(initial, "commands", "initial.commands")))
    expect = tuple(v.expectation(t, f"initial.expect[{i}]", "initial")
                   for i, t in enumerate(v.array(initial, "expect", "initial.expect")))
    trigger = v.trigger(v.table(data, "trigger"))
    steps = tuple(v.expectation(t, f"steps[{i}]", "step", step=i + 1)
                  for i, t in enumerate(v.array(data, "steps", "steps", required=True)))
    if not steps:
        raise ConfigError(path, "steps", "is empty", "add at least one [[steps]] table")
    return Scenario(
        path=str(path),
        name=v.string(data, "name", ""),
        description=str(data.get("description", "")),
        timeout_s=float(timeout),
        initial_commands=commands,
        initial_expect=expect,
        trigger=trigger,
        steps=steps,
        end=v.expectation(v.table(data, "end"), "end", "end", step=len(steps) + 1),
        final=tuple(v.expectation(t, f"final[{i}]", "final")
                    for i, t in enumerate(v.array(data, "final", "final"))),
    )


class _Validator:
    def __init__(self, path: Path, devices: dict[str, str] | None) -> None:
        self.path = path
        self.devices = devices
        # What a device id or role may name: a device of the topology (initial state, final state).
        self.device_names = set(devices) | set(devices.values()) if devices else None
        # Harness identities (the monitor, the operator, ...) may publish and be expected too.
        self.names = self.device_names | set(HARNESS_IDENTITIES) if self.device_names else None

    def fail(self, field_: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(self.path, field_, problem, fix)

    def known(self, table: dict[str, Any], where: str, allowed: set[str] | tuple[str, ...],
              problem: str = "is not a known field") -> None:
        for key in table:
            if key not in allowed:
                f = f"{where}.{key}" if where else key
                raise self.fail(f, problem, f"remove it or use one of: {', '.join(sorted(allowed))}")

    def table(self, data: dict[str, Any], key: str, required: bool = True) -> dict[str, Any]:
        value = data.get(key)
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, "is missing" if value is None else "is not a table", f"add a [{key}] table")
        return value

    def array(self, data: dict[str, Any], key: str, where: str, required: bool = False) -> list[Any]:
        value = data.get(key)
        if value is None:
            if required:
                raise self.fail(where, "is missing", f"add [[{where}]] tables")
            return []
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise self.fail(where, "is not an array of tables", f"write each one as [[{where}]]")
        return value

    def string(self, table: dict[str, Any], key: str, where: str) -> str:
        value = table.get(key)
        f = f"{where}.{key}" if where else key
        if not isinstance(value, str) or not value:
            raise self.fail(f, "is missing" if value is None else f"is {value!r}", f'write {key} = "..."')
        return value

    def device(self, table: dict[str, Any], where: str, harness: bool = True) -> str:
        """A device id or role; with ``harness``, a harness identity too (it publishes, but is no device)."""
        name = self.string(table, "device", where)
        names = self.names if harness else self.device_names
        if not harness and name in HARNESS_IDENTITIES and (names is None or name not in names):
            allowed = f": {', '.join(sorted(names))}" if names else ""
            raise self.fail(f"{where}.device", f"is {name!r}, a harness identity, which matches no device",
                            f"use a device id or role{allowed}")
        if names is not None and name not in names:
            raise self.fail(f"{where}.device", f"is {name!r}, no device or role of the topology",
                            f"use one of: {', '.join(sorted(names))}")
        return name

    def tablet(self, table: dict[str, Any], where: str) -> str:
        """The device whose UI takes a ``set_supply`` input: a tablet's id or the role ``tablet``."""
        name = self.string(table, "device", where)
        if self.devices is None:
            if name != "tablet" and name in (*DEVICE_ROLES, *HARNESS_IDENTITIES):
                raise self.fail(f"{where}.device", f"is {name!r}, not a tablet",
                                "set_supply is an input on a tablet's UI: name a tablet's id or the role tablet")
            return name
        tablets = sorted(i for i, role in self.devices.items() if role == "tablet")
        if not tablets:
            raise self.fail(f"{where}.device", "names a tablet, but the topology has none",
                            "add a tablet to the topology, or use a publish trigger")
        if name not in ("tablet", *tablets):
            what = "not a tablet" if name in (self.names or ()) else "no device of the topology"
            raise self.fail(f"{where}.device", f"is {name!r}, {what}",
                            f"set_supply is an input on a tablet's UI: use one of: {', '.join(['tablet', *tablets])}")
        return name

    def identity(self, table: dict[str, Any], where: str) -> str:
        """The one identity (certificate) a ``publish`` trigger uses: a device id or a harness identity."""
        name = self.string(table, "device", where)
        if self.devices is None:
            roles, identities = set(DEVICE_ROLES), None
        else:
            roles = set(self.devices.values()) - set(self.devices)
            identities = sorted(set(self.devices) | set(HARNESS_IDENTITIES))
        listed = f"use one of: {', '.join(identities)}" if identities else \
            "use a device id (meter-1) or a harness identity (operator)"
        if name in roles:
            raise self.fail(f"{where}.device", f"is the role {name!r}, but publish uses one identity's certificate",
                            listed)
        if identities is not None and name not in identities:
            raise self.fail(f"{where}.device", f"is {name!r}, no device or harness identity of the topology", listed)
        return name

    def body(self, profile: str, body: dict[str, Any], field_: str) -> None:
        """Check ``body`` as a device would: encoded, decoded and checked against the profile's schema."""
        try:
            decode(encode(profile, "scenario", 1, body), profile)
        except PayloadError as e:
            fields = ", ".join(f"{name} ({_describe(rule)})" for name, rule in BODY_RULES[profile].items())
            raise self.fail(field_, str(e), f"give a {profile} body: {fields}") from None
        except (TypeError, ValueError) as e:  # a TOML date or time has no JSON form
            raise self.fail(field_, f"cannot be sent as JSON ({e})",
                            "use only strings, numbers, booleans, arrays and tables") from None

    def mrid(self, args: dict[str, Any], field_: str) -> str:
        target = args.get("target")
        if not isinstance(target, str) or not target or any(c in target for c in "/+#"):
            raise self.fail(field_, "is missing" if target is None else f"is {target!r}",
                            'give the mRID of the device the message is for (no /, + or #): target = "supply-1"')
        return target

    def trigger(self, trig: dict[str, Any]) -> Trigger:
        self.known(trig, "trigger", {"device", "action", "args", "delay_s"})
        delay = trig.get("delay_s", 0.0)
        if not _num(delay) or delay < 0:
            raise self.fail("trigger.delay_s", f"is {delay!r}", "give a number of seconds >= 0")
        action = self.string(trig, "action", "trigger")
        if action not in TRIGGER_ACTIONS:
            raise self.fail("trigger.action", f"is {action!r}", f"use one of: {', '.join(TRIGGER_ACTIONS)}")
        args = trig.get("args", {})
        if not isinstance(args, dict):
            raise self.fail("trigger.args", "is not a table", "write args = { ... }")
        self.known(args, "trigger.args", TRIGGER_ARGS[action], f"is not an argument of {action}")
        if action == "set_supply":
            device = self.tablet(trig, "trigger")
            self.mrid(args, "trigger.args.target")
            volts = args.get("volts")
            if not _num(volts):
                raise self.fail("trigger.args.volts", "is missing" if volts is None else f"is {volts!r}",
                                "give the supply's set-point in volts: volts = 114.0")
            self.body("SupplyControlProfile", {"setpoint_v": float(volts)}, "trigger.args.volts")
            return Trigger(device, action, args, float(delay))
        device = self.identity(trig, "trigger")
        profile = args.get("profile")
        if profile not in PROFILES:
            raise self.fail("trigger.args.profile", "is missing" if profile is None else f"is {profile!r}",
                            f"use one of: {', '.join(PROFILES)}")
        self.mrid(args, "trigger.args.target")
        body = args.get("body")
        if not isinstance(body, dict):
            raise self.fail("trigger.args.body", "is missing" if body is None else "is not a table",
                            "give the message's body as a table: body = { ... }")
        self.body(profile, body, "trigger.args.body")
        sign = args.get("sign", "valid")
        if sign not in ("valid", "none", "forged"):
            raise self.fail("trigger.args.sign", f"is {sign!r}", "use valid, none or forged")
        if "sign" in args and PROFILES[profile].kind != "command":
            raise self.fail("trigger.args.sign", f"is given, but only commands are signed and {profile} is not one",
                            "remove it")
        repeat = args.get("repeat", 1)
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise self.fail("trigger.args.repeat", f"is {repeat!r}",
                            "give how many times to send the same bytes (1 or more)")
        return Trigger(device, action, args, float(delay))

    def profile(self, table: dict[str, Any], where: str) -> str:
        name = self.string(table, "profile", where)
        if name not in PROFILES:
            raise self.fail(f"{where}.profile", f"is {name!r}", f"use one of: {', '.join(PROFILES)}")
        return name

    def where(self, table: dict[str, Any], where: str) -> dict[str, Any]:
        cond = table.get("where", {})
        if not isinstance(cond, dict):
            raise self.fail(f"{where}.where", "is not a table", 'write where = { field = value }')
        for key, c in cond.items():
            if isinstance(c, dict):
                for op, arg in c.items():
                    if op not in _OPS:
                        raise self.fail(f"{where}.where.{key}", f"uses unknown operator {op!r}",
                                        f"use one of: {', '.join(_OPS)}")
                    if op == "between" and not (isinstance(arg, list) and len(arg) == 2 and all(map(_num, arg))):
                        raise self.fail(f"{where}.where.{key}.between", f"is {arg!r}", "give [low, high]")
                    if op in ("lt", "le", "gt", "ge") and not _num(arg):
                        raise self.fail(f"{where}.where.{key}.{op}", f"is {arg!r}", "give a number")
        return cond

    def command(self, table: dict[str, Any], where: str) -> Command:
        self.known(table, where, {"device", "profile", "body"})
        profile = self.profile(table, where)
        if PROFILES[profile].kind != "command":
            raise self.fail(f"{where}.profile", f"{profile} is not a command profile",
                            "use a *ControlProfile")
        body = table.get("body")
        if not isinstance(body, dict):
            raise self.fail(f"{where}.body", "is missing" if body is None else "is not a table",
                            "give the command's body as a table")
        self.body(profile, body, f"{where}.body")
        return Command(self.device(table, where, harness=False), profile, body)

    def expectation(self, table: dict[str, Any], where: str, kind: str, step: int = 0) -> Expectation:
        """An expectation of ``kind`` (initial, step, end, final); ``step``: a step's 1-based number,
        or for the end the number of steps + 1."""
        for key, users in _ONLY.items():
            if key in table and kind not in users:
                only = " and ".join(_SECTIONS[u] for u in users)
                raise self.fail(f"{where}.{key}", f"is not used in {_SECTIONS[kind]}",
                                f"remove it: only {only} use{'s' if len(users) == 1 else ''} {key}")
        allowed = {"device", "profile", "where", "name"} | {k for k, users in _ONLY.items() if kind in users}
        self.known(table, where, allowed)
        profile = self.profile(table, where)
        plane = table.get("plane")
        if plane is not None and plane not in PLANES:
            raise self.fail(f"{where}.plane", f"is {plane!r}", "use 'control' or 'delivery'")
        if plane is not None and plane != PROFILES[profile].plane:
            raise self.fail(f"{where}.plane", f"is {plane!r} but {profile} travels on the "
                            f"{PROFILES[profile].plane} plane", f"write plane = {PROFILES[profile].plane!r}")
        fresh = table.get("fresh", True)
        if not isinstance(fresh, bool):
            raise self.fail(f"{where}.fresh", f"is {fresh!r}", "use true or false")
        after = table.get("after", step - 1 if step else 0)
        is_int = isinstance(after, int) and not isinstance(after, bool)
        if kind == "step" and not (is_int and 0 <= after < step):
            earlier = "1" if step == 2 else f"1-{step - 1}"
            raise self.fail(f"{where}.after", f"is {after!r}",
                            "the first step can only follow the trigger: write after = 0 or leave it out"
                            if step == 1 else f"name an earlier step, {earlier}, or 0 for the trigger")
        if kind == "end" and not (is_int and 1 <= after < step):
            steps = "1" if step == 2 else f"1-{step - 1}"
            problem = "is 0, but the end follows steps, not the trigger" if after == 0 and is_int else f"is {after!r}"
            raise self.fail(f"{where}.after", problem,
                            f"name the step the end follows, {steps}, or leave it out to follow every step")
        return Expectation(
            device=self.device(table, where, harness=kind in ("step", "end")), profile=profile,
            where=self.where(table, where),
            plane=plane or PROFILES[profile].plane,
            name=str(table.get("name", f"{table.get('device')} {profile}")), fresh=fresh,
            after=after,
        )


def _describe(rule: tuple[Any, ...]) -> str:
    """One field of a body schema (``payloads.BODY_RULES``) in words."""
    kind: str = rule[0]
    if kind == "volts":
        return f"a number of volts, {rule[1]:g}-{rule[2]:g}"
    if kind == "enum":
        return " or ".join(map(repr, rule[1:]))
    return {"int": "an integer", "str": "a string", "dict": "a table"}.get(kind, kind)
