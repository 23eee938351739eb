"""Bad input to the DMS is rejected with a logged error; the DMS keeps running; the bus works."""

from __future__ import annotations

import json
import time

import pytest

from testbed.reporting.text import summary_table
from tests.conftest import wait_log
from tests.test_acl import _publish_as

TOPIC = "fmb/metermodule/MeterReadingProfile/meter-1"


def _envelope(body: object, **overrides: object) -> bytes:
    doc = {"v": 1, "profile": "MeterReadingProfile", "source": "meter-1", "seq": 900,
           "ts_ns": time.time_ns(), "body": body}
    doc.update(overrides)
    return json.dumps(doc).encode()


CASES = {
    "bad JSON": (b'{"v": 1, "profile": "MeterReading', "not JSON"),
    "wrong type": (_envelope({"voltage_v": "112.8", "reason": "periodic"}), "not a number of volts"),
    "missing field": (_envelope({"reason": "periodic"}), "misses field 'voltage_v'"),
    "absurd voltage": (_envelope({"voltage_v": 11000.0, "reason": "periodic"}), "outside the plausible"),
    "negative voltage": (_envelope({"voltage_v": -5, "reason": "periodic"}), "outside the plausible"),
    "wrong version": (_envelope({"voltage_v": 118.8, "reason": "periodic"}, v=2), "payload version"),
    "spoofed source": (_envelope({"voltage_v": 100.0, "reason": "periodic"}, source="meter-9"),
                       "on the topic of 'meter-1'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_meter_reading_is_rejected_and_logged(bus, case: str) -> None:
    payload, reason = CASES[case]
    log = bus.device_log("dms-1")
    before = log.read_text()
    # Published with the meter's own identity on its own topic: the ACL lets it through,
    # so it is the DMS's validation that must stop it.
    assert _publish_as(bus.identity("meter-1"), bus.endpoint("field-delivery"), TOPIC, payload) == 0
    new = wait_log(log, len(before), "rejected payload")
    assert "ERROR" in new and "rejected payload on " + TOPIC in new, new
    assert reason in new, new
    assert bus.alive("dms-1")


def test_dms_still_regulates_after_bad_input(bus, run_scenario) -> None:
    for payload, _ in CASES.values():
        _publish_as(bus.identity("meter-1"), bus.endpoint("field-delivery"), TOPIC, payload)
    result = run_scenario(repeat=2)
    assert result["passed"], summary_table(result)
    assert bus.alive("dms-1")
