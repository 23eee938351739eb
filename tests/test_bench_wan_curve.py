"""``fmb bench wan`` in miniature: the shaped link's three configurations, the bottleneck document,
sane figures, the emulated delay and nothing left behind; and the link alone.

Needs root, iproute2 (network namespaces, veth, htb) and mosquitto-clients: skips without them,
fails instead under CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed.backends.wanlink import LinkShape, WanLink
from testbed.bench.bottleneck import check
from testbed.bench.wancurve import CONFIGS, RESULT_FILE, run_wan_curve
from testbed.core.errors import TestbedError
from tests.conftest import require

FIXTURE = Path(__file__).parent / "fixtures" / RESULT_FILE


def _require_link() -> None:
    require(os.geteuid() == 0 and all(shutil.which(t) for t in ("ip", "tc", "mosquitto_pub", "mosquitto_sub")),
            "the WAN benchmark needs root, iproute2 (namespaces, veth, htb) and mosquitto-clients")


@pytest.mark.slow
def test_wan_curve_smoke_three_configs_on_a_shaped_delayed_link(tmp_path: Path) -> None:
    """Idle and three times the link's capacity, 1 s each, at 1 Mbit/s and 15 ms each way."""
    _require_link()
    result = run_wan_curve(1_000_000, 15.0, tmp_path, factors=(0.0, 3.0), seconds=1.0, settle_s=1.0,
                           command_rate=15)
    check(dict(result), "smoke")
    doc = json.loads((tmp_path / RESULT_FILE).read_text())
    assert doc == json.loads(json.dumps(result))
    assert [c["config"] for c in result["curves"]] == list(CONFIGS)
    for curve in result["curves"]:
        idle, flood = curve["points"]
        assert idle["load"] == 0 and not idle["saturated"] and flood["load"] > 0
        for point in (idle, flood):
            c = point["control_ms"]
            assert c["sent"] == 15 and c["acked"] + c["lost"] == c["sent"]
        # Every command crosses the link twice: 2 x 15 ms of relay delay at least, and no queue at idle.
        c = idle["control_ms"]
        assert c["acked"] == 15 and 30 <= c["min"] <= c["p50"] <= c["p99"] < 200, (curve["config"], c)
        # Three times what 1 Mbit/s carries: the link is the limit, in both the count and tc's bytes.
        assert flood["saturated"] and 0 < flood["delivery_rate"] < flood["load"] * 0.9, flood
        evidence = flood["evidence"]
        assert flood["delivery_rate"] <= evidence["published_rate"] * 1.1, flood  # what crossed was published
        # Three times what 1 Mbit/s carries: the link ran at its rate (tc's counters), no faster.
        assert 900_000 <= evidence["field_to_dc_bits_per_s"] <= 1_000_000 * 1.05, evidence
        assert evidence["field_to_dc_delivery_bytes"] and evidence["dc_to_field_delivery_bytes"], evidence
    by = {c["config"]: c for c in result["curves"]}
    assert by["segregated+priority"]["points"][1]["evidence"]["field_to_dc_control_bytes"]
    # Behind a saturated link the shared stream's acknowledgements queue behind the flood; the
    # priority class's do not.
    shared, prio = (by[k]["points"][1]["control_ms"] for k in ("shared", "segregated+priority"))
    assert prio["acked"] == 15 and prio["p99"] < 300, prio
    assert shared.get("p99", float("inf")) > 3 * prio["p99"], (shared, prio)
    holds = result["conditions"]["delay_forwarder"]
    assert isinstance(holds, dict)
    for config in CONFIGS:
        hold = holds[config]["hold_ms"]
        assert 15 <= hold["p0"] <= hold["p50"] < 25 and hold["frames"] > 100, hold
    rtt = result["conditions"]["link_round_trip_ms"]
    assert isinstance(rtt, dict) and 30 <= rtt["added_p50"] < 30 + 20, rtt
    t = result["targets"]
    assert t["segregated_config"] == "segregated+priority" and t["shared_over_segregated"] is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"fmbwan-{os.getpid() % 100000}" not in listed


def test_wan_link_refuses_a_bad_shape() -> None:
    """Bad settings fail when the shape is made, saying what to give."""
    for args, needle in (((4000,), "below 8 kbit/s"), ((10**6, 1), "2 or more"), ((10**6, 100, 1.5), "fraction")):
        with pytest.raises(TestbedError, match=needle):
            LinkShape(*args)  # type: ignore[arg-type]


def test_wan_link_delays_both_ways_and_goes_away(tmp_path: Path) -> None:
    """The link alone: 40 ms each way adds 80 ms to a round trip (TCP SYN -> RST across it), the
    forwarder's own record says it held frames 40 ms, and removing it leaves no namespace."""
    _require_link()
    link = WanLink(tmp_path)
    try:
        link.create()
        link.shape(LinkShape(10_000_000), priority=False, control_ports=[])
        link.start_delay(0)
        base = sorted(link.round_trips_ms(10))[5]
        link.start_delay(40)
        delayed = sorted(link.round_trips_ms(10))
        stats = link.stop_delay()
    finally:
        link.remove()
    assert base < 20 and delayed[0] >= 80 and delayed[5] - base < 80 + 25, (base, delayed)
    hold = stats["hold_ms"]
    assert isinstance(hold, dict) and hold["frames"] >= 20 and 40 <= hold["p0"] <= hold["p50"] < 50, stats
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert link.link_ns not in listed and link.field_ns not in listed


def test_wan_curve_fixture_is_a_real_bottleneck_document() -> None:
    """The committed run (tests/fixtures/bench-wan-curve.json) reads as the shape says."""
    doc = json.loads(FIXTURE.read_text())
    check(doc, str(FIXTURE))
    assert doc["bottleneck"] == "wan" and [c["config"] for c in doc["curves"]] == list(CONFIGS)
    assert doc["conditions"]["delay_ms_each_way"] > 0 and doc["environment"]["mosquitto"]
    assert any(p["saturated"] for c in doc["curves"] for p in c["points"])
