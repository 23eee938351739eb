"""Distribution management system: keeps the feeders' state and regulates their voltage.

Reads meter readings, cap bank and supply statuses (delivery plane, persistent session on the
data-centre brokers so nothing queued for it is lost while it is away). Its rule is ANSI
C84.1 service-voltage range A, 114-126 V on a 120 V base:

* a reading below 114 V with the cap bank open: command the cap bank to close;
* the cap bank reports closed after such a low-voltage event: command the supply back to 120 V;
* a reading above 126 V with the cap bank closed: command it open.

Each feeder has its own single-line diagram (``SingleLineDiagramProfile/<feeder mRID>``), retained,
published when that feeder's view changes, so a tablet that (re)connects sees it at once and the
work grows with the feeders that changed, not with all of them. A feeder's first meter regulates
(its end-of-line meter); the others' readings are counted and summarised (readings, lowest and
highest latest voltage), never listed, so every diagram stays small whatever the feeder's size.
Extra settings: ``FMB_FEEDERS_FILE``, the feeders it manages (``devices.feeder_file``), or
``FMB_FEEDERS``, the same JSON inline, for a small bus.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from devices.base import Device, DeviceConfig, main
from devices.feeder_file import FeederPlan, read_feeders
from testbed.core.payloads import NOMINAL_V, Message
from testbed.core.topics import Profile

RANGE_A_V = (114.0, 126.0)
DIAGRAM_REFRESH_S = 0.5

Part = Literal["supply", "capbank", "meter", "other-meter"]


@dataclass
class MeterSummary:
    """The readings of a feeder's meters, regulating one included: a count and the spread of the latest."""

    count: int
    readings: int = 0
    latest: dict[str, float] = field(default_factory=dict)  # meter -> its latest reading
    # How many meters' latest reading is each value: the extremes move in O(1), but when the last
    # meter at one leaves it; then a scan of the distinct values (a few hundred at 0.1 V), never
    # of another feeder's meters.
    values: Counter[float] = field(default_factory=Counter)
    min_v: float | None = None
    max_v: float | None = None

    def add(self, meter: str, volts: float) -> None:
        self.readings += 1
        old = self.latest.get(meter)
        self.latest[meter] = volts
        self.values[volts] += 1
        if old is not None:
            self.values[old] -= 1
            if not self.values[old]:
                del self.values[old]
                if old in (self.min_v, self.max_v):
                    self.min_v, self.max_v = min(self.values), max(self.values)
                    return
        self.min_v = volts if self.min_v is None else min(self.min_v, volts)
        self.max_v = volts if self.max_v is None else max(self.max_v, volts)

    def view(self) -> dict[str, Any]:
        return {"count": self.count, "reporting": len(self.latest), "min_v": self.min_v, "max_v": self.max_v}


@dataclass
class FeederState:
    """What the DMS knows of one feeder."""

    plan: FeederPlan
    supply_v: float | None = None
    capbank_state: str | None = None
    meter_v: float | None = None  # the regulating meter's latest reading
    regulating: bool = False  # a low voltage made us close the bank; restore the supply next
    pending: str | None = None  # cap bank command sent, status not yet seen
    version: int = 0  # diagrams of this feeder published
    last_diagram: float = 0.0  # monotonic time of its last diagram
    meters: MeterSummary = field(init=False)

    def __post_init__(self) -> None:
        self.meters = MeterSummary(len(self.plan.meters))

    @property
    def id(self) -> str:
        return self.plan.id

    @property
    def range_a(self) -> str:
        if self.meter_v is None:
            return "unknown"
        low, high = RANGE_A_V
        return "low" if self.meter_v < low else "high" if self.meter_v > high else "normal"

    def state(self) -> tuple[Any, ...]:
        """What of its diagram, changed, publishes one. The counts of readings and of meters reporting
        ride along (with the refresh): else a feeder of 1,000 meters coming up would publish 1,000."""
        return (self.supply_v, self.capbank_state, self.meter_v, self.meters.min_v, self.meters.max_v)

    def view(self) -> dict[str, Any]:
        """What its diagram shows."""
        return {"supply": self.plan.supply, "supply_v": self.supply_v, "capbank": self.plan.capbank,
                "capbank_state": self.capbank_state, "meter": self.plan.meter, "meter_v": self.meter_v,
                "range_a": self.range_a, "meters": self.meters.view()}


class DistributionManagementSystem(Device):
    """The central DMS of Appendix A, for as many feeders as the bus has."""

    role = "dms"

    def __init__(self, config: DeviceConfig) -> None:
        super().__init__(config)
        # Before connecting: the persistent session's queued readings arrive as soon as it is up.
        self.states = [FeederState(plan) for plan in read_feeders(self.config.extra)]
        # Every device to its feeder and its part in it: a message finds its feeder in O(1).
        self.parts: dict[str, tuple[FeederState, Part]] = {}
        for f in self.states:
            self.parts[f.plan.supply] = (f, "supply")
            self.parts[f.plan.capbank] = (f, "capbank")
            for k, meter in enumerate(f.plan.meters):
                self.parts[meter] = (f, "meter" if k == 0 else "other-meter")

    def on_started(self) -> None:
        self.log.info("managing %d feeders (%d devices)", len(self.states), len(self.parts))
        for f in self.states:
            self._publish_diagram(f, None)

    def handle(self, profile: Profile, mrid: str, message: Message, traceparent: str | None) -> None:
        found = self.parts.get(mrid)
        if found is None:
            self.log.warning("%s from %s, a device on no feeder I manage", profile.name, mrid)
            return
        feeder, part = found
        before = feeder.state()
        body = message.body
        if profile.name == "MeterReadingProfile" and part in ("meter", "other-meter"):
            feeder.meters.add(mrid, float(body["voltage_v"]))
            if part == "meter":  # only the end-of-line meter drives the rule
                feeder.meter_v = float(body["voltage_v"])
                self._regulate(feeder, traceparent)
        elif profile.name == "CapBankStatusProfile" and part == "capbank":
            feeder.capbank_state = body["state"]
            if feeder.pending == body["state"]:
                feeder.pending = None
            if body["state"] == "closed" and feeder.regulating:
                feeder.regulating = False
                self.publish("SupplyControlProfile", feeder.plan.supply, {"setpoint_v": NOMINAL_V}, traceparent)
                # Each decision's log line after its command: logging is tens of microseconds.
                self.log.info("%s: cap bank closed, raising %s to %.0f V", feeder.id, feeder.plan.supply, NOMINAL_V)
        elif profile.name == "SupplyStatusProfile" and part == "supply":
            feeder.supply_v = float(body["output_v"])
        else:
            self.log.warning("%s from %s, the %s of feeder %s: not what that device reports", profile.name,
                             mrid, part, feeder.id)
            return
        # On change; and, unchanged, at most every DIAGRAM_REFRESH_S per feeder: a field broker
        # that restarted has lost the retained diagrams, and the devices' re-synchronising
        # reports (unchanged values) then bring that feeder's back to the tablet.
        if feeder.state() != before or time.monotonic() - feeder.last_diagram > DIAGRAM_REFRESH_S:
            self._publish_diagram(feeder, traceparent)

    def _regulate(self, feeder: FeederState, cause: str | None) -> None:
        if feeder.pending is not None:
            return
        if feeder.range_a == "low" and feeder.capbank_state != "closed":
            feeder.regulating, feeder.pending = True, "closed"
            self.publish("CapBankControlProfile", feeder.plan.capbank, {"action": "close"}, cause)
            self.log.info("%s: %.1f V below range A, closing %s", feeder.id, feeder.meter_v, feeder.plan.capbank)
        elif feeder.range_a == "high" and feeder.capbank_state == "closed":
            feeder.pending = "open"
            self.publish("CapBankControlProfile", feeder.plan.capbank, {"action": "open"}, cause)
            self.log.info("%s: %.1f V above range A, opening %s", feeder.id, feeder.meter_v, feeder.plan.capbank)

    def _publish_diagram(self, feeder: FeederState, cause: str | None) -> None:
        feeder.last_diagram = time.monotonic()
        feeder.version += 1
        body = {"feeder": feeder.id, "version": feeder.version, **feeder.view()}
        body["meters"]["readings"] = feeder.meters.readings
        self.publish("SingleLineDiagramProfile", feeder.id, body, cause, retain=True)


if __name__ == "__main__":
    main(DistributionManagementSystem, __doc__ or "")
