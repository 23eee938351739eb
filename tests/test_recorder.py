"""The recorder's de-duplication, on the running bus: a message is (source, profile, seq).

The same message seen on the field broker and, through the bridge, on the data-centre broker is
one observation with two sightings; a message that differs in any of the three is another one.
The messages are published with the devices' own identities on their own topics (as
tests/test_acl.py does), with values the devices report anyway, so the DMS has nothing to do.
"""

from __future__ import annotations

import time

import pytest

from testbed.core.errors import TestbedError
from testbed.core.payloads import encode
from testbed.harness.recorder import Observation, Recorder
from tests.test_acl import _publish_as

METER_TOPIC = "fmb/metermodule/MeterReadingProfile/meter-1"
SUPPLY_TOPIC = "fmb/supplymodule/SupplyStatusProfile/supply-1"
BOTH = {"field-delivery", "dc-delivery"}  # both profiles cross the bridge to the DMS


def _key(obs: Observation) -> tuple[str, str, int] | None:
    return (obs.message.source, obs.message.profile, obs.message.seq) if obs.message else None


def test_one_message_on_two_brokers_is_one_observation_and_others_are_not(bus, recorder: Recorder) -> None:  # type: ignore[no-untyped-def]
    seq = time.time_ns() // 1000  # far above the devices' own counters, as the runner's are
    meter, supply = bus.identity("meter-1"), bus.identity("supply-1")
    field = bus.endpoint("field-delivery")
    reading = {"voltage_v": 118.8, "reason": "periodic"}  # Appendix A's idle feeder: 120 V less 1.2 V
    status = {"setpoint_v": 120.0, "output_v": 120.0}
    since = recorder.mark()
    sent = [
        (meter, METER_TOPIC, encode("MeterReadingProfile", "meter-1", seq, reading)),
        (meter, METER_TOPIC, encode("MeterReadingProfile", "meter-1", seq + 1, reading)),  # another seq
        (supply, SUPPLY_TOPIC, encode("SupplyStatusProfile", "supply-1", seq, status)),  # another source
    ]
    for identity, name, payload in sent:
        assert _publish_as(identity, field, name, payload) == 0
    keys = [("meter-1", "MeterReadingProfile", seq), ("meter-1", "MeterReadingProfile", seq + 1),
            ("supply-1", "SupplyStatusProfile", seq)]

    def ours(observations: list[Observation]) -> list[Observation]:
        return [o for o in observations[since:] if _key(o) in keys]

    def all_seen_on_both(observations: list[Observation]) -> bool:
        seen = {_key(o): {b for b, _, _ in o.sightings} for o in ours(observations)}
        return all(seen.get(k, set()) >= BOTH for k in keys)

    assert recorder.wait_for(all_seen_on_both, 10), [o.as_json() for o in ours(recorder.snapshot())]
    found = ours(recorder.snapshot())
    assert sorted(_key(o) for o in found) == sorted(keys)  # one observation each, three in all
    assert len({o.index for o in found}) == 3
    for obs in found:
        assert sorted(b for b, _, _ in obs.sightings) == sorted(BOTH), obs.as_json()
        assert obs.planes == {"delivery"}

    # The very same message again (what a QoS 1 redelivery is): more sightings, no new observation.
    assert _publish_as(meter, field, METER_TOPIC, sent[0][2]) == 0
    first = next(o for o in found if _key(o) == keys[0])
    assert recorder.wait_for(lambda _: len(first.sightings) == 4, 10), first.as_json()
    assert sorted(_key(o) for o in ours(recorder.snapshot())) == sorted(keys)


def test_topics_of_takes_mrids_only(bus) -> None:  # type: ignore[no-untyped-def]
    for bad in ([], ["meter-1", "fmb/#"], ["+"], [""]):
        with pytest.raises(TestbedError, match="give one or more mRIDs without"):
            Recorder(bus.topology, bus.identity("recorder"), {}, topics_of=bad)
