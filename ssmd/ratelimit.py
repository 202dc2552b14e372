"""Kalshi's REST rate limit as a pure token bucket (PROTOCOL.md §9.6) and the backoff used after
a 429 or a 5xx. No clock and no RNG of its own: callers pass the time and inject the RNG, so
both the REST client and the simulator's 429s are tested with plain calls."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# §9.6: every request costs 10 tokens unless GET /account/endpoint_costs says otherwise; the
# Basic read tier refills 200 tokens/s and holds 2 s of budget.
DEFAULT_REQUEST_COST = 10.0
BASIC_READ_TOKENS_PER_S = 200.0
BASIC_READ_BURST_S = 2.0


class TokenBucket:
    """`rate_per_s` tokens refill each second up to `capacity`; a request spends `cost`.

    Two ways to use it: the exchange side asks `try_take` (refuse with 429 when short); the
    client side calls `reserve`, which spends now (the level may go negative) and returns how
    long to wait before sending, so concurrent callers queue up instead of all retrying.
    """

    def __init__(self, rate_per_s: float, capacity: float, *, now_s: float) -> None:
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError(f"rate_per_s and capacity must be > 0, got {rate_per_s}, {capacity}")
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._tokens = capacity
        self._updated_s = now_s

    def tokens(self, now_s: float) -> float:
        """The level at `now_s` (negative while reservations are outstanding)."""
        self._refill(now_s)
        return self._tokens

    def try_take(self, cost: float, now_s: float) -> bool:
        """Spend `cost` if the bucket holds it now; False (nothing spent) otherwise."""
        self._refill(now_s)
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True

    def reserve(self, cost: float, now_s: float) -> float:
        """Spend `cost` now and return the seconds to wait until the bucket covers it (0 when
        it already does). A cost above the capacity waits for a full bucket."""
        self._refill(now_s)
        self._tokens -= min(cost, self.capacity)
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_s

    def _refill(self, now_s: float) -> None:
        elapsed_s = now_s - self._updated_s
        if elapsed_s > 0:
            self._tokens = min(self.capacity, self._tokens + elapsed_s * self.rate_per_s)
            self._updated_s = now_s


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter for REST retries: uniform(0, min(cap_s,
    base_s * 2^attempt)). §9.6: a 429 has no Retry-After, so this is all a client has."""

    base_s: float = 0.25
    cap_s: float = 10.0
    rng: random.Random = field(default_factory=random.Random)

    def delay_s(self, attempt: int) -> float:
        """The wait before retry number `attempt` (0 = the first retry)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(attempt, 62))
        return self.rng.uniform(0.0, ceiling)
