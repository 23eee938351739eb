"""``fmb bench broker``: shared against segregated where the bottleneck is a broker at its CPU quota.

On two cores the first thing a flood saturates is the machine, not a broker (issue 4's note), so
this benchmark confines each broker to a CPU quota: the project's broker image (``fmb-broker``,
built by ``scripts/images``) runs in a container with a cgroup CFS quota of a fraction of a core
(``nano_cpus``), on a bridge network created for the run, so one broker saturates at a rate the
machine can still offer and measure. The generators stay on the host: C ``mosquitto_pub`` flood
publishers (as ``fmb bench prioritization``'s; QoS 0 by default, so they are open loop and offer
more than the broker carries past saturation, as devices publishing on their own clocks do, where
a QoS 1 publisher waits for its PUBACK and slows down with the broker), each logging what it sent,
a ``mosquitto_sub`` counting what the delivery plane delivered, a paho commander timing QoS 1
commands to a responder on the control plane. Each step reads every broker's CPU and throttled
periods from its cgroup (through the engine's stats) and the generators' CPU from ``/proc``, so a
reader can see that the broker, not the generator, was what ran out. Three configurations, same steps:

* ``shared``: one quota'd broker carries both planes;
* ``segregated``: the control plane has its own broker with its own, equal quota;
* ``segregated+priority``: segregated, and the control broker has the CPU weight: cgroup
  ``cpu.shares`` 4096 against the delivery broker's 256 (Docker's default is 1024), and twice
  the quota. A broker in a container cannot be given a queue priority over another broker; what
  it can be given is CPU when both want it (the weight), and room for a burst of commands (the
  quota), without taking anything from the delivery broker's quota.

Mutual TLS with the project's PKI (the brokers' certificates name their container addresses),
configurations from the same generator as the testbed's brokers (``brokers.mosquitto``), nothing
on disk. Containers and the network are removed by id when the run ends, also when it fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from brokers.mosquitto import render_acl
from testbed.backends.compose import docker_client
from testbed.backends.environment import environment
from testbed.backends.processes import ProcessRecord
from testbed.bench.bottleneck import RESULT_SCHEMA, targets
from testbed.bench.common import (
    CONTAINER_DIR,
    Commander,
    Processes,
    bench_topology,
    container_broker_files,
    file_size,
    mosquitto_pub_version,
    sent_count,
    start_flood,
    start_flood_subscriber,
    start_responder,
    wait_for_ack,
)
from testbed.core.errors import TestbedError
from testbed.core.results import BottleneckConfig, BottleneckCurve, BottleneckPoint, BottleneckResult
from testbed.core.topology import BrokerSpec, Topology
from testbed.core.waiting import WaitTimeout, wait_until
from testbed.security.pki import PKI
from testbed.transport.mqtt import Endpoint, TLSIdentity

__all__ = ["CONFIGS", "RESULT_FILE", "BrokerBenchOptions", "run_broker_bench", "summary"]

RESULT_FILE: Final = "bench-broker.json"
CONFIGS: Final[tuple[BottleneckConfig, ...]] = ("shared", "segregated", "segregated+priority")
IMAGE: Final = "fmb-broker:latest"
SITE: Final = "bench-broker"  # brokers bench-broker-delivery and bench-broker-control
CONTAINER: Final = CONTAINER_DIR  # where its directory is mounted
# The brokers' cgroup parent: a group of their own beside Docker's. Under the default (/docker) every other
# container on the machine shares one weight with them, and a busy Compose bus next door starved a 0.1-core
# broker to 0.02 cores; here they compete for the host like any one process, and their quota binds first.
CGROUP_PARENT: Final = "/fmb-bench-broker"
PORTS: Final = (8883, 8884)  # inside each container's own network namespace: nothing on the host's ports
# The run's network takes the first of these /28s that is free (several runs can go at once); the
# brokers' certificates name their address in every one, so they stay valid from run to run.
SUBNETS: Final = tuple(ipaddress.ip_network(f"10.213.13.{16 * i}/28") for i in range(4))
# Priority for a broker in a container: CPU weight and a larger quota (the module docstring says why).
PRIORITY_CONTROL_SHARES: Final = 4096
PRIORITY_DELIVERY_SHARES: Final = 256
PRIORITY_QUOTA_FACTOR: Final = 2.0
# A point is saturated when the delivery plane carried less than this share of what was offered while
# its broker used at least AT_QUOTA of its quota; a shortfall without that is the generator's or the host's.
SHORTFALL: Final = 0.9
AT_QUOTA: Final = 0.8
DRAIN_TIMEOUT_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 60.0
PACING_CAP_S: Final = 0.005  # at most this is taken off a publisher's repeat delay (an idle step gone slow)


@dataclasses.dataclass(frozen=True)
class BrokerBenchOptions:
    """What one run measures; :meth:`check` refuses what cannot be run, naming the option."""

    rates: tuple[float, ...] = (0, 1000, 2000, 3000, 4000, 5000, 6000)
    # CPU cores per broker (cgroup CFS quota): at 0.2 a broker of ours carried about 1,400 QoS 1 msg/s over TLS
    # here before the two shared cores ran out (load average 10+); at 0.1 it reaches its quota first (about
    # 1,000 QoS 1 or 2,500-3,000 QoS 0 msg/s).
    quota: float = 0.1
    step_seconds: float = 10.0
    settle_s: float = 1.0
    command_rate: float = 50.0
    payload_bytes: int = 256
    # 0: open loop. A QoS 1 mosquitto_pub waits for each PUBACK, so past saturation it slows down with the broker
    # and never offers more than the broker carries; field devices publishing on their own clocks do not.
    flood_qos: int = 0
    command_qos: int = 1
    publishers: int = 3  # at least this many flood publishers
    per_publisher_rate: float = 200.0  # and one more for every so many msg/s offered
    configs: tuple[str, ...] = CONFIGS  # measured in the order of CONFIGS
    image: str = IMAGE

    def check(self) -> None:
        if not self.rates or self.rates[0] != 0:
            raise TestbedError("--rates must start with 0 (the idle baseline), e.g. 0,500,1000,2000,4000")
        if any(r < 0 or not math.isfinite(r) for r in self.rates) or list(self.rates) != sorted(set(self.rates)):
            raise TestbedError(f"--rates is {','.join(f'{r:g}' for r in self.rates)}; give rising msg/s, e.g. "
                               "0,500,1000,2000")
        if len(self.rates) < 2:
            raise TestbedError("--rates needs a load after the idle 0, e.g. 0,1000,4000")
        cores = os.cpu_count() or 1
        if not (0.01 <= self.quota <= cores):
            raise TestbedError(f"--quota is {self.quota:g}; give a broker's CPU cores, 0.01 to {cores}")
        for option, value, fine, want in (
            ("--step-seconds", self.step_seconds, self.step_seconds > 0, "seconds > 0"),
            ("--command-rate", self.command_rate, 0 < self.command_rate <= 1000, "commands per second, 0 to 1000"),
            ("--payload", self.payload_bytes, 0 <= self.payload_bytes <= 65536, "bytes, 0 to 65536"),
            ("--publishers", self.publishers, 1 <= self.publishers <= 64, "1 to 64"),
        ):
            if not fine:
                raise TestbedError(f"{option} is {value:g}; give {want}")
        unknown = [c for c in self.configs if c not in CONFIGS]
        if unknown or not self.configs:
            raise TestbedError(f"--configs has {', '.join(unknown) or 'nothing'}; use {', '.join(CONFIGS)}")

    def publishers_for(self, rate: float) -> int:
        """Flood publishers for ``rate``: each ``mosquitto_pub`` waits for its PUBACK before its delay,
        so one offers only so much; more of them keep the generator from being the limit."""
        return max(self.publishers, math.ceil(rate / self.per_publisher_rate))


# -- the brokers: containers with a CPU quota on the run's network ---------------------------------

class QuotaBroker:
    """One broker container with a CPU quota, its configuration, certificates and log bind-mounted
    from ``directory``, listening on its address on the run's network only."""

    def __init__(self, client: Any, image: str, topology: Topology, spec: BrokerSpec, pki: PKI, directory: Path,
                 address: str, extra_acl: str = "") -> None:
        self.client, self.image, self.spec, self.address, self.directory = client, image, spec, address, directory
        self.log = directory / "log" / "mosquitto.log"
        self.user = container_broker_files(topology, spec, pki, directory, bind=address, extra_acl=extra_acl)
        self.id: str | None = None
        self.quota = 0.0

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.address, self.spec.port)

    def start(self, network: str, quota: float, cpu_shares: int, label: str) -> None:
        """Create and start the container; returns once Mosquitto logs that it is running."""
        api = self.client.api
        binds = {str(self.directory / "config"): {"bind": str(CONTAINER / "config"), "mode": "ro"},
                 str(self.directory / "data"): {"bind": str(CONTAINER / "data"), "mode": "rw"},
                 str(self.directory / "log"): {"bind": str(CONTAINER / "log"), "mode": "rw"}}
        host_config = api.create_host_config(
            binds=binds, network_mode=network, nano_cpus=int(quota * 1e9), cpu_shares=cpu_shares,
            read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"], mem_limit="256m",
            cgroup_parent=CGROUP_PARENT)
        networking = api.create_networking_config({network: api.create_endpoint_config(ipv4_address=self.address)})
        self.id = api.create_container(
            self.image, user=self.user, host_config=host_config, networking_config=networking,
            volumes=[b["bind"] for b in binds.values()],
            labels={"org.fmb.bench": "broker", "org.fmb.bench.pid": str(os.getpid()), "org.fmb.bench.config": label},
        )["Id"]
        self.quota = quota
        api.start(self.id)
        self._wait_running()

    def _wait_running(self, timeout_s: float = 30) -> None:
        def running() -> bool:
            if self.log.exists() and b" running" in self.log.read_bytes():
                return True
            state = self.client.api.inspect_container(self.id)["State"]
            if state["Status"] == "exited":
                text = self.log.read_text(errors="replace") if self.log.exists() else ""
                last = (text.strip().splitlines() or [f"exit code {state['ExitCode']}"])[-1]
                raise TestbedError(f"the benchmark broker ({self.image}) exited at start: {last}")
            return False

        wait_until(running, timeout_s, interval_s=0.02, what=f"broker {self.spec.name} running; see {self.log}")

    def version(self) -> str | None:
        """Mosquitto's version, from its start line ("mosquitto version 2.0.11 running")."""
        for line in self.log.read_text(errors="replace").splitlines():
            if "mosquitto version" in line and " running" in line:
                return line.split("mosquitto version", 1)[1].split()[0]
        return None

    def cpu(self) -> tuple[float, int, int]:
        """(CPU seconds used, CFS periods, throttled periods) so far, from the container's cgroup."""
        stats = self.client.api.stats(self.id, stream=False, one_shot=True)["cpu_stats"]
        throttling = stats.get("throttling_data") or {}
        return (stats["cpu_usage"]["total_usage"] / 1e9, int(throttling.get("periods", 0)),
                int(throttling.get("throttled_periods", 0)))

    def remove(self) -> None:
        if self.id is not None:
            self.client.api.remove_container(self.id, force=True)
            self.id = None


def broker_addresses(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> dict[str, str]:
    """The delivery and control brokers' addresses in one of :data:`SUBNETS` (.2 and .3 of it)."""
    hosts = list(subnet.hosts())
    return {"delivery": str(hosts[1]), "control": str(hosts[2])}


@contextmanager
def bench_network(client: Any) -> Iterator[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    """A bridge network of the run's own on the first free subnet of :data:`SUBNETS`, removed by id after."""
    import docker  # the SDK: docker_client() has already said what to install if it is missing

    name = f"fmb-bench-broker-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    network, problem = None, ""
    for subnet in SUBNETS:
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))])
        try:
            network = client.networks.create(name, driver="bridge", ipam=ipam, check_duplicate=True,
                                             labels={"org.fmb.bench": "broker", "org.fmb.bench.pid": str(os.getpid())})
            break
        except docker.errors.APIError as e:
            problem = str(e.explanation or e)
    if network is None:
        raise TestbedError(f"no free subnet for the benchmark's network among {', '.join(map(str, SUBNETS))} "
                           f"(other runs, or networks on them: `docker network ls`): {problem}")
    try:
        yield name, subnet
    finally:
        network.remove()


# -- one configuration, one curve ------------------------------------------------------------------

def _proc_cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes so far; those gone count nothing."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime: fields 14 and 15 of stat(5)
    return total


@dataclasses.dataclass
class _Sample:
    """Counters at one instant of a step: delivered bytes, each broker's cgroup CPU, the generators' CPU."""

    at: float
    delivered_bytes: int
    sent: int
    brokers: dict[str, tuple[float, int, int]]
    generators: dict[int, float]

    @classmethod
    def take(cls, log: Path, brokers: dict[str, QuotaBroker], flood: list[ProcessRecord],
             offsets: dict[int, tuple[int, int]]) -> _Sample:
        return cls(time.monotonic(), file_size(log), sent_count(flood, offsets),
                   {plane: b.cpu() for plane, b in brokers.items()}, {r.pid: _proc_cpu_s([r.pid]) for r in flood})


def _evidence(first: _Sample, last: _Sample, brokers: dict[str, QuotaBroker],
              publishers: int) -> dict[str, float | None]:
    """Each broker's CPU (cores, cgroup) and throttled share of CFS periods, the generators' CPU, over a window."""
    wall = last.at - first.at
    evidence: dict[str, float | None] = {"publishers": publishers, "window_s": round(wall, 3),
                                         "offered_sent_rate": round((last.sent - first.sent) / wall, 1),
                                         "load_average_1min": round(os.getloadavg()[0], 2)}
    for plane, broker in brokers.items():
        (cpu0, periods0, throttled0), (cpu1, periods1, throttled1) = first.brokers[plane], last.brokers[plane]
        periods = periods1 - periods0
        evidence[f"{plane}_broker_cpu_cores"] = round((cpu1 - cpu0) / wall, 3)
        evidence[f"{plane}_broker_quota_cores"] = broker.quota
        throttled = round((throttled1 - throttled0) / periods, 3) if periods else None
        evidence[f"{plane}_broker_throttled_fraction"] = throttled
    used = [last.generators.get(pid, 0.0) - cpu for pid, cpu in first.generators.items()]
    evidence["generator_cpu_cores"] = round(sum(used) / wall, 3)
    evidence["generator_busiest_process_cpu_cores"] = round(max(used, default=0.0) / wall, 3)
    return evidence


def _wait_drained(log: Path, quiet_s: float = 0.5) -> None:
    """Until the subscriber stops receiving: a saturated step's backlog must not count in the next one."""
    last = [file_size(log), time.monotonic()]

    def quiet() -> bool:
        size = file_size(log)
        if size != last[0]:
            last[:] = [size, time.monotonic()]
        return time.monotonic() - last[1] >= quiet_s

    # A backlog still draining after the timeout shows in the next step's figures, which say so.
    with contextlib.suppress(WaitTimeout):
        wait_until(quiet, DRAIN_TIMEOUT_S, interval_s=0.1, what="the flood's backlog to drain")


def _wait_connected(flood: list[ProcessRecord]) -> None:
    """Until every flood publisher (started with ``count_sent``: ``-d``) has its CONNACK."""
    def connected() -> bool:
        for record in flood:
            try:
                if b"received CONNACK" not in Path(record.log).read_bytes()[:4096]:
                    return False
            except OSError:
                return False
        return True

    wait_until(connected, CONNECT_TIMEOUT_S, interval_s=0.05,
               what=lambda: f"{len(flood)} flood publishers connected to the quota'd broker; see {flood[0].log}")


@dataclasses.dataclass
class _Run:
    """What every configuration shares: the engine, the network, the PKI and identities, the options."""

    client: Any
    network: str
    addresses: dict[str, str]
    topology: Topology
    pki: PKI
    identity: TLSIdentity
    options: BrokerBenchOptions
    work: Path
    procs: Processes
    progress: Callable[[str], None]
    versions: dict[str, str | None] = dataclasses.field(default_factory=dict)
    publish_s: float = 0.0  # how long one flood publish took at idle (set by each curve's idle step)

    def brokers(self, config: BottleneckConfig) -> dict[str, QuotaBroker]:
        """The started brokers of ``config`` by plane ("delivery", and "control" when segregated)."""
        delivery, control = self.topology.broker(f"{SITE}-delivery"), self.topology.broker(f"{SITE}-control")
        q = self.options.quota
        # One broker carries both planes when shared: it gets both planes' rights.
        extra = render_acl(self.topology, control) if config == "shared" else ""
        plan = [("delivery", delivery, extra, q, PRIORITY_DELIVERY_SHARES if config == "segregated+priority" else 1024)]
        if config != "shared":
            priority = config == "segregated+priority"
            plan.append(("control", control, "", q * PRIORITY_QUOTA_FACTOR if priority else q,
                         PRIORITY_CONTROL_SHARES if priority else 1024))
        started: dict[str, QuotaBroker] = {}
        try:
            for plane, spec, acl, quota, shares in plan:
                broker = QuotaBroker(self.client, self.options.image, self.topology, spec, self.pki,
                                     self.work / config.replace("+", "-") / spec.name, self.addresses[plane], acl)
                started[plane] = broker
                broker.start(self.network, quota, shares, config)
                self.versions.setdefault("broker_mosquitto", broker.version())
        except BaseException:
            for broker in started.values():
                broker.remove()
            raise
        return started

    def curve(self, config: BottleneckConfig) -> BottleneckCurve:
        opts = self.options
        brokers = self.brokers(config)
        control_ep = (brokers.get("control") or brokers["delivery"]).endpoint
        delivery_ep = brokers["delivery"].endpoint
        tag = config.replace("+", "-")
        own: list[ProcessRecord] = []
        commander = None
        try:
            own.append(start_responder(self.procs, f"{tag}-responder", control_ep, self.identity,
                                       self.topology.root, opts.command_qos))
            commander = Commander(self.identity, control_ep, self.topology.root, opts.command_qos, "responder-1")
            flood_log = self.work / f"{tag}-flood-sub.out"
            own.append(start_flood_subscriber(self.procs, f"{tag}-flood-sub", delivery_ep, self.identity,
                                              self.topology.root, opts.flood_qos, flood_log))
            wait_for_ack(commander)
            if "tls_version" not in self.versions:
                sock = commander.client.socket()
                self.versions["tls_version"] = sock.version() if sock is not None and hasattr(sock, "version") else None
            points = [self._point(config, rate, commander, brokers, delivery_ep, flood_log) for rate in opts.rates]
        finally:
            if commander is not None:
                commander.close()
            self.procs.stop(own)
            for broker in brokers.values():
                broker.remove()
        idle = points[0]["control_ms"].get("p99")
        unsaturated = [p["delivery_rate"] for p in points[1:] if not p["saturated"]]
        return {"config": config, "idle_p99_ms": idle, "unsaturated_rate": max(unsaturated, default=0.0),
                "points": points}

    def _offered(self, rate: float, evidence: dict[str, float | None]) -> float:
        """What the broker was offered: what the publishers sent when they are open loop (QoS 0); at QoS 1
        they wait for PUBACKs, so what they sent follows what the broker carried and the nominal rate is it."""
        return (evidence["offered_sent_rate"] or 0.0) if self.options.flood_qos == 0 else rate

    def _paced(self, rate: float, publishers: int) -> float:
        """The rate to ask ``mosquitto_pub`` for so that it offers ``rate``: it starts its repeat delay only
        when a publish completes (at QoS 1, its PUBACK), so the delay is shortened by the time a publish
        took at idle (half the idle command round trip), never below half of it."""
        delay = publishers / rate
        return publishers / max(delay - self.publish_s, delay / 2)

    def _point(self, config: str, rate: float, commander: Commander, brokers: dict[str, QuotaBroker],
               delivery: Endpoint, flood_log: Path) -> BottleneckPoint:
        opts = self.options
        publishers = opts.publishers_for(rate) if rate else 0
        run_s = opts.settle_s + opts.step_seconds + 4  # outlasts the window and its acknowledgements
        flood = [] if rate == 0 else start_flood(
            self.procs, self.pki, delivery, self.topology.root, self._paced(rate, publishers), run_s,
            opts.payload_bytes, opts.flood_qos, publishers, {}, f"{config.replace('+', '-')}-{rate:g}", count_sent=True)
        offsets: dict[int, tuple[int, int]] = {}
        try:
            _wait_connected(flood)  # a quota'd broker takes seconds to shake hands with tens of publishers
            time.sleep(opts.settle_s if flood else 0.2)
            first = _Sample.take(flood_log, brokers, flood, offsets)
            samples: list[_Sample] = []
            # The counters are read when the commands stop, not after their acknowledgements are waited for.
            timer = threading.Timer(opts.step_seconds,
                                    lambda: samples.append(_Sample.take(flood_log, brokers, flood, offsets)))
            timer.start()
            control = commander.window(opts.command_rate, opts.step_seconds)
            timer.join()
        finally:
            self.procs.stop(flood)
        last = samples[0] if samples else _Sample.take(flood_log, brokers, flood, offsets)
        if rate == 0 and control.get("p50"):
            self.publish_s = min(control["p50"] / 2 / 1000, PACING_CAP_S)
        delivered = (last.delivered_bytes - first.delivered_bytes) / 2 / (last.at - first.at)  # "x\n" a message
        evidence = _evidence(first, last, brokers, publishers)
        at_quota = (evidence["delivery_broker_cpu_cores"] or 0) >= AT_QUOTA * brokers["delivery"].quota
        saturated = rate > 0 and at_quota and delivered < SHORTFALL * self._offered(rate, evidence)
        point: BottleneckPoint = {"load": rate, "control_ms": control, "delivery_rate": round(delivered, 1),
                                  "saturated": saturated, "evidence": evidence}
        self.progress(f"  {config:20} offered {rate:>7g} msg/s ({publishers:2} publishers, sent "
                      f"{evidence['offered_sent_rate']:7.0f}): delivered "
                      f"{delivered:7.0f} msg/s, delivery broker {evidence['delivery_broker_cpu_cores']:.2f} of "
                      f"{brokers['delivery'].quota:g} cores, generators {evidence['generator_cpu_cores']:.2f} cores; "
                      f"control p50 {control.get('p50', float('nan')):.2f} "
                      f"p99 {control.get('p99', float('nan')):.2f} ms, "
                      f"unacked {control['lost']}{' SATURATED' if saturated else ''}")
        _wait_drained(flood_log)
        return point


def _generator_verdict(curves: list[BottleneckCurve], flood_qos: int) -> dict[str, object]:
    """Was the broker, not the generator, the limit? Every point that fell short of its offered rate
    should have had the delivery broker at its quota; the ones that did not are listed."""
    def offered(p: BottleneckPoint) -> float:
        sent = p.get("evidence", {}).get("offered_sent_rate")
        return float(sent or 0.0) if flood_qos == 0 else p["load"]

    short = [{"config": c["config"], "load": p["load"], "delivery_rate": p["delivery_rate"]}
             for c in curves for p in c["points"]
             if p["load"] and p["delivery_rate"] < SHORTFALL * offered(p) and not p["saturated"]]
    busiest = max((p.get("evidence", {}).get("generator_busiest_process_cpu_cores") or 0.0
                   for c in curves for p in c["points"]), default=0.0)
    return {"broker_was_the_limit": not short, "short_without_broker_at_quota": short,
            "busiest_generator_process_cpu_cores": busiest,
            "offered": "what the publishers sent (open loop)" if flood_qos == 0 else "the nominal rate (the publishers "
                       "wait for PUBACKs, so what they sent follows what the broker carried)",
            "rule": f"a point is saturated when it delivered < {SHORTFALL:g} x offered with the delivery broker at "
                    f">= {AT_QUOTA:g} x its quota (cgroup CPU); a mosquitto_pub near 1.0 core would be the "
                    "generator's limit"}


def run_broker_bench(pki: PKI, root: str, options: BrokerBenchOptions, out: Path,
                     progress: Callable[[str], None] | None = None) -> BottleneckResult:
    """The whole benchmark; writes ``out/bench-broker.json`` and returns it."""
    options.check()
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            raise TestbedError(f"{tool} is not installed: run `sudo apt-get install mosquitto-clients`")
    client = docker_client()
    try:
        client.images.get(options.image)
    except Exception:  # noqa: BLE001 (the SDK's ImageNotFound and the engine's errors alike)
        raise TestbedError(f"image {options.image} is missing: build it with scripts/images") from None
    topology = bench_topology(root, options.command_qos, PORTS, site=SITE)
    servers = {f"{SITE}-{plane}": [broker_addresses(s)[plane] for s in SUBNETS] for plane in ("delivery", "control")}
    pki.init(servers, ["bench"])
    identity = TLSIdentity(pki.ca_cert, pki.client("bench").cert, pki.client("bench").key)
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    curves: list[BottleneckCurve] = []
    say = progress or (lambda _: None)
    with tempfile.TemporaryDirectory(prefix="fmb-bench-broker-") as tmp, bench_network(client) as (network, subnet):
        work = Path(tmp)
        procs = Processes(work)
        run = _Run(client, network, broker_addresses(subnet), topology, pki, identity, options, work, procs, say)
        try:
            for config in CONFIGS:
                if config in options.configs:
                    curves.append(run.curve(config))
        finally:
            procs.stop()
    conditions: dict[str, object] = {
        "rates": list(options.rates), "seconds_per_step": options.step_seconds, "settle_s": options.settle_s,
        "command_rate": options.command_rate, "command_qos": options.command_qos, "flood_qos": options.flood_qos,
        "payload_bytes": options.payload_bytes, "command_payload_bytes": len(b"1," + b"c" * 64),
        "flood_publishers": f"max({options.publishers}, ceil(offered / {options.per_publisher_rate:g}))",
        "flood_client": mosquitto_pub_version(), "tls_version": run.versions.get("tls_version"),
        "broker_image": options.image, "broker_mosquitto": run.versions.get("broker_mosquitto"),
        "broker_quota_cores": options.quota, "cfs_period_ms": 100, "cgroup_parent": CGROUP_PARENT,
        "priority": {"control_cpu_shares": PRIORITY_CONTROL_SHARES, "delivery_cpu_shares": PRIORITY_DELIVERY_SHARES,
                     "control_quota_cores": options.quota * PRIORITY_QUOTA_FACTOR,
                     "others_cpu_shares": 1024},
        "network": f"a Docker bridge network of the run's own ({subnet}); generators, subscriber, commander and "
                   "responder on the host, brokers in containers",
        "commander": "paho-mqtt, MQTT v5, TCP_NODELAY; responder a separate process (testbed.bench.echo)",
        "generator_check": _generator_verdict(curves, options.flood_qos),
        "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "duration_s": round(time.monotonic() - started, 1),
    }
    env = environment(topology, run.versions.get("tls_version"), "docker")
    env["mosquitto"] = run.versions.get("broker_mosquitto")  # the brokers' (in the image), not the host's
    result: BottleneckResult = {
        "schema": RESULT_SCHEMA, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "bottleneck": "broker", "load_unit": "msg/s offered", "load_axis": "rising", "conditions": conditions,
        "curves": curves, "targets": targets(curves), "environment": env}
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary(result: BottleneckResult) -> str:
    """The curves and the targets, as lines for a terminal."""
    cond = result["conditions"]
    lines = [f"broker benchmark: brokers at {cond['broker_quota_cores']} cores each (cgroup quota), "
             f"control round trip (ms) under a delivery-plane flood; load average {cond['load_average_after']}",
             f"{'config':22}{'offered':>9}{'sent':>7}{'delivered':>11}{'broker cpu':>11}{'ctl p50':>9}{'ctl p99':>9}"
             f"{'unacked':>9}  saturated"]
    for curve in result["curves"]:
        for p in curve["points"]:
            c, ev = p["control_ms"], p.get("evidence", {})
            lines.append(f"{curve['config']:22}{p['load']:>9g}{ev.get('offered_sent_rate') or 0:>7.0f}"
                         f"{p['delivery_rate']:>11.0f}"
                         f"{ev.get('delivery_broker_cpu_cores') or 0:>11.2f}{c.get('p50', float('nan')):>9.2f}"
                         f"{c.get('p99', float('nan')):>9.2f}{c['lost']:>9}  {'yes' if p['saturated'] else ''}")
    t = result["targets"]
    lines.append(f"at saturation ({t['segregated_config']}): p99 / idle p99 {t['segregated_saturation_over_idle']} "
                 f"(target <= 2: {'met' if t['met']['segregated_saturation_over_idle'] else 'NOT met'}); "
                 f"shared / segregated p99 {t['shared_over_segregated']} (target >= 10: "
                 f"{'met' if t['met']['shared_over_segregated'] else 'NOT met'}); delivery kept {t['delivery_kept']} "
                 f"(target >= 0.8: {'met' if t['met']['delivery_kept'] else 'NOT met'})")
    check = cond.get("generator_check")
    if isinstance(check, dict) and not check.get("broker_was_the_limit"):
        lines.append(f"WARNING: short of the offered rate without the broker at its quota: "
                     f"{check.get('short_without_broker_at_quota')} (the generator or the host was the limit there)")
    return "\n".join(lines)
