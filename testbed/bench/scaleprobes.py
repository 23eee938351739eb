"""What ``fmb bench scale`` measures with: processes' memory and CPU from ``/proc``, the meters'
readings as the data centre delivers them (the DMS side), and control commands' round trips.

:class:`Readings` subscribes with the recorder identity where the DMS reads and times each reading
from its own timestamp (``ts_ns``, set by the meter as it publishes; one machine, one clock);
every payload is decoded as untrusted (a bad one is counted, never raised). :class:`Commander`
sends ``BenchCommandProfile`` commands from a thread at a steady rate to ``testbed.bench.echo``
and times each ``BenchAckProfile`` that comes back, whether or not its broker was restarted meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from testbed.core.errors import PayloadError, TestbedError
from testbed.core.payloads import decode
from testbed.core.results import ScaleControl, ScaleCpu
from testbed.core.stats import percentiles, rounded
from testbed.core.topics import topic
from testbed.core.waiting import WaitTimeout, wait_until
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect

__all__ = ["ACK_TIMEOUT_S", "PROFILE", "Commander", "ProcessCpu", "Readings", "cpu_s", "rss_kb"]

PROFILE = "MeterReadingProfile"
ACK_TIMEOUT_S = 5.0


# -- measuring processes --------------------------------------------------------------------------

def rss_kb(pid: int) -> int | None:
    """Resident memory of ``pid`` in KiB (``/proc/<pid>/status`` VmRSS), None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class ProcessCpu:
    """CPU of groups of processes between :meth:`start` and :meth:`result`."""

    def __init__(self, groups: dict[str, Callable[[], Iterable[int]]]) -> None:
        self.groups = groups
        self.begin: dict[str, dict[int, float]] = {}  # group -> pid -> CPU seconds at start
        self.t0 = 0.0

    def _now(self) -> dict[str, dict[int, float]]:
        return {name: {p: cpu_s(p) for p in pids()} for name, pids in self.groups.items()}

    def start(self) -> None:
        self.begin, self.t0 = self._now(), time.monotonic()

    def result(self) -> dict[str, ScaleCpu]:
        """Per group, CPU used since :meth:`start`, per pid: a process started meanwhile (a restarted broker)
        counts from zero, one that ended counts nothing, rather than its predecessor's total subtracted."""
        wall = max(1e-6, time.monotonic() - self.t0)
        out = {}
        for name, now in self._now().items():
            begin = self.begin.get(name, {})
            used = sum(max(0.0, seconds - begin.get(pid, 0.0)) for pid, seconds in now.items())
            out[name] = ScaleCpu(seconds=round(used, 2), percent_of_a_core=round(used / wall * 100, 1))
        return out


# -- the DMS side: readings as the data centre delivers them -----------------------------------------

class Readings:
    """A subscriber on the data centre's delivery broker (recorder identity) timing every reading."""

    def __init__(self, identity: TLSIdentity, endpoint: Endpoint, root: str, qos: int) -> None:
        self.lock = threading.Lock()
        self.samples: list[tuple[int, int, str]] = []  # (received ns, latency ns, meter) since the last take
        self.last_seq: dict[str, int] = {}
        self.first_after: dict[str, int] = {}  # meter -> received ns of its first reading published after `mark_ns`
        self.mark_ns = 0
        self.lost = self.duplicated = self.rejected = self.earlier = 0
        self.epoch_ns = 0  # readings published before this are the previous fleets' (see restart_sequences)
        self.bytes = self.count = 0
        subscribed = threading.Event()

        def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            now = time.time_ns()
            mrid = msg.topic.rsplit("/", 1)[-1]
            try:
                message = decode(msg.payload, PROFILE, mrid)
            except PayloadError:
                with self.lock:
                    self.rejected += 1
                return
            with self.lock:
                self.count += 1
                self.bytes += len(msg.payload)
                if message.ts_ns < self.epoch_ns:  # queued before the fleets restarted: their own count
                    self.earlier += 1
                    return
                last = self.last_seq.get(mrid)
                if last is not None and message.seq <= last:
                    self.duplicated += 1
                    return
                if last is not None and message.seq > last + 1:
                    self.lost += message.seq - last - 1
                self.last_seq[mrid] = message.seq
                self.samples.append((now, now - message.ts_ns, mrid))
                if self.mark_ns and message.ts_ns >= self.mark_ns and mrid not in self.first_after:
                    self.first_after[mrid] = now

        def on_connect(c: paho.Client) -> None:
            c.on_subscribe = lambda *a: subscribed.set()
            c.subscribe(topic(root, PROFILE, "+"), qos)

        self.client = connect(f"recorder-scale-{os.getpid()}", identity, endpoint, on_message=on_message,
                              on_connect=on_connect)
        if not subscribed.wait(10):
            raise TestbedError("the DMS-side subscriber could not subscribe to the meters' readings")

    def take(self) -> list[tuple[int, int, str]]:
        """The samples since the last call."""
        with self.lock:
            out, self.samples = self.samples, []
        return out

    def counts(self) -> tuple[int, int, int, int, int, int]:
        """(lost, duplicated, rejected, earlier, messages, bytes) so far."""
        with self.lock:
            return self.lost, self.duplicated, self.rejected, self.earlier, self.count, self.bytes

    def mark(self, ns: int) -> None:
        """From now on note each meter's first reading published at or after ``ns``."""
        with self.lock:
            self.mark_ns, self.first_after = ns, {}

    def restart_sequences(self) -> None:
        """The fleets start again (call it between stopping and starting them): their meters count from 1
        again, and what the previous fleets published, still queued on the way, is counted apart
        (``earlier``), not as duplicates of the new sequence numbers."""
        with self.lock:
            self.last_seq, self.epoch_ns = {}, time.time_ns()

    def heard_after(self) -> dict[str, int]:
        with self.lock:
            return dict(self.first_after)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- control commands: round trips through an echo responder --------------------------------------

class Commander:
    """Sends ``BenchCommandProfile`` commands at a steady rate from a thread; times each acknowledgement."""

    def __init__(self, identity: TLSIdentity, endpoint: Endpoint, root: str, qos: int, target: str) -> None:
        self.qos = qos
        self.sent: dict[int, int] = {}  # seq -> perf_counter_ns at publish
        self.rtts: dict[int, float] = {}  # seq -> ms
        self.lock = threading.Lock()
        self.command_topic = topic(root, "BenchCommandProfile", target)
        self.seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        subscribed = threading.Event()

        def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
            now = time.perf_counter_ns()
            try:
                seq = int(msg.payload.split(b",", 1)[0])
            except ValueError:
                return
            with self.lock:
                if seq in self.sent and seq not in self.rtts:
                    self.rtts[seq] = (now - self.sent[seq]) / 1e6

        def on_connect(c: paho.Client) -> None:
            c.on_subscribe = lambda *a: subscribed.set()
            c.subscribe(topic(root, "BenchAckProfile", target), qos)

        self.client = connect(f"bench-scale-commander-{os.getpid()}-{target}", identity, endpoint,
                              on_message=on_message, on_connect=on_connect)
        if not subscribed.wait(10):
            raise TestbedError("the benchmark commander could not subscribe to acknowledgements")

    def _send(self) -> None:
        self.seq += 1
        with self.lock:
            self.sent[self.seq] = time.perf_counter_ns()
        self.client.publish(self.command_topic, f"{self.seq},{'c' * 64}".encode(), self.qos)

    def start(self, rate: float) -> int:
        """Send at ``rate`` until :meth:`stop`; returns the first sequence number of this window."""
        first = self.seq + 1
        self._stop.clear()

        def run() -> None:
            period, start, i = 1.0 / rate, time.perf_counter(), 0
            while not self._stop.is_set():
                self._send()
                i += 1
                delay = start + i * period - time.perf_counter()
                if delay > 0:
                    self._stop.wait(delay)

        self._thread = threading.Thread(target=run, name="commander", daemon=True)
        self._thread.start()
        return first

    def stop(self, first: int) -> ScaleControl:
        """Stop sending; the round trips of the window that began at ``first``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        last = self.seq

        def acked() -> bool:
            with self.lock:
                return all(s in self.rtts for s in range(first, last + 1))

        with contextlib.suppress(WaitTimeout):  # what is still unacknowledged counts as such
            wait_until(acked, ACK_TIMEOUT_S, interval_s=0.02, what="acknowledgements")
        with self.lock:
            samples = [self.rtts[s] for s in range(first, last + 1) if s in self.rtts]
        control = ScaleControl(sent=last - first + 1, acked=len(samples), unacked_within_s=ACK_TIMEOUT_S)
        if samples:
            control.update(rounded(percentiles(samples), 3))  # type: ignore[typeddict-item]
        return control

    def window(self, rate: float, seconds: float) -> ScaleControl:
        first = self.start(rate)
        time.sleep(seconds)
        return self.stop(first)

    def close(self) -> None:
        self._stop.set()
        self.client.disconnect()
        self.client.loop_stop()
