"""Distribution management system: keeps the feeders' state and regulates their voltage.

Reads meter readings, cap bank and supply statuses (delivery plane, persistent session on the
data-centre brokers so nothing queued for it is lost while it is away). Its rule is ANSI
C84.1 service-voltage range A, 114-126 V on a 120 V base:

* a reading below 114 V with the cap bank open: command the cap bank to close;
* the cap bank reports closed after such a low-voltage event: command the supply back to 120 V;
* a reading above 126 V with the cap bank closed: command it open.

Whenever its model of a feeder changes it publishes the single-line diagram
(``SingleLineDiagramProfile/<own mRID>``) that the tablet UI displays, retained, so that a
tablet that (re)connects sees the current diagram at once.
Extra setting: ``FMB_FEEDERS``, a JSON list of feeders (``id``, ``supply``, ``capbank``, ``meter``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from devices.base import Device, main
from testbed.core.errors import DeviceError
from testbed.core.payloads import NOMINAL_V, Message
from testbed.core.topics import Profile

RANGE_A_V = (114.0, 126.0)
DIAGRAM_REFRESH_S = 0.5


@dataclass
class FeederState:
    """What the DMS knows of one feeder."""

    id: str
    supply: str
    capbank: str
    meter: str
    supply_v: float | None = None
    capbank_state: str | None = None
    meter_v: float | None = None
    regulating: bool = False  # a low voltage made us close the bank; restore the supply next
    pending: str | None = None  # cap bank command sent, status not yet seen

    @property
    def range_a(self) -> str:
        if self.meter_v is None:
            return "unknown"
        low, high = RANGE_A_V
        return "low" if self.meter_v < low else "high" if self.meter_v > high else "normal"

    def view(self) -> dict[str, Any]:
        return {"supply": self.supply, "supply_v": self.supply_v, "capbank": self.capbank,
                "capbank_state": self.capbank_state, "meter": self.meter, "meter_v": self.meter_v,
                "range_a": self.range_a}


class DistributionManagementSystem(Device):
    """The central DMS of Appendix A."""

    role = "dms"
    _last_diagram = 0.0  # monotonic time of the last diagram published

    def on_started(self) -> None:
        try:
            feeders = json.loads(self.config.extra.get("FMB_FEEDERS", "[]"))
            self.feeders = [FeederState(f["id"], f["supply"], f["capbank"], f["meter"]) for f in feeders]
        except (ValueError, KeyError, TypeError) as e:
            raise DeviceError(f"FMB_FEEDERS must be a JSON list of feeders ({e})") from None
        self.diagram_version = 0
        self._publish_diagram(None)

    def _feeder_of(self, device: str) -> FeederState | None:
        return next((f for f in self.feeders if device in (f.supply, f.capbank, f.meter)), None)

    def handle(self, profile: Profile, mrid: str, message: Message, traceparent: str | None) -> None:
        feeder = self._feeder_of(mrid)
        if feeder is None:
            self.log.warning("%s from %s, a device on no feeder I manage", profile.name, mrid)
            return
        before = feeder.view()
        body = message.body
        if profile.name == "MeterReadingProfile":
            feeder.meter_v = float(body["voltage_v"])
            self._regulate(feeder, traceparent)
        elif profile.name == "CapBankStatusProfile":
            feeder.capbank_state = body["state"]
            if feeder.pending == body["state"]:
                feeder.pending = None
            if body["state"] == "closed" and feeder.regulating:
                feeder.regulating = False
                self.log.info("%s: cap bank closed, raising %s to %.0f V", feeder.id, feeder.supply, NOMINAL_V)
                self.publish("SupplyControlProfile", feeder.supply, {"setpoint_v": NOMINAL_V}, traceparent)
        elif profile.name == "SupplyStatusProfile":
            feeder.supply_v = float(body["output_v"])
        # On change; and, unchanged, at most every DIAGRAM_REFRESH_S: a field broker that
        # restarted has lost the retained diagram, and the devices' re-synchronising reports
        # (unchanged values) then bring it back to the tablet.
        if feeder.view() != before or time.monotonic() - self._last_diagram > DIAGRAM_REFRESH_S:
            self._publish_diagram(traceparent)

    def _regulate(self, feeder: FeederState, cause: str | None) -> None:
        if feeder.pending is not None:
            return
        if feeder.range_a == "low" and feeder.capbank_state != "closed":
            self.log.info("%s: %.1f V below range A, closing %s", feeder.id, feeder.meter_v, feeder.capbank)
            feeder.regulating, feeder.pending = True, "closed"
            self.publish("CapBankControlProfile", feeder.capbank, {"action": "close"}, cause)
        elif feeder.range_a == "high" and feeder.capbank_state == "closed":
            self.log.info("%s: %.1f V above range A, opening %s", feeder.id, feeder.meter_v, feeder.capbank)
            feeder.pending = "open"
            self.publish("CapBankControlProfile", feeder.capbank, {"action": "open"}, cause)

    def _publish_diagram(self, cause: str | None) -> None:
        self._last_diagram = time.monotonic()
        self.diagram_version += 1
        body = {"version": self.diagram_version, "feeders": {f.id: f.view() for f in self.feeders}}
        self.publish("SingleLineDiagramProfile", self.id, body, cause, retain=True)


if __name__ == "__main__":
    main(DistributionManagementSystem, __doc__ or "")
