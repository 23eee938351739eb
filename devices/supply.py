"""Power supply: applies voltage set-point commands and reports its output.

Reads ``SupplyControlProfile/<own mRID>`` on the control plane, drives the feeder model, and
publishes ``SupplyStatusProfile/<own mRID>`` on the delivery plane once the output has changed.
Extra setting: ``FMB_FEEDER_SOCKET``, the feeder model's socket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devices.base import Device, main
from devices.feeder import FeederLink
from testbed.core.payloads import Message
from testbed.core.topics import Profile


class PowerSupply(Device):
    """A controllable power supply feeding the meter's service."""

    role = "supply"

    def on_started(self) -> None:
        self.feeder = FeederLink(Path(self.config.extra["FMB_FEEDER_SOCKET"]))
        state = self.feeder.request(op="state")
        self.setpoint_v = state["supply_v"]
        self._report(state, None)

    def handle(self, profile: Profile, mrid: str, message: Message, traceparent: str | None) -> None:
        if profile.name != "SupplyControlProfile" or mrid != self.id:
            return
        self.setpoint_v = float(message.body["setpoint_v"])
        state = self.feeder.request(op="set_supply", volts=self.setpoint_v, traceparent=traceparent)
        self._report(state, traceparent)
        # The audit line after the work: logging costs tens of microseconds, not on the command's path.
        self.log.info("set-point %.1f V from %s", self.setpoint_v, message.source)

    def _report(self, state: dict[str, Any], cause: str | None) -> None:
        self.publish("SupplyStatusProfile", self.id,
                     {"setpoint_v": self.setpoint_v, "output_v": state["supply_v"]}, cause)

    def on_reconnected(self, plane: str) -> None:
        if plane == "delivery":
            self._report(self.feeder.request(op="state"), None)


if __name__ == "__main__":
    main(PowerSupply, __doc__ or "")
