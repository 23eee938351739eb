"""``fmb model answers``: the utility-scale questions one machine cannot run, answered by the model.

1. 300 substations x 2,000 meters reading every 60 s on one data-centre broker pair: the brokers'
   utilisation and the control round trip's p99, control plane segregated and shared.
2. The number of substations at which the data centre's delivery broker saturates (utilisation 1:
   from the calibrated cost per reading, and the first sweep point whose offered load reaches 1).
3. The storm after a data-centre restart with 600,000 meters reconnecting straight to it, with and
   without jittered backoff.
4. Segregated against shared control plane over the same sweep of substations.
5. The WAN bandwidth a substation needs: its mean, and the slowest link on which the control
   round trip's p99 stays within IEC 61850-5's medium class (100 ms) with the readings on the same link.

Every run is seeded; each figure carries its settings. Simulated seconds per point are kept short
(the sources are periodic, so a few seconds of a 60 s cycle already carry the full rate).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import time
from collections.abc import Callable
from typing import Final

from testbed.core.results import ModelAnswers, ModelCalibration, ModelRun
from testbed.model.bus import WIRE_OVERHEAD_BYTES, Settings, run_model
from testbed.model.calibration import Costs

__all__ = ["ANSWERS_SCHEMA", "answer"]

ANSWERS_SCHEMA: Final = "fmb.model-answers/1"
MEDIUM_MS: Final = 100.0  # IEC 61850-5 medium class: the line a control command must stay under
FRACTIONS: Final = (0.1, 0.25, 0.5, 0.75, 0.9, 0.97, 1.05, 1.2)  # of the analytic saturation, for the sweep
WAN_RATES: Final = (64e3, 96e3, 128e3, 192e3, 256e3, 512e3, 1e6)


def _flow(run: ModelRun, name: str, key: str) -> float | None:
    flow = next((f for f in run["flows"] if f["flow"] == name), None)
    value = flow["latency_ms"].get(key) if flow else None
    return float(value) if isinstance(value, int | float) else None


def _util(run: ModelRun, broker: str) -> float | None:
    return next((b["utilisation"] for b in run["brokers"] if b["broker"] == broker), None)


def _delivered_share(run: ModelRun) -> float | None:
    flow = next((f for f in run["flows"] if f["flow"] == "reading"), None)
    return round(flow["delivered"] / flow["sent"], 4) if flow and flow["sent"] else None


def answer(calibration: ModelCalibration, calibration_name: str, quick: bool = False,
           progress: Callable[[str], None] = print) -> ModelAnswers:
    """Every answer; ``quick`` shortens the simulated times and the sweep (a smoke test's seconds)."""
    wall = time.perf_counter()
    seconds = 4.0 if quick else 12.0
    base = Settings(substations=300, meters=2000, interval_s=60.0, duration_s=seconds, warmup_s=2.0,
                    command_rate=20.0, seed=7)
    if quick:
        base = dataclasses.replace(base, substations=30)
    costs = Costs(calibration, __import__("random").Random(0))
    edge_s, dc_s = costs.bridge_mean_s(base.qos, base.payload_bytes)
    per_sub = base.meters / base.interval_s
    saturation = math.floor(1 / (per_sub * dc_s))
    progress(f"  analytic: a reading costs the data centre's delivery broker {dc_s * 1e6:.1f} us: "
             f"saturated at {saturation} substations of {base.meters} meters every {base.interval_s:g} s")

    baseline: dict[str, float | int | str | None] = {"substations": base.substations, "meters": base.meters,
                                                    "interval_s": base.interval_s}
    for control in ("segregated", "shared"):
        run = run_model(dataclasses.replace(base, control=control), calibration, calibration_name=calibration_name)
        baseline[f"{control}_dc_delivery_utilisation"] = _util(run, "dc-delivery")
        if control == "segregated":
            baseline["dc_control_utilisation"] = _util(run, "dc-control")
            baseline["reading_p50_ms"] = _flow(run, "reading", "p50")
            baseline["reading_p99_ms"] = _flow(run, "reading", "p99")
        baseline[f"{control}_control_p50_ms"] = _flow(run, "control round trip", "p50")
        baseline[f"{control}_control_p99_ms"] = _flow(run, "control round trip", "p99")
        baseline["messages_per_s"] = round(run["messages"] / run["simulated_s"], 1)
        progress(f"  {base.substations} x {base.meters} meters, {control}: dc-delivery "
                 f"{_util(run, 'dc-delivery')}, control p99 {_flow(run, 'control round trip', 'p99')} ms "
                 f"({run['messages']} messages in {run['wall_s']} s)")

    sweep: list[dict[str, float | int | None]] = []
    fractions = (0.25, 0.9, 1.2) if quick else FRACTIONS
    observed: int | None = None
    for fraction in fractions:
        n = max(1, round(saturation * fraction))
        point: dict[str, float | int | None] = {"substations": n, "offered_per_s": round(n * per_sub, 1)}
        for control in ("segregated", "shared"):
            run = run_model(dataclasses.replace(base, substations=n, control=control, duration_s=seconds / 2,
                                                warmup_s=1.0), calibration, calibration_name=calibration_name)
            point[f"{control}_dc_delivery_utilisation"] = _util(run, "dc-delivery")
            point[f"{control}_dc_delivery_offered_load"] = next(
                (b["offered_load"] for b in run["brokers"] if b["broker"] == "dc-delivery"), None)
            point[f"{control}_control_p99_ms"] = _flow(run, "control round trip", "p99")
            point[f"{control}_reading_p99_ms"] = _flow(run, "reading", "p99")
            point[f"{control}_delivered_share"] = _delivered_share(run)
        # Saturated: offered more work than the thread can do in the run, so its queue (and the readings'
        # latency) grows for as long as the load lasts. Every reading is still delivered, late.
        offered = point["segregated_dc_delivery_offered_load"]
        if observed is None and isinstance(offered, float) and offered >= 1.0:
            observed = n
        progress(f"  sweep {n} substations: dc-delivery {point['segregated_dc_delivery_utilisation']}, control p99 "
                 f"segregated {point['segregated_control_p99_ms']} ms, shared {point['shared_control_p99_ms']} ms")
        sweep.append(point)

    storm: list[dict[str, float | int | str | bool | None]] = []
    clients = base.substations * base.meters
    storm_base = dataclasses.replace(base, direct=True, restart="dc-delivery", restart_at_s=1.0, down_s=5.0,
                                     warmup_s=0.0, command_rate=0.0, storm_cohort=max(1, clients // 3000),
                                     storm_limit_s=600.0 if quick else 3600.0, storm_readings=False)
    for backoff in ("jitter", "fixed"):
        run = run_model(dataclasses.replace(storm_base, backoff=backoff), calibration,
                        calibration_name=calibration_name)
        figures = dict(run.get("storm", {}))
        figures["wall_s"] = run["wall_s"]
        storm.append(figures)
        progress(f"  storm, {backoff} backoff: {figures.get('clients')} reconnections, back after "
                 f"{figures.get('recovery_s')} s ({figures.get('attempts')} attempts, {figures.get('abandoned')} "
                 f"abandoned handshakes; {run['wall_s']} s)")

    reading_bits = (base.payload_bytes + 45 + WIRE_OVERHEAD_BYTES) * 8
    wan: dict[str, float] = {"mean_uplink_kbit_per_s": round(per_sub * reading_bits / 1e3, 2),
                             "reading_wire_bytes": reading_bits / 8}
    for rate in WAN_RATES:
        run = run_model(dataclasses.replace(base, substations=1, wan_bps=rate, command_rate=5.0,
                                            duration_s=seconds * 5, warmup_s=2.0), calibration,
                        calibration_name=calibration_name)
        p99 = _flow(run, "control round trip", "p99")
        wan[f"control_p99_ms_at_{int(rate / 1e3)}_kbit"] = p99 if p99 is not None else -1.0
        if p99 is not None and p99 <= MEDIUM_MS and "min_kbit_for_medium_class" not in wan:
            wan["min_kbit_for_medium_class"] = rate / 1e3
    progress(f"  WAN per substation: {wan['mean_uplink_kbit_per_s']} kbit/s mean uplink; control p99 <= "
             f"{MEDIUM_MS:g} ms from {wan.get('min_kbit_for_medium_class')} kbit/s")
    return ModelAnswers(
        schema=ANSWERS_SCHEMA, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        calibration=calibration_name,
        conditions={"simulated_s_per_point": seconds, "qos": base.qos, "payload_bytes": base.payload_bytes,
                    "command_rate": base.command_rate, "reading_cost_dc_us": round(dc_s * 1e6, 2),
                    "reading_cost_edge_us": round(edge_s * 1e6, 2), "handshake_us": calibration["handshake_us"],
                    "connect_timeout_s": storm_base.connect_timeout_s, "down_s": storm_base.down_s,
                    "backoff": f"base {storm_base.backoff_base_s} s, cap {storm_base.backoff_cap_s} s",
                    "accept_backlog": storm_base.accept_backlog, "storm_cohort": storm_base.storm_cohort,
                    "storm_limit_s": storm_base.storm_limit_s,
                    "quick": int(quick), "seed": base.seed},
        baseline=baseline, sweep=sweep, saturation_substations=observed,
        storm=storm, wan_per_substation=wan | {"analytic_saturation_substations": float(saturation)},
        wall_s=round(time.perf_counter() - wall, 1))
