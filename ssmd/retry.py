"""When and how soon to reconnect to the exchange: a swappable, pure retry policy.

Capped exponential backoff with full jitter (delay drawn uniformly from [0, min(cap, base·2^n)]),
errors sorted into retryable and fatal, and the attempt counter reset once a connection has
been healthy for a while. The RNG is injected; there is no clock here: the driver reports how
long each connection lived.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from ssmd.errors import (
    AuthError,
    ConfigError,
    ExchangeUnavailable,
    HandshakeRejected,
    KeyLoadError,
    SsmdError,
)
from ssmd.ratelimit import Backoff


class Verdict(enum.Enum):
    RETRY = "retry"
    FATAL = "fatal"


@dataclass(frozen=True)
class Decision:
    """What to do after a connection ended: wait `delay_s` and retry, or give up (`reason`)."""

    verdict: Verdict
    delay_s: float
    reason: str


@dataclass
class RetryPolicy:
    """Reconnect forever on transient failures; stop on failures only an operator can fix.

    A refused handshake (HTTP 401/403) on the very first connect is a credentials problem:
    fatal at once, for fast feedback. Once ssmd has connected successfully, a 401 is more likely
    a clock step or a transient exchange fault: it is retried with a fresh signature up to
    `max_auth_retries` times in a row, then fatal with the exchange's answer.
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    healthy_after_s: float = 60.0
    max_auth_retries: int = 3
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    auth_failures: int = 0
    ever_connected: bool = False

    def backoff_s(self) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (ssmd.ratelimit.Backoff)."""
        return Backoff(self.base_s, self.cap_s, self.rng).delay_s(self.attempt)

    def connection_ended(self, error: SsmdError | None, *, lived_s: float) -> Decision:
        """Report how a connection ended (`error` None = it closed on its own) and for how long
        it lived (0 when it never opened); returns the decision for the next attempt."""
        if lived_s > 0:
            self.ever_connected = True
            self.auth_failures = 0
            if lived_s >= self.healthy_after_s:
                self.attempt = 0
        fatal = self._fatal_reason(error)
        if fatal is not None:
            return Decision(Verdict.FATAL, 0.0, fatal)
        delay_s = self.backoff_s()
        self.attempt += 1
        return Decision(Verdict.RETRY, delay_s, str(error) if error else "connection closed")

    def _fatal_reason(self, error: SsmdError | None) -> str | None:
        if error is None or isinstance(error, ExchangeUnavailable):
            return None
        if isinstance(error, HandshakeRejected):
            if error.status_code not in (401, 403):
                return None  # 5xx, 429 and friends: the exchange's trouble, not ours
            if not self.ever_connected:
                return f"{error} on the first connection: fix the credentials"
            self.auth_failures += 1
            if self.auth_failures > self.max_auth_retries:
                return f"{error}, {self.auth_failures} times in a row with fresh signatures"
            return None
        if isinstance(error, ConfigError | KeyLoadError | AuthError):
            return str(error)
        # Protocol and transport errors reaching here are bugs or sink failures, not network
        # weather: retrying would hide them.
        return f"{type(error).__name__}: {error}"
