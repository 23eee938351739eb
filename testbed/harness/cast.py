"""The cast of a scenario run: which devices play the roles a scenario names.

A scenario names devices by role (``device = "supply"``) or by id. On the whole topology every
device of a role plays it, as on Appendix A's one-of-each bus. On one substation of a large
topology (``fmb run appendix-a --substation sub-002``) the cast is that substation's tablet, the
supply and cap bank of its first feeder and that feeder's regulating meter, with the devices of
the sites that are no substation (the data centre's DMS), which serve every substation; a
trigger's target that is no member of the cast (Appendix A's ``supply-1``) is played by the
cast's device of the same role.
"""

from __future__ import annotations

from dataclasses import dataclass

from testbed.core.errors import ScenarioError
from testbed.core.topics import PROFILES, ROLES
from testbed.core.topology import HARNESS_IDENTITIES, DeviceSpec, Topology

__all__ = ["Cast"]


@dataclass(frozen=True)
class Cast:
    """The devices a scenario runs with, and the substation they were chosen for (None: all)."""

    devices: tuple[DeviceSpec, ...]
    sites: frozenset[str]
    substation: str | None = None

    @classmethod
    def of(cls, topology: Topology, substation: str | None = None) -> Cast:
        """The whole topology's devices, or those of ``substation`` (a ScenarioError if it is none)."""
        if substation is None:  # an external device is not the testbed's to drive or to wait for
            return cls(tuple(d for d in topology.devices if not d.external), frozenset(s.name for s in topology.sites))
        names = [s.name for s in topology.substations]
        if substation not in names:
            shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
            raise ScenarioError(f"--substation {substation!r} is no substation of {topology.path}: "
                                f"use one of: {shown or '(it has none: leave --substation out)'}")
        feeders = topology.feeders_at(substation)
        if not feeders:
            raise ScenarioError(f"substation {substation} has no feeder in {topology.path}: a scenario needs "
                                "its supply, cap bank and meter")
        feeder = feeders[0]
        chosen = {feeder.supply, feeder.capbank, feeder.meter}
        shared = [s.name for s in topology.sites if s.name not in names]
        devices = [d for d in topology.devices_at(substation) if d.id in chosen or d.role == "tablet"]
        devices += [d for site in shared for d in topology.devices_at(site) if not d.external]
        return cls(tuple(devices), frozenset([substation, *shared]), substation)

    def topics_of(self, topology: Topology) -> list[str]:
        """The mRIDs whose topics a scenario on this cast reads: its devices' and their feeders'
        (the DMS's diagrams are on the feeder's topic)."""
        ids = {d.id for d in self.devices}
        feeders = [f.id for f in topology.feeders if ids & {f.supply, f.capbank, *f.meters}]
        return sorted(ids | set(feeders))

    def matching(self, name: str) -> list[DeviceSpec]:
        """Cast devices whose id or role is ``name``."""
        return [d for d in self.devices if name in (d.id, d.role)]

    def stand_in(self, topology: Topology, target: str, profile: str) -> str:
        """The mRID a message of ``profile`` addressed to ``target`` goes to: ``target`` itself on the
        whole topology or if it is in the cast, else the cast's device of the role ``target`` has
        (or, for a target the topology does not know, of the role that owns ``profile``)."""
        if self.substation is None or target in HARNESS_IDENTITIES or any(d.id == target for d in self.devices):
            return target
        known = topology.identity_role(target)
        roles = [known] if known else [r for r, rights in ROLES.items()
                                       if any(g.profile == profile and g.scope == "own"
                                              for g in (*rights.reads, *rights.publishes))]
        for d in self.devices:
            if d.role in roles:
                return d.id
        raise ScenarioError(f"no device of substation {self.substation} stands in for {target!r} "
                            f"(a {' or '.join(roles) or PROFILES[profile].name} device)")
