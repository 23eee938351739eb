"""The feeder model: the physics between the power supply, the cap bank and the meter.

It is deliberately *not* MQTT traffic, so it cannot distort the bus's latency figures. The
model is one equation, the meter's voltage::

    meter_v = supply_v - line_drop_v + (capbank_boost_v if the cap bank is closed else 0)

It runs as its own process serving a Unix socket (no network listener): devices send JSON
lines ``{"op": "set_supply", "volts": 114}`` or ``{"op": "set_capbank", "closed": true}``
and get ``{"ok": true, "state": {...}}`` once the change is applied (after the configured
actuation delay); ``{"op": "watch"}`` streams every new state. Each request may carry a
``traceparent`` that the resulting state carries on, so the meter's reading stays in the
trace of the command that moved the voltage.

    FMB_FEEDER          JSON of the feeder's settings (testbed.core.topology.FeederSpec fields)
    FMB_FEEDER_SOCKET   path of the Unix socket to serve
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Any, TypedDict

from testbed.core.errors import DeviceError
from testbed.core.payloads import NOMINAL_V
from testbed.core.waiting import wait_until
from testbed.transport.localsock import private_unix_server

__all__ = ["FeederLink", "FeederModel", "serve"]

log = logging.getLogger("feeder")


class FeederSettings(TypedDict, total=False):
    """``FMB_FEEDER``: the fields of testbed.core.topology.FeederSpec, as JSON; a missing number takes its default."""

    id: str
    site: str
    supply: str
    capbank: str
    meter: str
    line_drop_v: float
    capbank_boost_v: float
    supply_delay_s: float
    capbank_delay_s: float
    meter_deadband_v: float
    meter_period_s: float


def _actuate(delay_s: float) -> None:
    """Wait the configured actuation time; none at all for 0 (a sleep(0) still gives up the GIL to
    the watchers' threads, in the middle of the reply the actuator waits for)."""
    if delay_s > 0:
        time.sleep(delay_s)


class FeederModel:
    """The state of one feeder and the rule that gives the meter's voltage."""

    def __init__(self, settings: FeederSettings) -> None:
        self.settings = settings
        self.supply_v = NOMINAL_V
        self.capbank_closed = False
        self.traceparent: str | None = None
        self.changed = threading.Condition()
        self.version = 0
        self.applied_ns = 0  # when the last change took effect (the meter passes it on: latency waterfall)

    @property
    def meter_v(self) -> float:
        boost = self.settings.get("capbank_boost_v", 1.2) if self.capbank_closed else 0.0
        return round(self.supply_v - self.settings.get("line_drop_v", 1.2) + boost, 3)

    def state(self) -> dict[str, Any]:
        return {"supply_v": self.supply_v, "capbank_closed": self.capbank_closed,
                "meter_v": self.meter_v, "traceparent": self.traceparent, "version": self.version,
                "applied_ns": self.applied_ns}

    def apply(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "set_supply":
            volts = request.get("volts")
            if not isinstance(volts, int | float) or not 0 <= volts <= 2 * NOMINAL_V:
                raise ValueError(f"volts must be a number 0-{2 * NOMINAL_V:g}, not {volts!r}")
            _actuate(self.settings.get("supply_delay_s", 0.0))
            update = {"supply_v": float(volts)}
        elif op == "set_capbank":
            closed = request.get("closed")
            if not isinstance(closed, bool):
                raise ValueError(f"closed must be true or false, not {closed!r}")
            _actuate(self.settings.get("capbank_delay_s", 0.0))
            update = {"capbank_closed": closed}
        else:
            raise ValueError(f"unknown op {op!r}; use set_supply, set_capbank, state or watch")
        with self.changed:
            for k, v in update.items():
                setattr(self, k, v)
            self.traceparent = request.get("traceparent")
            self.applied_ns = time.time_ns()
            self.version += 1
            self.changed.notify_all()
            return self.state()


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        model = self.server.model
        for line in self.rfile:
            try:
                request = json.loads(line)
                if request.get("op") == "watch":
                    self._watch(model)
                    return
                state = model.state() if request.get("op") == "state" else model.apply(request)
                reply: dict[str, Any] = {"ok": True, "state": state}
            except (ValueError, AttributeError) as e:
                log.error("bad request %r: %s", line[:200], e)
                reply = {"ok": False, "error": str(e)}
            self._send(reply)

    def _send(self, obj: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(obj).encode() + b"\n")
        self.wfile.flush()

    def _watch(self, model: FeederModel) -> None:
        seen = -1
        while True:
            with model.changed:

                def changed(seen: int = seen) -> bool:
                    return model.version != seen

                model.changed.wait_for(changed, timeout=1.0)
                state = model.state()
            if state["version"] != seen:
                seen = state["version"]
                try:
                    self._send({"ok": True, "state": state})
                except OSError:  # the watcher went away
                    return


class _Server(socketserver.ThreadingUnixStreamServer):
    model: FeederModel


def serve(settings: FeederSettings, path: Path) -> None:
    """Serve the model on ``path`` until SIGTERM."""
    server = private_unix_server(path, _Handler, _Server)  # only the owner (the devices' user) may drive the physics
    server.model = FeederModel(settings)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log.info("feeder %s serving on %s: %s", settings.get("id"), path, server.model.state())
    try:
        server.serve_forever()
    finally:
        server.server_close()
        path.unlink(missing_ok=True)


class FeederLink:
    """A device's connection to the feeder model."""

    def __init__(self, path: Path | str, timeout_s: float = 30.0) -> None:
        refused: list[OSError] = []

        def connected() -> socket.socket | None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
            except OSError as e:
                sock.close()
                refused[:] = [e]
                return None
            return sock

        self.sock = wait_until(connected, timeout_s, interval_s=0.1, error=DeviceError,
                               what=lambda: f"no feeder model at {path} ({refused[0]}); start it first")
        self.file = self.sock.makefile("rwb")
        self.lock = threading.Lock()

    def request(self, **request: Any) -> dict[str, Any]:
        with self.lock:
            self.file.write(json.dumps(request).encode() + b"\n")
            self.file.flush()
            reply = json.loads(self.file.readline() or b"{}")
        if not reply.get("ok"):
            raise DeviceError(f"the feeder model refused {request}: {reply.get('error', 'connection lost')}")
        return dict(reply["state"])

    def watch(self) -> Any:
        """Yield every new state (blocking); use on a link of its own."""
        self.file.write(b'{"op":"watch"}\n')
        self.file.flush()
        for line in self.file:
            yield json.loads(line)["state"]


def main() -> None:
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("FMB_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if len(sys.argv) > 1:
        print(__doc__)
        raise SystemExit(0 if sys.argv[1] in ("-h", "--help") else 2)
    try:
        settings = json.loads(os.environ["FMB_FEEDER"])
        path = Path(os.environ["FMB_FEEDER_SOCKET"])
    except (KeyError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: set FMB_FEEDER (JSON) and FMB_FEEDER_SOCKET ({e})") from None
    serve(settings, path)


if __name__ == "__main__":
    main()
