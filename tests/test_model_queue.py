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

from testbed.model.sim import Broker, ResourceBroker

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
