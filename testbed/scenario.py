"""Scenario files: a declarative description of a run on the bus, and its predicates.

A scenario (TOML, see ``scenarios/README.md``) has an initial state (commands the harness's
operator publishes and the statuses that confirm them), a trigger (an operator input on a
device's UI), the expected steps in order (who publishes which profile on which plane, with a
predicate on the payload's body), an end condition, a final state and a timeout. Loading
validates everything and raises :class:`ConfigError` naming the file, the field and the fix.

Steps are causal, not a total order: each follows the step named by its ``after`` (by
default the one before it; 0 is the trigger), so two effects of one cause, such as the supply's
status and the meter's new reading, may arrive in either order. The end condition follows the
last step unless its own ``after`` names an earlier one.

A predicate maps a dotted path into the message body (``*`` matches any key) to a condition:
a bare value means equality, or a table of ``eq``, ``ne``, ``lt``, ``le``, ``gt``, ``ge``,
``between = [lo, hi]``, ``in = [...]`` or ``contains = "text"``. With ``*`` the condition holds if any match does.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError
from testbed.topics import PLANES, PROFILES
from testbed.topology import HARNESS_IDENTITIES

__all__ = ["SCENARIO_DIR", "Expectation", "Scenario", "Step", "find_scenario", "load_scenario", "matches"]

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
TRIGGER_ACTIONS = ("set_supply", "publish")
_OPS = {
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


def _num(v: Any) -> bool:
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
    after: int = 0  # steps and end: the step (1-based) this one must follow; 0 is the trigger

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
    expect = tuple(v.expectation(t, f"initial.expect[{i}]")
                   for i, t in enumerate(v.array(initial, "expect", "initial.expect")))
    trig = v.table(data, "trigger")
    v.known(trig, "trigger", {"device", "action", "args", "delay_s"})
    delay = trig.get("delay_s", 0.0)
    if not _num(delay) or delay < 0:
        raise ConfigError(path, "trigger.delay_s", f"is {delay!r}", "give a number of seconds >= 0")
    trigger = Trigger(v.device(trig, "trigger"), v.string(trig, "action", "trigger"),
                      trig.get("args", {}), float(delay))
    if trigger.action not in TRIGGER_ACTIONS:
        raise ConfigError(path, "trigger.action", f"is {trigger.action!r}", f"use one of: {', '.join(TRIGGER_ACTIONS)}")
    if trigger.action == "publish":
        args = trigger.args
        profile = args.get("profile")
        if profile not in PROFILES:
            raise ConfigError(path, "trigger.args.profile", f"is {profile!r}", f"use one of: {', '.join(PROFILES)}")
        if not isinstance(args.get("target"), str) or not isinstance(args.get("body"), dict):
            raise ConfigError(path, "trigger.args", "needs target (an mRID) and body (a table)",
                              'write args = { profile = "...", target = "supply-1", body = { ... } }')
        if args.get("sign", "valid") not in ("valid", "none", "forged"):
            raise ConfigError(path, "trigger.args.sign", f"is {args.get('sign')!r}", "use valid, none or forged")
        if not isinstance(args.get("repeat", 1), int) or args.get("repeat", 1) < 1:
            raise ConfigError(path, "trigger.args.repeat", f"is {args.get('repeat')!r}",
                              "give how many times to send the same bytes (1 or more)")
    steps = tuple(v.expectation(t, f"steps[{i}]", step=i + 1)
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
        end=v.expectation(v.table(data, "end"), "end", step=len(steps) + 1),
        final=tuple(v.expectation(t, f"final[{i}]") for i, t in enumerate(v.array(data, "final", "final"))),
    )


class _Validator:
    def __init__(self, path: Path, devices: dict[str, str] | None) -> None:
        self.path = path
        # Harness identities (the monitor, the operator, ...) may publish and be expected too.
        self.names = set(devices) | set(devices.values()) | set(HARNESS_IDENTITIES) if devices else None

    def fail(self, field_: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(self.path, field_, problem, fix)

    def known(self, table: dict[str, Any], where: str, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                f = f"{where}.{key}" if where else key
                raise self.fail(f, "is not a known field", f"remove it or use one of: {', '.join(sorted(allowed))}")

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

    def device(self, table: dict[str, Any], where: str) -> str:
        name = self.string(table, "device", where)
        if self.names is not None and name not in self.names:
            raise self.fail(f"{where}.device", f"is {name!r}, no device or role of the topology",
                            f"use one of: {', '.join(sorted(self.names))}")
        return name

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
            raise self.fail(f"{where}.body", "is missing", "give the command's body as a table")
        return Command(self.device(table, where), profile, body)

    def expectation(self, table: dict[str, Any], where: str, step: int = 0) -> Expectation:
        allowed = {"device", "profile", "where", "plane", "name", "fresh"} | ({"after"} if step else set())
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
        if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after < max(step, 1):
            raise self.fail(f"{where}.after", f"is {after!r}",
                            f"name an earlier step, 1-{step - 1}, or 0 for the trigger")
        return Expectation(
            device=self.device(table, where), profile=profile, where=self.where(table, where),
            plane=plane or PROFILES[profile].plane,
            name=str(table.get("name", f"{table.get('device')} {profile}")), fresh=fresh,
            after=after,
        )
