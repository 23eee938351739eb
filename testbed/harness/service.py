"""The harness as a Compose service: run a scenario from inside the bus, and serve run requests.

``scenario NAME`` (the ``scenario`` service) runs a scenario once on the Compose bus, prints
the timeline and exits with the verdict. The ``runner`` service holds the harness identities
and runs Appendix A (nothing else) when a tablet's button asks over an owner-only Unix socket;
:func:`request_run` is what the button starts. The command line is :mod:`testbed.cli.containers`.
"""

from __future__ import annotations

import json
import os
import re
import socketserver
import sys
import threading
from pathlib import Path

from testbed.backends.containers import (
    RUN_DIR,
    RUN_TIMEOUT_S,
    RUNNER_SCENARIOS,
    RUNNER_SOCKET,
    RUNS_DIR,
    ContainerBus,
    container_topology,
)
from testbed.core.errors import TestbedError
from testbed.core.scenario import load_scenario
from testbed.harness.runner import ScenarioRunner
from testbed.reporting.text import summary_table
from testbed.transport.health import Heartbeat, install
from testbed.transport.localsock import private_unix_server, unix_request

__all__ = ["request_run", "run_scenario", "serve_runner"]


def run_scenario(name: str, repeat: int = 1, out: Path | None = None, substation: str | None = None) -> int:
    """Run scenario ``name`` on the Compose bus from inside it (on ``substation``'s devices of a large
    topology, else the whole topology's); print the timeline; 0 if passed."""
    bus = ContainerBus(container_topology())
    packaged = Path(os.environ.get("FMB_SCENARIO_DIR", "/opt/fmb/scenarios")) / f"{name}.toml"
    scenario = load_scenario(packaged if packaged.exists() else name,
                             {d.id: d.role for d in bus.topology.devices})
    with ScenarioRunner(bus, scenario, substation=substation) as runner:
        result = runner.run(repeat, out, backend="compose")
    print(summary_table(result), flush=True)
    for device in (d for d in bus.topology.devices if d.role == "tablet"):
        url = bus.ui / f"{device.id}.url"
        if url.exists():
            print(f"tablet UI {device.id}: {url.read_text().strip()}  (up while the bus is; its certificate "
                  "comes from the bus's own CA, /certs/ca/ca.pem in any device container)", flush=True)
    print(json.dumps({"scenario": result["scenario"], "passed": result["passed"],
                      "steps": len(result["steps"]), "e2e_ms": result["e2e_ms"]}), flush=True)
    return 0 if result["passed"] else 1


def serve_runner(socket_path: Path = RUNNER_SOCKET, runs: Path = RUNS_DIR,
                 health_file: Path | None = RUN_DIR / "ready") -> None:
    """The ``runner`` service: run an allowed scenario into ``runs/<name>/`` on request, one at a time.

    A request is one JSON line, ``{"scenario": "appendix-a", "out": "<directory name>"}``; the
    reply is one JSON line, ``{"ok": true, "passed": ...}`` or ``{"ok": false, "error": ...}``.
    ``health_file`` is the service's heartbeat (its container's health check): while a run is in
    progress, it says whether the run's recorder still receives from every broker."""
    lock = threading.Lock()
    name_ok = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            try:
                request = json.loads(self.rfile.readline() or b"{}")
                scenario, out = request.get("scenario"), str(request.get("out", ""))
                if scenario not in RUNNER_SCENARIOS:
                    raise ValueError(f"scenario {scenario!r} is not offered; ask for one of {list(RUNNER_SCENARIOS)}")
                if not name_ok.fullmatch(out) or (runs / out).exists():
                    raise ValueError(f"out {out!r}: give a new directory name (letters, digits, . _ -)")
                if not lock.acquire(blocking=False):
                    raise ValueError("a run is in progress; wait for its result")
                try:
                    code = run_scenario(scenario, out=runs / out)
                finally:
                    lock.release()
                reply: dict[str, object] = {"ok": True, "passed": code == 0}
            except (ValueError, TypeError, TestbedError) as e:
                reply = {"ok": False, "error": str(e)}
            self.wfile.write(json.dumps(reply).encode() + b"\n")

    server = private_unix_server(socket_path, Handler)
    heartbeat = Heartbeat(health_file, "runner")
    install(heartbeat)
    heartbeat.start()
    print(f"runner: serving run requests on {socket_path} (scenarios: {', '.join(RUNNER_SCENARIOS)})", flush=True)
    server.serve_forever()


def request_run(scenario: str, out: Path, socket_path: Path = RUNNER_SOCKET) -> int:
    """What a tablet's run button starts in a container: ask the runner service; 0 if the run passed."""
    try:
        reply = unix_request(socket_path, {"scenario": scenario, "out": out.name}, RUN_TIMEOUT_S)
    except (OSError, ValueError) as e:
        print(f"error: the runner service does not answer at {socket_path} ({e}); "
              "is the Compose `runner` service up?", file=sys.stderr)
        return 2
    if not reply.get("ok"):
        print(f"error: the runner refused: {reply.get('error')}", file=sys.stderr)
        return 2
    return 0 if reply.get("passed") else 1
