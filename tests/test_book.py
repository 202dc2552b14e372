"""Local order books (ssmd.book): plain cases, a state machine against a naive model, a replay."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ssmd.book import ApplyResult, BookSet, BookState, OrderBook
from ssmd.messages import CONTROL_FRAME_TYPES, FrameDecoder
from ssmd.normalize import normalize
from ssmd.records import BookDelta, BookSnapshot, Level, Side, Trade

from .conftest import CAPTURES

MARKET = "KXTEST-26AUG17-T1"


def snapshot(
    yes: dict[int, int] | None = None,
    no: dict[int, int] | None = None,
    *,
    market: str = MARKET,
    seq: int | None = 1,
) -> BookSnapshot:
    return BookSnapshot(
        market=market,
        receive_ts_ns=1,
        seq=seq,
        yes_bids=tuple(Level(p, s) for p, s in sorted((yes or {}).items())),
        no_bids=tuple(Level(p, s) for p, s in sorted((no or {}).items())),
    )


def delta(
    side: Side, price_e4: int, delta_e2: int, *, market: str = MARKET, seq: int | None = 2
) -> BookDelta:
    return BookDelta(
        market=market, receive_ts_ns=1, seq=seq, side=side, price_e4=price_e4, delta_e2=delta_e2
    )


def live_book(yes: dict[int, int] | None = None, no: dict[int, int] | None = None) -> OrderBook:
    book = OrderBook(MARKET)
    assert book.apply_snapshot(snapshot(yes, no)) is ApplyResult.APPLIED
    return book


# --- plain cases -------------------------------------------------------------------------


def test_new_book_awaits_snapshot_and_refuses_deltas() -> None:
    book = OrderBook(MARKET)
    assert book.state is BookState.AWAITING_SNAPSHOT
    assert book.apply_delta(delta(Side.YES, 4800, 100)) is ApplyResult.NEEDS_SNAPSHOT
    assert book.yes_bids == {}
    assert book.last_seq is None
    assert book.best_yes_bid() is None
    assert book.best_yes_ask() is None


def test_snapshot_replaces_the_whole_book() -> None:
    book = live_book({4800: 1000, 4900: 250}, {5000: 300})
    second = snapshot({4700: 1234}, {5050: 77, 4000: 100}, seq=9)
    assert book.apply_snapshot(second) is ApplyResult.APPLIED
    assert book.state is BookState.LIVE
    assert book.yes_bids == {4700: 1234}
    assert book.no_bids == {5050: 77, 4000: 100}
    assert book.last_seq == 9
    assert book.snapshot_levels() == (second.yes_bids, second.no_bids)


def test_ladderless_snapshot_empties_the_book() -> None:
    # §4.2.8: an unsolicited snapshot with no ladder means the book emptied.
    book = live_book({4800: 1000}, {5000: 300})
    assert book.apply_snapshot(snapshot(seq=76182)) is ApplyResult.APPLIED
    assert book.yes_bids == {}
    assert book.no_bids == {}
    assert book.best_yes_bid() is None
    assert book.best_no_ask() is None
    assert not book.is_crossed()


def test_deltas_add_grow_and_shrink_levels() -> None:
    book = live_book({4800: 1000})
    assert book.apply_delta(delta(Side.YES, 4805, 150, seq=2)) is ApplyResult.APPLIED
    assert book.apply_delta(delta(Side.YES, 4800, -1, seq=3)) is ApplyResult.APPLIED
    assert book.apply_delta(delta(Side.NO, 3000, 3087, seq=4)) is ApplyResult.APPLIED
    assert book.yes_bids == {4800: 999, 4805: 150}
    assert book.no_bids == {3000: 3087}
    assert book.best_yes_bid() == Level(4805, 150)
    assert book.last_seq == 4


def test_level_reaching_exactly_zero_disappears_and_best_moves_down() -> None:
    book = live_book({4800: 1000, 4900: 250, 4700: 5})
    assert book.best_yes_bid() == Level(4900, 250)
    assert book.apply_delta(delta(Side.YES, 4900, -250)) is ApplyResult.APPLIED
    assert 4900 not in book.yes_bids
    assert book.best_yes_bid() == Level(4800, 1000)
    assert book.apply_delta(delta(Side.YES, 4800, -1000)) is ApplyResult.APPLIED
    assert book.apply_delta(delta(Side.YES, 4700, -5)) is ApplyResult.APPLIED
    assert book.yes_bids == {}
    assert book.best_yes_bid() is None
    assert book.apply_delta(delta(Side.YES, 4600, 10)) is ApplyResult.APPLIED
    assert book.best_yes_bid() == Level(4600, 10)


def test_negative_level_invalidates_and_leaves_levels_unchanged() -> None:
    book = live_book({4800: 1000}, {5000: 300})
    assert book.apply_delta(delta(Side.YES, 4800, -1001, seq=7)) is ApplyResult.NEGATIVE_LEVEL
    assert book.state is BookState.INVALID
    assert book.yes_bids == {4800: 1000}
    assert book.no_bids == {5000: 300}
    assert book.last_seq == 1


def test_removing_an_absent_level_is_negative() -> None:
    book = live_book({4800: 1000})
    assert book.apply_delta(delta(Side.NO, 4800, -1)) is ApplyResult.NEGATIVE_LEVEL
    assert book.state is BookState.INVALID
    assert book.no_bids == {}


def test_invalid_book_refuses_deltas_until_next_snapshot() -> None:
    book = live_book({4800: 1000})
    book.invalidate()
    assert book.state is BookState.INVALID
    assert book.apply_delta(delta(Side.YES, 4800, 5)) is ApplyResult.NEEDS_SNAPSHOT
    assert book.yes_bids == {4800: 1000}
    assert book.apply_snapshot(snapshot({4800: 2000}, seq=40)) is ApplyResult.APPLIED
    assert book.state is BookState.LIVE
    assert book.apply_delta(delta(Side.YES, 4800, 5, seq=41)) is ApplyResult.APPLIED
    assert book.yes_bids == {4800: 2005}


def test_invalidate_before_any_snapshot_keeps_awaiting() -> None:
    book = OrderBook(MARKET)
    book.invalidate()
    assert book.state is BookState.AWAITING_SNAPSHOT


def test_snapshot_with_negative_size_is_stored_without_it_and_invalid() -> None:
    book = OrderBook(MARKET)
    result = book.apply_snapshot(snapshot({4800: 1000, 4900: -5}, {5000: 300, 100: 0}, seq=3))
    assert result is ApplyResult.NEGATIVE_LEVEL
    assert book.state is BookState.INVALID
    assert book.yes_bids == {4800: 1000}
    assert book.no_bids == {5000: 300}
    assert book.last_seq == 3
    assert book.apply_delta(delta(Side.YES, 4800, 1)) is ApplyResult.NEEDS_SNAPSHOT


def test_snapshot_zero_size_level_is_dropped_without_complaint() -> None:
    book = OrderBook(MARKET)
    assert book.apply_snapshot(snapshot({4800: 0, 4700: 10})) is ApplyResult.APPLIED
    assert book.yes_bids == {4700: 10}


def test_implied_asks_come_from_the_other_sides_bids() -> None:
    book = live_book({4500: 700, 4400: 100}, {3000: 1200, 2000: 50})
    assert book.best_yes_bid() == Level(4500, 700)
    assert book.best_no_bid() == Level(3000, 1200)
    assert book.best_yes_ask() == Level(7000, 1200)  # NO bid 0.30 -> YES ask 0.70
    assert book.best_no_ask() == Level(5500, 700)  # YES bid 0.45 -> NO ask 0.55


def test_sub_cent_prices_are_exact() -> None:
    book = live_book({4805: 1}, {5194: 2})
    assert book.best_yes_ask() == Level(4806, 2)
    assert not book.is_crossed()
    assert book.apply_delta(delta(Side.NO, 5195, 3)) is ApplyResult.APPLIED
    assert book.best_yes_ask() == Level(4805, 3)
    assert book.is_crossed()  # bid 0.4805 >= ask 0.4805


@pytest.mark.parametrize(
    ("yes", "no", "crossed"),
    [
        ({7000: 1}, {3000: 1}, True),  # bid 0.70 == ask 0.70
        ({7100: 1}, {3000: 1}, True),
        ({6999: 1}, {3000: 1}, False),
        ({9900: 1}, {}, False),
        ({}, {9900: 1}, False),
    ],
)
def test_crossed_detection(yes: dict[int, int], no: dict[int, int], crossed: bool) -> None:
    assert live_book(yes, no).is_crossed() is crossed


def test_depth_is_best_first_and_limited() -> None:
    book = live_book({100: 1, 4800: 2, 4805: 3, 200: 4}, {9000: 5, 10: 6})
    assert book.depth(Side.YES, 3) == (Level(4805, 3), Level(4800, 2), Level(200, 4))
    assert book.depth(Side.NO, 10) == (Level(9000, 5), Level(10, 6))
    assert book.depth(Side.YES, 0) == ()
    with pytest.raises(ValueError, match="levels"):
        book.depth(Side.YES, -1)


def test_record_for_another_market_is_a_caller_bug() -> None:
    book = live_book({4800: 1})
    with pytest.raises(ValueError, match="OTHER"):
        book.apply_delta(delta(Side.YES, 4800, 1, market="OTHER"))
    with pytest.raises(ValueError, match="OTHER"):
        book.apply_snapshot(snapshot(market="OTHER"))
    assert book.yes_bids == {4800: 1}


def test_bookset_routes_tracks_and_reports_stale_markets() -> None:
    books = BookSet()
    books.track(["A", "B"])
    assert books.markets_needing_snapshot() == {"A", "B"}
    assert books.apply(snapshot({4800: 1}, market="A")) is ApplyResult.APPLIED
    assert books.apply(delta(Side.YES, 4800, 1, market="C")) is ApplyResult.NEEDS_SNAPSHOT
    assert sorted(books) == ["A", "B", "C"]
    assert len(books) == 3
    assert books.markets_needing_snapshot() == {"B", "C"}
    books.invalidate(["A", "D"])
    assert books["A"].state is BookState.INVALID
    assert books["D"].state is BookState.AWAITING_SNAPSHOT
    assert books.markets_needing_snapshot() == {"A", "B", "C", "D"}
    books.discard("D")
    books.discard("never-held")
    assert "D" not in books
    assert books.get("D") is None
    a_book = books.get("A")
    assert a_book is not None
    assert a_book.yes_bids == {4800: 1}


def test_bookset_rejects_non_book_records() -> None:
    books = BookSet()
    trade = Trade(
        market=MARKET,
        receive_ts_ns=1,
        trade_id="t1",
        yes_price_e4=4800,
        no_price_e4=5200,
        size_e2=1,
    )
    with pytest.raises(TypeError, match="Trade"):
        books.apply(trade)  # type: ignore[arg-type]
    assert len(books) == 0


# --- state machine against a naive model ---------------------------------------------------

MARKETS = ("KXA-1", "KXB-2", "KXC-3")
PRICES = (1, 99, 100, 3000, 4800, 4805, 5195, 5200, 7000, 9999)  # cents and sub-cent ticks
SIDES = (Side.YES, Side.NO)
sizes_e2 = st.integers(1, 250_000)  # whole and fractional contracts
snapshot_sides = st.dictionaries(st.sampled_from(PRICES), sizes_e2, max_size=6)


@dataclass
class ModelBook:
    """The simplest book there is: the last snapshot plus the list of accepted deltas."""

    state: BookState = BookState.AWAITING_SNAPSHOT
    base: dict[Side, dict[int, int]] = field(default_factory=lambda: {Side.YES: {}, Side.NO: {}})
    deltas: list[tuple[Side, int, int]] = field(default_factory=list)
    last_seq: int | None = None

    def levels(self, side: Side) -> dict[int, int]:
        total: Counter[int] = Counter(self.base[side])
        for delta_side, price_e4, delta_e2 in self.deltas:
            if delta_side is side:
                total[price_e4] += delta_e2
        return {p: s for p, s in total.items() if s != 0}

    def best(self, side: Side) -> int | None:
        return max(self.levels(side), default=None)


class BookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.books = BookSet()
        self.model: dict[str, ModelBook] = {}
        self.seq = 0

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _model(self, market: str) -> ModelBook:
        return self.model.setdefault(market, ModelBook())

    @rule(market=st.sampled_from(MARKETS), yes=snapshot_sides, no=snapshot_sides)
    def apply_snapshot(self, market: str, yes: dict[int, int], no: dict[int, int]) -> None:
        record = snapshot(yes, no, market=market, seq=self._next_seq())
        assert self.books.apply(record) is ApplyResult.APPLIED
        self.model[market] = ModelBook(
            BookState.LIVE, {Side.YES: dict(yes), Side.NO: dict(no)}, [], record.seq
        )
        assert self.books[market].snapshot_levels() == (record.yes_bids, record.no_bids)

    @rule(
        market=st.sampled_from(MARKETS),
        yes=snapshot_sides,
        bad_price=st.sampled_from(PRICES),
        bad_size=st.integers(-10_000, -1),
    )
    def apply_impossible_snapshot(
        self, market: str, yes: dict[int, int], bad_price: int, bad_size: int
    ) -> None:
        no = {bad_price: bad_size, **{p: s for p, s in yes.items() if p != bad_price}}
        record = snapshot(yes, no, market=market, seq=self._next_seq())
        assert self.books.apply(record) is ApplyResult.NEGATIVE_LEVEL
        kept_no = {p: s for p, s in no.items() if s > 0}
        self.model[market] = ModelBook(
            BookState.INVALID, {Side.YES: dict(yes), Side.NO: kept_no}, [], record.seq
        )

    def _apply_delta(self, market: str, side: Side, price_e4: int, delta_e2: int) -> None:
        record = delta(side, price_e4, delta_e2, market=market, seq=self._next_seq())
        result = self.books.apply(record)
        model = self._model(market)
        if model.state is not BookState.LIVE:
            assert result is ApplyResult.NEEDS_SNAPSHOT
        elif model.levels(side).get(price_e4, 0) + delta_e2 < 0:
            assert result is ApplyResult.NEGATIVE_LEVEL
            model.state = BookState.INVALID
        else:
            assert result is ApplyResult.APPLIED
            model.deltas.append((side, price_e4, delta_e2))
            model.last_seq = record.seq

    @rule(
        market=st.sampled_from(MARKETS),
        side=st.sampled_from(SIDES),
        price_e4=st.sampled_from(PRICES),
        delta_e2=st.integers(-300, 300),
    )
    def apply_random_delta(self, market: str, side: Side, price_e4: int, delta_e2: int) -> None:
        self._apply_delta(market, side, price_e4, delta_e2)

    def _live_levels(self) -> list[tuple[str, Side, int, int]]:
        return [
            (market, side, price_e4, size_e2)
            for market, model in sorted(self.model.items())
            if model.state is BookState.LIVE
            for side in SIDES
            for price_e4, size_e2 in sorted(model.levels(side).items())
        ]

    @precondition(lambda self: bool(self._live_levels()))
    @rule(data=st.data(), overshoot=st.sampled_from((0, 0, 1)))
    def clear_a_level(self, data: st.DataObject, overshoot: int) -> None:
        """Remove a level exactly (it must vanish) or by one too many (NEGATIVE_LEVEL)."""
        market, side, price_e4, size_e2 = data.draw(st.sampled_from(self._live_levels()))
        self._apply_delta(market, side, price_e4, -size_e2 - overshoot)

    @rule(markets=st.sets(st.sampled_from(MARKETS), max_size=2))
    def invalidate(self, markets: set[str]) -> None:
        self.books.invalidate(markets)
        for market in markets:
            model = self._model(market)
            if model.state is BookState.LIVE:
                model.state = BookState.INVALID

    @invariant()
    def books_equal_model(self) -> None:
        assert set(self.books) == set(self.model)
        assert len(self.books) == len(self.model)
        for market, model in self.model.items():
            book = self.books[market]
            yes, no = model.levels(Side.YES), model.levels(Side.NO)
            assert book.state is model.state
            assert book.last_seq == model.last_seq
            assert book.yes_bids == yes
            assert book.no_bids == no
            assert all(s > 0 for s in (*yes.values(), *no.values()))
            assert book.snapshot_levels() == (
                tuple(Level(p, s) for p, s in sorted(yes.items())),
                tuple(Level(p, s) for p, s in sorted(no.items())),
            )
            assert book.depth(Side.NO, 3) == tuple(
                Level(p, s) for p, s in sorted(no.items(), reverse=True)[:3]
            )

    @invariant()
    def best_prices_equal_model(self) -> None:
        for market, model in self.model.items():
            book = self.books[market]
            best_yes, best_no = model.best(Side.YES), model.best(Side.NO)
            yes, no = model.levels(Side.YES), model.levels(Side.NO)
            if best_yes is None:
                assert book.best_yes_bid() is None
                assert book.best_no_ask() is None
            else:
                assert book.best_yes_bid() == Level(best_yes, yes[best_yes])
                assert book.best_no_ask() == Level(10_000 - best_yes, yes[best_yes])
            if best_no is None:
                assert book.best_no_bid() is None
                assert book.best_yes_ask() is None
            else:
                assert book.best_no_bid() == Level(best_no, no[best_no])
                assert book.best_yes_ask() == Level(10_000 - best_no, no[best_no])
            crossed = best_yes is not None and best_no is not None and best_yes >= 10_000 - best_no
            assert book.is_crossed() is crossed

    @invariant()
    def stale_markets_equal_model(self) -> None:
        expected = {m for m, model in self.model.items() if model.state is not BookState.LIVE}
        assert self.books.markets_needing_snapshot() == expected


BookMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBookMachine = BookMachine.TestCase


# --- replay of a live demo capture (use_yes_price: true) ----------------------------------


def test_replay_demo_get_snapshot_capture() -> None:
    """Demo 2026-08-17: 3 snapshots, a delta at seq 30, get_snapshot replies at seq 31-33, two
    deltas. The subscription used use_yes_price, so the NO levels on the wire are YES-leg
    prices and normalize turns them into NO-leg prices (p -> 1 - p)."""
    path = CAPTURES / "ericsngyun__probability-arena__demo-2026-08-17-get-snapshot.jsonl"
    decoder = FrameDecoder()
    books = BookSet()
    c_market = "KXMAXSHARDINGTEST-26AUG2818-T68399.99"
    c_no_before_resnapshot: dict[int, int] = {}
    for line in path.read_bytes().splitlines():
        frame = decoder.decode(line)
        if isinstance(frame, CONTROL_FRAME_TYPES):
            continue
        record = normalize(frame, 1, no_side_in_yes_price=True)
        assert isinstance(record, BookSnapshot | BookDelta)
        if record.seq == 31:
            c_no_before_resnapshot = dict(books[c_market].no_bids)
        assert books.apply(record) is ApplyResult.APPLIED

    assert len(books) == 3
    assert books.markets_needing_snapshot() == set()

    # The seq-30 delta (NO 0.25 yes-price = NO bid 0.75, +100) agrees with the seq-31 reply.
    c = books[c_market]
    assert c_no_before_resnapshot == {5700: 250_000, 5800: 217_000, 7500: 30_000}
    assert c.no_bids == c_no_before_resnapshot
    assert c.last_seq == 31
    assert c.best_yes_bid() == Level(2100, 30_000)
    assert c.best_no_bid() == Level(7500, 30_000)
    assert c.best_yes_ask() == Level(2500, 30_000)
    assert c.best_no_ask() == Level(7900, 30_000)
    assert c.depth(Side.NO, 3) == (Level(7500, 30_000), Level(5800, 217_000), Level(5700, 250_000))

    a = books["KXMAXSHARDINGTEST-26AUG2818-T56399.99"]
    assert a.last_seq == 32
    assert a.best_yes_bid() == Level(8400, 20_000)
    assert a.best_no_bid() == Level(1200, 20_000)  # wire NO 0.88 in yes-price
    assert a.best_yes_ask() == Level(8800, 20_000)
    assert a.best_no_ask() == Level(1600, 20_000)
    assert a.depth(Side.YES, 5) == (Level(8400, 20_000), Level(7500, 48_300), Level(7400, 250_000))
    assert not a.is_crossed()

    # Seq 34 (+100 YES at 0.36) and seq 35 (+100 NO at yes-price 0.40 = NO 0.60) on the reply.
    b = books["KXMAXSHARDINGTEST-26AUG2818-T65399.99"]
    assert b.last_seq == 35
    assert b.yes_bids == {3600: 30_000}
    assert b.no_bids == {4700: 250_000, 4800: 217_600, 6000: 30_000}
    assert b.best_yes_bid() == Level(3600, 30_000)
    assert b.best_yes_ask() == Level(4000, 30_000)
    assert b.best_no_ask() == Level(6400, 30_000)
    assert not b.is_crossed()


def test_book_for_finds_held_books_only() -> None:
    books = BookSet()
    assert books.book_for(MARKET) is None
    books.apply(snapshot({4200: 100}))
    book = books.book_for(MARKET)
    assert book is books[MARKET]
    assert book is not None
    assert book.apply_delta(delta(Side.YES, 4300, 5)) is ApplyResult.APPLIED
    assert books[MARKET].best_yes_bid() == Level(4300, 5)
    books.discard(MARKET)
    assert books.book_for(MARKET) is None
