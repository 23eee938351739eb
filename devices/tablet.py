"""Tablet UI: the operator's console of Appendix A.

Displays the single-line diagram the DMS publishes, and acknowledges each diagram it has
displayed with ``DisplayStatusProfile/<own mRID>``, retained (so what the screen shows, and the
end of a scenario, are observable on the bus). The operator's input arrives on a local Unix
socket (``FMB_UI_SOCKET``), one JSON request a line:

    {"op": "set_supply", "target": "supply-1", "volts": 114}  -> publishes SupplyControlProfile
    {"op": "display"}                                          -> the diagram on screen now
"""

from __future__ import annotations

import json
import os
import socketserver
import threading
import time
from pathlib import Path
from typing import Any

from devices.base import Device, main
from testbed.payloads import Message, PayloadError, new_traceparent
from testbed.topics import Profile


class TabletUI(Device):
    """The operator's tablet."""

    role = "tablet"

    def on_started(self) -> None:
        self.display: dict[str, Any] | None = None
        path = self.config.extra.get("FMB_UI_SOCKET")
        if path:
            self._serve_ui(Path(path))

    def handle(self, profile: Profile, mrid: str, message: Message, traceparent: str | None) -> None:
        if profile.name != "SingleLineDiagramProfile":
            return
        displayed_ns = time.time_ns()
        self.display = {"dms": message.source, "diagram_seq": message.seq,
                        "displayed_ns": displayed_ns, "feeders": message.body["feeders"]}
        self.publish("DisplayStatusProfile", self.id, self.display, traceparent, retain=True)

    def set_supply(self, target: str, volts: float) -> Message:
        """What the operator's voltage control does: command the supply on the control plane."""
        return self.publish("SupplyControlProfile", target, {"setpoint_v": float(volts)},
                            new_traceparent())

    def _serve_ui(self, path: Path) -> None:
        tablet = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    try:
                        reply = tablet._ui_request(json.loads(line))
                    except (ValueError, KeyError, TypeError, PayloadError) as e:
                        reply = {"ok": False, "error": str(e)}
                    self.wfile.write(json.dumps(reply).encode() + b"\n")
                    self.wfile.flush()

        path.unlink(missing_ok=True)
        old = os.umask(0o077)
        try:
            server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        finally:
            os.umask(old)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True, name="ui").start()

    def _ui_request(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "set_supply":
            m = self.set_supply(str(request["target"]), float(request["volts"]))
            return {"ok": True, "seq": m.seq, "ts_ns": m.ts_ns}
        if op == "display":
            return {"ok": True, "display": self.display}
        raise ValueError(f"unknown op {op!r}; use set_supply or display")


if __name__ == "__main__":
    main(TabletUI, __doc__ or "")
