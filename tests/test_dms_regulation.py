"""The DMS's "too high" rule: a reading above ANSI C84.1 range A (126 V) with the cap bank closed
makes it open the bank; a reading at 126 V does not.

As tests/test_dms_input.py does, the readings are published with the meter's own identity on its
own topic, and the DMS's log says what it made of them; the command and the cap bank's new state
are what the recorder sees on the bus. Appendix A, run first, leaves the bank closed.
"""

from __future__ import annotations

import time

from testbed.core.payloads import encode
from testbed.harness.recorder import Observation, Recorder
from testbed.reporting.text import summary_table
from tests.test_acl import _publish_as

METER_TOPIC = "fmb/metermodule/MeterReadingProfile/meter-1"


def _found(observations: list[Observation], source: str, profile: str, **body: object) -> list[Observation]:
    return [o for o in observations if o.message and o.message.source == source and o.message.profile == profile
            and all(o.message.body.get(k) == v for k, v in body.items())]


def test_a_reading_above_range_a_makes_the_dms_open_the_cap_bank(bus, run_scenario, recorder: Recorder) -> None:  # type: ignore[no-untyped-def]
    result = run_scenario()  # its final checks include the closed cap bank
    assert result["passed"], summary_table(result)
    log = bus.device_log("dms-1")
    before = len(log.read_text())
    since = recorder.mark()
    seq = time.time_ns() // 1000  # far above the meter's own counter
    meter, field = bus.identity("meter-1"), bus.endpoint("field-delivery")
    # 126.0 V is the top of range A: nothing to do. The DMS handles readings in order, so had it
    # acted on this one, its log would name 126.0 V and the next reading would find a command pending.
    for n, volts in enumerate((126.0, 127.5)):
        payload = encode("MeterReadingProfile", "meter-1", seq + n, {"voltage_v": volts, "reason": "periodic"})
        assert _publish_as(meter, field, METER_TOPIC, payload) == 0

    def opened(observations: list[Observation]) -> bool:
        return bool(_found(observations[since:], "dms-1", "CapBankControlProfile", action="open")
                    and _found(observations[since:], "capbank-1", "CapBankStatusProfile", state="open"))

    assert recorder.wait_for(opened, 10), [o.as_json() for o in recorder.snapshot(since)]
    seen = recorder.snapshot(since)
    assert len(_found(seen, "dms-1", "CapBankControlProfile")) == 1  # one command, and it was "open"
    assert _found(seen, "dms-1", "SupplyControlProfile") == []  # the supply is not its lever here
    new = log.read_text()[before:]
    assert "feeder-1: 127.5 V above range A, opening capbank-1" in new, new
    assert "126.0 V above range A" not in new, new
