"""RateLimiter: per-key token buckets on a fake clock."""

from __future__ import annotations

import pytest

from flowrun.runs.ratelimit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_the_rate_applies() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k") == pytest.approx(0.5)  # one token comes every 1/rate s
    assert limiter.take("k") == pytest.approx(0.5)  # a refusal takes nothing
    clock.now += 0.5
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == pytest.approx(0.5)
    clock.now += 0.25
    assert limiter.take("k") == pytest.approx(0.25)


def test_an_idle_bucket_refills_only_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10.0, burst=2, clock=clock)
    limiter.take("k")
    limiter.take("k")
    clock.now += 3600
    assert [limiter.take("k") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_keys_have_their_own_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(1.0)
    assert limiter.take("b") == 0.0


def test_a_clock_that_steps_back_refills_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    limiter.take("k")
    clock.now -= 50
    assert limiter.take("k") == pytest.approx(1.0)


def test_it_remembers_at_most_max_keys_least_recently_used_first_out() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=2, clock=clock)
    limiter.take("a")
    limiter.take("b")
    limiter.take("a")  # refused, but "a" is now the most recently used
    limiter.take("c")  # "b" is forgotten
    assert len(limiter) == 2
    assert limiter.take("b") == 0.0  # back with a full bucket
    assert limiter.take("c") == pytest.approx(1.0)  # remembered, and still empty


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 5), (1.0, 0)])
def test_a_limit_that_admits_nothing_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=rate, burst=burst)
