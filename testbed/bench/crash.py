"""``fmb bench crash``: what a ``kill -9`` of a persistent broker loses, per persistence policy and version.

For each policy (a Mosquitto build, ``2.0`` or ``2.1``, and how it persists: nothing, the built-in
snapshot on a timer, after N changes or on SIGUSR1 from the launcher every N ms, or 2.1's sqlite plugin with a
flush period and a sync level) a fresh data-centre broker of its own is crashed several times:

* **kill trials**: a persistent QoS 1 consumer subscribes and goes offline (its session saved by
  a graceful restart, as a long-lived DMS session would be), a producer queues messages for it
  at the offered rate for a random 2-4 s, the broker is killed with SIGKILL while it publishes,
  restarted at once, and the consumer comes back for what survived. ``lost`` is what the broker
  had acknowledged (PUBACK) and never delivered; ``window_s`` is how much traffic that was, from
  the first lost message's publish to the crash; ``lost_s`` the same as messages / offered rate.
  ``all_lost`` marks a trial that lost everything since the session was saved: its window is the
  whole fill, a lower bound of the policy's.
* **throughput trials**: QoS 1 messages acknowledged per second while queuing for the offline
  consumer, published as fast as one client can; ``cost`` is the policy's median against the
  median of ``none`` (no persistence) on the same build and runtime. They run in rounds across
  the policies, so a change of load on a shared machine weighs on all of them alike. The broker's
  CPU time per acknowledged message (``cpu_us_per_msg``, its ``cpu_cost`` against ``none``) is
  recorded beside it: a machine shared with others skews throughput far more than CPU time.

Brokers run in containers (``--runtime docker``, the default: both builds alike, host network,
the broker's files bind-mounted, so the disk is the same as a local process's) or, for 2.0 only,
as processes of the host's Mosquitto (``--runtime host``). The machine's load average is recorded
before and after every policy: the figures are only as quiet as the machine was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import getpass
import json
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from brokers.mosquitto import BrokerFiles, mosquitto_binary, render_acl, render_conf
from testbed.backends.compose import docker_client
from testbed.backends.environment import environment
from testbed.backends.processes import ProcessRecord
from testbed.backends.saver import broker_argv
from testbed.bench.common import (
    CONTAINER_DIR,
    Processes,
    bench_topology,
    container_broker_files,
    wait_for_log,
)
from testbed.bench.recovery import Producer
from testbed.core.errors import BenchmarkError, TestbedError
from testbed.core.ports import free_port
from testbed.core.results import (
    CrashConditions,
    CrashKill,
    CrashPolicyRow,
    CrashResult,
    CrashSettings,
    CrashTarget,
    Percentiles,
)
from testbed.core.stats import percentiles
from testbed.core.topics import topic
from testbed.core.topology import MOSQUITTO_IMAGES, BrokerSpec, Topology
from testbed.core.waiting import WaitTimeout, wait_until
from testbed.reporting.text import crash_markdown
from testbed.security.pki import PKI
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect

__all__ = ["DEFAULT_POLICIES", "RESULT_FILE", "RESULT_SCHEMA", "TARGET", "CrashPolicy", "check_runtime", "kill_trial",
           "parse_policies", "policy_of", "run_crash", "summary"]

RESULT_SCHEMA: Final = "fmb.bench-crash/1"
RESULT_FILE = "bench-crash.json"
TARGET = CrashTarget(window_s=1.0, cost=0.20)  # issue 11: a kill -9 loses <= 1 s of traffic at <= 20 % throughput cost
RUNTIMES = ("docker", "host")
# Default sweep: the baselines, today's default, the shortest 2.0 policies, and the plugin's range.
DEFAULT_POLICIES = ("2.0/none", "2.0/snapshot=60", "2.0/snapshot=1", "2.0/changes=100", "2.0/usr1=500",
                    "2.1/none", "2.1/sqlite=5", "2.1/sqlite=1", "2.1/sqlite=0", "2.1/sqlite=0,sync=full")
QOS = 1
SESSION_EXPIRY_S = 3600
CONTAINER = CONTAINER_DIR  # where a broker container mounts its directory


@dataclass(frozen=True)
class CrashPolicy:
    """One point of the curve: a Mosquitto build and how it persists."""

    mosquitto: str  # "2.0" | "2.1" (or an image name, docker runtime only)
    persistence: str  # none | snapshot | sqlite
    autosave_interval_s: int = 0
    autosave_on_changes: int = 0
    usr1_ms: int = 0  # snapshot_every_ms: SIGUSR1 from the launcher (testbed.backends.saver); own timer off
    flush_period_s: int = 5
    sync: str = "normal"
    spec: str = ""  # as given on the command line

    @property
    def label(self) -> str:
        if self.persistence == "snapshot":
            timer = f" (+ every {self.autosave_interval_s} s)" if self.autosave_interval_s else ""
            how = (f"SIGUSR1 every {self.usr1_ms} ms{timer}" if self.usr1_ms else
                   f"every {self.autosave_on_changes} changes" if self.autosave_on_changes else
                   f"every {self.autosave_interval_s} s")
            return f"{self.mosquitto} snapshot {how}"
        if self.persistence == "sqlite":
            return f"{self.mosquitto} sqlite flush {self.flush_period_s} s, sync {self.sync}"
        return f"{self.mosquitto} no persistence"

    @property
    def bound_s(self) -> float | None:
        """The loss window the policy allows by construction (seconds), from Mosquitto's source:
        2.0 saves when ``last + interval < now`` in whole seconds, so every interval + 1 s; the
        2.1.2 plugin commits in the first loop after each flush period. None: no time bound (by
        changes: it depends on the rate; none: everything)."""
        if self.persistence == "snapshot":
            if self.usr1_ms:
                return self.usr1_ms / 1000
            return None if self.autosave_on_changes else float(self.autosave_interval_s + 1)
        if self.persistence == "sqlite":
            return float(self.flush_period_s)
        return None

    def site_fields(self) -> dict[str, Any]:
        """The topology fields that render this policy's configuration."""
        fields: dict[str, Any] = {"persistence": self.persistence, "mosquitto": self.mosquitto}
        if self.persistence == "snapshot":
            # (usr1=MS on the command line leaves autosave_interval_s 0: the broker's own timer off.)
            fields |= {"autosave_interval_s": self.autosave_interval_s,
                       "autosave_on_changes": self.autosave_on_changes, "snapshot_every_ms": self.usr1_ms}
        elif self.persistence == "sqlite":
            fields |= {"flush_period_s": self.flush_period_s, "sync": self.sync}
        return fields


def policy_of(broker: BrokerSpec) -> CrashPolicy:
    """The policy a topology's broker runs (e.g. the data centre's default)."""
    return CrashPolicy(broker.mosquitto, broker.persistence, autosave_interval_s=broker.autosave_interval_s,
                       autosave_on_changes=broker.autosave_on_changes, usr1_ms=broker.snapshot_every_ms,
                       flush_period_s=broker.flush_period_s, sync=broker.sync, spec=f"{broker.name} ({broker.policy})")


def parse_policies(text: str) -> list[CrashPolicy]:
    """``2.0/snapshot=1,2.1/sqlite=0;sync=full``-style lists; one-line errors for anything else.

    Items are separated by spaces or by commas that start a new ``VERSION/`` item: ``VERSION/none``,
    ``VERSION/snapshot=SECONDS``, ``VERSION/changes=COUNT``, ``VERSION/usr1=MILLISECONDS``,
    ``VERSION/sqlite=FLUSH_SECONDS[,sync=off|normal|full|extra]``.
    """
    items: list[str] = []
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        if "/" in part or not items:
            items.append(part)
        else:
            items[-1] += "," + part
    policies = [_policy(item) for item in items]
    if not policies:
        raise TestbedError(f"--policies is {text!r}; give e.g. 2.0/snapshot=1,2.1/sqlite=0")
    return policies


def _policy(item: str) -> CrashPolicy:
    usage = "VERSION/none, /snapshot=S, /changes=N, /usr1=MS or /sqlite=S[,sync=normal]"
    version, _, rest = item.partition("/")
    if not version or not rest:
        raise TestbedError(f"--policies has {item!r}; give {usage}")
    head, *options = rest.split(",")
    mode, _, value = head.partition("=")
    try:
        number = int(value) if value else None
    except ValueError:
        raise TestbedError(f"--policies has {item!r}: {value!r} is not a whole number; give {usage}") from None
    if number is not None and number < 0:
        raise TestbedError(f"--policies has {item!r}: give 0 or more")
    opts = dict(o.partition("=")[::2] for o in options)
    if set(opts) - {"sync"} or (opts and mode != "sqlite"):
        raise TestbedError(f"--policies has {item!r}: only sqlite takes an option (sync=...)")
    needs_number = {"snapshot": "seconds", "changes": "a change count", "usr1": "milliseconds", "sqlite": "seconds"}
    if mode in needs_number and number is None:
        raise TestbedError(f"--policies has {item!r}: {mode}= needs {needs_number[mode]}")
    if mode == "none":
        policy = CrashPolicy(version, "none")
    elif mode == "snapshot":
        policy = CrashPolicy(version, "snapshot", autosave_interval_s=number or 0)
    elif mode in ("changes", "usr1"):
        if not number:
            raise TestbedError(f"--policies has {item!r}: {mode}= needs a number above 0")
        policy = (CrashPolicy(version, "snapshot", autosave_on_changes=number) if mode == "changes"
                  else CrashPolicy(version, "snapshot", usr1_ms=number))
    elif mode == "sqlite":
        sync = opts.get("sync", "normal")
        if sync not in ("off", "normal", "full", "extra"):
            raise TestbedError(f"--policies has {item!r}: sync is off, normal, full or extra")
        if version == "2.0":
            raise TestbedError(f"--policies has {item!r}: the sqlite plugin needs Mosquitto 2.1")
        policy = CrashPolicy(version, "sqlite", flush_period_s=number or 0, sync=sync)
    else:
        raise TestbedError(f"--policies has {item!r}: unknown mode {mode!r}; give {usage}")
    return dataclasses.replace(policy, spec=item)


# -- brokers: a host process or a container ---------------------------------------------------------

class HostBroker:
    """The host's Mosquitto (2.0) as a process of ours, killed and signalled by its recorded pid."""

    def __init__(self, procs: Processes, topology: Topology, spec: BrokerSpec, pki: PKI, directory: Path) -> None:
        self.procs, self.topology, self.spec, self.pki, self.directory = procs, topology, spec, pki, directory
        self.record: ProcessRecord | None = None
        self.log = directory / "mosquitto.log"

    def start(self) -> None:
        # As bench.common.start_broker, through the same launcher as the local backend's brokers.
        self.directory.mkdir(parents=True, exist_ok=True)
        files = BrokerFiles(certs=self.pki.directory.resolve(), directory=self.directory, log=self.log,
                            user=getpass.getuser())
        conf = self.directory / "mosquitto.conf"
        conf.write_text(render_conf(self.topology, self.spec, files))
        (self.directory / "acl").write_text(render_acl(self.topology, self.spec))
        (self.directory / "data").mkdir(exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.record = self.procs.start(f"{self.spec.name}-{time.monotonic_ns()}",
                                       broker_argv(mosquitto_binary(), conf, self.spec.snapshot_every_ms))
        wait_for_log(self.log, " running", self.record, offset)

    def pid(self) -> int | None:
        return self.record.pid if self.record is not None else None

    def kill(self) -> None:
        assert self.record is not None
        self.procs.kill(self.record)
        self.record = None

    def stop(self) -> None:
        if self.record is not None:
            if self.procs.stop([self.record], timeout_s=15):
                raise TestbedError(f"the benchmark broker needed SIGKILL after SIGTERM; see {self.log}")
            self.record = None

    def remove(self) -> None:
        if self.record is not None:
            self.procs.stop([self.record])
            self.record = None


class DockerBroker:
    """A broker container on the host network, its configuration, certificates, data and log
    bind-mounted from ``directory``; it runs as the calling user, who owns those files."""

    def __init__(self, client: Any, image: str, topology: Topology, spec: BrokerSpec, pki: PKI,
                 directory: Path) -> None:
        self.client, self.image, self.directory = client, image, directory
        self.log = directory / "log" / "mosquitto.log"
        self.user = container_broker_files(topology, spec, pki, directory)
        self.container: Any = None

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        if self.container is None:
            self.container = self.client.containers.run(
                self.image, detach=True, network_mode="host", user=self.user,
                labels={"org.fmb.bench": "crash", "org.fmb.bench.pid": str(os.getpid())},
                volumes={str(self.directory / "config"): {"bind": str(CONTAINER / "config"), "mode": "ro"},
                         str(self.directory / "data"): {"bind": str(CONTAINER / "data"), "mode": "rw"},
                         str(self.directory / "log"): {"bind": str(CONTAINER / "log"), "mode": "rw"}})
        else:
            self.container.start()
        self._wait_running(offset)

    def _wait_running(self, offset: int, timeout_s: float = 30) -> None:
        def running() -> bool:
            if self.log.exists():
                with open(self.log, "rb") as f:
                    f.seek(offset)
                    if b" running" in f.read():
                        return True
            self.container.reload()
            if self.container.status == "exited":
                text = self.log.read_text(errors="replace") if self.log.exists() else ""
                last = (text.strip().splitlines() or [self.container.logs(tail=1).decode(errors="replace").strip()])[-1]
                raise TestbedError(f"the benchmark broker ({self.image}) exited at start: {last}")
            return False

        wait_until(running, timeout_s, interval_s=0.01, what=f"broker {self.image} running; see {self.log}")

    def pid(self) -> int | None:
        """The broker's pid as this host sees it."""
        self.container.reload()
        return self.container.attrs["State"]["Pid"] or None

    def kill(self) -> None:
        self.container.kill(signal="SIGKILL")
        self.container.wait(timeout=30)

    def stop(self) -> None:
        self.container.stop(timeout=15)
        self.container.reload()
        if self.container.attrs["State"]["ExitCode"] == 137:
            raise TestbedError(f"the benchmark broker needed SIGKILL after SIGTERM; see {self.log}")

    def remove(self) -> None:
        if self.container is not None:
            self.container.remove(force=True)
            self.container = None


class Consumer:
    """The DMS-like consumer, in this process: a persistent QoS 1 session that can go offline."""

    def __init__(self, identity: TLSIdentity, endpoint: Endpoint, name: str, client_id: str) -> None:
        self.identity, self.endpoint, self.topic, self.client_id = identity, endpoint, name, client_id
        self.lock = threading.Lock()
        self.seqs: set[int] = set()
        self.subscribed = threading.Event()
        self.client: Any = None

    def online(self) -> None:
        def on_message(c: Any, u: Any, msg: Any) -> None:
            head = msg.payload.split(b",", 1)[0]
            if head.isdigit():
                with self.lock:
                    self.seqs.add(int(head))

        def on_connect(c: Any) -> None:
            c.on_subscribe = lambda *a: self.subscribed.set()
            c.subscribe(self.topic, QOS)

        self.subscribed.clear()
        self.client = connect(self.client_id, self.identity, self.endpoint, on_message=on_message,
                              on_connect=on_connect, clean_start=False, session_expiry_s=SESSION_EXPIRY_S)
        if not self.subscribed.wait(10):
            raise BenchmarkError(f"the benchmark consumer got no SUBACK from {self.endpoint.host}:"
                                 f"{self.endpoint.port} in 10 s; run the benchmark again on an idle machine")

    def offline(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def received(self) -> set[int]:
        with self.lock:
            return set(self.seqs)

    def drain(self, wanted: set[int], quiet_s: float = 1.0, timeout_s: float = 20.0) -> set[int]:
        """Wait until every wanted message is in, or nothing new came for ``quiet_s``; what came."""
        last, since = -1, time.monotonic()

        def done() -> bool:
            nonlocal last, since
            got = self.received()
            if wanted <= got:
                return True
            if len(got) != last:
                last, since = len(got), time.monotonic()
            return time.monotonic() - since >= quiet_s

        with contextlib.suppress(WaitTimeout):
            wait_until(done, timeout_s, interval_s=0.05, what="the consumer's queued messages")
        return self.received()


# -- the trials --------------------------------------------------------------------------------------

class _Bench:
    def __init__(self, pki: PKI, root: str, work: Path, runtime: str, rate: float, payload_bytes: int,
                 fill_s: tuple[float, float], images: dict[str, str]) -> None:
        self.pki, self.root, self.work, self.runtime = pki, root, work, runtime
        self.rate, self.payload_bytes, self.fill_s, self.images = rate, payload_bytes, fill_s, images
        self.procs = Processes(work)
        self.client = docker_client() if runtime == "docker" else None
        self.identity = TLSIdentity(pki.ca_cert, pki.client("bench").cert, pki.client("bench").key)
        self.trial = 0
        self.versions: dict[str, str] = {}  # policy.mosquitto -> the version its broker logged

    def topic(self) -> str:
        return topic(self.root, "BenchFloodProfile", "crash")

    def broker(self, policy: CrashPolicy) -> tuple[HostBroker | DockerBroker, Endpoint]:
        self.trial += 1
        topology = bench_topology(self.root, QOS, (free_port(), free_port()), kind="datacentre")
        site = dataclasses.replace(topology.sites[0], **policy.site_fields())
        topology = dataclasses.replace(topology, sites=(site,))
        spec = topology.broker("bench-delivery")
        directory = self.work / f"trial-{self.trial}"
        directory.mkdir(parents=True)
        broker: HostBroker | DockerBroker
        if self.client is None:
            broker = HostBroker(self.procs, topology, spec, self.pki, directory)
        else:
            broker = DockerBroker(self.client, self.images.get(policy.mosquitto, spec.image), topology, spec,
                                  self.pki, directory)
        try:
            broker.start()
        except BaseException:
            broker.remove()  # a container that exited at start is still ours to remove
            raise
        if policy.mosquitto not in self.versions:
            head = broker.log.read_text(errors="replace").split("mosquitto version ", 1)[-1].split()[:1]
            self.versions[policy.mosquitto] = head[0] if head else "?"
        return broker, Endpoint(spec.host, spec.port)

    def producer(self, endpoint: Endpoint) -> Producer:
        return Producer(self.identity, endpoint, self.topic(), QOS, self.payload_bytes, (0.25, 5))

    def kill_trial(self, policy: CrashPolicy) -> CrashKill:
        broker, endpoint = self.broker(policy)
        consumer = Consumer(self.identity, endpoint, self.topic(), f"central-crash-{self.trial}")
        producer = None
        try:
            consumer.online()
            consumer.offline()  # from now on its messages queue in its session
            broker.stop()  # a graceful restart saves the session, as a long-lived DMS session is saved
            broker.start()
            producer = self.producer(endpoint)
            fill = random.uniform(*self.fill_s)
            producer.run(self.rate)
            time.sleep(fill)
            kill_ns = time.time_ns()
            broker.kill()
            producer.stop.set()
            if producer.thread:
                producer.thread.join()
            with producer.lock:
                acked = set(producer.acked)
                sent_ns = dict(producer.sent_ns)
            # When the broker died: the producer's socket closing, else the moment the kill was sent.
            death_ns = next((t for t in producer.disconnects if t >= kill_ns), kill_ns)
            producer.close()
            producer = None
            start = time.monotonic()
            broker.start()
            restart_s = time.monotonic() - start
            consumer.online()
            got = consumer.drain(acked)
            lost = sorted(acked - got)
            window_ns = death_ns - sent_ns[lost[0]] if lost else 0
            return CrashKill(fill_s=round(fill, 3), acked=len(acked), lost=len(lost),
                             lost_s=round(len(lost) / self.rate, 4), window_s=round(max(0, window_ns) / 1e9, 4),
                             all_lost=bool(acked) and len(lost) == len(acked), restart_s=round(restart_s, 3))
        finally:
            if producer is not None:
                producer.close()
            consumer.offline()
            broker.remove()
            shutil.rmtree(broker.directory, ignore_errors=True)

    def throughput_trial(self, policy: CrashPolicy, count: int) -> tuple[float, float | None]:
        """(acknowledged msg/s, the broker's CPU microseconds per acknowledged message)."""
        broker, endpoint = self.broker(policy)
        consumer = Consumer(self.identity, endpoint, self.topic(), f"central-tput-{self.trial}")
        producer = None
        try:
            consumer.online()
            consumer.offline()
            producer = self.producer(endpoint)
            pid = broker.pid()
            cpu_start = _cpu_s(pid)
            start = time.perf_counter()
            for _ in range(count):
                producer.publish_one()
            producer.await_acks(120, interval_s=0.001)
            elapsed = time.perf_counter() - start
            cpu_end = _cpu_s(pid)
            with producer.lock:
                acked = len(producer.acked)
            cpu = (None if cpu_start is None or cpu_end is None or not acked
                   else round((cpu_end - cpu_start) / acked * 1e6, 2))
            return round(acked / elapsed, 1), cpu
        finally:
            if producer is not None:
                producer.close()
            broker.remove()
            shutil.rmtree(broker.directory, ignore_errors=True)


def _cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used: a cost the machine's load does not skew
    the way it skews throughput."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def check_runtime(policies: list[CrashPolicy], runtime: str) -> None:
    """Refuse, in one line, policies the runtime cannot run (before anything starts)."""
    if runtime not in RUNTIMES:
        raise TestbedError(f"--runtime is {runtime!r}; use {' or '.join(RUNTIMES)}")
    if runtime == "host" and any(p.mosquitto != "2.0" for p in policies):
        raise TestbedError("--runtime host runs the host's Mosquitto 2.0 only; give 2.0/... policies, or "
                           "--runtime docker for 2.1 (image fmb-broker-2.1: scripts/images --broker 2.1)")


def kill_trial(pki: PKI, root: str, policy: CrashPolicy, runtime: str = "host", rate: float = 200.0,
               payload_bytes: int = 256, fill_s: tuple[float, float] = (2.0, 4.0),
               images: dict[str, str] | None = None) -> CrashKill:
    """One kill trial of ``policy`` on a broker of its own (the test of the data centre's default uses it)."""
    pki.init({b.name: [] for b in bench_topology(root, QOS, (1, 2)).brokers}, ["bench"])
    with tempfile.TemporaryDirectory(prefix="fmb-bench-crash-") as tmp:
        bench = _Bench(pki, root, Path(tmp), runtime, rate, payload_bytes, fill_s, images or {})
        try:
            return bench.kill_trial(policy)
        finally:
            bench.procs.stop()


def _stats(values: Sequence[float]) -> Percentiles | None:
    if not values:
        return None
    summary = percentiles(values, (50, 90))
    return Percentiles(n=len(values), min=round(summary["min"], 4), p50=round(summary["p50"], 4),
                       p90=round(summary["p90"], 4), max=round(summary["max"], 4), mean=round(summary["mean"], 4))


def _loads() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_crash(pki: PKI, root: str, policies: list[CrashPolicy], runtime: str, kills: int, throughputs: int,
              rate: float, payload_bytes: int, count: int, fill_s: tuple[float, float], out: Path,
              progress: Callable[[str], None] | None = None, images: dict[str, str] | None = None) -> CrashResult:
    """The whole curve; writes ``out/bench-crash.json`` and returns it."""
    say = progress or (lambda line: None)
    check_runtime(policies, runtime)
    images = {**MOSQUITTO_IMAGES, **(images or {})}
    if runtime == "docker":
        client = docker_client()
        for version in sorted({p.mosquitto for p in policies}):
            image = images.get(version, version)
            build = " --broker 2.1" if version == "2.1" else ""
            try:
                command = client.images.get(image).attrs["Config"].get("Cmd") or []
            except Exception:
                raise TestbedError(f"image {image} (Mosquitto {version}) is missing: "
                                   f"run scripts/images{build}") from None
            if any(p.usr1_ms and p.mosquitto == version for p in policies) and "mosquitto-saver" not in command:
                raise TestbedError(f"image {image} predates the snapshot launcher (mosquitto-saver): run "
                                   f"scripts/images{build}")
    pki.init({b.name: [] for b in bench_topology(root, QOS, (1, 2)).brokers}, ["bench"])
    load_start = _loads()
    rows: list[CrashPolicyRow] = []
    with tempfile.TemporaryDirectory(prefix="fmb-bench-crash-") as tmp:
        bench = _Bench(pki, root, Path(tmp), runtime, rate, payload_bytes, fill_s, images)
        try:
            kill_runs: list[tuple[list[CrashKill], list[float], list[float]]] = []
            for policy in policies:
                before = _loads()
                trials = [bench.kill_trial(policy) for _ in range(kills)] if policy.persistence != "none" else []
                kill_runs.append((trials, before, _loads()))
                windows = [t["window_s"] for t in trials]
                say(f"  kill -9  {policy.label:<40} window worst "
                    f"{f'{max(windows):.3f} s' if windows else 'everything'}"
                    f"{' (all lost: >= the fill)' if any(t['all_lost'] for t in trials) else ''}; "
                    f"lost {[t['lost'] for t in trials]} of {[t['acked'] for t in trials]}; load {before[0]:.2f}")
            # Throughput in rounds across the policies, so that a change of load on a shared machine
            # weighs on every policy alike instead of on whichever ran at the time.
            tputs: list[list[float]] = [[] for _ in policies]
            cpus: list[list[float]] = [[] for _ in policies]
            for n in range(throughputs):
                for i, policy in enumerate(policies):
                    tput, cpu = bench.throughput_trial(policy, count)
                    tputs[i].append(tput)
                    if cpu is not None:
                        cpus[i].append(cpu)
                say(f"  throughput round {n + 1}/{throughputs}: "
                    + ", ".join(f"{p.spec or p.label} {t[-1]:.0f}" for p, t in zip(policies, tputs, strict=True))
                    + f" msg/s; load {os.getloadavg()[0]:.2f}")
            for policy, (trials, before, after), tput_list, cpu_list in zip(policies, kill_runs, tputs, cpus,
                                                                           strict=True):
                rows.append(CrashPolicyRow(
                    policy=policy.label, spec=policy.spec, mosquitto=policy.mosquitto,
                    mosquitto_version=bench.versions.get(policy.mosquitto),
                    image=images.get(policy.mosquitto, policy.mosquitto) if runtime == "docker" else None,
                    runtime=runtime, persistence=policy.persistence,
                    settings=CrashSettings(autosave_interval_s=policy.autosave_interval_s,
                                           autosave_on_changes=policy.autosave_on_changes, usr1_ms=policy.usr1_ms,
                                           flush_period_s=policy.flush_period_s, sync=policy.sync),
                    bound_s=policy.bound_s, kills=trials, throughput_per_s=tput_list, cpu_us_per_msg=cpu_list,
                    window_s=_stats([t["window_s"] for t in trials]), lost=_stats([t["lost"] for t in trials]),
                    throughput=_stats(tput_list), cpu=_stats(cpu_list), load_before=before, load_after=after,
                    cost=None, cpu_cost=None, meets_target=None))
        finally:
            bench.procs.stop()
    _costs(rows)
    env = environment(bench_topology(root, QOS, (1, 2)), None, runtime)
    # The brokers measured, not only the host's: "2.0.11, 2.1.2" when both builds ran.
    env["mosquitto"] = ", ".join(sorted(set(bench.versions.values()))) or None
    result = CrashResult(
        schema=RESULT_SCHEMA, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        conditions=CrashConditions(
            runtime=runtime, qos=QOS, offered_rate_per_s=rate, payload_bytes=payload_bytes, fill_s=list(fill_s),
            kill_repetitions=kills, throughput_repetitions=throughputs, throughput_messages=count,
            tls_version="TLSv1.2+ (mutual)",
            consumer=f"in-process paho, MQTT v5, clean_start false, session expiry {SESSION_EXPIRY_S} s, "
                     "offline while messages queue; its session saved by a graceful restart first",
            producer="paho-mqtt, one client, QoS 1; throughput: as fast as it can publish",
            target=TARGET, load_average_start=load_start, load_average_end=_loads(), cores=os.cpu_count(),
            note="the machine's cores may be shared: final figures need a quiet machine "
                 "(load averages above, per policy in load_before / load_after)"),
        policies=rows, environment=env)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _costs(rows: list[CrashPolicyRow]) -> None:
    """Each policy's throughput cost against no persistence on the same build and runtime; and the verdict."""
    base = {(r["mosquitto"], r["runtime"]): t["p50"] for r in rows
            if r["persistence"] == "none" and (t := r["throughput"]) and "p50" in t}
    cpu_base = {(r["mosquitto"], r["runtime"]): c["p50"] for r in rows
                if r["persistence"] == "none" and (c := r["cpu"]) and "p50" in c}
    for r in rows:
        ref, tput = base.get((r["mosquitto"], r["runtime"])), r["throughput"]
        r["cost"] = round(1 - tput["p50"] / ref, 4) if ref and tput and "p50" in tput else None
        cpu_ref, cpu = cpu_base.get((r["mosquitto"], r["runtime"])), r["cpu"]
        r["cpu_cost"] = round(cpu["p50"] / cpu_ref - 1, 4) if cpu_ref and cpu and "p50" in cpu else None
        worst = r["window_s"]["max"] if r["window_s"] and "max" in r["window_s"] else None
        r["meets_target"] = (None if worst is None or r["cost"] is None else
                             worst <= TARGET["window_s"] and r["cost"] <= TARGET["cost"]
                             and not any(t["all_lost"] for t in r["kills"]))


def summary(result: CrashResult) -> str:
    return "crash benchmark\n" + crash_markdown(result)
