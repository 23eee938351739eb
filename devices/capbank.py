"""Capacitor bank controller: opens or closes the cap bank on command and reports its state.

Reads ``CapBankControlProfile/<own mRID>`` on the control plane, switches the bank in the
feeder model (after its configured switching time), and publishes ``CapBankStatusProfile``
on the delivery plane. Extra setting: ``FMB_FEEDER_SOCKET``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devices.base import Device, main
from devices.feeder import FeederLink
from testbed.core.payloads import Message
from testbed.core.topics import Profile


class CapBankController(Device):
    """The controller of one switched capacitor bank."""

    role = "capbank"

    def on_started(self) -> None:
        self.feeder = FeederLink(Path(self.config.extra["FMB_FEEDER_SOCKET"]))
        self._report(self.feeder.request(op="state"), None)

    def handle(self, profile: Profile, mrid: str, message: Message, traceparent: str | None) -> None:
        if profile.name != "CapBankControlProfile" or mrid != self.id:
            return
        closed = message.body["action"] == "close"
        self._report(self.feeder.request(op="set_capbank", closed=closed, traceparent=traceparent),
                     traceparent)
        self.log.info("%s from %s", message.body["action"], message.source)  # after the work: off the path

    def _report(self, state: dict[str, Any], cause: str | None) -> None:
        body = {"state": "closed" if state["capbank_closed"] else "open"}
        self.publish("CapBankStatusProfile", self.id, body, cause)

    def on_reconnected(self, plane: str) -> None:
        if plane == "delivery":
            self._report(self.feeder.request(op="state"), None)


if __name__ == "__main__":
    main(CapBankController, __doc__ or "")
