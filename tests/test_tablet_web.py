"""The tablet's web console, in a real headless Chromium and over real HTTPS.

The browser trusts exactly the tablet's key (Chromium's SPKI pin list), not "any certificate";
the HTTP-level tests verify the server against the project's CA like any client should.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.backends.local import LocalBus
from testbed.bench.ui import find_chromium
from testbed.core.payloads import encode
from testbed.core.scenario import Scenario
from testbed.core.waiting import wait_until
from testbed.harness.runner import ScenarioRunner
from testbed.security.pki import spki_pin
from testbed.transport.mqtt import connect, publish_properties
from tests.conftest import require


@pytest.fixture(scope="module")
def ui_url(bus: LocalBus) -> str:
    url = bus.ui_url("tablet-1")
    assert url and url.startswith("https://127.0.0.1:"), url
    return url


@pytest.fixture(scope="module")
def browser(bus: LocalBus) -> Iterator[Any]:
    chromium = find_chromium()
    require(chromium is not None, "Chromium is not installed (apt-get install chromium)")
    try:  # Playwright is a dev extra: without it the browser tests skip, the others still run
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "Playwright is not installed (pip install -e '.[dev]')")
    pin = spki_pin(bus.pki.server("tablet-1-ui").cert)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=[f"--ignore-certificate-errors-spki-list={pin}"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, ui_url: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    # The browser logs a refused request (HTTP 400) as an error; the page shows it, that is no bug.
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 400" not in m.text
            else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(ui_url)
    page.wait_for_selector("#connection.conn-up")
    yield page
    context.close()
    # A CSP violation or a script error is a bug even when the test's checks passed.
    assert not errors, errors


def test_operator_sets_114_v_and_sees_the_cap_bank_close(bus: LocalBus, appendix_a: Scenario, page: Any,
                                                          tmp_path: Path) -> None:
    with ScenarioRunner(bus, appendix_a) as runner:
        runner.restore()  # cap bank open, supply at 120 V
    page.wait_for_selector("#capbank-capbank-1[data-state=open]")
    assert "token" not in page.url  # the token left the address bar for an HttpOnly cookie
    page.select_option("#supply-target", "supply-1")
    page.fill("#volts", "114")
    page.click("#set-voltage")
    page.wait_for_selector("#capbank-capbank-1[data-state=closed]", timeout=15_000)
    page.wait_for_function("() => Math.abs(Number(document.querySelector('#meter-meter-1').dataset.volts) - 120) < 0.5",
                           timeout=15_000)
    assert page.get_attribute("#meter-meter-1", "data-range") == "normal"
    assert "120.0 V" in page.text_content("#meter-meter-1")
    effect_ms = page.evaluate("window.fmb.effectMs")
    assert effect_ms is not None and 0 < effect_ms < 15_000
    assert "capbank-1 closed" in page.text_content("#command-status")
    shot = tmp_path / "tablet-1.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_reading_outside_range_a_is_coloured(bus: LocalBus, appendix_a: Scenario, page: Any) -> None:
    """The meter's colour follows the DMS's range A verdict: 110 V is low until the DMS acts."""
    with ScenarioRunner(bus, appendix_a) as runner:
        runner.restore()
    page.fill("#volts", "300")
    page.click("#set-voltage")  # the form refuses it before anything is sent (the backend would too)
    assert not page.eval_on_selector("#volts", "e => e.checkValidity()")
    assert page.evaluate("window.fmb.pressedAt") is None
    seen = page.evaluate("window.fmb.displays.length")
    page.fill("#volts", "110")
    page.click("#set-voltage")
    page.wait_for_function(
        f"() => window.fmb.displays.slice({seen}).some(d => Object.values(d.feeders).some(f => f.range_a === 'low'))",
        timeout=15_000)
    page.wait_for_selector("#meter-meter-1[data-range=normal]", timeout=15_000)  # the DMS restored it


def test_run_button_runs_appendix_a_and_shows_its_timeline(bus: LocalBus, page: Any) -> None:
    page.click("#run-scenario")
    page.wait_for_selector("#run-verdict[data-passed=true]", timeout=90_000)
    assert page.locator("#run-steps tbody tr").count() == 9
    assert "PASSED" in page.text_content("#run-verdict")
    page.wait_for_function("() => document.querySelector('#run-timeline').naturalWidth > 0")
    # The verdict can show (the watcher sees result.json) a moment before the run's process has
    # exited and the button comes back: wait for that, but not long.
    page.wait_for_selector("#run-scenario:enabled", timeout=15_000)
    # The run's files are where the page says, and the operator's view of it joins them.
    run_dir = bus.runs_dir / page.get_attribute("#run-verdict", "data-dir")
    assert json.loads((run_dir / "result.json").read_text())["passed"] is True
    page.screenshot(path=str(run_dir / "tablet-1.png"), full_page=True)
    assert (run_dir / "tablet-1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_monitor_alerts_reach_the_page(bus: LocalBus, page: Any) -> None:
    # Nobody reads it (and the DMS may command any supply, where a tablet may command only its site's).
    topic = f"fmb/supplymodule/SupplyControlProfile/supply-{uuid.uuid4().hex[:8]}"
    client = connect(f"dms-1-ui-test-{uuid.uuid4().hex[:6]}", bus.identity("dms-1"), bus.endpoint("dc-control"))
    try:
        for i in range(3):
            client.publish(topic, encode("SupplyControlProfile", "dms-1", 900_000 + i, {"setpoint_v": 118.0}), 1,
                           properties=publish_properties(None)).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
    item = page.wait_for_selector(f"#alerts li[data-kind=undeliverable]:has-text('{topic}')", timeout=15_000)
    assert "dms-1" in item.text_content()


# -- the HTTP surface, without a browser --------------------------------------------------------

def _https(bus: LocalBus, url: str) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(bus.pki.ca_cert))  # verifies the chain and the name
    split = urllib.parse.urlsplit(url)
    return http.client.HTTPSConnection(split.hostname, split.port, context=context, timeout=10)


def _request(bus: LocalBus, url: str, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = _https(bus, url)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _cookie(bus: LocalBus, url: str) -> str:
    status, headers, _ = _request(bus, url, "GET", "/?" + urllib.parse.urlsplit(url).query)
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert all(flag in cookie for flag in ("Secure", "HttpOnly", "SameSite=Strict")), cookie
    return cookie.split(";")[0]


def test_every_request_needs_the_token(bus: LocalBus, ui_url: str) -> None:
    for path in ("/", "/app.js", "/api/state", "/events", "/?token=wrong"):
        status, _, body = _request(bus, ui_url, "GET", path)
        assert status == 401 and b"token" in body, (path, status)
    status, _, body = _request(bus, ui_url, "POST", "/api/supply", {"target": "supply-1", "volts": 114},
                               {"Content-Type": "application/json"})
    assert status == 401


def test_the_page_is_served_with_a_strict_policy(bus: LocalBus, ui_url: str) -> None:
    cookie = _cookie(bus, ui_url)
    status, headers, body = _request(bus, ui_url, "GET", "/", headers={"Cookie": cookie})
    assert status == 200 and b"<svg id=\"diagram\"" in body
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "http://" not in body.decode() and "https://" not in body.decode().replace("http://www.w3.org", "")
    status, _, body = _request(bus, ui_url, "GET", "/api/state", headers={"Cookie": cookie})
    state = json.loads(body)
    assert status == 200 and state["tablet"] == "tablet-1" and state["run_available"] is True
    assert state["display"]["feeders"]["feeder-1"]["capbank"] == "capbank-1"
    for path in ("/runs/../../etc/passwd", "/runs/x/result.json", "/nothing"):
        assert _request(bus, ui_url, "GET", path, headers={"Cookie": cookie})[0] == 404, path


@pytest.mark.parametrize(("body", "headers", "status", "says"), [
    ({"target": "supply-1", "volts": "114"}, {}, 400, "give a number from 60 to 180"),
    ({"target": "supply-1", "volts": float("nan")}, {}, 400, "give a number from 60 to 180"),
    ({"target": "supply-9", "volts": 114}, {}, 400, "use a supply of the diagram: supply-1"),
    ({"target": "supply-1", "volts": 114}, {"Origin": "https://evil.example"}, 403, "not accepted"),
    ({"target": "supply-1", "volts": 114}, {"Content-Type": "text/plain"}, 415, "application/json"),
])
def test_bad_commands_are_refused_with_the_fix(bus: LocalBus, ui_url: str, body: Any, headers: dict[str, str],
                                               status: int, says: str) -> None:
    cookie = _cookie(bus, ui_url)
    data = json.dumps(body)
    conn = _https(bus, ui_url)
    try:
        conn.request("POST", "/api/supply", body=data.encode(),
                     headers={"Cookie": cookie, "Content-Type": "application/json", **headers})
        r = conn.getresponse()
        reply = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == status and says in reply["error"], reply


def test_plaintext_http_gets_no_page(ui_url: str) -> None:
    split = urllib.parse.urlsplit(ui_url)
    with socket.create_connection((split.hostname, split.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        try:
            reply = s.recv(4096)
        except (TimeoutError, ConnectionResetError):
            reply = b""
    assert b"<html" not in reply and b"HTTP/1.1 200" not in reply


def test_a_restarted_tablet_keeps_its_address_and_token(bus: LocalBus, ui_url: str) -> None:
    bus.restart("tablet-1")
    assert wait_until(lambda: bus.ui_url("tablet-1"), 10, what="the restarted tablet-1 serves no web UI") == ui_url
    assert _request(bus, ui_url, "GET", "/api/state", headers={"Cookie": _cookie(bus, ui_url)})[0] == 200
