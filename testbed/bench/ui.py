"""``fmb bench ui``: Appendix A as the operator sees it, timed in a real browser.

A fresh bus of local processes (free ports, temporary state), the tablet's web console open in
headless Chromium (Debian's ``chromium``, driven by Playwright, trusting exactly the console's
key). Each repetition restores the initial state (cap bank open, supply at 120 V) with the
scenario's operator commands, waits until the page shows it, then presses "Set voltage" with
114 V and measures, in the page's own clock (``performance.now()``, from the submit handler to
the moment the page received the diagram): the time until the diagram shows the cap bank
closed, and until it shows the meter back within 0.5 V of 120 V. The result is
``bench-ui.json`` with every sample, percentiles and the conditions, plus a screenshot of the
page after the last repetition.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Final, cast

from testbed.backends.environment import environment
from testbed.backends.local import LocalBus
from testbed.core.errors import TestbedError
from testbed.core.results import UiResult, UiSample
from testbed.core.scenario import Scenario
from testbed.core.stats import percentiles
from testbed.core.topology import Topology
from testbed.harness.runner import ScenarioRunner
from testbed.security.pki import PKI, spki_pin

__all__ = ["RESULT_FILE", "SCHEMA", "chromium_path", "find_chromium", "run_ui", "summary"]

SCHEMA: Final = "fmb.bench-ui/1"  # the shape: testbed.core.results.UiResult
RESULT_FILE = "bench-ui.json"
SETPOINT_V = 114.0
NOMINAL_V = 120.0
TIMEOUT_MS = 15_000

# The first display after the press that shows the effect, in page time relative to the press.
_EFFECT_JS = """(nominal) => {
  const f = window.fmb, after = f.displays.filter(d => d.t >= f.pressedAt);
  const first = (pred) => {
    const d = after.find(d => Object.values(d.feeders).some(pred));
    return d ? d.t - f.pressedAt : null;
  };
  return {closed_ms: first(x => x.capbank_state === 'closed'),
          restored_ms: first(x => x.capbank_state === 'closed' && Math.abs(x.meter_v - nominal) < 0.5),
          low_ms: first(x => x.range_a === 'low')};
}"""


def find_chromium() -> str | None:
    """Debian's Chromium (or ``FMB_CHROMIUM``), or None when it is not installed."""
    path = os.environ.get("FMB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if Path(path).exists() else None


def chromium_path() -> str:
    """Debian's Chromium, or a one-line error saying how to install it."""
    path = find_chromium()
    if path is None:
        raise TestbedError("Chromium is not installed: `sudo apt-get install chromium` (or set FMB_CHROMIUM)")
    return path


def run_ui(topology: Topology, pki: PKI, scenario: Scenario, repeat: int, out: Path,
           log: Callable[[str], None] = print) -> UiResult:
    """The whole benchmark on a fresh local bus; writes ``out/bench-ui.json`` and a screenshot."""
    if repeat < 2:
        raise TestbedError(f"--repeat is {repeat}; percentiles need 2 or more repetitions")
    try:  # Playwright is a dev extra: without it, a one-line error instead of an import failure
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise TestbedError("Playwright is not installed: pip install -e '.[dev]' "
                           "(it drives Debian's chromium)") from None
    chromium = chromium_path()
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    variant = topology.with_free_ports()
    tablet = variant.first((d.id for d in variant.devices if d.role == "tablet"), "tablet")
    samples: list[UiSample] = []
    with tempfile.TemporaryDirectory(prefix="fmb-bench-ui-") as state:
        bus = LocalBus(variant, pki, Path(state), ui_port=0)
        log(f"starting {len(variant.brokers)} brokers and {len(variant.devices)} devices on free ports (state {state})")
        bus.start()
        try:
            url = bus.ui_url(tablet)
            if not url:
                raise TestbedError(f"{tablet} serves no web UI; see {bus.device_log(tablet)}")
            pin = spki_pin(pki.server(f"{tablet}-ui").cert)
            with ScenarioRunner(bus, scenario) as runner, sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium,
                                            args=[f"--ignore-certificate-errors-spki-list={pin}"])
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url)
                page.wait_for_selector("#connection.conn-up")
                supply = variant.first((f.supply for f in variant.feeders), "feeder")
                page.select_option("#supply-target", supply)
                page.fill("#volts", f"{SETPOINT_V:g}")
                for rep in range(1, repeat + 1):
                    seen = page.evaluate("() => window.fmb.displays.length")
                    runner.restore()
                    try:  # the page shows the initial state (a diagram since the restore), then the press
                        page.wait_for_function(
                            "(seen) => window.fmb.displays.slice(seen).some(d => Object.values(d.feeders).every("
                            "f => f.capbank_state === 'open'))", arg=seen, timeout=TIMEOUT_MS)
                        page.click("#set-voltage")
                        page.wait_for_function(f"() => ({_EFFECT_JS})({NOMINAL_V}).restored_ms !== null",
                                               timeout=TIMEOUT_MS)
                    except PlaywrightError as e:
                        page.screenshot(path=str(out / f"{tablet}-failed.png"), full_page=True)
                        raise TestbedError(f"repetition {rep}: the page did not show the expected diagram in "
                                           f"{TIMEOUT_MS / 1000:g} s ({str(e).splitlines()[0]}); screenshot "
                                           f"{out / f'{tablet}-failed.png'}, tablet log {bus.device_log(tablet)}"
                                           ) from None
                    sample = page.evaluate(_EFFECT_JS, NOMINAL_V)
                    # The page's closed_ms, restored_ms (both shown by now, waited for above) and low_ms.
                    samples.append(cast(UiSample, {"rep": rep, **{k: round(v, 2) if v is not None else None
                                                                  for k, v in sample.items()}}))
                    if rep % 5 == 0 or rep == repeat:
                        log(f"  repetition {rep}/{repeat}: cap bank shown closed after {sample['closed_ms']:.1f} ms, "
                            f"meter back at {NOMINAL_V:g} V after {sample['restored_ms']:.1f} ms")
                time.sleep(0.3)  # let the page finish painting the last diagram
                page.screenshot(path=str(out / f"{tablet}.png"), full_page=True)
                browser_version = browser.version
                browser.close()
                tls = runner.recorder.tls_version
        finally:
            bus.stop()
    result: UiResult = {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "what": "operator presses Set voltage (114 V) in the tablet's web page -> the page shows the cap bank "
                "closed / the meter back at 120 V; page clock, from the submit handler to the diagram's arrival",
        "repetitions": repeat,
        "closed_ms": percentiles([s["closed_ms"] for s in samples]),
        "restored_ms": percentiles([s["restored_ms"] for s in samples]),
        "samples": samples,
        "screenshot": f"{tablet}.png",  # beside this file
        "conditions": {
            "browser": f"Chromium {browser_version} headless ({chromium}), Playwright {version('playwright')}",
            "page": "HTTPS (TLS from the tablet's own certificate), server-sent events",
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "environment": environment(variant, tls, "local"),
    }
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary(result: UiResult) -> str:
    lines = [f"tablet web UI, {result['repetitions']} presses of Set voltage (114 V), page clock, ms:"]
    for s, label in ((result["closed_ms"], "cap bank shown closed"),
                     (result["restored_ms"], "meter shown back at 120 V")):
        lines.append(f"  {label:26} p50 {s['p50']:8.1f}  p90 {s['p90']:8.1f}  p99 {s['p99']:8.1f}  "
                     f"max {s['max']:8.1f}  (n={s['n']})")
    lines.append(f"  screenshot: {result['screenshot']} beside the JSON")
    return "\n".join(lines)

