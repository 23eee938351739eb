"""Smart meter: measures the service voltage and reports it by exception and periodically.

Watches the feeder model; publishes ``MeterReadingProfile/<own mRID>`` on the delivery plane
when the voltage moves beyond its deadband since the last report (``reason: exception``,
in the trace of the command that moved it) and every period (``reason: periodic``).
Extra settings: ``FMB_FEEDER_SOCKET``; ``FMB_METER_DEADBAND_V`` (default 0.5);
``FMB_METER_PERIOD_S`` (default 5).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from devices.base import Device, main
from devices.feeder import FeederLink


class SmartMeter(Device):
    """A revenue meter that also reports voltage."""

    role = "meter"

    def on_started(self) -> None:
        extra = self.config.extra
        self.deadband_v = float(extra.get("FMB_METER_DEADBAND_V", "0.5"))
        self.period_s = float(extra.get("FMB_METER_PERIOD_S", "5"))
        link = FeederLink(Path(extra["FMB_FEEDER_SOCKET"]))
        self.reported_v: float | None = None
        self.next_periodic = time.monotonic()
        threading.Thread(target=self._watch, args=(link,), daemon=True, name="feeder-watch").start()

    def _watch(self, link: FeederLink) -> None:
        for state in link.watch():
            received_ns = time.time_ns()
            v = float(state["meter_v"])
            with self._lock:
                self.measured_v = v
                if self.reported_v is None or abs(v - self.reported_v) >= self.deadband_v:
                    # When the feeder model applied the change and when it reached the meter: where the
                    # latency benchmark splits the physics from the devices on either side of it.
                    timing = {"recv_ns": received_ns}
                    if isinstance(state.get("applied_ns"), int):
                        timing["feeder_ns"] = state["applied_ns"]
                    self._report("exception", state.get("traceparent"), timing)

    def tick(self) -> None:
        with self._lock:
            if hasattr(self, "measured_v") and time.monotonic() >= self.next_periodic:
                self._report("periodic", None)

    def _report(self, reason: str, cause: str | None, timing: dict[str, int] | None = None) -> None:
        self.reported_v = self.measured_v
        self.next_periodic = time.monotonic() + self.period_s
        self.publish("MeterReadingProfile", self.id, {"voltage_v": self.measured_v, "reason": reason},
                     cause, timing=timing)

    def on_reconnected(self, plane: str) -> None:
        if plane == "delivery" and hasattr(self, "measured_v"):
            self._report("periodic", None)


if __name__ == "__main__":
    main(SmartMeter, __doc__ or "")
