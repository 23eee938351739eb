"""What the benchmarks share: processes they start and stop by pid, and brokers of their own."""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TypedDict, Unpack

from brokers.mosquitto import BrokerFiles, mosquitto_binary, render_acl, render_conf
from testbed.core.errors import TestbedError
from testbed.core.topology import BrokerSpec, SiteSpec, Topology
from testbed.security.pki import PKI
from testbed.transport.mqtt import Endpoint

__all__ = ["Placement", "Processes", "bench_topology", "start_broker", "wait_for_log"]


class Placement(TypedDict, total=False):
    """Where a process runs: its nice value and the CPUs it may use (keywords of :meth:`Processes.start`)."""

    nice: int
    cpus: set[int]


class Processes:
    """Processes a benchmark started, stopped by their pid (never by name)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, nice: int = 0,
              stdout: Path | None = None, cpus: set[int] | None = None) -> subprocess.Popen[bytes]:
        def placement() -> None:
            if nice:
                os.nice(nice)
            if cpus:
                os.sched_setaffinity(0, cpus)

        out = open(stdout or self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT if stdout is None else out,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                start_new_session=True, preexec_fn=placement if (nice or cpus) else None)
        out.close()
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL: a crash, with no chance to save anything."""
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.procs.remove(proc)

    def stop(self, procs: list[subprocess.Popen[bytes]] | None = None) -> None:
        group = list(self.procs if procs is None else procs)
        for p in group:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in group:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p in self.procs:
                self.procs.remove(p)


def bench_topology(root: str, qos: int, ports: tuple[int, int], kind: str = "edge",
                   autosave_interval_s: int = 60) -> Topology:
    """One site named ``bench`` with a delivery and a control broker, no devices."""
    site = SiteSpec("bench", kind, ports[0], ports[1], autosave_interval_s=autosave_interval_s)
    return Topology(path="(benchmark)", name="bench", root=root, qos=qos, message_size_limit=1 << 20,
                    max_queued_messages=100000, sites=(site,), devices=(), feeders=())


def wait_for_log(log: Path, needle: str, proc: subprocess.Popen[bytes], offset: int = 0,
                 timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists():
            with open(log, "rb") as f:
                f.seek(offset)
                if needle.encode() in f.read():
                    return
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    raise TestbedError(f"benchmark broker did not start: see {log}")


def start_broker(procs: Processes, topology: Topology, broker: BrokerSpec, pki: PKI, directory: Path,
                 extra_acl: str = "", **placement: Unpack[Placement]) -> tuple[subprocess.Popen[bytes], Endpoint]:
    """Configure (first time) and start one broker; returns once it accepts connections."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "mosquitto.log"
    files = BrokerFiles(certs=pki.directory.resolve(), directory=directory, log=log, user=getpass.getuser())
    (directory / "mosquitto.conf").write_text(render_conf(topology, broker, files))
    (directory / "acl").write_text(render_acl(topology, broker) + extra_acl)
    (directory / "data").mkdir(exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    proc = procs.start(f"{broker.name}-{time.monotonic_ns()}", [mosquitto_binary(), "-c",
                       str(directory / "mosquitto.conf")], **placement)
    wait_for_log(log, " running", proc, offset)
    return proc, Endpoint(broker.host, broker.port)
