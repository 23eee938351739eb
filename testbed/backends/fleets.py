"""A substation's fleet of meters as one local process: its fleet file, readiness and health.

A fleet (``Topology.fleets``) runs every meter of one substation in one asyncio process
(``python -m devices.fleet``), each meter its own connection with its own certificate. The local
backend writes the fleet file (the meters, their certificates, their feeders' sockets) into the
run directory, mode 0600, and reads the fleet's heartbeat, whose counters say how many meters
are ``connected`` of those ``expected``. A fleet with some meters down is still working (a
reconnect storm, a revoked meter), so it is unhealthy only when fewer than expected have been
connected for longer than :data:`FLEET_GRACE_S`, or when its heartbeat says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from testbed.core.errors import TestbedError
from testbed.core.topology import Topology
from testbed.transport.health import read_health

__all__ = ["FLEET_GRACE_S", "FleetState", "fleet_environment", "fleet_ready_timeout", "fleet_state"]

# Longer than the reconnect-storm target (every meter back within 30 s): a shortfall that
# lasts past it is not a storm any more.
FLEET_GRACE_S = 30.0


def fleet_environment(topology: Topology, fleet: str, certs: Path, run_dir: Path,
                      hosts: dict[str, str] | None = None) -> dict[str, str]:
    """Write ``<run_dir>/<fleet>.json`` (the meters of ``fleet``) and return the ``FMB_*``
    environment of ``python -m devices.fleet``; ``hosts`` maps broker names to addresses."""
    meters = topology.fleets.get(fleet)
    if not meters:
        known = ", ".join(list(topology.fleets)[:10]) or "(none)"
        raise TestbedError(f"no fleet {fleet!r} in topology {topology.path}: use one of: {known}")
    entries = []
    for m in meters:
        entry: dict[str, object] = {"id": m.id, "cert": str(certs / "clients" / f"{m.id}.pem"),
                                    "key": str(certs / "clients" / f"{m.id}.key")}
        feeder = topology.feeder_of(m.id)
        if feeder is not None:  # else no physics: the fleet reports a nominal voltage
            entry.update(feeder_socket=str(run_dir / f"{feeder.id}.sock"), deadband_v=feeder.meter_deadband_v,
                         period_s=feeder.meter_period_s)
        entries.append(entry)
    path = run_dir / f"{fleet}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    # Key paths only, but the file says where every meter's key is: readable by its owner alone.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"root": topology.root, "qos": topology.qos, "meters": entries}, f)
    tmp.replace(path)
    delivery = topology.broker_for(meters[0].site, "delivery")
    return {
        "FMB_FLEET_ID": fleet,
        "FMB_DELIVERY": f"{(hosts or {}).get(delivery.name, delivery.host)}:{delivery.port}",
        "FMB_CA": str(certs / "ca" / "ca.pem"),
        "FMB_FLEET_FILE": str(path),
        "FMB_READY_FILE": str(run_dir / f"{fleet}.ready"),
    }


def fleet_ready_timeout(meters: int) -> float:
    """How long a starting fleet of ``meters`` may go without one more meter connected: its first
    connection waits for the process to load every meter's settings, and on two shared cores a TLS
    handshake costs milliseconds of broker and fleet CPU each, while other fleets start too."""
    return 60.0 + meters / 20.0


@dataclass(frozen=True)
class FleetState:
    """What a fleet's heartbeat says, and the verdict on it."""

    verdict: str  # "up" or "unhealthy"
    why: str
    connected: int | None = None  # None: no readable heartbeat
    expected: int | None = None


def fleet_state(ready_file: Path, pid: int, running_s: float, grace_s: float = FLEET_GRACE_S) -> FleetState:
    """The state of the fleet process ``pid`` (running for ``running_s``) from its heartbeat.

    The fleet is unhealthy when its heartbeat is (missing, stale, or its own verdict), or when
    fewer meters than expected have been connected for longer than ``grace_s``: for as long as the
    heartbeat's ``short_s`` counter says, if the fleet keeps one, else since the fleet started.
    """
    health = read_health(ready_file, pid=pid)
    counters = (health.report or {}).get("counters")
    counters = counters if isinstance(counters, dict) else {}
    connected, expected = counters.get("connected"), counters.get("expected")
    if not (isinstance(connected, int) and isinstance(expected, int)) or isinstance(connected, bool):
        return FleetState("unhealthy", health.why or "its heartbeat has no connected/expected counters")
    if not health.healthy:
        return FleetState("unhealthy", health.why, connected, expected)
    if connected < expected:
        short = counters.get("short_s")
        short_s = float(short) if isinstance(short, int | float) and not isinstance(short, bool) else running_s
        if short_s > grace_s:
            return FleetState("unhealthy", f"{connected}/{expected} meters connected for {short_s:.0f} s",
                              connected, expected)
    return FleetState("up", "", connected, expected)
