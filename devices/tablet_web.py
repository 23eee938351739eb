"""The tablet's web console: the operator's screen of Appendix A in a browser.

The tablet device serves one page over HTTPS (its own certificate, ``<tablet>-ui``, issued by
the project's CA) and an access token, like a notebook server: the URL it prints carries the
token once, the page then holds it in an ``HttpOnly``, ``SameSite=Strict`` cookie. The browser
never holds broker credentials: every command goes through this backend, which publishes it
with the tablet's own certificate and signing key, exactly as the scenario's trigger does.

What the page gets (``/events``, server-sent events, and ``/api/state`` for the first paint):
the diagram on screen (the DMS's latest diagram of each of the site's feeders), the monitor's alerts, and the last
scenario run (the newest ``*/result.json`` under the runs directory, with its timeline).
What it can do: set a supply's voltage (``POST /api/supply``) and run the Appendix A
scenario (``POST /api/run``, which starts the configured run command, ``fmb run``, as a child
process; without one the button says why it is off). Every asset is served from
``devices/tablet_ui/``: nothing comes from the internet, and the Content-Security-Policy
allows nothing else.

Settings (environment, beside the device's own; ``testbed.backends.local`` sets them):

    FMB_UI_HTTP          host:port to serve on; port 0 lets the kernel choose   (unset: no web UI)
    FMB_UI_CERT, FMB_UI_KEY   the page's TLS certificate and key                (required with FMB_UI_HTTP)
    FMB_UI_TOKEN         the access token                                      (default: a random one)
    FMB_UI_URL_FILE      written (mode 0600) with the URL, token included, once serving
    FMB_UI_RUNS          directory of scenario runs whose newest one the page shows
    FMB_UI_RUN_COMMAND   JSON argv that runs Appendix A; ``--out DIR`` is appended
    FMB_UI_PUBLIC        the URL base users reach (a container's published port), e.g. https://127.0.0.1:8443
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.message
import hmac
import http.server
import json
import logging
import math
import os
import queue
import re
import secrets
import ssl
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from testbed.core.errors import DeviceError
from testbed.core.results import ScenarioResultDoc

__all__ = ["TabletWeb", "WebSettings", "run_summary"]

ASSETS = Path(__file__).resolve().parent / "tablet_ui"
_ASSET_TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_COOKIE = "fmb_ui"
RESULT_SCHEMA = "fmb.scenario-result/1"
SUPPLY_RANGE_V = (60.0, 180.0)  # what a 120 V feeder's regulator can be asked for; anything else is a typo
RUN_TIMEOUT_S = 120.0
KEEPALIVE_S = 15.0
_HEADERS = {
    # Everything from this origin, nothing inline, nothing framed: the page is a control surface.
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Strict-Transport-Security": "max-age=31536000",
}


class RequestError(Exception):
    """A request the console refuses; the message says what to change."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class WebSettings:
    """Where and how the console serves, from ``FMB_UI_*``."""

    host: str
    port: int
    cert: Path
    key: Path
    token: str
    url_file: Path | None = None
    runs_dir: Path | None = None
    run_command: tuple[str, ...] = ()
    public: str | None = None  # the address users reach, when it is not the listening one (a published port)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WebSettings | None:
        listen = env.get("FMB_UI_HTTP")
        if not listen:
            return None
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise DeviceError(f"FMB_UI_HTTP is {listen!r}; give host:port, e.g. 127.0.0.1:8443 (port 0: any)")
        cert, key = env.get("FMB_UI_CERT", ""), env.get("FMB_UI_KEY", "")
        for name, value in (("FMB_UI_CERT", cert), ("FMB_UI_KEY", key)):
            if not value or not Path(value).is_file():
                raise DeviceError(f"{name} is {value!r}, not a file: the web UI serves HTTPS only; "
                                  "create its certificate with `fmb certs init`")
        command: tuple[str, ...] = ()
        if env.get("FMB_UI_RUN_COMMAND"):
            try:
                command = tuple(str(a) for a in json.loads(env["FMB_UI_RUN_COMMAND"]))
            except (ValueError, TypeError):
                raise DeviceError("FMB_UI_RUN_COMMAND is not a JSON list of strings") from None
        token = env.get("FMB_UI_TOKEN") or secrets.token_urlsafe(24)
        return cls(host=host, port=int(port), cert=Path(cert), key=Path(key), token=token,
                   url_file=Path(env["FMB_UI_URL_FILE"]) if env.get("FMB_UI_URL_FILE") else None,
                   runs_dir=Path(env["FMB_UI_RUNS"]) if env.get("FMB_UI_RUNS") else None,
                   run_command=command, public=env.get("FMB_UI_PUBLIC", "").rstrip("/") or None)


def run_summary(run_dir: Path) -> dict[str, Any] | None:
    """What the page shows of one scenario run directory, or None if it holds no finished run."""
    try:
        loaded = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    # summary.txt is written last: before it exists the timeline may still be being drawn.
    if not isinstance(loaded, dict) or loaded.get("schema") != RESULT_SCHEMA or not (run_dir / "summary.txt").exists():
        return None
    result = cast(ScenarioResultDoc, loaded)  # its schema string says so
    return {
        "dir": run_dir.name, "scenario": result.get("scenario"), "passed": bool(result.get("passed")),
        "failure": result.get("failure"), "e2e_ms": result.get("e2e_ms"), "created": result.get("created"),
        "repetitions": result.get("repetitions"), "end": result.get("end"),
        "steps": [{k: s.get(k) for k in ("n", "name", "device", "plane", "t_ms", "hop_ms")}
                  for s in result.get("steps", [])],
        "timeline": f"/runs/{run_dir.name}/timeline.png" if (run_dir / "timeline.png").exists() else None,
    }


class TabletWeb:
    """The console's backend: HTTPS server, live event stream, commands and runs."""

    def __init__(self, settings: WebSettings, device_id: str,
                 set_supply: Callable[[str, float], Any], display: Callable[[], dict[str, Any] | None]) -> None:
        self.settings = settings
        self.device_id = device_id
        self._set_supply = set_supply
        self._display = display
        self.log = logging.getLogger(f"tablet-web.{device_id}")
        self.alerts: deque[dict[str, Any]] = deque(maxlen=50)
        self.last_run: dict[str, Any] | None = None
        self.run_state: dict[str, Any] = {"running": False}
        self._listeners: set[queue.Queue[tuple[str, Any]]] = set()
        self._lock = threading.Lock()
        self._last_run_key: tuple[str, float] | None = None
        self._server: http.server.ThreadingHTTPServer | None = None
        self.url = ""

    # -- events -------------------------------------------------------------------------------

    def emit(self, kind: str, data: Any) -> None:
        """Send one event to every open page."""
        with self._lock:
            listeners = list(self._listeners)
        for q in listeners:
            # A page that stopped reading loses events; it resynchronises from /api/state on reload.
            with contextlib.suppress(queue.Full):
                q.put_nowait((kind, data))

    def add_alert(self, alert: dict[str, Any]) -> None:
        self.alerts.appendleft(alert)
        self.emit("alert", alert)

    def state(self) -> dict[str, Any]:
        return {"tablet": self.device_id, "display": self._display(), "alerts": list(self.alerts),
                "run": self.last_run, "run_state": self.run_state,
                "run_available": bool(self.settings.run_command),
                "run_unavailable_reason": None if self.settings.run_command else (
                    "this bus gives the tablet no scenario runner: run `fmb run appendix-a` instead")}

    # -- serving --------------------------------------------------------------------------------

    def start(self) -> str:
        """Serve in background threads; returns the URL (token included)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.settings.cert, self.settings.key)
        try:
            server = http.server.ThreadingHTTPServer((self.settings.host, self.settings.port), _handler(self))
        except OSError as e:
            raise DeviceError(f"the web UI cannot listen on {self.settings.host}:{self.settings.port} ({e}); "
                              "choose another port (`fmb up --ui-port N`, or FMB_UI_HTTP)") from None
        server.daemon_threads = True
        # The handshake happens in each request's thread, so a slow client cannot hold the others up.
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server
        host = self.settings.host if self.settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
        base = self.settings.public or f"https://{host}:{server.server_address[1]}"
        self.url = f"{base}/?token={self.settings.token}"
        threading.Thread(target=server.serve_forever, daemon=True, name="web").start()
        if self.settings.runs_dir is not None:
            threading.Thread(target=self._watch_runs, daemon=True, name="runs").start()
        if self.settings.url_file is not None:
            path = self.settings.url_file
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the token is a credential
            with os.fdopen(fd, "w") as f:
                f.write(self.url + "\n")
        self.log.info("web UI at %s/ (listening on %s:%d; token in %s)", base, self.settings.host,
                      server.server_address[1], self.settings.url_file or "the URL printed at start-up")
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def authorised(self, headers: email.message.Message[str, str], query_token: str | None) -> bool:
        if query_token is not None:
            return hmac.compare_digest(query_token.encode(), self.settings.token.encode())
        for part in headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == _COOKIE and hmac.compare_digest(value.encode(), self.settings.token.encode()):
                return True
        return False

    # -- what the page can do ---------------------------------------------------------------------

    def command_supply(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, 'send a JSON object: {"target": "supply-1", "volts": 114}')
        target, volts = request.get("target"), request.get("volts")
        display = self._display() or {}
        supplies = [s for f in display.get("feeders", {}).values() if isinstance(s := f.get("supply"), str)]
        if not isinstance(target, str) or (supplies and target not in supplies):
            raise RequestError(HTTPStatus.BAD_REQUEST,
                               f"target is {target!r}; use a supply of the diagram: {', '.join(supplies) or '-'}")
        if isinstance(volts, bool) or not isinstance(volts, int | float) or not math.isfinite(volts) or not (
                SUPPLY_RANGE_V[0] <= volts <= SUPPLY_RANGE_V[1]):
            raise RequestError(HTTPStatus.BAD_REQUEST,
                               f"volts is {volts!r}; give a number from {SUPPLY_RANGE_V[0]:g} to {SUPPLY_RANGE_V[1]:g}")
        message = self._set_supply(target, float(volts))
        self.log.info("operator set %s to %g V from the web UI (seq %d)", target, volts, message.seq)
        return {"ok": True, "target": target, "volts": float(volts), "seq": message.seq, "ts_ns": message.ts_ns}

    def start_run(self) -> dict[str, Any]:
        s = self.settings
        if not s.run_command or s.runs_dir is None:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, self.state()["run_unavailable_reason"])
        with self._lock:
            if self.run_state["running"]:
                raise RequestError(HTTPStatus.CONFLICT, "a run is in progress; wait for its result")
            out = s.runs_dir / f"ui-appendix-a-{dt.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
            self.run_state = {"running": True, "dir": out.name, "started": time.time()}
        self.emit("run_state", self.run_state)
        threading.Thread(target=self._run, args=(out,), daemon=True, name="run").start()
        return {"ok": True, "dir": out.name}

    def _run(self, out: Path) -> None:
        # Beside the run when the runs directory is ours; in a container it is the runner's (read-only here).
        log_path = out.parent / f"{out.name}.log"
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            log_path.touch()
        except OSError:
            log_path = Path(tempfile.gettempdir()) / f"{out.name}.log"
        # The run is the harness, not the tablet: it gets none of the tablet's FMB_* settings.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FMB_")}
        error = None
        with open(log_path, "wb") as log:
            try:
                proc = subprocess.Popen([*self.settings.run_command, "--out", str(out)], stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            except OSError as e:
                proc, error = None, f"cannot start the run command: {e}"
            if proc is not None:
                try:
                    proc.wait(RUN_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    error = f"the run did not finish in {RUN_TIMEOUT_S:g} s"
        summary = run_summary(out)
        if summary is None and error is None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            error = f"the run wrote no result: {tail[0]} (log: {log_path})"
        with self._lock:
            self.run_state = {"running": False, "dir": out.name, "error": error}
            if summary is not None:
                self.last_run = summary
                self._last_run_key = (out.name, (out / "result.json").stat().st_mtime)
        self.emit("run_state", self.run_state)
        if summary is not None:
            self.emit("run", summary)

    def _watch_runs(self) -> None:
        """Follow the newest finished run of the runs directory (the page's 'last run')."""
        runs = self.settings.runs_dir
        assert runs is not None
        while True:
            try:
                newest = max(((p.stat().st_mtime, p.parent) for p in runs.glob("*/result.json")),
                             default=None, key=lambda x: x[0])
            except OSError:
                newest = None
            if newest is not None:
                key = (newest[1].name, newest[0])
                if key != self._last_run_key:
                    summary = run_summary(newest[1])
                    if summary is not None:
                        with self._lock:
                            self._last_run_key, self.last_run = key, summary
                        self.emit("run", summary)
            time.sleep(1.0)

    def run_file(self, name: str, filename: str) -> Path:
        runs = self.settings.runs_dir
        if runs is None or not _RUN_NAME.fullmatch(name) or filename != "timeline.png":
            raise RequestError(HTTPStatus.NOT_FOUND, "no such run file")
        path = runs / name / filename
        if not path.is_file():
            raise RequestError(HTTPStatus.NOT_FOUND, f"run {name} has no {filename}")
        return path

    def listen(self) -> queue.Queue[tuple[str, Any]]:
        q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1000)
        with self._lock:
            self._listeners.add(q)
        return q

    def unlisten(self, q: queue.Queue[tuple[str, Any]]) -> None:
        with self._lock:
            self._listeners.discard(q)


def _handler(web: TabletWeb) -> type[http.server.BaseHTTPRequestHandler]:
    class ConsoleHandler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fmb-tablet"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            web.log.debug("%s %s", self.address_string(), format % args)

        def setup(self) -> None:
            super().setup()
            self.connection.settimeout(30)

        def handle(self) -> None:
            try:
                super().handle()
            except (ssl.SSLError, ConnectionError, TimeoutError) as e:
                web.log.debug("connection from %s ended: %s", self.client_address[0], e)

        # -- responses ------------------------------------------------------------------------

        def _send(self, status: HTTPStatus, body: bytes, content_type: str,
                  extra: Mapping[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in {**_HEADERS, "Content-Type": content_type,
                                "Content-Length": str(len(body)), **(extra or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: HTTPStatus, data: Any) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def _error(self, e: RequestError) -> None:
            if self.path.startswith("/api/"):
                self._json(e.status, {"ok": False, "error": str(e)})
            else:
                self._send(e.status, f"{e}\n".encode(), "text/plain; charset=utf-8")

        # -- routes -----------------------------------------------------------------------------

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            url = urlsplit(self.path)
            token = parse_qs(url.query).get("token", [None])[0]
            try:
                if not web.authorised(self.headers, token):
                    raise RequestError(HTTPStatus.UNAUTHORIZED,
                                       "open the URL with the access token that `fmb up` printed "
                                       "(also in the bus's run directory, <tablet>.url)")
                if token is not None:  # trade the token in the URL for a cookie, and drop it from the address bar
                    cookie = f"{_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict"
                    self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": url.path or "/",
                                                                           "Set-Cookie": cookie})
                    return
                path = url.path
                if path in ("/", "/index.html"):
                    path = "/index.html"
                elif path == "/favicon.ico":
                    path = "/favicon.svg"
                if path.lstrip("/") in _ASSET_TYPES:
                    name = path.lstrip("/")
                    self._send(HTTPStatus.OK, (ASSETS / name).read_bytes(), _ASSET_TYPES[name])
                elif path == "/api/state":
                    self._json(HTTPStatus.OK, web.state())
                elif path == "/events":
                    self._events()
                elif (m := re.fullmatch(r"/runs/([^/]+)/([^/]+)", path)) is not None:
                    self._send(HTTPStatus.OK, web.run_file(m[1], m[2]).read_bytes(), "image/png")
                else:
                    raise RequestError(HTTPStatus.NOT_FOUND, f"no page {path}")
            except RequestError as e:
                self._error(e)

        def do_POST(self) -> None:  # noqa: N802
            try:
                if not web.authorised(self.headers, None):
                    raise RequestError(HTTPStatus.UNAUTHORIZED, "no valid session: reload the page from its URL")
                # A form on another site cannot send JSON without a preflight, and its Origin differs.
                origin = self.headers.get("Origin")
                if origin is not None and origin != f"https://{self.headers.get('Host')}":
                    raise RequestError(HTTPStatus.FORBIDDEN, f"requests from {origin} are not accepted")
                if self.headers.get_content_type() != "application/json":
                    raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send Content-Type: application/json")
                length = int(self.headers.get("Content-Length") or 0)
                if length > 4096:
                    raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "a request is at most 4 KiB")
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    raise RequestError(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None
                if self.path == "/api/supply":
                    self._json(HTTPStatus.OK, web.command_supply(body))
                elif self.path == "/api/run":
                    self._json(HTTPStatus.ACCEPTED, web.start_run())
                else:
                    raise RequestError(HTTPStatus.NOT_FOUND, f"no action {self.path}")
            except RequestError as e:
                self._error(e)

        def _events(self) -> None:
            q = web.listen()
            try:
                self.send_response(HTTPStatus.OK)
                for name, value in {**_HEADERS, "Content-Type": "text/event-stream", "Connection": "close"}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.close_connection = True
                self.connection.settimeout(KEEPALIVE_S * 4)  # a page that stops reading is dropped
                self._event("state", web.state())
                while True:
                    try:
                        kind, data = q.get(timeout=KEEPALIVE_S)
                    except queue.Empty:
                        self.wfile.write(b": keep-alive\n\n")
                        self.wfile.flush()
                        continue
                    self._event(kind, data)
            except (OSError, ssl.SSLError):
                pass  # the page went away
            finally:
                web.unlisten(q)

        def _event(self, kind: str, data: Any) -> None:
            self.wfile.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

    return ConsoleHandler
