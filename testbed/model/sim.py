"""The discrete-event engine of the capacity model: brokers, links, routes and sources, on simpy.

A Mosquitto instance runs one thread, so a broker is a single server that takes jobs (a message
with its deliveries, a TLS handshake) first come, first served. Such a server is exactly Lindley's
recursion: a job that arrives at ``t`` starts at ``max(t, the end of the job before it)``. A
``simpy.Resource`` of capacity 1 computes the same times (``ResourceBroker`` below, which
``tests/test_model_queue.py`` checks against :class:`Broker` job by job), but with five events per
job instead of one; :class:`Broker` computes the completion when the job arrives and schedules one
event for it, which is what makes a million simulated messages take seconds rather than minutes.
A bridge (or a WAN link) is a :class:`Link`: a FIFO server whose service time is the message's
bytes over the link's rate, a propagation delay, a queue limit, and partitions during which its
messages wait at the sending broker. Every time is in seconds of simulated time.

On one machine every process also needs a core. A :class:`Host` is the machine's cores, shared by
every broker and client process placed on it, as the kernel shares them: fairly among the processes
that want CPU. Each process's demand is its CPU work offered over the last ``window_s`` (at most a
core: every process here is one thread); when the demands add up to more than the cores, each
process gets the same share ``level`` of a core (max-min fair, water-filling: ``sum(min(demand,
level)) == cores``) and every job on the host takes ``1 / level`` times its CPU time. That is
processor sharing as a fluid over the window, not slice by slice: right in throughput and in where
saturation starts, blind to the queueing a busy but unsaturated machine adds. Without a host every
process has a core of its own (a data centre's brokers).
"""

from __future__ import annotations

import functools
import random
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import simpy

__all__ = ["Broker", "Hop", "Host", "Link", "Recorder", "ResourceBroker", "Route", "level", "periodic_fleet",
           "poisson_source"]


class Host:
    """A machine's ``cores`` shared fairly by the processes placed on it: :meth:`stretch` records a job's
    CPU work and gives the factor its time is stretched by (1 while the demands fit the cores)."""

    def __init__(self, name: str, cores: int, window_s: float = 0.25) -> None:
        if cores < 1:
            raise ValueError(f"host {name}: {cores} cores; give 1 or more")
        self.name, self.cores, self.window_s = name, cores, window_s
        self.offered_s = 0.0  # CPU work the processes asked for (what they got is at most cores x time)
        self._recent: dict[str, deque[tuple[float, float]]] = {}  # process -> (time, work) in the window
        self._sums: dict[str, float] = {}
        self._factor, self._until = 1.0, -1.0  # the factor, recomputed at most every window / 20

    def stretch(self, process: str, now: float, work: float) -> float:
        self.offered_s += work
        recent = self._recent.setdefault(process, deque())
        recent.append((now, work))
        self._sums[process] = self._sums.get(process, 0.0) + work
        if now >= self._until:
            horizon = now - self.window_s
            for name, jobs in self._recent.items():
                while jobs and jobs[0][0] < horizon:
                    self._sums[name] -= jobs.popleft()[1]
            span = min(max(now, 1e-9), self.window_s)
            self._factor = 1.0 / level([v / span for v in self._sums.values()], self.cores)
            self._until = now + self.window_s / 20
        return self._factor

    def offered_load(self, elapsed_s: float) -> float:
        """CPU work asked for over ``elapsed_s``, in cores' worth (above 1: more than the cores can do)."""
        return self.offered_s / elapsed_s / self.cores if elapsed_s > 0 else 0.0


def level(demands: Sequence[float], cores: float) -> float:
    """The share of a core each process gets when processes wanting ``demands`` cores (each at most one:
    single-threaded) share ``cores`` fairly: 1 when they fit, else the water level L with
    ``sum(min(d, L)) == cores``."""
    wants = sorted(min(max(d, 0.0), 1.0) for d in demands)
    if sum(wants) <= cores:
        return 1.0
    left, n = float(cores), len(wants)
    for i, d in enumerate(wants):
        share = left / (n - i)
        if d >= share:
            return share
        left -= d
    return 1.0


class Broker:
    """One single-threaded process (a Mosquitto, or a client's thread): a single server, first come,
    first served, on a core of its own or on a :class:`Host`'s; may be down (a restart)."""

    def __init__(self, env: simpy.Environment, name: str, slowdown: float = 1.0, host: Host | None = None) -> None:
        if slowdown < 1.0:
            raise ValueError(f"broker {name}: slowdown is {slowdown}; give 1.0 (a core of its own) or more")
        self.env, self.name, self.slowdown, self.host = env, name, slowdown, host
        self.free_at = 0.0  # when the thread finishes the work it already has
        self.busy_s = 0.0
        self.jobs = self.dropped = 0
        self.sojourn_s = 0.0  # summed time in the broker (Little: mean number in it = this / elapsed)
        self.max_queue = 0
        self.down_until = -1.0
        self._in_system: deque[float] = deque()  # completion times of the jobs not yet done

    def take(self, service_s: float) -> float | None:
        """A job arriving now: when it completes, or None when the broker is down and refuses it."""
        now = self.env.now
        if now < self.down_until:
            self.dropped += 1
            return None
        work = service_s * self.slowdown
        free_at = self.free_at
        if self.host is not None:
            work *= self.host.stretch(self.name, now, service_s)
        done = (free_at if free_at > now else now) + work
        self.free_at = done
        self.busy_s += work
        self.jobs += 1
        self.sojourn_s += done - now
        queue = self._in_system
        if queue and queue[-1] <= now:  # idle when it came: nothing else is in the broker
            queue.clear()
        else:
            while queue and queue[0] <= now:
                queue.popleft()
        queue.append(done)
        if len(queue) > self.max_queue:
            self.max_queue = len(queue)
        return done

    def restart(self, down_s: float) -> None:
        """Stop now and come back ``down_s`` later with nothing queued (an edge broker keeps nothing)."""
        self.down_until = self.env.now + down_s
        self.free_at = self.down_until
        self._in_system.clear()

    def utilisation(self, elapsed_s: float) -> float:
        return self.busy_s / elapsed_s if elapsed_s > 0 else 0.0

    def mean_in_system(self, elapsed_s: float) -> float:
        return self.sojourn_s / elapsed_s if elapsed_s > 0 else 0.0


class ResourceBroker:
    """The same server written the textbook simpy way, one process per job on a ``Resource(capacity=1)``:
    the reference :class:`Broker` is checked against, too slow for a utility's traffic."""

    def __init__(self, env: simpy.Environment, name: str) -> None:
        self.env, self.name = env, name
        self.thread = simpy.Resource(env, capacity=1)
        self.completions: list[float] = []

    def job(self, service_s: float) -> Generator[simpy.Event, Any, None]:
        with self.thread.request() as turn:
            yield turn
            yield self.env.timeout(service_s)
        self.completions.append(self.env.now)


class Link:
    """A bridge's path between sites: rate (bit/s, 0 = not the bottleneck), delay, a queue limit in
    messages; while partitioned, what it carries waits at the sending broker (the bridge's queue)."""

    def __init__(self, env: simpy.Environment, name: str, rate_bps: float = 0.0, delay_s: float = 0.0,
                 queue_limit: int = 1000) -> None:
        if rate_bps < 0 or delay_s < 0 or queue_limit < 1:
            raise ValueError(f"link {name}: rate {rate_bps}, delay {delay_s}, queue {queue_limit}: give rate >= 0, "
                             "delay >= 0, queue >= 1")
        self.env, self.name = env, name
        self.rate_bps, self.delay_s, self.queue_limit = rate_bps, delay_s, queue_limit
        self.free_at = 0.0
        self.busy_s = 0.0
        self.bytes = self.carried = self.dropped = 0
        self.max_queue = 0
        self.healed_at = -1.0
        self._in_system: deque[float] = deque()

    def partition(self, seconds: float) -> None:
        """Cut the link from now for ``seconds``."""
        self.healed_at = self.env.now + seconds
        self.free_at = max(self.free_at, self.healed_at)

    def take(self, size_bytes: int) -> float | None:
        """A message entering now: when it arrives at the far end, or None when the queue is full."""
        now = self.env.now
        queue = self._in_system
        while queue and queue[0] <= now:
            queue.popleft()
        if len(queue) >= self.queue_limit:
            self.dropped += 1
            return None
        work = size_bytes * 8 / self.rate_bps if self.rate_bps else 0.0
        leaves = max(now, self.free_at, self.healed_at) + work
        self.free_at = leaves
        self.busy_s += work
        self.bytes += size_bytes
        self.carried += 1
        queue.append(leaves)
        self.max_queue = max(self.max_queue, len(queue))
        return leaves + self.delay_s

    def utilisation(self, elapsed_s: float) -> float:
        return self.busy_s / elapsed_s if elapsed_s > 0 else 0.0


@dataclass
class Recorder:
    """Latencies per flow, and what was lost, from ``warmup_s`` on (earlier messages fill the queues)."""

    warmup_s: float = 0.0
    end_s: float = float("inf")  # messages that would arrive after this are still in flight: not delivered
    latencies: dict[str, list[float]] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)

    def flow(self, name: str) -> None:
        self.latencies.setdefault(name, [])
        self.lost.setdefault(name, 0)
        self.sent.setdefault(name, 0)


@dataclass(frozen=True)
class Hop:
    """One step of a route: a broker's job of ``service_s`` seconds, or a link crossing of ``size_bytes``."""

    broker: Broker | None = None
    service_s: float = 0.0
    link: Link | None = None
    size_bytes: int = 0
    then_s: float = 0.0  # a fixed time after this hop (a client's or a device's own processing)


class Route:
    """The path of one flow's messages through brokers and links; records each message's latency."""

    def __init__(self, env: simpy.Environment, name: str, hops: Sequence[Hop], recorder: Recorder,
                 fixed_s: float = 0.0, draw: Callable[[float], float] | None = None,
                 outside: Callable[[], float] | None = None) -> None:
        self.env, self.name, self.hops, self.recorder, self.fixed_s = env, name, tuple(hops), recorder, fixed_s
        self.outside = outside  # a message's time outside brokers and links (its clients), drawn per message
        self.draw = draw or _exactly  # a broker hop's service time from its mean: drawn, or the mean itself
        recorder.flow(name)
        self._latencies = recorder.latencies[name]

    def send(self, created: float | None = None) -> None:
        """A message of this flow leaves its publisher now."""
        born = self.env.now if created is None else created
        if born >= self.recorder.warmup_s:
            self.recorder.sent[self.name] += 1
        self._hop(0, born)

    def _hop(self, i: int, born: float) -> None:
        env, hops = self.env, self.hops
        while True:
            hop = hops[i]
            if hop.broker is not None:
                done = hop.broker.take(self.draw(hop.service_s))
            elif hop.link is not None:
                done = hop.link.take(hop.size_bytes)
            else:
                done = env.now
            if done is None:
                if born >= self.recorder.warmup_s:
                    self.recorder.lost[self.name] += 1
                return
            done += hop.then_s
            i += 1
            if i == len(hops):  # the last hop's completion is known now: no event needed for it
                if born >= self.recorder.warmup_s:
                    extra = self.outside() if self.outside is not None else 0.0
                    if done + self.fixed_s + extra <= self.recorder.end_s:
                        self._latencies.append(done - born + self.fixed_s + extra)
                return
            if done > env.now:  # the next hop must see this message when it arrives, in time order
                event = env.timeout(done - env.now)
                event.callbacks.append(functools.partial(self._arrive, i, born))
                return

    def _arrive(self, i: int, born: float, _event: simpy.Event) -> None:
        self._hop(i, born)


def _exactly(mean_s: float) -> float:
    return mean_s


def periodic_fleet(env: simpy.Environment, meters: int, period_s: float, send: Callable[[int], None],
                   rng: random.Random, until_s: float) -> None:
    """``meters`` meters reading every ``period_s`` at random phases, as one chain of timeouts (not a
    process per meter, nor a generator: a callback per reading is the cheapest simpy event there is):
    ``send(i)`` for meter ``i`` at each of its readings until ``until_s``."""
    phases = sorted((rng.uniform(0, period_s), i) for i in range(meters))
    if not phases:
        return
    position = [0]  # the next reading's index in the cycle
    cycle = [0.0]  # the cycle's start

    def next_reading(_event: simpy.Event | None) -> None:
        if _event is not None:
            send(phases[position[0]][1])
            position[0] += 1
            if position[0] == len(phases):
                position[0], cycle[0] = 0, cycle[0] + period_s
        at = cycle[0] + phases[position[0]][0]
        if at < until_s:
            env.timeout(max(at - env.now, 0.0)).callbacks.append(next_reading)

    next_reading(None)


def poisson_source(env: simpy.Environment, rate_per_s: float, send: Callable[[], None], rng: random.Random,
                   until_s: float) -> Generator[simpy.Event, Any, None]:
    """Messages at exponential intervals of mean ``1 / rate_per_s`` until ``until_s``."""
    if rate_per_s <= 0:
        return
    while True:
        gap = rng.expovariate(rate_per_s)
        if env.now + gap >= until_s:
            return
        yield env.timeout(gap)
        send()
