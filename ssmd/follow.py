"""Keeps the followed market set current (issue 5): what discovery selects, plus markets the
lifecycle channel announces (PROTOCOL.md §7.5), minus those determined, settled or deactivated.
FollowState is the pure core (times passed in); MarketFollower is its asyncio driver."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from ssmd.errors import SsmdError
from ssmd.records import Lifecycle, LifecycleScope

# §7.5: after these a market trades no more (deactivated: paused, cancelled orders).
ENDING_EVENTS = frozenset({"determined", "settled", "deactivated"})
# ... and after these it may be (re)opening: look it up and decide.
STARTING_EVENTS = frozenset({"created", "activated"})
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class Candidate:
    """What a lookup found about a market the lifecycle channel named."""

    matches: bool  # the selection wants it (status aside: it may not be open yet)
    open_ts_ns: int | None = None  # when it opens; None or past = open now


@dataclass(frozen=True)
class FollowChanges:
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    look_up: tuple[str, ...] = ()  # to resolve over REST, then on_looked_up()

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove or self.look_up)


class FollowState:
    """The followed set. Explicit tickers are always followed. A market the lifecycle channel
    created is added when it opens (there is no frame at open time, §7.5); one that ended is
    removed at once; discovery re-runs catch whatever the channel missed, both ways."""

    def __init__(self, explicit: Iterable[str] = ()) -> None:
        self.explicit = frozenset(explicit)
        self.followed: set[str] = set(self.explicit)
        self._opening: list[tuple[int, str]] = []  # heap of (open_ts_ns, ticker)
        self._ended: set[str] = set()

    def initial(self) -> FollowChanges:
        return FollowChanges(add=tuple(sorted(self.explicit)))

    def apply_discovery(self, selected: Iterable[str]) -> FollowChanges:
        """A fresh discovery result (already filtered, sharded and capped) replaces the
        discovered part of the set."""
        wanted = set(selected) | self.explicit
        add = tuple(sorted(wanted - self.followed))
        remove = tuple(sorted(self.followed - wanted))
        self.followed = wanted
        self._ended.difference_update(add)
        return FollowChanges(add=add, remove=remove)

    def on_lifecycle(self, record: Lifecycle) -> FollowChanges:
        if record.scope is not LifecycleScope.MARKET:
            return FollowChanges()
        ticker = record.market
        if record.event_type in ENDING_EVENTS:
            self._ended.add(ticker)
            if ticker in self.followed and ticker not in self.explicit:
                self.followed.discard(ticker)
                return FollowChanges(remove=(ticker,))
            return FollowChanges()
        if record.event_type in STARTING_EVENTS and ticker not in self.followed:
            self._ended.discard(ticker)
            return FollowChanges(look_up=(ticker,))
        return FollowChanges()

    def on_looked_up(self, ticker: str, candidate: Candidate, now_ns: int) -> FollowChanges:
        if not candidate.matches or ticker in self.followed or ticker in self._ended:
            return FollowChanges()
        if candidate.open_ts_ns is not None and candidate.open_ts_ns > now_ns:
            heapq.heappush(self._opening, (candidate.open_ts_ns, ticker))
            return FollowChanges()
        self.followed.add(ticker)
        return FollowChanges(add=(ticker,))

    @property
    def next_open_ns(self) -> int | None:
        return self._opening[0][0] if self._opening else None

    def due(self, now_ns: int) -> FollowChanges:
        """Markets whose open time has come (and that did not end meanwhile)."""
        add: list[str] = []
        while self._opening and self._opening[0][0] <= now_ns:
            _, ticker = heapq.heappop(self._opening)
            if ticker not in self.followed and ticker not in self._ended:
                self.followed.add(ticker)
                add.append(ticker)
        return FollowChanges(add=tuple(add))


class FollowTarget(Protocol):
    """Where changes go: ssmd.fleet.ConnectionFleet satisfies it."""

    def add_markets(self, markets: Iterable[str]) -> tuple[str, ...]: ...

    def remove_markets(self, markets: Iterable[str]) -> None: ...


Discover = Callable[[int], Awaitable[Sequence[str]]]
LookUp = Callable[[Sequence[str], int], Awaitable[Mapping[str, Candidate]]]


class MarketFollower:
    """Runs discovery at start and every `refresh_interval_s`, looks up markets the lifecycle
    channel announces, adds them when they open and removes those that ended. REST trouble is
    logged and retried at the next refresh: the streams already running are never touched by
    a failed discovery, and an empty result is not an error (rollover gaps)."""

    def __init__(
        self,
        state: FollowState,
        target: FollowTarget,
        *,
        discover: Discover | None,
        look_up: LookUp | None,
        refresh_interval_s: float,
        retry_after_s: float = 10.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.state = state
        self._target = target
        self._discover = discover
        self._look_up = look_up
        self._refresh_interval_s = refresh_interval_s
        self._retry_after_s = min(retry_after_s, refresh_interval_s)
        self._clock_ns = clock_ns
        self._announced: list[str] = []
        self._wake = asyncio.Event()
        self._log = structlog.get_logger("ssmd.follow")
        self.discoveries = 0
        self.discovery_failures = 0
        self.added = 0
        self.removed = 0
        self._apply(state.initial())

    def observe(self, record: Lifecycle) -> None:
        """A lifecycle record on its way to the transport (called for every one, cheaply)."""
        changes = self.state.on_lifecycle(record)
        if changes.empty:
            return
        self._apply(changes)
        if changes.look_up:
            self._announced.extend(changes.look_up)
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        next_refresh_s = 0.0  # discover at once
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if self._discover is not None and loop.time() >= next_refresh_s:
                ok = await self._refresh()
                wait_s = self._refresh_interval_s if ok else self._retry_after_s
                next_refresh_s = loop.time() + wait_s
            if self._announced:
                await self._resolve_announced()
            self._apply(self.state.due(self._clock_ns()))
            timeout_s = self._until_next_s(next_refresh_s - loop.time())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop, self._wake), timeout_s)

    def _until_next_s(self, refresh_in_s: float) -> float:
        candidates = [refresh_in_s if self._discover is not None else 3600.0]
        next_open_ns = self.state.next_open_ns
        if next_open_ns is not None:
            candidates.append((next_open_ns - self._clock_ns()) / _NS_PER_S)
        return max(0.01, min(candidates))

    async def _refresh(self) -> bool:
        assert self._discover is not None
        try:
            selected = await self._discover(self._clock_ns())
        except SsmdError as exc:
            self.discovery_failures += 1
            self._log.error(
                "follow.discovery_failed",
                error=str(exc),
                error_type=type(exc).__name__,
                retry_in_s=self._retry_after_s,
            )
            return False
        self.discoveries += 1
        changes = self.state.apply_discovery(selected)
        self._apply(changes)
        if not selected:
            self._log.warning("follow.selection_empty", explicit=len(self.state.explicit))
        self._log.info(
            "follow.discovered",
            selected=len(selected),
            added=len(changes.add),
            removed=len(changes.remove),
        )
        return True

    async def _resolve_announced(self) -> None:
        tickers, self._announced = list(dict.fromkeys(self._announced)), []
        if self._look_up is None:
            return
        try:
            found = await self._look_up(tickers, self._clock_ns())
        except SsmdError as exc:
            self._log.error(
                "follow.lookup_failed", markets=len(tickers), error=str(exc), next="discovery"
            )
            return
        now_ns = self._clock_ns()
        for ticker in tickers:
            candidate = found.get(ticker)
            if candidate is not None:
                self._apply(self.state.on_looked_up(ticker, candidate, now_ns))

    def _apply(self, changes: FollowChanges) -> None:
        if changes.remove:
            self._target.remove_markets(changes.remove)
            self.removed += len(changes.remove)
            self._log.info("follow.markets_removed", markets=list(changes.remove[:20]))
        if changes.add:
            unplaced = self._target.add_markets(changes.add)
            self.added += len(changes.add) - len(unplaced)
            self._log.info("follow.markets_added", markets=list(changes.add[:20]))


async def _first(stop: asyncio.Event, wake: asyncio.Event) -> None:
    """Return when either event is set."""
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
