"""The token bucket and REST backoff (PROTOCOL.md §9.6), with plain calls and explicit times."""

from __future__ import annotations

import random

import pytest

from ssmd.ratelimit import Backoff, TokenBucket


def test_bucket_starts_full_and_refuses_when_short() -> None:
    bucket = TokenBucket(200.0, 400.0, now_s=0.0)
    assert [bucket.try_take(10.0, 0.0) for _ in range(41)] == [True] * 40 + [False]
    assert bucket.tokens(0.0) == 0.0


def test_bucket_refills_at_its_rate_up_to_capacity() -> None:
    bucket = TokenBucket(200.0, 400.0, now_s=0.0)
    assert bucket.try_take(400.0, 0.0)
    assert not bucket.try_take(10.0, 0.04)  # 8 tokens back
    assert bucket.try_take(10.0, 0.05)  # 10 tokens back
    assert bucket.tokens(100.0) == 400.0  # never above capacity


def test_reserve_queues_callers_instead_of_refusing() -> None:
    bucket = TokenBucket(100.0, 20.0, now_s=0.0)
    waits = [bucket.reserve(10.0, 0.0) for _ in range(4)]
    assert waits == [0.0, 0.0, pytest.approx(0.1), pytest.approx(0.2)]
    assert bucket.tokens(0.2) == pytest.approx(0.0)


def test_reserve_of_more_than_capacity_waits_for_a_full_bucket() -> None:
    bucket = TokenBucket(10.0, 20.0, now_s=0.0)
    assert bucket.reserve(20.0, 0.0) == 0.0
    assert bucket.reserve(50.0, 0.0) == pytest.approx(2.0)


def test_time_going_backwards_does_not_drain_or_fill() -> None:
    bucket = TokenBucket(10.0, 20.0, now_s=5.0)
    assert bucket.try_take(20.0, 5.0)
    assert bucket.tokens(4.0) == 0.0
    assert bucket.tokens(6.0) == pytest.approx(10.0)


@pytest.mark.parametrize(("rate", "capacity"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 5.0)])
def test_bucket_rejects_non_positive_figures(rate: float, capacity: float) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        TokenBucket(rate, capacity, now_s=0.0)


def test_backoff_is_full_jitter_under_a_growing_capped_ceiling() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0, rng=random.Random(3))
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0), (500, 4.0)]:
        delays = [backoff.delay_s(attempt) for _ in range(200)]
        assert all(0.0 <= delay <= ceiling for delay in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not a fixed wait
