"""The topic tree of the bus, modelled on OpenFMB: ``<root>/<module>/<Profile>/<mRID>``.

One table says, for every profile, its module, the plane it travels on and what it carries;
another says, for every device role, which profiles it publishes and reads, and whether only
for its own mRID, for its site's, for the feeders' or for any (a single-line diagram's topic names
the feeder it shows: the DMS publishes those of every feeder, a tablet reads those of its site's).
Topics, subscriptions and the brokers' ACLs are all derived from these two tables, so a device can
publish only its own topics and read only what it needs.

    Profile                    module           plane     publisher      readers
    SupplyControlProfile       supplymodule     control   tablet (site), dms  supply (own)
    SupplyStatusProfile        supplymodule     delivery  supply (own)   dms
    MeterReadingProfile        metermodule      delivery  meter (own)    dms
    CapBankControlProfile      capbankmodule    control   dms            capbank (own)
    CapBankStatusProfile       capbankmodule    delivery  capbank (own)  dms
    SingleLineDiagramProfile   dmsmodule        delivery  dms (feeders)  tablet (its site's feeders)
    DisplayStatusProfile       hmimodule        delivery  tablet (own)   (recorder only)
    AlertProfile               securitymodule   control   monitor (own)  tablet (recorder, operators)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CONTROL",
    "DELIVERY",
    "PLANES",
    "PROFILES",
    "ROLES",
    "Grant",
    "Plane",
    "Profile",
    "RoleRights",
    "Scope",
    "parse_topic",
    "subscriptions",
    "topic",
]

Plane = Literal["control", "delivery"]
CONTROL: Plane = "control"
DELIVERY: Plane = "delivery"
PLANES: tuple[Plane, ...] = (DELIVERY, CONTROL)


@dataclass(frozen=True)
class Profile:
    """One message profile: where it lives in the tree and on which plane it travels."""

    name: str
    module: str
    plane: Plane
    kind: Literal["command", "telemetry", "status", "diagram", "alert"]


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("SupplyControlProfile", "supplymodule", CONTROL, "command"),
        Profile("SupplyStatusProfile", "supplymodule", DELIVERY, "status"),
        Profile("MeterReadingProfile", "metermodule", DELIVERY, "telemetry"),
        Profile("CapBankControlProfile", "capbankmodule", CONTROL, "command"),
        Profile("CapBankStatusProfile", "capbankmodule", DELIVERY, "status"),
        Profile("SingleLineDiagramProfile", "dmsmodule", DELIVERY, "diagram"),
        Profile("DisplayStatusProfile", "hmimodule", DELIVERY, "status"),
        # Detect: the monitor's alerts (testbed/csf/monitor.py), on the control plane.
        Profile("AlertProfile", "securitymodule", CONTROL, "alert"),
        # Harness profiles of the benchmarks: a command and its acknowledgement on the control
        # plane, a flood on the delivery plane. No device reads or writes them.
        Profile("BenchCommandProfile", "benchmodule", CONTROL, "command"),
        Profile("BenchAckProfile", "benchmodule", CONTROL, "status"),
        Profile("BenchFloodProfile", "benchmodule", DELIVERY, "telemetry"),
    )
}


# "own": the identity's mRID; "any": every mRID; "site": the mRIDs of the identity's site (its
# devices', and for a diagram its feeders': what a substation's tablet commands and shows);
# "feeders": every feeder of the bus (the diagrams a DMS publishes).
Scope = Literal["own", "site", "feeders", "any"]


@dataclass(frozen=True)
class Grant:
    """A right on one profile, for the mRIDs its scope names (``Topology.grant_mrids`` resolves
    "site" and "feeders" from the topology)."""

    profile: str
    scope: Scope


@dataclass(frozen=True)
class RoleRights:
    """What a device role publishes and reads."""

    publishes: tuple[Grant, ...]
    reads: tuple[Grant, ...]


ROLES: dict[str, RoleRights] = {
    # A substation's operator commands that substation's supplies, not another's.
    "tablet": RoleRights(
        publishes=(Grant("SupplyControlProfile", "site"), Grant("DisplayStatusProfile", "own")),
        # The operator's screen shows the monitor's alerts beside the diagram.
        # Only its own site's feeders' diagrams: a substation's bridge carries no other's.
        reads=(Grant("SingleLineDiagramProfile", "site"), Grant("AlertProfile", "any")),
    ),
    "supply": RoleRights(
        publishes=(Grant("SupplyStatusProfile", "own"),),
        reads=(Grant("SupplyControlProfile", "own"),),
    ),
    "meter": RoleRights(
        publishes=(Grant("MeterReadingProfile", "own"),),
        reads=(),
    ),
    "capbank": RoleRights(
        publishes=(Grant("CapBankStatusProfile", "own"),),
        reads=(Grant("CapBankControlProfile", "own"),),
    ),
    "dms": RoleRights(
        publishes=(
            Grant("CapBankControlProfile", "any"),
            Grant("SupplyControlProfile", "any"),
            Grant("SingleLineDiagramProfile", "feeders"),
        ),
        reads=(
            Grant("MeterReadingProfile", "any"),
            Grant("CapBankStatusProfile", "any"),
            Grant("SupplyStatusProfile", "any"),
        ),
    ),
    # Harness identities: the recorder reads everything and writes nothing; the operator
    # sets initial states by publishing commands, as a control-room engineer would.
    "recorder": RoleRights(publishes=(), reads=tuple(Grant(p, "any") for p in PROFILES if not p.startswith("Bench"))),
    "operator": RoleRights(
        publishes=tuple(Grant(p.name, "any") for p in PROFILES.values()
                        if p.kind == "command" and not p.name.startswith("Bench")),
        reads=(),
    ),
    # Detect and Respond: the monitor reads every profile of the tree (rates, plausibility,
    # messages nobody reads) and publishes only its alerts; the responder has no topic of the
    # tree at all, only the dynamic-security control topic (brokers.mosquitto adds it).
    "monitor": RoleRights(
        publishes=(Grant("AlertProfile", "own"),),
        reads=tuple(Grant(p, "any") for p in PROFILES if not p.startswith("Bench") and p != "AlertProfile"),
    ),
    "responder": RoleRights(publishes=(), reads=()),
    # The benchmarks' load generators and probes, confined to the Bench* profiles.
    "bench": RoleRights(
        publishes=tuple(Grant(p, "any") for p in PROFILES if p.startswith("Bench")),
        reads=tuple(Grant(p, "any") for p in PROFILES if p.startswith("Bench")),
    ),
}


def subscriptions(root: str, role: str, ident: str, plane: Plane, qos: int = 1) -> list[tuple[str, int]]:
    """What identity ``ident`` of ``role`` subscribes to on a broker of ``plane``: its reads (a
    site-wide read subscribes to any mRID; the broker's ACL delivers only the site's)."""
    return [(topic(root, g.profile, ident if g.scope == "own" else "+"), qos)
            for g in ROLES[role].reads if PROFILES[g.profile].plane == plane]


def topic(root: str, profile: str, mrid: str) -> str:
    """The topic of ``profile`` for device ``mrid`` (``+`` for a subscription to any)."""
    return f"{root}/{PROFILES[profile].module}/{profile}/{mrid}"


def parse_topic(root: str, name: str) -> tuple[Profile, str]:
    """Split a concrete topic into its profile and mRID; ValueError if it is not in the tree."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != root:
        raise ValueError(f"topic {name!r} is not of the form {root}/<module>/<Profile>/<mRID>")
    _, module, profile_name, mrid = parts
    profile = PROFILES.get(profile_name)
    if profile is None or profile.module != module or not mrid:
        raise ValueError(f"topic {name!r} names no known profile of the tree")
    return profile, mrid
