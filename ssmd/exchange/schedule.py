"""Seeded random fault schedules for `ssmd exchange --faults random:rate=R,seed=S`.

Pure: `FaultSchedule` owns a `random.Random(seed)`, so one seed always gives the same faults,
parameters and gaps; the server's driver sleeps the gaps and injects the faults.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass

from ssmd.errors import ConfigError
from ssmd.exchange.faults import (
    TERMINAL_ERRORS,
    AbortConnection,
    Burst,
    CloseCode,
    CloseConnection,
    DuplicateFrame,
    Fault,
    MalformedFrame,
    MalformedKind,
    RejectHandshakes,
    SkipSeq,
    Stall,
    StallMode,
    TerminateSubscription,
    UnsolicitedSnapshot,
)

STALL_S = (1.0, 5.0)  # a drawn stall lasts this long (uniform, 0.1 s steps) ...
REJECTED_HANDSHAKES = (1, 3)  # ... rejects this many handshakes ...
BURST_EVENTS = (500, 5_000)  # ... and bursts this many events
_SPEC_HELP = "none, or random:rate=FAULTS_PER_S[,seed=N], e.g. random:rate=0.5,seed=7"


class FaultKind(enum.Enum):
    """The kinds a random schedule draws from (`--fault-kinds`)."""

    CLOSE = "close"  # clean close, 1001 or 1011
    ABORT = "abort"  # TCP abort, no close frame
    REJECT = "reject"  # the next 1-3 handshakes get HTTP 401
    STALL = "stall"  # pings only, 1-5 s
    SILENCE = "silence"  # no pings, no data, no reading, 1-5 s
    SKIP_SEQ = "skip_seq"
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"  # invalid JSON or a wrong field type
    TERMINAL_ERROR = "terminal_error"  # error 25 or 10 on the lowest sid, which is dropped
    SNAPSHOT = "snapshot"  # an unsolicited snapshot of a random market
    BURST = "burst"  # 500-5000 events at once


ALL_KINDS = tuple(FaultKind)


@dataclass(frozen=True)
class RandomFaults:
    """A random schedule: on average `rate_hz` faults per second, drawn from `kinds`."""

    rate_hz: float
    seed: int = 1
    kinds: tuple[FaultKind, ...] = ALL_KINDS

    def __post_init__(self) -> None:
        if not self.rate_hz > 0:
            raise ConfigError(
                f"rate must be > 0, got {self.rate_hz}", source="exchange", field="faults.rate"
            )
        if not self.kinds:
            raise ConfigError("no fault kind selected", source="exchange", field="faults.kinds")


@dataclass(frozen=True)
class ScheduledFault:
    """Inject `fault` (on every open connection) `delay_s` after the previous one."""

    delay_s: float
    fault: Fault


class FaultSchedule:
    """An endless seeded sequence of faults with exponential gaps (a Poisson process)."""

    def __init__(self, spec: RandomFaults, markets: Sequence[str]) -> None:
        self.spec = spec
        self._rng = random.Random(spec.seed)
        self._markets = list(markets)

    def next_fault(self) -> ScheduledFault:
        delay_s = self._rng.expovariate(self.spec.rate_hz)
        kind = self._rng.choice(self.spec.kinds)
        return ScheduledFault(delay_s, self._draw(kind))

    def take(self, count: int) -> list[ScheduledFault]:
        return [self.next_fault() for _ in range(count)]

    def _draw(self, kind: FaultKind) -> Fault:
        rng = self._rng
        if kind is FaultKind.CLOSE:
            return CloseConnection(rng.choice(tuple(CloseCode)))
        if kind is FaultKind.ABORT:
            return AbortConnection()
        if kind is FaultKind.REJECT:
            return RejectHandshakes(rng.randint(*REJECTED_HANDSHAKES))
        if kind in (FaultKind.STALL, FaultKind.SILENCE):
            mode = StallMode.PINGS_ONLY if kind is FaultKind.STALL else StallMode.SILENT
            low_ds, high_ds = (round(s * 10) for s in STALL_S)
            return Stall(rng.randint(low_ds, high_ds) / 10, mode)
        if kind is FaultKind.SKIP_SEQ:
            return SkipSeq()
        if kind is FaultKind.DUPLICATE:
            return DuplicateFrame()
        if kind is FaultKind.MALFORMED:
            return MalformedFrame(rng.choice(tuple(MalformedKind)))
        if kind is FaultKind.TERMINAL_ERROR:
            return TerminateSubscription(rng.choice(TERMINAL_ERRORS))
        if kind is FaultKind.SNAPSHOT:
            return UnsolicitedSnapshot(rng.choice(self._markets) if self._markets else None)
        return Burst(rng.randint(*BURST_EVENTS))


def parse_fault_kinds(text: str) -> tuple[FaultKind, ...]:
    """`close,abort,stall` to kinds, in the order given, without repeats."""
    kinds: dict[FaultKind, None] = {}
    for name in (part.strip() for part in text.split(",")):
        try:
            kinds[FaultKind(name)] = None
        except ValueError:
            raise ConfigError(
                f"unknown fault kind {name!r}",
                source="command line",
                field="--fault-kinds",
                fix="comma-separated, from: " + ", ".join(kind.value for kind in FaultKind),
            ) from None
    return tuple(kinds)


def parse_fault_spec(text: str, kinds: tuple[FaultKind, ...] = ALL_KINDS) -> RandomFaults | None:
    """`--faults`: `none` (None) or `random:rate=R[,seed=N]`; ConfigError names the problem."""
    if text.strip() == "none":
        return None
    mode, _, params_text = text.partition(":")
    if mode.strip() != "random":
        raise _spec_error(text, f"unknown fault mode {mode!r}")
    params: dict[str, str] = {}
    for item in params_text.split(","):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in ("rate", "seed") or name.strip() in params:
            raise _spec_error(text, f"bad parameter {item!r}")
        params[name.strip()] = value.strip()
    if "rate" not in params:
        raise _spec_error(text, "rate is required")
    try:
        rate_hz = float(params["rate"])
        seed = int(params.get("seed", "1"))
    except ValueError:
        raise _spec_error(text, "rate must be a number and seed an integer") from None
    if not rate_hz > 0 or rate_hz == float("inf"):
        raise _spec_error(text, f"rate must be a positive number, got {params['rate']!r}")
    return RandomFaults(rate_hz=rate_hz, seed=seed, kinds=kinds)


def _spec_error(text: str, problem: str) -> ConfigError:
    return ConfigError(
        f"{problem} in {text!r}", source="command line", field="--faults", fix=_SPEC_HELP
    )
