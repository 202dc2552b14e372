"""The simulator's market model: determinism, exact uncrossed books, ticker/book consistency."""

from __future__ import annotations

from collections import Counter

import pytest

from ssmd.errors import ConfigError
from ssmd.exchange.market import (
    BookChange,
    EventLifecycle,
    EventMix,
    Lifecycle,
    LifecycleType,
    MarketEvent,
    MarketGenerator,
    Side,
    SimMarket,
    TakerBookSide,
    TickerChange,
    Trade,
)
from ssmd.fixedpoint import ONE_DOLLAR_E4

NOW_NS = 1_787_000_000_000_000_000
EVENTS = 4_000


def run(generator: MarketGenerator, count: int) -> list[MarketEvent]:
    return [generator.next_event(NOW_NS + i * 5_000_000) for i in range(count)]


def book_copy(market: SimMarket) -> tuple[dict[int, int], dict[int, int]]:
    return dict(market.yes_bids), dict(market.no_bids)


def test_same_seed_same_markets_and_events() -> None:
    first, second = MarketGenerator(12, seed=7), MarketGenerator(12, seed=7)
    assert first.tickers == second.tickers
    assert [m.market_id for m in first.markets.values()] == [
        m.market_id for m in second.markets.values()
    ]
    assert run(first, 1_000) == run(second, 1_000)
    assert all(book_copy(first.markets[t]) == book_copy(second.markets[t]) for t in first.tickers)


def test_different_seed_different_stream() -> None:
    assert run(MarketGenerator(12, seed=1), 200) != run(MarketGenerator(12, seed=2), 200)


def test_realistic_tickers_ids_ticks_and_sizes() -> None:
    generator = MarketGenerator(20, seed=1)
    tickers = generator.tickers
    assert len(tickers) == len(set(tickers)) == 20
    assert "KXSIMBTC-26NOV21-T97499.99" in tickers
    assert "KXSIM-26NOV21-T0000" in tickers
    ids = [m.market_id for m in generator.markets.values()]
    assert len(set(ids)) == 20
    assert all(len(i) == 36 and i.count("-") == 4 for i in ids)
    ticks = Counter(m.tick_e4 for m in generator.markets.values())
    assert ticks[10] >= 2  # a few deci-cent markets (§7.1.5)
    assert ticks[100] >= 15
    sizes = [
        s for m in generator.markets.values() for s in (*m.yes_bids.values(), *m.no_bids.values())
    ]
    assert any(s % 100 for s in sizes), "some fractional sizes"
    assert any(s % 100 == 0 for s in sizes), "mostly whole contracts"
    subcent = [m for m in generator.markets.values() if m.tick_e4 == 10]
    assert any(p % 100 for m in subcent for p in (*m.yes_bids, *m.no_bids))


def test_custom_prefix() -> None:
    generator = MarketGenerator(3, seed=1, ticker_prefix="KXFOO")
    assert generator.tickers == [
        "KXFOO-26NOV21-T0000",
        "KXFOOBTC-26NOV21-T97499.99",
        "KXFOO-26NOV21-T0002",
    ]


def test_books_never_negative_crossed_or_off_tick() -> None:
    generator = MarketGenerator(10, seed=3)
    for i in range(EVENTS):
        event = generator.next_event(NOW_NS + i)
        market_name = getattr(event, "market", None)
        if market_name is None:
            continue
        market = generator.markets[market_name]
        for side in Side:
            for price_e4, size_e2 in market.bids(side).items():
                assert size_e2 > 0, (i, event)
                assert 0 < price_e4 < ONE_DOLLAR_E4
                assert price_e4 % market.tick_e4 == 0
        assert not market.is_crossed(), (i, event)
        yes, no = market.best_bid(Side.YES), market.best_bid(Side.NO)
        if yes and no:
            assert yes[0] < ONE_DOLLAR_E4 - no[0]  # best YES bid < best YES ask (§7.1.1)


def test_book_changes_apply_exactly() -> None:
    generator = MarketGenerator(6, seed=4)
    removed_levels = 0
    for i in range(EVENTS):
        before = {t: book_copy(m) for t, m in generator.markets.items()}
        event = generator.next_event(NOW_NS + i)
        change = event if isinstance(event, BookChange) else getattr(event, "book_change", None)
        for ticker, market in generator.markets.items():
            yes_before, no_before = before[ticker]
            if change is None or change.market != ticker:
                assert book_copy(market) == (yes_before, no_before)
                continue
            old = (yes_before if change.side is Side.YES else no_before).get(change.price_e4, 0)
            new = market.bids(change.side).get(change.price_e4)
            assert change.delta_e2 != 0
            assert old + change.delta_e2 >= 0
            if old + change.delta_e2 == 0:
                assert new is None  # a level reaching 0 disappears
                removed_levels += 1
            else:
                assert new == old + change.delta_e2
    assert removed_levels > 0


def test_ticker_consistent_with_book() -> None:
    generator = MarketGenerator(8, seed=5)
    tickers = 0
    for i in range(EVENTS):
        event = generator.next_event(NOW_NS + i)
        if not isinstance(event, TickerChange):
            continue
        tickers += 1
        market = generator.markets[event.market]
        stats = event.stats
        yes_levels, no_levels = market.yes_bids, market.no_bids
        assert stats.market_id == market.market_id
        assert stats.yes_bid_e4 == max(yes_levels, default=0)
        assert stats.yes_bid_size_e2 == yes_levels.get(stats.yes_bid_e4, 0)
        best_no = max(no_levels, default=0)
        assert stats.yes_ask_e4 == ONE_DOLLAR_E4 - best_no
        assert stats.yes_ask_size_e2 == no_levels.get(best_no, 0)
        assert stats.yes_bid_e4 < stats.yes_ask_e4
        assert stats.last_price_e4 == market.last_price_e4
        assert stats.volume_e2 == market.volume_e2
        assert stats.dollar_volume == market.volume_e2 // 200
        assert stats.open_interest_e2 >= 0
    assert tickers > EVENTS // 8


def test_trades_consume_the_best_resting_bid() -> None:
    generator = MarketGenerator(8, seed=6)
    trades: list[Trade] = []
    for i in range(EVENTS):
        books = {t: book_copy(m) for t, m in generator.markets.items()}
        volumes = {t: m.volume_e2 for t, m in generator.markets.items()}
        event = generator.next_event(NOW_NS + i)
        if not isinstance(event, Trade):
            continue
        trades.append(event)
        yes_before, no_before = books[event.market]
        resting = no_before if event.taker_side is Side.YES else yes_before
        best_price = max(resting)
        change = event.book_change
        assert change.side is event.taker_side.other
        assert change.price_e4 == best_price
        assert change.delta_e2 == -event.size_e2
        assert 0 < event.size_e2 <= resting[best_price]
        if event.taker_side is Side.YES:  # bought YES at the implied ask
            assert event.yes_price_e4 == ONE_DOLLAR_E4 - best_price
            assert event.taker_book_side is TakerBookSide.BID
        else:
            assert event.yes_price_e4 == best_price
            assert event.taker_book_side is TakerBookSide.ASK
        assert event.yes_price_e4 + event.no_price_e4 == ONE_DOLLAR_E4
        market = generator.markets[event.market]
        assert market.last_price_e4 == event.yes_price_e4
        assert market.last_trade_size_e2 == event.size_e2
        assert market.volume_e2 == volumes[event.market] + event.size_e2
    assert len(trades) > EVENTS // 20
    assert len({t.trade_id for t in trades}) == len(trades)
    assert {t.taker_side for t in trades} == {Side.YES, Side.NO}


def test_default_mix_proportions() -> None:
    kinds = Counter(type(e).__name__ for e in run(MarketGenerator(20, seed=1), 10_000))
    assert 5_400 < kinds["BookChange"] < 6_600
    assert 2_100 < kinds["TickerChange"] < 2_900
    assert 700 < kinds["Trade"] < 1_300
    assert 300 < kinds["Lifecycle"] + kinds["EventLifecycle"] < 700
    assert kinds["EventLifecycle"] > 0


def test_other_events_are_lifecycle_messages() -> None:
    generator = MarketGenerator(
        5, seed=2, mix=EventMix(book_change=0, ticker_change=0, trade=0, other=1)
    )
    events = run(generator, 300)
    types = Counter(e.event_type if isinstance(e, Lifecycle) else "event_lifecycle" for e in events)
    assert set(types) == {
        LifecycleType.METADATA_UPDATED,
        LifecycleType.CLOSE_DATE_UPDATED,
        "event_lifecycle",
    }
    for event in events:
        if isinstance(event, Lifecycle) and event.event_type is LifecycleType.CLOSE_DATE_UPDATED:
            assert event.close_ts_s is not None
            assert event.close_ts_s > NOW_NS // 1_000_000_000
        elif isinstance(event, Lifecycle):
            assert event.yes_sub_title
        else:
            assert isinstance(event, EventLifecycle)
            assert event.event_ticker.startswith("KXSIM-")
    events_announced = [e.event_ticker for e in events if isinstance(e, EventLifecycle)]
    assert len(events_announced) == len(set(events_announced))


def test_single_kind_mix() -> None:
    only_books = run(MarketGenerator(4, seed=1, mix=EventMix(60, 0, 0, 0)), 500)
    assert all(isinstance(e, BookChange) for e in only_books)
    only_tickers = run(MarketGenerator(4, seed=1, mix=EventMix(0, 1, 0, 0)), 100)
    assert all(isinstance(e, TickerChange) for e in only_tickers)


@pytest.mark.parametrize(
    ("count", "mix", "field"),
    [
        (0, EventMix(), "market_count"),
        (3, EventMix(0, 0, 0, 0), "mix"),
        (3, EventMix(-1, 2, 0, 0), "mix"),
    ],
)
def test_bad_configuration(count: int, mix: EventMix, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        MarketGenerator(count, seed=1, mix=mix)
    assert info.value.field == field


def test_trade_ids_differ_between_runs_while_the_market_data_repeats() -> None:
    """Kalshi never reuses a trade id; a second run with the same seed must not either, or a
    stream's Msg-Id dedupe would silently drop its trades."""
    from ssmd.exchange.market import Trade as SimTrade

    def trades(salt: int) -> list[SimTrade]:
        generator = MarketGenerator(4, 9, trade_id_salt=salt)
        events = [generator.next_event(n * 1_000_000) for n in range(2_000)]
        return [e for e in events if isinstance(e, SimTrade)]

    first, again, other = trades(0), trades(0), trades(12345)
    assert first
    assert [t.trade_id for t in first] == [t.trade_id for t in again]
    assert not {t.trade_id for t in first} & {t.trade_id for t in other}
    assert [(t.market, t.yes_price_e4, t.size_e2) for t in first] == [
        (t.market, t.yes_price_e4, t.size_e2) for t in other
    ]
