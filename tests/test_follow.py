"""Following markets as they open and end (ssmd.follow): the pure state with plain calls, and
the driver with real asyncio timing against an in-test discovery function."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence

from ssmd.errors import ExchangeUnavailable
from ssmd.follow import Candidate, FollowChanges, FollowState, MarketFollower
from ssmd.records import Lifecycle, LifecycleScope
from tests.conftest import wait_until

S = 1_000_000_000


def lifecycle(market: str, event_type: str, scope: LifecycleScope = LifecycleScope.MARKET):
    return Lifecycle(market=market, receive_ts_ns=1, scope=scope, event_type=event_type)


def test_explicit_markets_come_first_and_never_leave() -> None:
    state = FollowState(["B", "A"])
    assert state.initial() == FollowChanges(add=("A", "B"))
    assert state.apply_discovery([]) == FollowChanges()
    assert state.on_lifecycle(lifecycle("A", "settled")) == FollowChanges()
    assert state.followed == {"A", "B"}


def test_discovery_results_replace_the_discovered_part() -> None:
    state = FollowState(["X"])
    assert state.apply_discovery(["M1", "M2"]) == FollowChanges(add=("M1", "M2"))
    assert state.apply_discovery(["M2", "M3"]) == FollowChanges(add=("M3",), remove=("M1",))
    assert state.followed == {"X", "M2", "M3"}


def test_ending_events_remove_a_followed_market_once() -> None:
    state = FollowState()
    state.apply_discovery(["M1", "M2", "M3"])
    assert state.on_lifecycle(lifecycle("M1", "determined")) == FollowChanges(remove=("M1",))
    assert state.on_lifecycle(lifecycle("M1", "settled")) == FollowChanges()
    assert state.on_lifecycle(lifecycle("M2", "deactivated")) == FollowChanges(remove=("M2",))
    assert state.on_lifecycle(lifecycle("M3", "close_date_updated")) == FollowChanges()
    assert state.followed == {"M3"}


def test_created_market_is_looked_up_then_added_when_it_opens() -> None:
    state = FollowState()
    assert state.on_lifecycle(lifecycle("NEW", "created")) == FollowChanges(look_up=("NEW",))
    assert state.on_looked_up("NEW", Candidate(True, open_ts_ns=50 * S), 10 * S).empty
    assert state.next_open_ns == 50 * S
    assert state.due(49 * S).empty
    assert state.due(50 * S) == FollowChanges(add=("NEW",))
    assert state.next_open_ns is None
    assert "NEW" in state.followed


def test_a_market_already_open_is_added_at_once_and_a_mismatch_never() -> None:
    state = FollowState()
    assert state.on_looked_up("OPEN", Candidate(True, open_ts_ns=5 * S), 10 * S) == (
        FollowChanges(add=("OPEN",))
    )
    assert state.on_looked_up("OTHER", Candidate(False), 10 * S).empty
    assert state.on_looked_up("OPEN", Candidate(True), 11 * S).empty  # already followed


def test_a_market_that_ends_before_it_opens_is_not_added() -> None:
    state = FollowState()
    state.on_lifecycle(lifecycle("NEW", "created"))
    state.on_looked_up("NEW", Candidate(True, open_ts_ns=50 * S), 10 * S)
    state.on_lifecycle(lifecycle("NEW", "deactivated"))
    assert state.due(60 * S).empty
    # Reactivated later: looked up again and added.
    assert state.on_lifecycle(lifecycle("NEW", "activated")) == FollowChanges(look_up=("NEW",))
    assert state.on_looked_up("NEW", Candidate(True), 70 * S) == FollowChanges(add=("NEW",))


def test_event_scoped_records_change_nothing() -> None:
    state = FollowState()
    assert state.on_lifecycle(lifecycle("EV-1", "event_created", LifecycleScope.EVENT)).empty


class Fleet:
    """The follower's target: records what it was told (ssmd.fleet is tested elsewhere)."""

    def __init__(self) -> None:
        self.markets: set[str] = set()
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def add_markets(self, markets: Iterable[str]) -> tuple[str, ...]:
        added = tuple(markets)
        self.calls.append(("add", added))
        self.markets.update(added)
        return ()

    def remove_markets(self, markets: Iterable[str]) -> None:
        removed = tuple(markets)
        self.calls.append(("remove", removed))
        self.markets.difference_update(removed)


async def test_follower_discovers_retries_failures_and_follows_lifecycle() -> None:
    fleet = Fleet()
    results: list[Sequence[str] | Exception] = [
        ExchangeUnavailable("http://x/markets", "503"),
        ["M1", "M2"],
        ["M2"],
    ]
    looked_up: list[Sequence[str]] = []

    async def discover(now_ns: int) -> Sequence[str]:
        result = results.pop(0) if len(results) > 1 else results[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def look_up(tickers: Sequence[str], now_ns: int) -> Mapping[str, Candidate]:
        looked_up.append(tickers)
        return {ticker: Candidate(ticker.startswith("WANT")) for ticker in tickers}

    follower = MarketFollower(
        FollowState(["X"]),
        fleet,
        discover=discover,
        look_up=look_up,
        refresh_interval_s=0.2,
        retry_after_s=0.05,
    )
    assert fleet.markets == {"X"}
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    await wait_until(lambda: fleet.markets == {"X", "M1", "M2"}, 5, "discovery after a failure")
    assert follower.discovery_failures == 1
    await wait_until(lambda: fleet.markets == {"X", "M2"}, 5, "the refresh removing M1")
    follower.observe(lifecycle("WANT-1", "created"))
    follower.observe(lifecycle("NOPE-1", "created"))
    await wait_until(lambda: "WANT-1" in fleet.markets, 5, "the created market")
    assert "NOPE-1" not in fleet.markets
    assert sorted(t for batch in looked_up for t in batch) == ["NOPE-1", "WANT-1"]
    follower.observe(lifecycle("WANT-1", "settled"))
    assert "WANT-1" not in fleet.markets  # removal needs no lookup: at once
    stop.set()
    await asyncio.wait_for(task, 2)
    assert ("remove", ("WANT-1",)) in fleet.calls


async def test_an_empty_selection_is_not_an_error_and_markets_come_back() -> None:
    """Between two days' events a selection may resolve to nothing (rollover): the follower
    removes what ended, keeps running, and adds the next day's markets when they appear."""
    fleet = Fleet()
    rounds: list[list[str]] = [["D1-A", "D1-B"], [], [], ["D2-A"]]

    async def discover(now_ns: int) -> Sequence[str]:
        return rounds.pop(0) if len(rounds) > 1 else rounds[0]

    follower = MarketFollower(
        FollowState(), fleet, discover=discover, look_up=None, refresh_interval_s=0.05
    )
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    await wait_until(lambda: follower.discoveries >= 4, 5, "four discoveries")
    stop.set()
    await asyncio.wait_for(task, 2)
    assert fleet.markets == {"D2-A"}
    assert ("remove", ("D1-A", "D1-B")) in fleet.calls
    assert follower.discovery_failures == 0
