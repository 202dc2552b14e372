"""Derived top-of-book records (ssmd.top): hand-computed books, odds and tiers, the tracker's
change detection and minimum interval with explicit times, the Msg-Id, subject and schema."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from ssmd.book import ApplyResult, OrderBook
from ssmd.config.fields import RULE_TYPE
from ssmd.config.top import TopSettings
from ssmd.records import (
    BookDelta,
    BookSnapshot,
    Flag,
    Level,
    LiquidityTier,
    Record,
    Side,
    Top,
    TopTrigger,
    json_schema,
)
from ssmd.subjects import SubjectMapper, msg_id_for
from ssmd.tail import subject_to_tail
from ssmd.tail_format import format_record_line
from ssmd.top import TopTracker, american_odds_e2, depth_near_best_e2, liquidity_tier, top_of_book

MARKET = "KXNBAPTS-26NOV21-LEBRON-25.5"
TS = 1_763_744_000_000_000_000
MS = 1_000_000
SETTINGS = TopSettings()  # window $0.02, moderate 100 contracts, deep 1000
TOOLBOX = str(Path(sys.executable).parent / "ssmd")


def snapshot(
    yes: dict[int, int] | None = None,
    no: dict[int, int] | None = None,
    *,
    at_ms: int = 0,
    seq: int | None = 1,
    flags: tuple[Flag, ...] = (),
) -> BookSnapshot:
    return BookSnapshot(
        market=MARKET,
        receive_ts_ns=TS + at_ms * MS,
        sid=1,
        seq=seq,
        flags=flags,
        yes_bids=tuple(Level(p, s) for p, s in sorted((yes or {}).items())),
        no_bids=tuple(Level(p, s) for p, s in sorted((no or {}).items())),
    )


def delta(side: Side, price_e4: int, delta_e2: int, *, at_ms: int, seq: int) -> BookDelta:
    return BookDelta(
        market=MARKET,
        exchange_ts_ns=TS + at_ms * MS - 7,
        receive_ts_ns=TS + at_ms * MS,
        sid=1,
        seq=seq,
        side=side,
        price_e4=price_e4,
        delta_e2=delta_e2,
    )


def book_of(yes: dict[int, int] | None = None, no: dict[int, int] | None = None) -> OrderBook:
    book = OrderBook(MARKET)
    book.apply_snapshot(snapshot(yes, no))
    return book


def top_of(
    yes: dict[int, int] | None = None,
    no: dict[int, int] | None = None,
    settings: TopSettings = SETTINGS,
) -> Top:
    return top_of_book(book_of(yes, no), MARKET, TS, settings)


# -- top_of_book: hand-computed books ----------------------------------------------------------


def test_normal_book() -> None:
    # YES bids 0.48 x 10, 0.45 x 2500; NO bids 0.50 x 300, 0.48 x 5, 0.47 x 2000 (NO-leg price).
    top = top_of({4800: 1000, 4500: 250000}, {5000: 30000, 4800: 500, 4700: 200000})
    assert top == Top(
        market=MARKET,
        receive_ts_ns=TS,
        trigger=TopTrigger.BOTH,
        yes_bid_e4=4800,
        yes_bid_size_e2=1000,
        yes_ask_e4=5000,  # $1 - best NO bid 0.50, with its size
        yes_ask_size_e2=30000,
        no_bid_e4=5000,
        no_ask_e4=5200,  # $1 - best YES bid 0.48
        mid_e5=49000,  # (0.48 + 0.50) / 2 = 0.49000
        spread_e4=200,
        yes_implied_prob_e4=5000,  # the cost of buying YES
        no_implied_prob_e4=5200,
        yes_american_odds_e2=10000,  # p = 0.5: +100
        no_american_odds_e2=-10834,  # -100 * 0.52 / 0.48 = -108.333.. rounded down
        yes_ask_depth_e2=30500,  # NO bids at 0.48..0.50 (0.47 is outside the $0.02 window)
        no_ask_depth_e2=1000,  # YES bids at 0.46..0.48: only 0.48 x 10
        yes_liquidity=LiquidityTier.MODERATE,  # 305 contracts
        no_liquidity=LiquidityTier.THIN,  # 10 contracts
    )
    assert top.flags == ()
    assert top.spread_e4 == 5000 + 5200 - 10000  # the implied probabilities' overround


def test_a_wider_window_reaches_deeper_levels() -> None:
    settings = TopSettings(depth_window_e4=300)
    top = top_of({4800: 1000, 4500: 250000}, {5000: 30000, 4800: 500, 4700: 200000}, settings)
    assert top.yes_ask_depth_e2 == 230500
    assert top.yes_liquidity is LiquidityTier.DEEP
    assert top.no_ask_depth_e2 == 251000  # 0.45 is exactly 0.03 below 0.48: inclusive
    assert top.no_liquidity is LiquidityTier.DEEP


def test_empty_yes_side() -> None:
    top = top_of({}, {5000: 100})
    assert (top.yes_bid_e4, top.yes_bid_size_e2, top.no_ask_e4) == (None, None, None)
    assert (top.yes_ask_e4, top.yes_ask_size_e2, top.no_bid_e4) == (5000, 100, 5000)
    assert (top.mid_e5, top.spread_e4) == (None, None)
    assert (top.yes_implied_prob_e4, top.no_implied_prob_e4) == (5000, None)
    assert (top.yes_american_odds_e2, top.no_american_odds_e2) == (10000, None)
    assert (top.yes_ask_depth_e2, top.no_ask_depth_e2) == (100, 0)
    assert (top.yes_liquidity, top.no_liquidity) == (LiquidityTier.THIN, LiquidityTier.NONE)


def test_empty_no_side() -> None:
    top = top_of({2500: 700}, {})
    assert (top.yes_bid_e4, top.yes_bid_size_e2, top.no_ask_e4) == (2500, 700, 7500)
    assert (top.yes_ask_e4, top.yes_ask_size_e2, top.no_bid_e4) == (None, None, None)
    assert (top.mid_e5, top.spread_e4) == (None, None)
    assert (top.yes_implied_prob_e4, top.no_implied_prob_e4) == (None, 7500)
    assert (top.yes_american_odds_e2, top.no_american_odds_e2) == (None, -30000)  # -300 exactly
    assert (top.yes_ask_depth_e2, top.no_ask_depth_e2) == (0, 700)
    assert (top.yes_liquidity, top.no_liquidity) == (LiquidityTier.NONE, LiquidityTier.THIN)


def test_both_sides_empty() -> None:
    assert top_of() == Top(market=MARKET, receive_ts_ns=TS, trigger=TopTrigger.BOTH)
    top = top_of()
    assert top.yes_bid_e4 is top.yes_ask_e4 is top.mid_e5 is top.yes_american_odds_e2 is None
    assert (top.yes_liquidity, top.no_liquidity) == (LiquidityTier.NONE, LiquidityTier.NONE)


def test_half_tick_mid_is_exact_in_hundred_thousandths() -> None:
    # Sub-cent ticks (§7.1.5): YES bid 0.4805, NO bid 0.5100 -> YES ask 0.4900.
    top = top_of({4805: 100}, {5100: 100})
    assert top.mid_e5 == 48525  # (0.4805 + 0.4900) / 2 = 0.48525, no rounding
    assert top.spread_e4 == 95
    assert top.yes_american_odds_e2 == 10408  # +100 * 0.51 / 0.49 = +104.0816..
    assert top.no_american_odds_e2 == -10812  # NO ask 0.5195: -100 * 0.5195 / 0.4805 = -108.1165..


def test_one_cent_and_one_tick_spreads() -> None:
    cent = top_of({4900: 100}, {5000: 100})
    assert (cent.yes_ask_e4, cent.spread_e4, cent.mid_e5) == (5000, 100, 49500)
    tick = top_of({9998: 100}, {1: 100})  # YES bid 0.9998, YES ask 0.9999
    assert (tick.yes_ask_e4, tick.no_ask_e4, tick.spread_e4, tick.mid_e5) == (9999, 2, 1, 99985)
    assert tick.yes_american_odds_e2 == -99990000  # -100 * 0.9999 / 0.0001 = -999,900.00
    assert tick.no_american_odds_e2 == 49990000  # +100 * 0.9998 / 0.0002 = +499,900.00


def test_extreme_prices() -> None:
    top = top_of({1: 100}, {1: 100})  # both bids at 0.0001: both asks at 0.9999
    assert (top.yes_ask_e4, top.no_ask_e4, top.spread_e4, top.mid_e5) == (9999, 9999, 9998, 50000)
    assert top.yes_american_odds_e2 == top.no_american_odds_e2 == -99990000
    top = top_of({9999: 100}, {})  # NO ask 0.0001
    assert top.no_american_odds_e2 == 99990000  # +999,900.00


def test_odds_are_undefined_at_zero_and_one() -> None:
    # A YES bid at $1 means a NO ask at $0; a NO bid at $0 a YES ask at $1. Both are prices
    # (no flag), but there is nothing to risk / nothing to win: no odds.
    top = top_of({10000: 100}, {0: 100})
    assert (top.yes_ask_e4, top.no_ask_e4) == (10000, 0)
    assert top.yes_american_odds_e2 is None
    assert top.no_american_odds_e2 is None
    assert top.spread_e4 == 0
    assert top.flags == ()


def test_out_of_range_prices_are_flagged_and_get_no_odds() -> None:
    top = top_of({10100: 100}, {4000: 100})
    assert top.flags == (Flag.PRICE_OUT_OF_RANGE,)
    assert top.no_ask_e4 == -100
    assert top.no_american_odds_e2 is None
    assert top.spread_e4 == 6000 - 10100  # crossed: a local book the exchange never had


def test_top_of_book_refuses_another_markets_book() -> None:
    with pytest.raises(ValueError, match="OTHER"):
        top_of_book(book_of(), "OTHER", TS, SETTINGS)


# -- American odds -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price_e4", "odds_e2"),
    [
        (5000, 10000),  # exactly +100 (the p > 0.5 formula would say -100: same bet)
        (4999, 10004),  # +100.04000800..: down to +100.04
        (5001, -10005),  # -100.04000800..: down, away from zero, to -100.05
        (2500, 30000),  # +300 exactly
        (7500, -30000),  # -300 exactly
        (4000, 15000),
        (6000, -15000),
        (3333, 20003),  # +200.030003..
        (6667, -20004),  # -200.030003..
        (100, 990000),  # one cent: +9,900
        (3, 33323333),  # +333,233.333..
        (1, 99990000),
        (9999, -99990000),
        (0, None),
        (10000, None),
        (-1, None),
        (10001, None),
    ],
)
def test_american_odds_rounding(price_e4: int, odds_e2: int | None) -> None:
    assert american_odds_e2(price_e4) == odds_e2


def probability_of_odds(odds_e2: int) -> Fraction:
    """The price (probability) American odds in hundredths stand for, exactly."""
    if odds_e2 > 0:
        return Fraction(10000, odds_e2 + 10000)
    return Fraction(-odds_e2, -odds_e2 + 10000)


@given(st.integers(min_value=1, max_value=9999))
def test_odds_sign_and_converting_back(price_e4: int) -> None:
    odds_e2 = american_odds_e2(price_e4)
    assert odds_e2 is not None
    p = Fraction(price_e4, 10000)
    if p < Fraction(1, 2):
        assert odds_e2 > 10000
        exact_e2 = 10000 * (1 - p) / p
    elif p > Fraction(1, 2):
        assert odds_e2 < -10000
        exact_e2 = -10000 * p / (1 - p)
    else:
        assert odds_e2 == 10000
        exact_e2 = Fraction(10000)
    # Rounded down to the hundredth: odds_e2 <= exact < odds_e2 + 1 ...
    assert odds_e2 <= exact_e2 < odds_e2 + 1
    # ... so the probability they stand for is p or a hair above (never a better bet) ...
    assert probability_of_odds(odds_e2 + 1) < p <= probability_of_odds(odds_e2)
    # ... and within a quarter tick: back to the price exactly.
    assert round(probability_of_odds(odds_e2) * 10000) == price_e4


# -- liquidity tiers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth_e2", "tier"),
    [
        (0, LiquidityTier.NONE),
        (1, LiquidityTier.THIN),
        (9999, LiquidityTier.THIN),
        (10000, LiquidityTier.MODERATE),  # 100 contracts
        (99999, LiquidityTier.MODERATE),
        (100000, LiquidityTier.DEEP),  # 1000 contracts
    ],
)
def test_tier_boundaries(depth_e2: int, tier: LiquidityTier) -> None:
    assert liquidity_tier(depth_e2, SETTINGS) is tier


def test_tier_thresholds_are_configurable() -> None:
    settings = TopSettings(moderate_min_contracts=5, deep_min_contracts=6)
    assert liquidity_tier(499, settings) is LiquidityTier.THIN
    assert liquidity_tier(500, settings) is LiquidityTier.MODERATE
    assert liquidity_tier(600, settings) is LiquidityTier.DEEP
    top = top_of({4000: 550}, {5500: 450, 5400: 150}, settings)
    assert (top.no_liquidity, top.yes_liquidity) == (LiquidityTier.MODERATE, LiquidityTier.DEEP)


def test_depth_window_is_inclusive() -> None:
    bids = {5000: 100, 4800: 20, 4799: 3}
    assert depth_near_best_e2(bids, 200) == 120
    assert depth_near_best_e2(bids, 201) == 123
    assert depth_near_best_e2(bids, 0) == 100
    assert depth_near_best_e2({}, 200) == 0


def test_settings_validation_gives_fixes() -> None:
    with pytest.raises(ValidationError) as raised:
        TopSettings(moderate_min_contracts=100, deep_min_contracts=100)
    error = raised.value.errors()[0]
    assert error["type"] == RULE_TYPE
    assert error["ctx"]["field"] == "deep_min_contracts"
    assert "> 100" in error["ctx"]["fix"]
    for bad in ({"min_interval_ms": -1}, {"depth_window_e4": 10001}, {"moderate_min_contracts": 0}):
        with pytest.raises(ValidationError):
            TopSettings.model_validate(bad)
    with pytest.raises(ValidationError, match="extra"):
        TopSettings.model_validate({"interval_ms": 5})
    defaults = TopSettings()
    assert (defaults.enabled, defaults.min_interval_ms, defaults.min_interval_ns) == (
        False,
        250,
        250 * MS,
    )


# -- TopTracker --------------------------------------------------------------------------------


class Feed:
    """One market's book and tracker, fed records in order (as the session would)."""

    def __init__(self, settings: TopSettings = SETTINGS) -> None:
        self.book = OrderBook(MARKET)
        self.tracker = TopTracker(settings)

    def send(self, record: BookSnapshot | BookDelta) -> Top | None:
        if isinstance(record, BookSnapshot):
            self.book.apply_snapshot(record)
        else:
            self.book.apply_delta(record)
        return self.tracker.receive_book(self.book, record)


def test_first_top_at_once_then_only_best_level_changes() -> None:
    feed = Feed(TopSettings(min_interval_ms=0))
    first = feed.send(snapshot({4800: 1000, 4700: 500}, {5000: 300}))
    assert first is not None
    assert (first.trigger, first.yes_bid_e4, first.seq, first.sid) == (TopTrigger.BOTH, 4800, 1, 1)
    assert feed.send(delta(Side.YES, 4700, 100, at_ms=1, seq=2)) is None  # below the best
    size = feed.send(delta(Side.YES, 4800, -1, at_ms=2, seq=3))  # size at best: a change
    assert size is not None
    assert (size.trigger, size.yes_bid_size_e2, size.seq) == (TopTrigger.BID, 999, 3)
    assert size.receive_ts_ns == TS + 2 * MS
    assert size.exchange_ts_ns == TS + 2 * MS - 7
    ask = feed.send(delta(Side.NO, 5100, 50, at_ms=3, seq=4))  # a better NO bid: lower YES ask
    assert ask is not None
    assert (ask.trigger, ask.yes_ask_e4, ask.yes_ask_size_e2) == (TopTrigger.ASK, 4900, 50)
    both = feed.send(snapshot({4850: 10}, {5050: 10}, at_ms=4, seq=5))
    assert both is not None
    assert both.trigger is TopTrigger.BOTH
    assert feed.send(snapshot({4850: 10, 100: 5}, {5050: 10}, at_ms=5, seq=6)) is None


def test_an_empty_book_publishes_its_first_top() -> None:
    feed = Feed()
    top = feed.send(snapshot())
    assert top is not None
    assert top.yes_bid_e4 is None
    assert top.yes_ask_e4 is None
    assert feed.send(snapshot(at_ms=1000, seq=2)) is None


def test_change_inside_the_interval_is_published_by_the_next_update_after_it() -> None:
    feed = Feed()  # 250 ms
    assert feed.send(snapshot({4800: 1000}, {5000: 300})) is not None  # published at 0 ms
    assert feed.send(delta(Side.YES, 4900, 100, at_ms=100, seq=2)) is None  # held
    assert feed.tracker.held_markets == {MARKET}
    assert feed.tracker.next_due_ns() == TS + 250 * MS
    assert feed.send(delta(Side.YES, 4000, 5, at_ms=249, seq=3)) is None  # deep, still held
    top = feed.send(delta(Side.NO, 3000, 5, at_ms=250, seq=4))  # deep too, but due now
    assert top is not None
    assert (top.trigger, top.yes_bid_e4, top.yes_bid_size_e2) == (TopTrigger.BID, 4900, 100)
    assert (top.seq, top.receive_ts_ns) == (4, TS + 250 * MS)
    assert feed.tracker.held_markets == frozenset()
    assert feed.tracker.next_due_ns() is None
    # The interval counts from that top: 400 ms is held, 500 ms goes out.
    assert feed.send(delta(Side.NO, 5000, 1, at_ms=400, seq=5)) is None
    top = feed.send(delta(Side.NO, 5000, 1, at_ms=500, seq=6))
    assert top is not None
    assert (top.trigger, top.yes_ask_size_e2, top.seq) == (TopTrigger.ASK, 302, 6)


def test_flush_due_publishes_a_held_change_without_another_update() -> None:
    feed = Feed()
    assert feed.send(snapshot({4800: 1000}, {5000: 300})) is not None
    assert feed.send(delta(Side.YES, 4800, 500, at_ms=10, seq=2)) is None
    assert feed.send(delta(Side.YES, 4000, 5, at_ms=20, seq=3)) is None
    assert feed.tracker.flush_due(TS + 249 * MS) == []
    (top,) = feed.tracker.flush_due(TS + 250 * MS)
    # The book as it stands, attributed to the last record applied before the flush.
    assert (top.trigger, top.yes_bid_size_e2, top.seq) == (TopTrigger.BID, 1500, 3)
    assert top.receive_ts_ns == TS + 20 * MS
    assert feed.tracker.flush_due(TS + 10_000 * MS) == []
    # The flush published at 250 ms: the interval counts from there.
    assert feed.send(delta(Side.YES, 4800, 1, at_ms=499, seq=4)) is None
    assert feed.tracker.next_due_ns() == TS + 500 * MS


def test_a_change_undone_inside_the_interval_publishes_nothing() -> None:
    feed = Feed()
    assert feed.send(snapshot({4800: 1000}, {5000: 300})) is not None
    assert feed.send(delta(Side.YES, 4800, 5, at_ms=50, seq=2)) is None
    assert feed.send(delta(Side.YES, 4800, -5, at_ms=60, seq=3)) is None
    assert feed.tracker.held_markets == frozenset()
    assert feed.tracker.flush_due(TS + 1000 * MS) == []
    assert feed.send(delta(Side.YES, 4000, 5, at_ms=900, seq=4)) is None


def test_books_that_are_not_live_publish_nothing() -> None:
    feed = Feed()
    stray = delta(Side.YES, 4800, 5, at_ms=0, seq=9)
    assert feed.book.apply_delta(stray) is ApplyResult.NEEDS_SNAPSHOT
    assert feed.tracker.receive_book(feed.book, stray) is None  # awaiting a snapshot
    assert feed.send(snapshot({4800: 1000}, {5000: 300}, at_ms=1)) is not None
    assert feed.send(delta(Side.YES, 4900, 5, at_ms=2, seq=2)) is None  # held
    assert feed.send(delta(Side.YES, 4800, -1001, at_ms=3, seq=3)) is None  # now INVALID
    assert feed.tracker.held_markets == frozenset()
    assert feed.tracker.flush_due(TS + 1000 * MS) == []
    # The repair's snapshot is compared with the last published top, and carries its flag.
    resynced = snapshot({4700: 10}, {5000: 300}, at_ms=1000, seq=40, flags=(Flag.AFTER_RESYNC,))
    top = feed.send(resynced)
    assert top is not None
    assert (top.trigger, top.yes_bid_e4, top.flags) == (
        TopTrigger.BID,
        4700,
        (Flag.AFTER_RESYNC,),
    )


def test_forget_makes_the_next_top_a_first_one() -> None:
    feed = Feed()
    assert feed.send(snapshot({4800: 1000}, {5000: 300})) is not None
    assert feed.send(delta(Side.YES, 4900, 5, at_ms=1, seq=2)) is None
    feed.tracker.forget(MARKET)
    assert feed.tracker.held_markets == frozenset()
    feed.book = OrderBook(MARKET)  # the session dropped and re-created the book
    top = feed.send(snapshot({4800: 1000}, {5000: 300}, at_ms=2, seq=1))
    assert top is not None
    assert top.trigger is TopTrigger.BOTH
    feed.tracker.forget("NEVER-SEEN")  # no error


def test_markets_are_tracked_separately() -> None:
    tracker = TopTracker(SETTINGS)
    books = {market: OrderBook(market) for market in ("A", "B")}
    for market, book in books.items():
        record = msgspec.structs.replace(snapshot({4800: 10}), market=market)
        book.apply_snapshot(record)
        assert tracker.receive_book(book, record) is not None
    change = msgspec.structs.replace(delta(Side.YES, 4800, 1, at_ms=10, seq=2), market="A")
    books["A"].apply_delta(change)
    assert tracker.receive_book(books["A"], change) is None
    assert tracker.held_markets == {"A"}
    assert [top.market for top in tracker.flush_due(TS + 250 * MS)] == ["A"]
    with pytest.raises(ValueError, match="'B'"):
        tracker.receive_book(books["B"], change)


_OPS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=120),  # ms since the previous record
        st.sampled_from(Side),
        st.integers(min_value=4700, max_value=4710),  # a few adjacent sub-cent levels
        st.integers(min_value=-300, max_value=300),
        st.booleans(),  # flush the tracker before this record
    ),
    max_size=60,
)


def run_feed(ops: list[tuple[int, Side, int, int, bool]]) -> tuple[list[tuple[int, Top]], Feed]:
    feed = Feed(TopSettings(min_interval_ms=100))
    published: list[tuple[int, Top]] = []
    top = feed.send(snapshot({4705: 100}, {4705: 100}))
    assert top is not None
    published.append((TS, top))
    now_ns = TS
    for seq, (gap_ms, side, price_e4, delta_e2, flush) in enumerate(ops, start=2):
        now_ns += gap_ms * MS
        if flush:
            published.extend((now_ns, top) for top in feed.tracker.flush_due(now_ns))
        level = feed.book.yes_bids if side is Side.YES else feed.book.no_bids
        change = max(delta_e2, -level.get(price_e4, 0)) or 1  # never a negative level
        record = BookDelta(
            market=MARKET,
            receive_ts_ns=now_ns,
            sid=1,
            seq=seq,
            side=side,
            price_e4=price_e4,
            delta_e2=change,
        )
        top = feed.send(record)
        if top is not None:
            published.append((now_ns, top))
    published.extend((now_ns + 10**12, top) for top in feed.tracker.flush_due(now_ns + 10**12))
    return published, feed


@given(_OPS)
def test_tracker_properties_over_random_updates(
    ops: list[tuple[int, Side, int, int, bool]],
) -> None:
    published, feed = run_feed(ops)
    times = [at_ns for at_ns, _ in published]
    # At least the minimum interval between two tops; each top is for a different record.
    assert all(later - earlier >= 100 * MS for earlier, later in itertools.pairwise(times))
    ids = [msg_id_for(top) for _, top in published]
    assert len(set(ids)) == len(ids)
    # Nothing is lost: the last top shows the final best levels.
    last = published[-1][1]
    assert feed.book.best_yes_bid() == (
        None if last.yes_bid_e4 is None else Level(last.yes_bid_e4, last.yes_bid_size_e2 or 0)
    )
    assert feed.book.best_no_bid() == (
        None if last.no_bid_e4 is None else Level(last.no_bid_e4, last.yes_ask_size_e2 or 0)
    )
    # A replay of the same records, flushed at the same times, gives the same tops and ids.
    again, _ = run_feed(ops)
    assert again == published


# -- subjects, Msg-Ids, tail, schema ------------------------------------------------------------


def a_top(**changes: object) -> Top:
    top = top_of({4805: 100}, {5100: 250})
    return msgspec.structs.replace(top, **{"sid": 3, "seq": 17, "receive_ts_ns": TS + 5, **changes})


def test_subject_and_msg_id() -> None:
    top = a_top()
    mapper = SubjectMapper("ssmd.test.kalshi")
    assert mapper.subject_for(top) == "ssmd.test.kalshi.top.KXNBAPTS-26NOV21-LEBRON-25%2E5"
    assert mapper.kind_subject("top") == "ssmd.test.kalshi.top.>"
    assert msg_id_for(top) == f"top:{MARKET}:3:17:{TS + 5}"
    assert msg_id_for(a_top(sid=None, seq=None)) == f"top:{MARKET}:::{TS + 5}"
    assert msg_id_for(a_top(receive_ts_ns=TS + 6)) != msg_id_for(top)
    assert msg_id_for(a_top(seq=18)) != msg_id_for(top)


def test_tail_accepts_and_prints_top_records() -> None:
    assert subject_to_tail("p", kind="top") == "p.top.>"
    assert subject_to_tail("p", kind="top", market="M.1") == "p.top.M%2E1"
    line = format_record_line(a_top(), stream_seq=None)
    assert line == (
        "2025-11-21T16:53:20.000000005Z top           KXNBAPTS-26NOV21-LEBRON-25.5"
        " bid=0.4805x1.00 ask=0.4900x2.50 mid=0.48525 odds=+104.08/-108.12"
        " liquidity=thin/thin trigger=both"
    )


def test_top_round_trips_through_json_and_msgpack_as_a_record() -> None:
    top = a_top(flags=(Flag.AFTER_RESYNC,))
    as_json = msgspec.json.encode(top)
    assert json.loads(as_json)["kind"] == "top"
    assert json.loads(as_json)["mid_e5"] == 48525
    assert msgspec.json.decode(as_json, type=Record) == top
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(top), type=Record) == top
    assert Top.__struct_config__.frozen
    assert not Top.__struct_config__.gc


def test_schema_lists_top_with_integer_fields() -> None:
    schema = json_schema()
    assert schema["discriminator"]["mapping"]["top"] == "#/$defs/Top"
    properties = schema["$defs"]["Top"]["properties"]
    for name in ("yes_bid_e4", "mid_e5", "spread_e4", "yes_american_odds_e2", "no_ask_e4"):
        assert {"type": "integer"} in properties[name]["anyOf"]
    assert properties["yes_ask_depth_e2"]["type"] == "integer"
    assert not any("number" in json.dumps(value) for value in properties.values())  # no floats
    result = subprocess.run([TOOLBOX, "schema"], capture_output=True, text=True, check=True)
    assert "top" in json.loads(result.stdout)["discriminator"]["mapping"]
