"""Tablet UI: the operator's console of Appendix A.

Displays the single-line diagrams of its site's feeders (one per feeder, published by the DMS
on ``SingleLineDiagramProfile/<feeder mRID>``; its ACL lets only its site's reach it) merged
into one view, and acknowledges each diagram it has displayed with ``DisplayStatusProfile/<own
mRID>``, retained (so what the screen shows, and the end of a scenario, are observable on the
bus). It shows only diagrams whose publisher is a DMS of ``FMB_DMS`` (comma-separated; the
brokers' ACLs let no other identity publish one either). It also shows the monitor's alerts
(``AlertProfile``, control plane). The operator's screen is a web page the tablet serves
(``devices.tablet_web``, when ``FMB_UI_HTTP`` is set); the harness's input arrives on a local
Unix socket (``FMB_UI_SOCKET``), one JSON request a line:

    {"op": "set_supply", "target": "supply-1", "volts": 114}  -> publishes SupplyControlProfile
    {"op": "display"}                                          -> the diagram on screen now
    {"op": "ui_url"}                                           -> the web page's URL, token included
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
from pathlib import Path
from typing import Any

from devices.base import Device, DeviceConfig, main
from devices.tablet_web import TabletWeb, WebSettings
from testbed.core.payloads import Message, PayloadError, new_traceparent
from testbed.core.topics import Profile
from testbed.transport.localsock import private_unix_server


class TabletUI(Device):
    """The operator's tablet."""

    role = "tablet"

    def __init__(self, config: DeviceConfig) -> None:
        super().__init__(config)
        # Set before the first connection: the retained diagram may arrive before on_started.
        self.display: dict[str, Any] | None = None
        self.diagrams: dict[str, dict[str, Any]] = {}  # feeder -> its latest diagram
        self.dms = {name.strip() for name in config.extra.get("FMB_DMS", "").split(",") if name.strip()}
        if not self.dms:
            self.log.warning("FMB_DMS is not set: diagrams from whoever the brokers let publish one are shown")
        self.web: TabletWeb | None = None
        self._alerts_seen: dict[tuple[str, int, int], None] = {}  # insertion-ordered: oldest first

    def on_started(self) -> None:
        settings = WebSettings.from_env(self.config.extra)
        self.web = TabletWeb(settings, self.id, self.set_supply, lambda: self.display) if settings else None
        if self.web is not None:
            self.web.start()
        path = self.config.extra.get("FMB_UI_SOCKET")
        if path:
            self._serve_ui(Path(path))

    def handle(self, profile: Profile, mrid: str, message: Message, traceparent: str | None) -> None:
        if profile.name == "AlertProfile":
            self._show_alert(message)
            return
        if profile.name != "SingleLineDiagramProfile":
            return
        if self.dms and message.source not in self.dms:
            self.rejected += 1
            self.log.error("ignored a diagram of %s published by %s, not a DMS (%s)", mrid, message.source,
                           ", ".join(sorted(self.dms)))
            return
        displayed_ns = time.time_ns()
        self.diagrams[mrid] = message.body
        self.display = {"dms": message.source, "diagram_seq": message.seq, "displayed_ns": displayed_ns,
                        "feeders": dict(sorted(self.diagrams.items()))}  # one screen order, whatever came first
        self.publish("DisplayStatusProfile", self.id, self.display, traceparent, retain=True)
        if self.web is not None:
            self.web.emit("display", self.display)

    def _show_alert(self, message: Message) -> None:
        # The monitor publishes each alert on every control-plane broker, and bridges may carry
        # it here twice: one entry per alert. A restarted monitor counts seq from 1 again, so the
        # publish time is part of the key; the last few hundred keys are enough to see a copy.
        key = (message.source, message.seq, message.ts_ns)
        if key in self._alerts_seen or self.web is None:
            return
        self._alerts_seen[key] = None
        if len(self._alerts_seen) > 500:
            del self._alerts_seen[next(iter(self._alerts_seen))]
        body = message.body
        self.web.add_alert({"source": message.source, "seq": message.seq, "kind": body.get("kind"),
                            "time_ns": body.get("time_ns"), "identity": body.get("identity"),
                            "subject": body.get("subject"), "broker": body.get("broker"),
                            "evidence": body.get("evidence", {})})

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

        server = private_unix_server(path, Handler)
        threading.Thread(target=server.serve_forever, daemon=True, name="ui").start()

    def _ui_request(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "set_supply":
            m = self.set_supply(str(request["target"]), float(request["volts"]))
            return {"ok": True, "seq": m.seq, "ts_ns": m.ts_ns}
        if op == "display":
            return {"ok": True, "display": self.display}
        if op == "ui_url":
            return {"ok": True, "url": self.web.url if self.web else None}
        raise ValueError(f"unknown op {op!r}; use set_supply, display or ui_url")


if __name__ == "__main__":
    main(TabletUI, __doc__ or "")
