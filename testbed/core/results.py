"""The shapes of the result documents: a scenario run's ``result.json`` and each ``bench-*.json``.

Results are JSON documents, written with ``json.dumps`` and read back with ``json.loads`` by
``fmb report``, the notebooks, the pytest plugin and the tablet, so their types are TypedDicts:
a TypedDict is a plain dict at run time (nothing to convert, the JSON written is the dict as
built, key order included) while mypy checks every key a writer sets and a reader uses.
Dataclasses would need a conversion each way and a second description of the same fields.
They live here, in the bottom layer, so that writers (``testbed.harness``, ``testbed.bench``)
and readers (``testbed.reporting``, the plugin, ``devices.tablet_web``) can both import them.

Each document names its shape and version in ``schema`` (the writers' ``RESULT_SCHEMA``
constants): a change of shape is a new version, and a new TypedDict beside the old one as long as
old files are read. A key marked ``NotRequired`` is one a reader must not count on: it is written
only in some cases (said beside it) or was added after files of the same version were written
(the fixtures in ``tests/fixtures/`` are such files).
"""

# No ``from __future__ import annotations`` here: with it, Python 3.11 cannot see ``NotRequired`` at
# run time and lists every key in ``__required_keys__``; tests/test_typing.py checks files by those.
from typing import Literal, NotRequired, TypedDict

__all__ = [
    "AutosavePoint",
    "BottleneckCurve",
    "BottleneckPoint",
    "BottleneckResult",
    "BottleneckTargets",
    "CrashConditions",
    "CrashKill",
    "CrashPolicyRow",
    "CrashResult",
    "CrashSettings",
    "CrashTarget",
    "CriticalPath",
    "CutoffAction",
    "CutoffConditions",
    "CutoffEnvironment",
    "CutoffRepetition",
    "CutoffResult",
    "Environment",
    "LatencyByQos",
    "LatencyByQosV3",
    "LatencyConditions",
    "LatencyResult",
    "LatencyResultV3",
    "LatencySamples",
    "LatencyStep",
    "Machine",
    "ModelAnswers",
    "ModelBridgePoint",
    "ModelBrokerFit",
    "ModelBrokerLoad",
    "ModelBrokerPoint",
    "ModelCalibration",
    "ModelClientCosts",
    "ModelCalibrationConditions",
    "ModelFlow",
    "ModelRun",
    "ModelValidation",
    "ModelValidationRow",
    "OneHop",
    "OneHopSetup",
    "Percentiles",
    "PercentilesIfAny",
    "PrioritizationConditions",
    "PrioritizationControl",
    "PrioritizationHeadline",
    "PrioritizationResult",
    "PrioritizationRow",
    "PrioritizationTargets",
    "RecoveryConditions",
    "RecoveryFault",
    "RecoveryResult",
    "RecoveryTarget",
    "RecoveryTime",
    "RecoveryTrial",
    "Repetition",
    "RepetitionSpread",
    "RunOutcome",
    "ScaleAppendixA",
    "ScaleConditions",
    "ScaleControl",
    "ScaleCpu",
    "ScaleRamp",
    "ScaleRampBroker",
    "ScaleResult",
    "ScaleScenarioRuns",
    "ScaleSteady",
    "ScaleStorm",
    "ScaleTargets",
    "ScenarioEnd",
    "ScenarioResultDoc",
    "ScenarioStep",
    "SegregationReach",
    "SegregationReport",
    "SegregationRow",
    "SoakConditions",
    "SoakFault",
    "SoakInvariant",
    "SoakLedgerRow",
    "SoakResult",
    "SoakRun",
    "SoakScenarioCheck",
    "SoakStream",
    "UiConditions",
    "UiResult",
    "UiSample",
    "WanConditions",
    "WanControl",
    "WanHeadline",
    "WanPriorityClass",
    "WanResult",
    "WanRow",
    "Waterfall",
    "WaterfallSegment",
]


# -- shared parts -------------------------------------------------------------------------------

class Percentiles(TypedDict):
    """``testbed.core.stats.percentiles``: ``p<q>`` for each percentile asked (50, 90, 99 unless told)."""

    n: int
    min: float
    p50: NotRequired[float]
    p90: NotRequired[float]
    p99: NotRequired[float]
    max: float
    mean: float


class PercentilesIfAny(TypedDict, total=False):
    """The figures of :class:`Percentiles`, present only when there was something to measure."""

    n: int
    min: float
    p50: float
    p90: float
    p99: float
    max: float
    mean: float


class Machine(TypedDict):
    cpu: str
    cores: int | None
    memory_gib: float | None
    kernel: str
    system: str
    arch: str


class Environment(TypedDict):
    """``testbed.backends.environment.environment``: the conditions stated next to every figure."""

    backend: str
    topology: str
    qos: int | list[int]  # the latency benchmark runs every level: the list of them
    tls_version: str | None
    mqtt: str
    python: str
    mosquitto: str | None
    paho_mqtt: str | None
    gmqtt: str | None
    openssl: str
    machine: Machine


# -- a scenario run: result.json (fmb.scenario-result/1) -----------------------------------------

class ScenarioStep(TypedDict):
    """One matched step; times in ms from the trigger's publish (``hop_ms``: from its ``after`` step's)."""

    n: int
    name: str
    device: str
    receivers: list[str]
    topic: str
    plane: str | None
    t_ms: float
    hop_ms: float
    after: int
    seq: int
    traceparent: str | None


class ScenarioEnd(TypedDict):
    device: str
    t_ms: float
    topic: str


class RunOutcome(TypedDict):
    """One repetition in the result's ``runs``."""

    rep: int
    passed: bool
    failure: str | None
    e2e_ms: float | None


class Repetition(RunOutcome):
    """One repetition as ``ScenarioRunner.run_once`` returns it (not written on its own)."""

    t0_ns: int
    steps: list[ScenarioStep]
    end: ScenarioEnd | None
    first_index: int


class RepetitionSpread(TypedDict, total=False):
    """Over the passed repetitions, in a result of more than one: end-to-end ms, and each step's hop."""

    p50: float
    p90: float
    p99: float
    max: float
    e2e_stats: Percentiles
    hop_stats: dict[str, Percentiles]  # by step number, "1", "2", ...


class ScenarioResultDoc(RepetitionSpread):
    """``result.json``, with :class:`RepetitionSpread`'s keys between ``repetitions`` and ``runs``.

    (``testbed.pytest_plugin.ScenarioResult`` is this document in a dict subclass that also knows
    where its files are; hence this one's longer name.)"""

    schema: Literal["fmb.scenario-result/1"]
    scenario: str
    scenario_file: str
    passed: bool
    failure: str | None
    lanes: list[str]
    steps: list[ScenarioStep]  # of the first failed repetition, else of the last
    end: ScenarioEnd | None
    e2e_ms: float | None
    repetitions: int
    runs: list[RunOutcome]
    environment: Environment
    created: str


# -- fmb bench latency: bench-latency.json (fmb.bench-latency/2) ---------------------------------

class LatencyStep(TypedDict):
    n: int
    name: str
    device: str
    receivers: list[str]
    plane: str | None
    after: int
    on_critical_path: bool
    traversals: int
    hop_ms: Percentiles


class OneHopSetup(TypedDict):
    broker: str
    payload_bytes: int
    count: int
    warmup: int


class OneHop(OneHopSetup):
    """``testbed.bench.latency.one_hop``: the setup and the raw samples."""

    samples_ms: list[float]


class CriticalPath(TypedDict):
    path: list[int]
    per_step: dict[str, int]  # step number -> broker traversals
    total: int


class LatencySamples(TypedDict):
    e2e_ms: list[float]
    one_hop_ms: list[float]


class LatencyByQos(TypedDict):
    qos: int
    tls_version: str | None
    e2e_ms: Percentiles
    steps: list[LatencyStep]
    display_ms: Percentiles
    one_hop_ms: Percentiles
    one_hop: OneHopSetup
    critical_path: CriticalPath
    critical_path_one_hop_ms: float
    overhead_ratio: float
    meets_target: bool
    samples: LatencySamples


class LatencyConditions(TypedDict):
    scenario: str
    topology: str
    qos_levels: list[int]
    repetitions: int
    warmup_repetitions: int
    one_hop_messages: int
    one_hop_warmup_messages: int
    one_hop_broker: str
    one_hop_payload_bytes: int
    tls_version: str | None
    bus: str
    client: str
    percentile_method: str
    duration_s: float
    # Added after the first results of this version:
    source_revision: NotRequired[str | None]
    load_average_before: NotRequired[list[float]]
    load_average_after: NotRequired[list[float]]


class LatencyResult(TypedDict):
    schema: Literal["fmb.bench-latency/2"]
    created: str
    conditions: LatencyConditions
    target_ratio: float
    by_qos: list[LatencyByQos]
    environment: Environment


# -- fmb bench latency: bench-latency.json (fmb.bench-latency/3): /2 and the waterfall ------------

class WaterfallSegment(TypedDict):
    """One part of the critical path (``testbed.bench.waterfall``), over the repetitions."""

    key: str  # stable across repetitions: "3>4 bus", "4 dms-1"
    step: int  # the step it belongs to; the display leg: the last step + 1
    kind: str  # "bus", "device", "feeder" or "display"
    who: str  # the broker, "<from> -> <to>" over a bridge, or the device
    what: str
    traversals: int  # brokers a bus segment crosses (1, or 2 over a bridge); 0 for the others
    ms: Percentiles
    samples_ms: list[float]  # one per complete repetition, in order


class Waterfall(TypedDict):
    """Where the end-to-end time goes; the segments of one repetition sum to its end to end."""

    path: list[int]  # the steps most repetitions went through (each step to the message it followed)
    paths: dict[str, int]  # every path taken ("1-3-4-5-6-8-9"): repetitions
    repetitions: int  # that took ``path``, with every message held
    incomplete: int  # left out: another path, or the recorder did not hold a message on it
    incomplete_reasons: list[str]  # why, the first few distinct
    segments: list[WaterfallSegment]
    p50_by_kind_ms: dict[str, float]  # sums of the segments' p50s, per kind
    mean_by_kind_ms: dict[str, float]  # sums of their means (these add up exactly)
    sum_of_p50_ms: float
    e2e_p50_ms: float  # over the repetitions of ``path``
    sum_deviation: float  # (sum_of_p50_ms - e2e_p50_ms) / e2e_p50_ms
    sums_within_tolerance: bool
    sum_tolerance: float
    max_repetition_residual_ms: float  # |e2e - its segments' sum|, worst repetition: 0 but rounding
    device_ms: dict[str, Percentiles]  # each device's processing segments together
    bus_p50_ms: float  # the bus segments' p50s
    bus_over_one_hop: float  # bus_p50_ms / (traversals x one-hop p50)


class LatencyByQosV3(LatencyByQos):
    waterfall: Waterfall


class LatencyResultV3(TypedDict):
    schema: Literal["fmb.bench-latency/3"]
    created: str
    conditions: LatencyConditions
    target_ratio: float
    by_qos: list[LatencyByQosV3]
    environment: Environment


# -- fmb bench prioritization: bench-prioritization.json (fmb.bench-prioritization/1) -------------

class PrioritizationControl(PercentilesIfAny):
    """Command round trips of one step; the statistics only when some command was acknowledged."""

    sent: int
    acked: int
    unacked_within_s: float
    lost: int


class PrioritizationRow(TypedDict):
    offered_rate: float | Literal["max"]  # "max": publishers unthrottled
    achieved_rate: float  # what the flood's subscriber received, msg/s
    control_ms: PrioritizationControl
    sent_rate: NotRequired[float]  # what the flood's publishers sent (their -d log), msg/s; added for the model
    # CPU over the window of "publishers" (the flood's), "flood_subscriber", "brokers"; added for the model
    cpu: NotRequired[dict[str, "ScaleCpu"]]


class PrioritizationHeadline(TypedDict):
    idle_p99_ms: float | None
    saturation_p99_ms: float | None
    saturation_over_idle: float | None
    saturation_achieved_rate: float


class PrioritizationTargets(TypedDict):
    segregated_saturation_over_idle_max: float
    segregated_met: bool
    shared_over_segregated_min: float
    shared_over_segregated: float | None
    shared_over_segregated_met: bool


class PrioritizationConditions(TypedDict):
    rates: list[float | Literal["max"]]
    seconds_per_step: float
    settle_s: float
    command_rate: float
    command_qos: int
    flood_qos: int
    payload_bytes: int
    flood_publishers: int
    flood_client: str | None
    flood_nice_priority: int
    # {"control" | "delivery": {"nice": int, "cpus": [int]}}; added after the first results.
    priority_placement: NotRequired[dict[str, dict[str, object]]]
    command_payload_bytes: int
    tls_version: str | None
    commander: str
    placement: str
    note: NotRequired[str]  # synthetic fixtures say so here
    flood_counted: NotRequired[str]  # how sent_rate was counted (absent: not counted)


class PrioritizationResult(TypedDict):
    schema: Literal["fmb.bench-prioritization/1"]
    created: str
    conditions: PrioritizationConditions
    results: dict[str, list[PrioritizationRow]]  # by configuration: segregated, shared, ...
    headline: dict[str, PrioritizationHeadline]
    targets: PrioritizationTargets
    environment: Environment


# -- fmb bench recovery: bench-recovery.json (fmb.bench-recovery/1), local and docker ------------

RecoveryTime = Literal["detect_s", "reconnect_s", "whole_s"]  # the times of a trial


class RecoveryTrial(TypedDict):
    """Seconds after the fault (a restart: after the broker accepts again); None: not seen / not measured."""

    detect_s: float | None
    reconnect_s: float | None
    whole_s: float | None
    lost: int
    duplicated: int
    acked: NotRequired[int]  # not for the field broker's kill -9 (no producer of ours)
    scenario_after: NotRequired[bool]  # the field broker's kill -9: Appendix A passes afterwards
    restart_s: NotRequired[float]  # the field broker's kill -9: fault -> restarted
    published_during_partition: NotRequired[int]  # partitions (docker)


class RecoveryTarget(TypedDict, total=False):
    lost: int
    whole_s: float


class RecoveryFault(TypedDict):
    name: str
    description: str
    qos: int
    client: NotRequired[str]  # "tuned" | "defaults": the reconnect settings compared
    direction: NotRequired[str]  # partitions (docker): "field->dc" | "dc->field"
    target: RecoveryTarget | None
    trials: list[RecoveryTrial]


class AutosavePoint(TypedDict):
    autosave_interval_s: int
    throughput_per_s: float
    lost: list[int]
    acked: NotRequired[list[int]]  # added after the first results, as was queued_for_s
    queued_for_s: NotRequired[float]


class RecoveryConditions(TypedDict):
    backend: str
    repetitions: int
    message_rate_per_s: float
    client: str
    tls_version: str
    payload_bytes: NotRequired[int]  # local
    consumer: NotRequired[str]  # added after the first results, as was partition
    autosave_sweep: NotRequired[str]  # local
    partition: NotRequired[str]
    partitions_s: NotRequired[list[float]]  # docker
    qos: NotRequired[int]  # docker
    detect: NotRequired[str]  # docker
    streams: NotRequired[str]  # docker
    note: NotRequired[str]  # synthetic fixtures say so here


class RecoveryResult(TypedDict):
    schema: Literal["fmb.bench-recovery/1"]
    created: str
    conditions: RecoveryConditions
    faults: list[RecoveryFault]
    autosave_sweep: list[AutosavePoint]  # empty for partitions
    environment: Environment


# -- fmb bench crash: bench-crash.json (fmb.bench-crash/1) ---------------------------------------

class CrashKill(TypedDict):
    """One kill -9 while messages queued for an offline persistent consumer."""

    fill_s: float  # queuing time before the kill
    acked: int  # messages the broker acknowledged (PUBACK) before it died
    lost: int  # of those, never delivered after the restart
    lost_s: float  # lost / offered rate
    window_s: float  # the first lost message's publish -> the broker's death; 0 when nothing was lost
    all_lost: bool  # nothing since the session's save survived: window_s is a lower bound
    restart_s: float  # restart -> accepting again


class CrashSettings(TypedDict):
    autosave_interval_s: int
    autosave_on_changes: int
    usr1_ms: int  # the topology's snapshot_every_ms
    flush_period_s: int
    sync: str


class CrashPolicyRow(TypedDict):
    policy: str  # e.g. "2.0 snapshot every 1 s"
    spec: str  # as on the command line, e.g. "2.0/snapshot=1"
    mosquitto: str  # "2.0" | "2.1" | an image
    mosquitto_version: str | None  # as the broker logged it
    image: str | None  # None: the host's Mosquitto
    runtime: str  # "docker" | "host"
    persistence: str  # "none" | "snapshot" | "sqlite"
    settings: CrashSettings
    bound_s: float | None  # the window the policy allows by construction
    kills: list[CrashKill]  # none for persistence "none"
    throughput_per_s: list[float]  # one per round
    cpu_us_per_msg: list[float]
    window_s: Percentiles | None
    lost: Percentiles | None
    throughput: Percentiles | None
    cpu: Percentiles | None
    load_before: list[float]  # 1, 5, 15 min load averages
    load_after: list[float]
    cost: float | None  # 1 - throughput / throughput of "none" on the same build and runtime
    cpu_cost: float | None  # broker CPU per message / that of "none" - 1
    meets_target: bool | None


class CrashTarget(TypedDict):
    window_s: float
    cost: float


class CrashConditions(TypedDict):
    runtime: str
    qos: int
    offered_rate_per_s: float
    payload_bytes: int
    fill_s: list[float]  # [min, max]
    kill_repetitions: int
    throughput_repetitions: int
    throughput_messages: int
    tls_version: str
    consumer: str
    producer: str
    target: CrashTarget
    load_average_start: list[float]
    load_average_end: list[float]
    cores: int | None
    note: str


class CrashResult(TypedDict):
    schema: Literal["fmb.bench-crash/1"]
    created: str
    conditions: CrashConditions
    policies: list[CrashPolicyRow]
    environment: Environment  # "mosquitto": every build that ran, e.g. "2.0.11, 2.1.2"


# -- fmb bench wan: bench-wan.json (fmb.bench-wan/1) ----------------------------------------------

class WanControl(PercentilesIfAny):
    """One-way control latency of one step; the statistics only when some command arrived."""

    sent: int
    received: int
    missing: int
    waited_s: float


class WanRow(TypedDict):
    step: str  # "idle" | "flood"
    offered_rate: float
    delivered_rate: float
    link_bits_per_s: dict[str, int]  # by link class: "delivery", and "control" with priority
    control_ms: WanControl


class WanHeadline(TypedDict):
    idle_p99_ms: float | None
    flood_p50_ms: float | None
    flood_p99_ms: float | None
    flood_delivered_rate: float


class WanPriorityClass(TypedDict):
    match: str
    htb_prio: int
    guaranteed_bits_per_s: int
    ceil: str


class WanConditions(TypedDict):
    backend: str
    link_rate_bits_per_s: int
    delay: str
    shaped_direction: str
    unshaped: str
    queue_packets: int
    priority_class: WanPriorityClass
    seconds_per_step: float
    command_rate: float
    command: str
    flood: str
    flood_payload_bytes: int
    flood_offered_rate: float
    link_capacity_estimate_msgs_per_s: float
    wire_overhead_estimate_bytes: int


class WanResult(TypedDict):
    schema: Literal["fmb.bench-wan/1"]
    created: str
    conditions: WanConditions
    results: dict[str, list[WanRow]]  # by configuration: no-priority, priority
    headline: dict[str, WanHeadline]
    no_priority_over_priority_p99: float | None
    environment: Environment


# -- fmb bench ui: bench-ui.json (fmb.bench-ui/1) -------------------------------------------------

class UiSample(TypedDict):
    """One press, ms in the page's clock (a press counts once the page shows both effects)."""

    rep: int
    closed_ms: float
    restored_ms: float
    low_ms: float | None  # None: the DMS acted before a diagram showed the low reading


class UiConditions(TypedDict):
    browser: str
    page: str
    load_average_before: list[float]
    load_average_after: list[float]


class UiResult(TypedDict):
    schema: Literal["fmb.bench-ui/1"]
    created: str
    what: str
    repetitions: int
    closed_ms: Percentiles
    restored_ms: Percentiles
    samples: list[UiSample]
    screenshot: str  # a file name, beside the JSON
    conditions: UiConditions
    environment: Environment


# -- fmb respond measure: bench-respond.json (schema 1) -------------------------------------------

class CutoffRepetition(TypedDict):
    cutoff_ms: float | None  # None: not cut off within 5 s
    reconnect_refused: NotRequired[bool | None]  # identities: checked for revoke, None for block
    steps: dict[str, float]  # the responder's own steps, ms


class CutoffAction(TypedDict):
    cutoff_ms: Percentiles | None
    not_cut_off: int
    repetitions: list[CutoffRepetition]


class CutoffConditions(TypedDict):
    broker: str
    repeat: int
    topology: str
    eviction: str
    reload: str
    backend: NotRequired[str]  # local (processes) or docker (the Compose bus); absent in older documents: local
    ca: NotRequired[str]  # where the CA operation ran (docker: a one-shot container of the pki volume)
    load_average: NotRequired[list[float]]  # 1-minute load average before and after the measurement


class CutoffEnvironment(TypedDict):
    python: str
    machine: str
    kernel: str
    cpus: int | None
    time: str


class CutoffResult(TypedDict):
    """Older than the ``fmb.*`` schema strings: its version is the number 1, its kind ``benchmark``."""

    schema: Literal[1]
    benchmark: Literal["respond-cutoff"]
    conditions: CutoffConditions
    environment: CutoffEnvironment
    results: dict[str, CutoffAction]  # by action: revoke, block, block-topic


# -- fmb bench soak: bench-soak.json (fmb.bench-soak/1) -------------------------------------------

class SoakStream(TypedDict):
    """One sequence-numbered stream over the whole soak; ``*_at`` are ``[seq, published s]`` (the first 200)."""

    name: str  # "<direction> q<QoS>"
    direction: str  # "field->dc" | "dc->field"
    qos: int
    publisher: str  # the identity whose certificate publishes it
    consumer: str  # the identity that reads it (a separate process with a persistent session)
    topic: str
    source_broker: str
    consumer_broker: str
    first_seq: int  # the first message the consumer was subscribed for: the ledger starts there
    sent: int
    acked: int
    received: int  # receipts, duplicates included
    delivered: int  # distinct messages received
    lost: int  # acknowledged by the broker, never delivered
    unacknowledged: int  # never acknowledged and never delivered (after the final wait)
    duplicated: int
    reordered: int
    unexpected: int  # received but never sent: must be 0
    complete: bool  # sent == delivered + lost + unacknowledged, and nothing unexpected
    lost_at: list[list[float]]
    unacknowledged_at: list[list[float]]
    duplicated_at: list[list[float]]
    reordered_at: list[list[float]]
    delay_ms_by_second: list[list[float]]  # [second since the start, worst publish -> first receipt ms]


class SoakScenarioCheck(TypedDict):
    """Appendix A after a fault's recovery (restart, heal, or the poison's publish)."""

    passed_first: bool  # the first run started after the recovery passed
    attempts: int  # runs until one passed (or the deadline)
    seconds_to_pass: float | None  # recovery -> the end of the first run that passed
    failure: str | None  # the first failed run's reason


class SoakFault(TypedDict):
    """One fault as applied; times in seconds since the streams started."""

    n: int
    kind: str
    target: str
    start_s: float
    heal_s: float  # restarted / healed / published
    end_s: float  # the window closes: Appendix A checked, the streams flowing again
    downtime_s: float  # as planned by the schedule
    detail: dict[str, str | float | None]
    error: str | None  # the fault could not be applied or undone as planned
    scenario_after: SoakScenarioCheck
    whole_s: dict[str, float | None]  # by stream: recovery -> nothing missing up to a message published after it


class SoakLedgerRow(TypedDict):
    """The messages of one stream published in one window ("no fault": outside every fault's window)."""

    window: str  # "fault <n>" | "no fault"
    fault: int | None
    kind: str  # the fault's kind, or "no fault"
    stream: str
    qos: int
    published: int
    delivered: int
    lost: int
    unacknowledged: int
    duplicated: int
    reordered: int


class SoakInvariant(TypedDict):
    """One invariant checked on one fault window (and stream); ``counts`` are its evidence."""

    fault: int | None  # None: the "no fault" window
    kind: str
    invariant: str  # "no-loss" | "crash-loss-within-window" | "appendix-a-after-recovery"
    stream: str | None
    holds: bool
    counts: dict[str, float | None]
    detail: str


class SoakRun(TypedDict):
    """One Appendix A run during the soak."""

    t_s: float
    seconds: float
    passed: bool
    failure: str | None
    after_fault: int | None  # the recovery check of that fault; None between faults
    e2e_ms: float | None


class SoakConditions(TypedDict):
    backend: str
    minutes: float
    seed: int
    duration_s: float  # streams flowing, faults included
    rate_per_s: float  # per stream
    streams: str
    fault_kinds: list[str]  # applied on this backend, in the schedule's rounds
    unavailable: dict[str, str]  # fault kind -> why this backend cannot apply it
    targets: dict[str, list[str]]
    gap_s: list[float]  # [min, max] quiet time between two faults
    downtime_s: list[float]  # [min, max] a broker or device is down, a partition or link loss lasts
    crash_window_s: float
    crash_window_source: str
    lookback_s: float  # a window opens this long before its fault (messages already in flight)
    recovery_target: str
    graceful_whole_target_s: float  # reference only: the recovery benchmark's target
    appendix_a_pause_s: float
    bridge_qos: int
    monitor: str
    tls_version: str | None
    source_revision: str | None
    load_average_before: list[float]
    load_average_after: list[float]
    machine_note: str
    note: NotRequired[str]


class SoakResult(TypedDict):
    schema: Literal["fmb.bench-soak/1"]
    created: str
    conditions: SoakConditions
    streams: list[SoakStream]
    faults: list[SoakFault]
    ledger: list[SoakLedgerRow]
    invariants: list[SoakInvariant]
    violations: int  # invariants that do not hold
    ledger_complete: bool  # every stream complete, and the windows add up to the totals
    appendix_a: list[SoakRun]
    ledger_file: str  # every message, one CSV row each, beside the JSON
    environment: Environment


# -- fmb bench scale: bench-scale.json (fmb.bench-scale/1) ----------------------------------------

class ScaleCpu(TypedDict):
    """CPU a group of processes used over a phase (``/proc/<pid>/stat`` utime + stime)."""

    seconds: float
    percent_of_a_core: float  # seconds / wall time x 100 (200 = both cores of this machine)


class ScaleRampBroker(TypedDict):
    """One substation's delivery broker and its fleet during the connection ramp."""

    broker: str
    fleet: str
    meters: int
    connected: int
    seconds_to_all: float | None  # fleet start -> every meter connected (heartbeat, 0.5 s ticks)
    handshakes_per_s: float | None  # from the first sample with any connected to the first with all
    peak_handshakes_per_s: float | None  # the most in one second
    broker_rss_kb_before: int | None
    broker_rss_kb_after: int | None
    broker_kb_per_connection: float | None
    fleet_rss_kb: int | None
    fleet_kb_per_connection: float | None  # the whole process (interpreter included) / meters


class ScaleRamp(TypedDict):
    meters: int
    substations: int
    connect_rate_per_fleet: float
    all_connected: bool
    seconds_to_all: float | None
    handshakes_per_s: float | None  # all meters, from the first connected to the last (every fleet)
    brokers: list[ScaleRampBroker]
    broker_kb_per_connection: PercentilesIfAny
    fleet_kb_per_connection: PercentilesIfAny
    cpu: dict[str, ScaleCpu]  # "brokers", "fleets", "harness"
    connected_by_time: list[list[float]]  # [[s since start, meters connected]]


class ScaleSteady(TypedDict):
    """One steady-state point: the meters of ``substations`` fleets reporting every ``interval_s``."""

    meters: int
    substations: int
    interval_s: float
    duration_s: float
    offered_per_s: float  # meters / interval
    published_per_s: float  # fleets' publishes acknowledged to them, per second (into the field brokers)
    delivered_per_s: float  # readings the DMS side received from the data-centre broker, per second
    latency_ms: PercentilesIfAny  # reading's timestamp -> received at the DMS side
    lost: int  # gaps in meters' sequence numbers
    duplicated: int
    rejected: int  # payloads the DMS side could not decode
    earlier: int  # readings the fleets published before they were restarted for this interval, arriving now
    payload_bytes: float | None
    cpu: dict[str, ScaleCpu]


class ScaleControl(PercentilesIfAny):
    sent: int
    acked: int
    unacked_within_s: float


class ScaleStorm(TypedDict):
    """The storm substation's delivery broker restarted with all its meters connected."""

    config: str  # "segregated" (control plane on its own broker) | "shared" (on the restarted broker)
    broker: str
    meters: int
    down_s: float  # SIGTERM -> the broker accepting connections again
    reconnected_s: float | None  # broker back -> every meter connected (heartbeat, 0.5 s ticks)
    reported_s: float | None  # broker back -> every meter's first reading after it received at the DMS side
    reported: int  # meters heard from after the restart within the wait
    reconnects: int  # the fleet's reconnect count during the storm
    wait_s: float
    control_idle_ms: ScaleControl  # before the storm
    control_ms: ScaleControl  # during it: from the SIGTERM to every meter reported (or the wait)
    reported_by_time: list[list[float]]  # [[s since broker back, meters reported]]
    cpu: dict[str, ScaleCpu]
    # Readings/s the DMS side received (fmb bench storm's delivery plane; added after the first results):
    delivered_before_per_s: NotRequired[float]  # during the idle control window before the storm
    delivered_per_s: NotRequired[float]  # from the SIGTERM to every meter reported (or the wait)
    storm_s: NotRequired[float]  # the length of that window


class ScaleScenarioRuns(PercentilesIfAny):
    """Appendix A repeated on one substation: end-to-end ms of the passed runs."""

    passed: int
    failed: int
    failure: str | None  # the first failed run's reason


class ScaleAppendixA(TypedDict):
    """Appendix A on one substation of the whole bus (a LocalBus), the fleets reporting, then idle."""

    ran: bool
    why: str  # why not, or what each configuration means
    substation: NotRequired[str]
    repetitions: NotRequired[int]
    bus_start_s: NotRequired[float]  # the whole LocalBus up, every meter connected
    loaded: NotRequired[ScaleScenarioRuns]  # every fleet reporting
    idle: NotRequired[ScaleScenarioRuns]  # every other substation's fleet stopped
    loaded_over_idle_p99: NotRequired[float | None]


class ScaleTargets(TypedDict):
    meters_min: int
    substations_min: int
    all_connected_met: bool
    readings_per_s_min: float
    latency_p99_max_ms: float
    steady_met: bool
    storm_meters_min: int
    storm_back_max_s: float
    storm_control_p99_max_ms: float
    storm_met: bool
    memory_reported: bool


class ScaleConditions(TypedDict):
    topology: str
    substations: int
    meters: int
    meters_per_substation: list[int]
    storm_substation: str
    intervals_s: list[float]
    duration_s: float
    qos: int
    tls_version: str | None
    connect_rate_per_fleet: float
    backoff: dict[str, float]
    command_rate: float
    idle_control_s: float
    repetitions: int
    quick: bool
    started: str  # how the bus ran: brokers and fleets as processes of the benchmark, not a LocalBus
    dms_side: str
    fleet: str
    commander: str
    load_average_before: list[float]
    load_average_after: list[float]
    memory_available_gib_before: float | None
    pki_seconds: float


class ScaleResult(TypedDict):
    schema: Literal["fmb.bench-scale/1"]
    created: str
    conditions: ScaleConditions
    ramp: ScaleRamp
    steady: list[ScaleSteady]
    storm: list[ScaleStorm]
    appendix_a: ScaleAppendixA
    targets: ScaleTargets
    environment: Environment


# -- a shared bottleneck, shared against segregated: bench-<bottleneck>.json (fmb.bench-bottleneck/1) --
# One document per bottleneck ("broker": brokers held to a CPU quota; "wan": a shaped field <-> data
# centre link; "storm": a substation's reconnect storm; "cpu": the two shared cores, converted from
# fmb.bench-prioritization/1), each a curve per configuration of control round trips against load.
# ``testbed.bench.bottleneck`` computes the targets and checks a document; the report "when does
# segregation matter" (``fmb report`` of several of them) reads only this shape.

BottleneckConfig = Literal["shared", "segregated", "segregated+priority"]


class BottleneckPoint(TypedDict):
    load: float  # offered load, in the document's ``load_unit``
    control_ms: PrioritizationControl  # command round trips at this load
    delivery_rate: float  # what the delivery plane carried end to end (msg/s) at this load
    saturated: bool  # the offered load was more than the bottleneck carried
    # What shows where the limit was at this point, by name (all numeric; None: not measured). The broker
    # bench: each broker's CPU in cores against its quota and its fraction of throttled CFS periods, the
    # flood generators' CPU, publishers, the host's load average. A reader must not count on any key.
    evidence: NotRequired[dict[str, float | None]]


class BottleneckCurve(TypedDict):
    config: BottleneckConfig
    idle_p99_ms: float | None  # control round trip p99 with no delivery load
    unsaturated_rate: float  # the delivery plane's best rate below saturation (msg/s): "kept" is against it
    points: list[BottleneckPoint]  # lightest load first (ascending ``load``; descending on a falling axis)


class BottleneckTargets(TypedDict):
    segregated_config: BottleneckConfig  # the segregated curve the targets read (with priority where it has one)
    segregated_saturation_over_idle: float | None  # target <= 2
    shared_over_segregated: float | None  # control p99 at saturation; target >= 10
    delivery_kept: float | None  # the segregated config's delivery rate at saturation / unsaturated; >= 0.8
    met: dict[str, bool]


class BottleneckResult(TypedDict):
    schema: Literal["fmb.bench-bottleneck/1"]
    created: str
    bottleneck: Literal["cpu", "broker", "wan", "storm"]
    load_unit: str  # e.g. "msg/s offered", "Mbit/s link rate", "meters reconnecting"
    load_axis: Literal["rising", "falling"]  # "falling": smaller values are the heavier load (a link rate)
    conditions: dict[str, object]  # what this bottleneck needs said: rates, quotas, QoS, payload, repetitions...
    curves: list[BottleneckCurve]
    targets: BottleneckTargets
    environment: Environment


# -- the capacity model (testbed/model/) ---------------------------------------------------------------

class ModelBrokerPoint(TypedDict):
    """One calibration measurement: a real broker's CPU time per message published to it."""

    qos: int
    payload_bytes: int
    subscribers: int  # matching subscriptions: each one a delivery of the message
    messages: int
    delivered: int  # what the subscribers received in all (messages x subscribers when nothing was lost)
    cpu_us_per_message: float  # the broker process's user + system CPU (/proc/<pid>/stat) per message


class ModelBrokerFit(TypedDict):
    """cost(qos, bytes, subscribers) = base + per_subscriber x (subscribers - 1) + per_kib x KiB x subscribers,
    by QoS ("0".."2"): the payload is encrypted and written once per delivery."""

    base_us: dict[str, float]
    per_subscriber_us: dict[str, float]
    per_kib_us: dict[str, float]


class ModelBridgePoint(TypedDict):
    """A reading crossing a real bridge (edge delivery broker -> data centre delivery broker, one subscriber)."""

    qos: int
    payload_bytes: int
    messages: int
    delivered: int
    edge_cpu_us_per_message: float  # the sending broker: the publisher's message and its bridge delivery
    datacentre_cpu_us_per_message: float  # the receiving broker: the bridge's message and one delivery


class ModelCalibrationConditions(TypedDict):
    messages_per_point: int
    handshakes: int
    latency_fixture: str  # where the client overheads and device times were read (a bench-latency/2 file)
    client: str
    load_average_before: list[float]
    load_average_after: list[float]
    seconds: float


class ModelClientCosts(TypedDict):
    """CPU of the client processes per message, measured as the brokers' is (``/proc/<pid>/stat``): what a
    model of one machine's shared cores needs besides the brokers' costs."""

    fleet_us_per_reading: float  # a gmqtt fleet process (devices/fleet.py), per reading it published
    subscriber_us_per_message: float  # the DMS side (the scale benchmark's paho subscriber), per reading received
    flood_publisher_us_per_message: float  # mosquitto_pub (-d, QoS 0, 256 B), per message sent
    flood_subscriber_us_per_message: float  # mosquitto_sub, per message received
    conditions: str
    # [[messages/s, us per message], ...] at rising rates: a busier process batches, and pays less per message
    fleet_curve: NotRequired[list[list[float]]]
    subscriber_curve: NotRequired[list[list[float]]]


class ModelCalibration(TypedDict):
    """``fmb model calibrate``: the service times the capacity model runs on, measured on real brokers."""

    schema: Literal["fmb.model-calibration/1"]
    created: str
    conditions: ModelCalibrationConditions
    broker_points: list[ModelBrokerPoint]
    broker_fit: ModelBrokerFit
    bridge: list[ModelBridgePoint]
    handshake_us: float  # broker CPU per mutual-TLS connection (connect, CONNACK, disconnect)
    round_trip_ms: Percentiles  # command -> echo responder -> acknowledgement on the idle broker, QoS 1
    client_overhead_ms: dict[str, float]  # by QoS: one-hop p50 not spent in the broker (client stacks, loopback)
    one_hop_ms: dict[str, Percentiles]  # by QoS: the latency fixture's one-hop latencies, whose spread the model draws
    service_cv: float  # coefficient of variation of a hop's time (one-hop samples), for the service distribution
    device_ms: dict[str, float]  # by role: a device's own processing (a step's hop less its two broker traversals)
    environment: Environment
    clients: NotRequired[ModelClientCosts]  # added for the host's shared cores (absent: not measured)


class ModelFlow(TypedDict):
    """One flow's latency in the model (ms) and what it carried."""

    flow: str
    sent: int
    delivered: int
    lost: int
    latency_ms: PercentilesIfAny


class ModelBrokerLoad(TypedDict):
    broker: str
    utilisation: float  # busy fraction of the run (after slowdown), at most 1
    offered_load: float  # work offered over the run's time: above 1, the broker cannot keep up and its queue grows
    mean_in_system: float  # Little's law: time-averaged messages queued or in service
    max_queue: int
    jobs: int
    dropped: int  # refused while down


class ModelRun(TypedDict):
    """``fmb model run``: the model's metrics for one topology and settings (the benchmarks' names)."""

    schema: Literal["fmb.model-run/1"]
    created: str
    topology: str
    settings: dict[str, float | int | str | bool]
    simulated_s: float
    messages: int  # messages the sources sent (each crosses several hops)
    wall_s: float
    flows: list[ModelFlow]
    brokers: list[ModelBrokerLoad]
    links: list[dict[str, float | int | str]]
    storm: NotRequired[dict[str, float | int | str | bool | None]]  # a restart's reconnection storm, when asked
    host: NotRequired[dict[str, float | int]]  # with cores set: {"cores", "offered_load"} of the shared machine
    calibration: str


class ModelValidationRow(TypedDict):
    benchmark: str  # "scale" or "prioritization"
    point: str  # which load of which configuration
    metric: str  # "throughput_per_s", "p50_ms", "p99_ms"
    measured: float
    predicted: float
    error: float  # (predicted - measured) / measured
    target: float  # the bound on |error|
    met: bool


class ModelValidation(TypedDict):
    """``fmb model validate``: the model's predictions against benchmark results measured here."""

    schema: Literal["fmb.model-validation/1"]
    created: str
    calibration: str
    measurements: list[str]  # the benchmark files, with what they say about themselves (synthetic, load)
    contention: str  # how the measured runs' CPU contention entered the prediction
    rows: list[ModelValidationRow]
    met: int
    total: int


class ModelAnswers(TypedDict):
    """``fmb model answers``: the utility-scale questions, answered by the model."""

    schema: Literal["fmb.model-answers/1"]
    created: str
    calibration: str
    conditions: dict[str, float | int | str]
    baseline: dict[str, float | int | str | None]  # 300 substations x 2,000 meters every 60 s
    sweep: list[dict[str, float | int | None]]  # substations -> dc delivery utilisation, control p99 both ways
    saturation_substations: int | None
    storm: list[dict[str, float | int | str | bool | None]]  # with and without jittered backoff
    wan_per_substation: dict[str, float]
    wall_s: float


# -- the report "when does segregation matter": segregation.json (fmb.segregation-report/1) ----------
# Derived from the bottleneck documents above by ``testbed.bench.segregation``; nothing in it is measured.

class SegregationReach(TypedDict):
    """How far one configuration keeps command round trips under each IEC 61850-5 class."""

    config: BottleneckConfig
    # The heaviest load up to which every point (in load order) had p99 <= the class and no command
    # unacknowledged; None: not even the lightest. ``*_all``: every measured point did.
    medium_up_to: float | None
    medium_all: bool
    low_up_to: float | None
    low_all: bool
    heaviest_load: float | None  # None: the curve has no point
    heaviest_p99_ms: float | None
    heaviest_delivery_rate: float


class SegregationRow(TypedDict):
    bottleneck: Literal["cpu", "broker", "wan", "storm"]
    load_unit: str
    load_axis: Literal["rising", "falling"]
    source: str  # the document it was derived from
    reach: list[SegregationReach]  # shared, segregated, segregated+priority (those measured)
    choose: BottleneckConfig | None  # the simplest configuration that holds the tightest class furthest
    recommendation: str  # the same, with the loads, in a sentence


class SegregationReport(TypedDict):
    schema: Literal["fmb.segregation-report/1"]
    created: str
    rows: list[SegregationRow]

