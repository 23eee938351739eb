"""What the benchmarks share: processes they start and stop by pid, brokers of their own, and the
pieces of a "control under flood" measurement: a commander timing commands to a responder, C
``mosquitto_pub`` flood generators and a ``mosquitto_sub`` counting what the flood delivered."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path, PurePath
from typing import Any, Final, TypedDict, Unpack

from brokers.mosquitto import BrokerFiles, mosquitto_binary, render_acl, render_conf
from testbed.backends import processes
from testbed.backends.processes import ProcessRecord
from testbed.core.errors import TestbedError
from testbed.core.results import PrioritizationControl
from testbed.core.stats import percentiles, rounded
from testbed.core.topics import topic
from testbed.core.topology import BrokerSpec, SiteSpec, Topology
from testbed.core.waiting import WaitTimeout, wait_until
from testbed.security.pki import PKI
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect

__all__ = [
    "ACK_TIMEOUT_S",
    "CONTAINER_DIR",
    "Commander",
    "IMAGE_UID",
    "Placement",
    "Processes",
    "bench_topology",
    "container_broker_files",
    "file_size",
    "mosquitto_pub_version",
    "sent_count",
    "start_broker",
    "start_flood",
    "start_flood_subscriber",
    "start_responder",
    "wait_for_ack",
    "wait_for_log",
]

ACK_TIMEOUT_S: Final = 2.0  # a command unacknowledged this long after its window is counted lost


class Placement(TypedDict, total=False):
    """Where a process runs: its nice value and the CPUs it may use (keywords of :meth:`Processes.start`)."""

    nice: int
    cpus: set[int]
    netns: str  # a network namespace (``ip netns``) to run in


class Processes:
    """Processes a benchmark started, stopped by their recorded pid (never by name)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.records: list[ProcessRecord] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, nice: int = 0,
              stdout: Path | None = None, cpus: set[int] | None = None, netns: str | None = None) -> ProcessRecord:
        """Start ``argv`` with its output in ``stdout`` (default ``<logs>/<name>.log``), in network
        namespace ``netns`` if given (``ip netns exec`` execs ``argv``: the pid is its own)."""
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        record = processes.spawn(name, "bench", argv, stdout or self.logs / f"{name}.log", env, nice=nice, cpus=cpus)
        self.records.append(record)
        return record

    def kill(self, record: ProcessRecord) -> None:
        """SIGKILL: a crash, with no chance to save anything."""
        processes.kill(record)
        self.records.remove(record)

    def stop(self, records: list[ProcessRecord] | None = None, timeout_s: float = 5) -> list[ProcessRecord]:
        """SIGTERM, then SIGKILL after ``timeout_s`` (all of ours by default); those that had to be killed."""
        group = list(self.records if records is None else records)
        killed = processes.stop(group, timeout_s)
        self.records = [r for r in self.records if r not in group]
        return killed


def bench_topology(root: str, qos: int, ports: tuple[int, int], kind: str = "edge",
                   autosave_interval_s: int = 60, site: str = "bench") -> Topology:
    """One site (``bench``: brokers ``bench-delivery`` and ``bench-control``), no devices."""
    site_spec = SiteSpec(site, kind, ports[0], ports[1], autosave_interval_s=autosave_interval_s)
    return Topology(path="(benchmark)", name="bench", root=root, qos=qos, message_size_limit=1 << 20,
                    max_queued_messages=100000, sites=(site_spec,), devices=(), feeders=())


def wait_for_log(log: Path, needle: str, record: ProcessRecord, offset: int = 0,
                 timeout_s: float = 10) -> None:
    """Wait until ``needle`` is in ``log`` after ``offset``; fails at once if the process exits."""
    failed = f"benchmark broker did not start: see {log}"

    def logged() -> bool:
        if log.exists():
            with open(log, "rb") as f:
                f.seek(offset)
                if needle.encode() in f.read():
                    return True
        if not processes.alive(record):
            raise TestbedError(failed)
        return False

    wait_until(logged, timeout_s, interval_s=0.005, what=failed)


def start_broker(procs: Processes, topology: Topology, broker: BrokerSpec, pki: PKI, directory: Path,
                 extra_acl: str = "", bind: str | None = None, extra_conf: str = "",
                 **placement: Unpack[Placement]) -> tuple[ProcessRecord, Endpoint]:
    """Configure (first time) and start one broker; returns once it accepts connections.
    ``bind``: listen there instead of the broker's host (the endpoint returned is still the
    broker's own: the caller knows where it asked it to listen); ``extra_conf``: appended to its
    mosquitto.conf (a benchmark's own bridges)."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "mosquitto.log"
    host = bind or broker.host
    files = BrokerFiles(certs=pki.directory.resolve(), directory=directory, log=log, user=getpass.getuser(),
                        bind=host)
    (directory / "mosquitto.conf").write_text(render_conf(topology, broker, files) + extra_conf)
    (directory / "acl").write_text(render_acl(topology, broker) + extra_acl)
    (directory / "data").mkdir(exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    proc = procs.start(f"{broker.name}-{time.monotonic_ns()}", [mosquitto_binary(), "-c",
                       str(directory / "mosquitto.conf")], **placement)
    wait_for_log(log, " running", proc, offset)
    return proc, Endpoint(broker.host, broker.port)


class Commander:
    """Publishes commands at a steady rate and times each until its acknowledgement arrives."""

    def __init__(self, identity: TLSIdentity, endpoint: Endpoint, root: str, qos: int, target: str) -> None:
        self.qos = qos
        self.sent: dict[int, int] = {}  # seq -> perf_counter_ns at publish
        self.rtts: dict[int, float] = {}  # seq -> round trip, ms
        self.lock = threading.Lock()
        self.command_topic = topic(root, "BenchCommandProfile", target)
        subscribed = threading.Event()

        def on_message(c: Any, u: Any, msg: Any) -> None:
            now = time.perf_counter_ns()
            seq = int(msg.payload.split(b",", 1)[0])
            with self.lock:
                if seq in self.sent and seq not in self.rtts:
                    self.rtts[seq] = (now - self.sent[seq]) / 1e6

        def on_connect(c: Any) -> None:
            c.on_subscribe = lambda *a: subscribed.set()
            c.subscribe(topic(root, "BenchAckProfile", target), qos)

        self.client = connect(f"bench-commander-{os.getpid()}", identity, endpoint, on_message=on_message,
                              on_connect=on_connect)
        if not subscribed.wait(10):
            raise TestbedError("the benchmark commander could not subscribe to acknowledgements")
        self.seq = 0

    def send(self) -> None:
        self.seq += 1
        with self.lock:
            self.sent[self.seq] = time.perf_counter_ns()
        self.client.publish(self.command_topic, f"{self.seq},{'c' * 64}".encode(), self.qos)

    def window(self, rate: float, seconds: float) -> PrioritizationControl:
        """Send at ``rate`` for ``seconds``; the round trips of this window (ms)."""
        first = self.seq + 1
        period = 1.0 / rate
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.send()
        last = self.seq

        def acked() -> bool:
            with self.lock:
                return all(s in self.rtts for s in range(first, last + 1))

        with contextlib.suppress(WaitTimeout):  # those still unacknowledged are counted lost
            wait_until(acked, ACK_TIMEOUT_S, interval_s=0.01, what=f"acknowledgements of commands {first} to {last}")
        with self.lock:
            samples = [self.rtts[s] for s in range(first, last + 1) if s in self.rtts]
        lost = (last - first + 1) - len(samples)
        counts: PrioritizationControl = {"sent": last - first + 1, "acked": len(samples),
                                         "unacked_within_s": ACK_TIMEOUT_S, "lost": lost}
        return {**counts, **rounded(percentiles(samples), 4)} if samples else counts

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_flood(procs: Processes, pki: PKI, endpoint: Endpoint, root: str, rate: float | None, seconds: float,
                payload_bytes: int, qos: int, publishers: int, place: Placement,
                tag: str, count_sent: bool = False) -> list[ProcessRecord]:
    """Start ``publishers`` mosquitto_pub processes offering ``rate`` msg/s in all (None: as fast as they can).

    ``count_sent``: each logs a line per PUBLISH it sends (``-d``), so :func:`sent_count` can tell what the
    generators really offered: ``mosquitto_pub`` starts its repeat delay only when a publish completes
    (at QoS 1 its PUBACK), so it offers less than ``rate`` when the broker or the host is slow."""
    client = pki.client("bench")
    base = ["mosquitto_pub", "-V", "5", "-h", endpoint.host, "-p", str(endpoint.port), "--cafile",
            str(pki.ca_cert), "--cert", str(client.cert), "--key", str(client.key), "-q", str(qos),
            "-m", "f" * payload_bytes, *(["-d"] if count_sent else [])]
    started = []
    for i in range(publishers):
        if rate is None:
            count, delay = 10**9, 0.0
        else:
            count, delay = int(rate * seconds / publishers) + 1, publishers / rate
        argv = base + ["-i", f"flood-{tag}-{i}", "-t", topic(root, "BenchFloodProfile", f"flood-{i}"),
                       "--repeat", str(count), "--repeat-delay", f"{delay:.6f}"]
        started.append(procs.start(f"flood-{tag}-{i}", argv, **place))
    return started


SENT: Final = b"sending PUBLISH"


def sent_count(flood: list[ProcessRecord], offsets: dict[int, tuple[int, int]]) -> int:
    """PUBLISH packets the flood publishers (started with ``count_sent``) have sent so far, reading each
    log from where ``offsets`` (pid -> (bytes read, count); updated here) left it."""
    total = 0
    for record in flood:
        done, count = offsets.get(record.pid, (0, 0))
        try:
            with open(record.log, "rb") as f:
                f.seek(done)
                chunk = f.read()
        except OSError:
            chunk = b""
        complete = chunk.rfind(b"\n") + 1  # a line being written counts next time
        count += chunk[:complete].count(SENT)
        offsets[record.pid] = (done + complete, count)
        total += count
    return total




def wait_for_ack(commander: Commander) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        window = commander.window(20, 0.25)
        if window["acked"]:
            return
    raise TestbedError("the benchmark responder never acknowledged a command")


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def mosquitto_pub_version() -> str | None:
    try:
        out = subprocess.run(["mosquitto_pub", "--help"], capture_output=True, text=True, timeout=5)
        lines = (out.stdout or out.stderr).splitlines()
        return next((ln.strip() for ln in lines if "version" in ln), lines[0].strip())
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def start_responder(procs: Processes, name: str, endpoint: Endpoint, identity: TLSIdentity, root: str, qos: int,
                    place: Placement | None = None, device_id: str = "responder-1") -> ProcessRecord:
    """The control plane's responder (``testbed.bench.echo``, its own process): acknowledges every command."""
    return procs.start(name, [sys.executable, "-m", "testbed.bench.echo"], {
        "FMB_CONTROL": f"{endpoint.host}:{endpoint.port}", "FMB_CA": str(identity.ca), "FMB_CERT": str(identity.cert),
        "FMB_KEY": str(identity.key), "FMB_ROOT": root, "FMB_QOS": str(qos), "FMB_DEVICE_ID": device_id},
        **(place or {}))


def start_flood_subscriber(procs: Processes, name: str, endpoint: Endpoint, identity: TLSIdentity, root: str,
                           qos: int, log: Path, place: Placement | None = None) -> ProcessRecord:
    """A ``mosquitto_sub`` on every flood topic that writes two bytes per message to ``log``: its growth
    over a window is what the delivery plane delivered end to end."""
    return procs.start(name, [
        "mosquitto_sub", "-V", "5", "-h", endpoint.host, "-p", str(endpoint.port), "--cafile", str(identity.ca),
        "--cert", str(identity.cert), "--key", str(identity.key), "-q", str(qos), "-i", name,
        "-t", topic(root, "BenchFloodProfile", "+"), "-F", "x"], stdout=log, **(place or {}))


# -- a broker in a container of the local image, its files bind-mounted ------------------------------

CONTAINER_DIR: Final = PurePath("/mosquitto")  # where the broker containers mount their directory
IMAGE_UID: Final = 10001  # the fmb-broker images' user (compose/images/broker*/Dockerfile)


def container_broker_files(topology: Topology, spec: BrokerSpec, pki: PKI, directory: Path, bind: str = "127.0.0.1",
                           extra_acl: str = "") -> str:
    """Write ``spec``'s configuration, ACL (0600: 2.1 warns it will refuse a world-readable one) and
    certificates under ``directory`` for a container mounting it at :data:`CONTAINER_DIR`; return the
    ``uid:gid`` the container must run as: the caller, who owns these files, or the images' own uid
    when the caller is root (a broker started as root would drop to a user that cannot read the 0600
    key), the files then handed to that uid."""
    config, certs = directory / "config", directory / "config" / "certs"
    for sub in ("ca/ca.pem", "crl.pem", f"servers/{spec.name}.pem", f"servers/{spec.name}.key"):
        (certs / sub).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copy(pki.directory / sub, certs / sub)
        os.chmod(certs / sub, 0o600)
    files = BrokerFiles(certs=CONTAINER_DIR / "config" / "certs", directory=CONTAINER_DIR / "config",
                        log=CONTAINER_DIR / "log" / "mosquitto.log", data=CONTAINER_DIR / "data", bind=bind)
    (config / "mosquitto.conf").write_text(render_conf(topology, spec, files))
    (config / "acl").write_text(render_acl(topology, spec) + extra_acl)
    os.chmod(config / "acl", 0o600)
    for sub in ("data", "log"):
        (directory / sub).mkdir(exist_ok=True)
    if os.getuid() != 0:
        return f"{os.getuid()}:{os.getgid()}"
    for path in [directory, *directory.rglob("*")]:
        os.chown(path, IMAGE_UID, IMAGE_UID)
    return f"{IMAGE_UID}:{IMAGE_UID}"
