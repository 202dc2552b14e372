"""The reconnect policy: full-jitter backoff, error classification, reset after health."""

from __future__ import annotations

import random

import pytest

from ssmd.errors import (
    ConfigError,
    ExchangeUnavailable,
    FrameDecodeError,
    HandshakeRejected,
    KeyLoadError,
    TransportError,
)
from ssmd.retry import RetryPolicy, Verdict

URL = "wss://exchange.test/trade-api/ws/v2"


def policy(seed: int = 1, **kwargs: float) -> RetryPolicy:
    return RetryPolicy(rng=random.Random(seed), **kwargs)  # type: ignore[arg-type]


def test_backoff_is_full_jitter_under_a_growing_capped_ceiling() -> None:
    p = policy(base_s=0.5, cap_s=8.0)
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    reference = random.Random(1)
    for ceiling in ceilings:
        decision = p.connection_ended(ExchangeUnavailable(URL, "refused"), lived_s=0)
        assert decision.verdict is Verdict.RETRY
        # The same RNG stream draws the same uniform(0, ceiling): the delay is exactly that.
        assert decision.delay_s == reference.uniform(0.0, ceiling)
        assert 0.0 <= decision.delay_s <= ceiling


def test_same_seed_same_schedule_and_spread_across_seeds() -> None:
    def schedule(seed: int) -> list[float]:
        p = policy(seed, base_s=1.0, cap_s=30.0)
        return [
            p.connection_ended(ExchangeUnavailable(URL, "x"), lived_s=0).delay_s for _ in range(8)
        ]

    assert schedule(3) == schedule(3)
    assert schedule(3) != schedule(4)


def test_attempts_reset_only_after_a_healthy_connection() -> None:
    p = policy(base_s=1.0, cap_s=100.0, healthy_after_s=60.0)
    for _ in range(5):
        p.connection_ended(ExchangeUnavailable(URL, "x"), lived_s=0)
    assert p.attempt == 5
    p.connection_ended(ExchangeUnavailable(URL, "dropped"), lived_s=10.0)
    assert p.attempt == 6  # 10 s is not healthy: the backoff keeps growing
    p.connection_ended(ExchangeUnavailable(URL, "dropped"), lived_s=61.0)
    assert p.attempt == 1  # reset, then this failure counted


def test_401_on_the_first_connection_is_fatal_at_once() -> None:
    decision = policy().connection_ended(HandshakeRejected(401, URL), lived_s=0)
    assert decision.verdict is Verdict.FATAL
    assert "HTTP 401" in decision.reason
    assert "credentials" in decision.reason


def test_401_after_a_good_connection_is_retried_a_few_times_then_fatal() -> None:
    p = policy(max_auth_retries=3)
    p.connection_ended(ExchangeUnavailable(URL, "dropped"), lived_s=120.0)
    verdicts = [
        p.connection_ended(HandshakeRejected(401, URL), lived_s=0).verdict for _ in range(4)
    ]
    assert verdicts == [Verdict.RETRY, Verdict.RETRY, Verdict.RETRY, Verdict.FATAL]


def test_a_successful_connection_clears_the_auth_failure_count() -> None:
    p = policy(max_auth_retries=1)
    p.connection_ended(None, lived_s=5.0)
    assert p.connection_ended(HandshakeRejected(401, URL), lived_s=0).verdict is Verdict.RETRY
    p.connection_ended(None, lived_s=5.0)
    assert p.connection_ended(HandshakeRejected(401, URL), lived_s=0).verdict is Verdict.RETRY


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_exchange_side_http_errors_are_retried(status: int) -> None:
    decision = policy().connection_ended(HandshakeRejected(status, URL), lived_s=0)
    assert decision.verdict is Verdict.RETRY


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("bad", source="env.yaml", field="exchange.ws_url"),
        KeyLoadError("not a PEM private key", source="key.pem"),
        TransportError("disk full"),
        FrameDecodeError("invalid_fields"),
    ],
)
def test_operator_errors_and_bugs_are_fatal_not_silent_reconnects(error: Exception) -> None:
    decision = policy().connection_ended(error, lived_s=30.0)  # type: ignore[arg-type]
    assert decision.verdict is Verdict.FATAL
    assert str(error) in decision.reason


def test_a_clean_close_by_the_exchange_is_retried() -> None:
    decision = policy().connection_ended(None, lived_s=3600.0)
    assert decision.verdict is Verdict.RETRY
    assert decision.reason == "connection closed"
