"""The capacity model's broker against queueing theory: an M/M/1 and an M/D/1 server at rho 0.5 and 0.9.

Mean time in the system, closed forms (service rate mu, arrival rate lambda, rho = lambda / mu):
M/M/1 W = 1 / (mu - lambda); M/D/1 W = 1/mu + rho / (2 mu (1 - rho)) (Pollaczek-Khinchine). The
runs are seeded, so each is one fixed sample; its length and tolerance come from the sample mean's
own spread, measured over eight seeds of the same length: standard error 0.7 % (M/M/1, rho 0.5,
100,000 customers), 0.5 % (M/D/1, rho 0.5, 50,000), 1.7 % (M/M/1, rho 0.9, 1,000,000: the queue's
relaxation time is hundreds of service times), 1.0 % (M/D/1, rho 0.9, 400,000). The tolerances,
2 % at rho 0.5 and 4 % at rho 0.9, are 2.4 to 4 of those standard errors. The Lindley-recursion
broker is also checked job by job against the textbook simpy ``Resource`` server it stands for.
"""

from __future__ import annotations

import random

import pytest
import simpy

from testbed.model.sim import Broker, Host, ResourceBroker, level

MU = 1000.0  # services per second: a 1 ms mean service time


def _mean_sojourn(rho: float, customers: int, service: str, seed: int) -> tuple[float, float]:
    """(mean time in the system, the broker's measured utilisation) for Poisson arrivals at rho x MU."""
    env = simpy.Environment()
    rng = random.Random(seed)
    broker = Broker(env, "queue")
    total = [0.0]

    def arrivals() -> simpy.events.ProcessGenerator:
        for _ in range(customers):
            yield env.timeout(rng.expovariate(rho * MU))
            work = rng.expovariate(MU) if service == "M" else 1 / MU
            done = broker.take(work)
            assert done is not None
            total[0] += done - env.now

    env.process(arrivals())
    env.run()
    return total[0] / customers, broker.utilisation(env.now)


@pytest.mark.parametrize(("rho", "customers", "tolerance"), [
    (0.5, 100_000, 0.02), pytest.param(0.9, 1_000_000, 0.04, marks=pytest.mark.slow)])
def test_mm1_mean_time_in_system_matches_the_closed_form(rho: float, customers: int, tolerance: float) -> None:
    measured, utilisation = _mean_sojourn(rho, customers, "M", seed=11)
    expected = 1 / (MU - rho * MU)
    assert measured == pytest.approx(expected, rel=tolerance), f"M/M/1 rho {rho}: {measured:.6f} s vs {expected:.6f} s"
    assert utilisation == pytest.approx(rho, rel=0.02)


@pytest.mark.parametrize(("rho", "customers", "tolerance"), [
    (0.5, 50_000, 0.02), pytest.param(0.9, 400_000, 0.04, marks=pytest.mark.slow)])
def test_md1_mean_time_in_system_matches_pollaczek_khinchine(rho: float, customers: int, tolerance: float) -> None:
    measured, _ = _mean_sojourn(rho, customers, "D", seed=12)
    expected = 1 / MU + rho / (2 * MU * (1 - rho))
    assert measured == pytest.approx(expected, rel=tolerance), f"M/D/1 rho {rho}: {measured:.6f} s vs {expected:.6f} s"


def test_lindley_broker_completes_every_job_when_a_simpy_resource_would() -> None:
    rng = random.Random(5)
    jobs = [(rng.expovariate(800.0), rng.expovariate(1000.0)) for _ in range(3000)]

    env = simpy.Environment()
    reference = ResourceBroker(env, "reference")

    def feed() -> simpy.events.ProcessGenerator:
        for gap, work in jobs:
            yield env.timeout(gap)
            env.process(reference.job(work))
    env.process(feed())
    env.run()

    env = simpy.Environment()
    fast = Broker(env, "fast")
    completions: list[float] = []

    def feed_fast() -> simpy.events.ProcessGenerator:
        for gap, work in jobs:
            yield env.timeout(gap)
            done = fast.take(work)
            assert done is not None
            completions.append(done)
    env.process(feed_fast())
    env.run()
    assert completions == pytest.approx(reference.completions, abs=1e-9)
    assert fast.max_queue > 3  # the stream did queue: the comparison covered waiting, not only idle service


def test_a_restarted_broker_refuses_work_until_it_is_back() -> None:
    env = simpy.Environment()
    broker = Broker(env, "edge")
    assert broker.take(0.5) == pytest.approx(0.5)
    broker.restart(2.0)
    assert broker.take(0.1) is None and broker.dropped == 1
    env.run(until=2.0)
    assert broker.take(0.1) == pytest.approx(2.1)  # what was queued before the restart is gone


def test_a_broker_refuses_a_slowdown_below_one() -> None:
    with pytest.raises(ValueError, match="slowdown"):
        Broker(simpy.Environment(), "x", slowdown=0.5)


# -- a host's cores shared by its processes -------------------------------------------------------


def test_the_fair_share_of_a_core_is_the_water_level() -> None:
    assert level([0.3, 0.3], 1) == 1.0  # they fit: nobody is slowed
    assert level([0.75, 0.75], 1) == pytest.approx(0.5)  # two busy threads on one core: half each
    assert level([1, 1, 1], 2) == pytest.approx(2 / 3)
    assert level([0.1, 0.9, 0.9, 0.9], 2) == pytest.approx(0.6333, abs=1e-4)  # the light one keeps its 0.1
    assert level([5.0, 0.2], 1) == pytest.approx(0.8)  # a thread wants at most one core
    assert level([], 2) == 1.0


def _offered(host: Host | None, processes: int, work_s: float, gap_s: float, seconds: float) -> tuple[int, float]:
    """``processes`` threads each given a job of ``work_s`` every ``gap_s`` for ``seconds``: (jobs done by
    then, the last one's completion)."""
    env = simpy.Environment()
    threads = [Broker(env, f"p{i}", host=host) for i in range(processes)]
    done: list[float] = []

    def feed() -> simpy.events.ProcessGenerator:
        while env.now < seconds:
            for t in threads:
                finish = t.take(work_s)
                assert finish is not None
                done.append(finish)
            yield env.timeout(gap_s)

    env.process(feed())
    env.run()
    return sum(1 for d in done if d <= seconds), max(done)


def test_two_busy_processes_on_one_core_share_it() -> None:
    # Each offers 0.75 of a core (0.75 ms of work every ms) for 10 s: alone on its own core each does
    # all 10,000 jobs; on one shared core the two together can do one core's worth, 13,333 jobs.
    alone, _ = _offered(None, 2, 0.00075, 0.001, 10.0)
    shared_host = Host("one-core", 1)
    shared, _ = _offered(shared_host, 2, 0.00075, 0.001, 10.0)
    assert alone == pytest.approx(20_000, abs=2)
    assert shared == pytest.approx(13_333, rel=0.03)
    assert shared_host.offered_load(10.0) == pytest.approx(1.5, rel=0.01)  # one core did 1.0 of it
    # 0.3 of a core each fits on one core: nothing is stretched.
    fits, last = _offered(Host("fits", 1), 2, 0.0003, 0.001, 10.0)
    assert fits == pytest.approx(20_000, abs=2) and last < 10.0 + 0.001
    with pytest.raises(ValueError, match="give 1 or more"):
        Host("none", 0)
