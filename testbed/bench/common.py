"""What the benchmarks share: processes they start and stop by pid, and brokers of their own."""

from __future__ import annotations

import getpass
import time
from pathlib import Path
from typing import TypedDict, Unpack

from brokers.mosquitto import BrokerFiles, mosquitto_binary, render_acl, render_conf
from testbed.backends import processes
from testbed.backends.processes import ProcessRecord
from testbed.core.errors import TestbedError
from testbed.core.topology import BrokerSpec, SiteSpec, Topology
from testbed.core.waiting import wait_until
from testbed.security.pki import PKI
from testbed.transport.mqtt import Endpoint

__all__ = ["Placement", "Processes", "bench_topology", "start_broker", "wait_for_log"]


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
                   autosave_interval_s: int = 60) -> Topology:
    """One site named ``bench`` with a delivery and a control broker, no devices."""
    site = SiteSpec("bench", kind, ports[0], ports[1], autosave_interval_s=autosave_interval_s)
    return Topology(path="(benchmark)", name="bench", root=root, qos=qos, message_size_limit=1 << 20,
                    max_queued_messages=100000, sites=(site,), devices=(), feeders=())


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
