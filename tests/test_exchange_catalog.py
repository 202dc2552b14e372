"""The simulator's market catalog, REST queries and churn, by plain calls (PROTOCOL.md §9, §7.5).

Pure: the starting catalog and its query rules (400s), pagination over ~5,000 markets while
churn adds markets between pages, churn transitions and their lifecycle frames at the right
times on an injected clock, and how the market generator follows them.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

import pytest

from ssmd.config.models import SimulatorSettings
from ssmd.errors import ConfigError
from ssmd.exchange.catalog import (
    NS_PER_S,
    Catalog,
    EventLifecycle,
    EventQuery,
    Lifecycle,
    LifecycleType,
    MarketQuery,
    MarketResult,
    MarketStatus,
    MveFilter,
    StatusFilter,
    format_rfc3339_s,
    lifecycle_msg,
)
from ssmd.exchange.catalog_spec import CatalogSpec, build_catalog
from ssmd.exchange.churn import (
    CatalogChange,
    Churn,
    ChurnSpec,
    apply_to_generator,
    parse_churn_spec,
    register_catalog,
)
from ssmd.exchange.cli import build_parser, parse_rest_rate
from ssmd.exchange.market import BookChange, MarketGenerator, Side, TickerChange
from ssmd.exchange.rest import (
    BadQuery,
    SeriesQuery,
    TradeLog,
    encode_cursor,
    parse_event_query,
    parse_market_query,
    parse_series_query,
)
from ssmd.exchange.rest_catalog import CatalogRest
from ssmd.fixedpoint import parse_price, parse_size

NOW_NS = 1_795_276_800 * NS_PER_S  # 2026-11-21T16:00:00Z
NOW_S = NOW_NS // NS_PER_S
SIMULATED = MarketGenerator(20, seed=1)


def catalog_of(markets: int, seed: int = 3) -> Catalog:
    return build_catalog(CatalogSpec(markets=markets, seed=seed), SIMULATED.markets.values(),
                         now_ns=NOW_NS)  # fmt: skip


CATALOG = catalog_of(1_000)


def page(catalog: Catalog, **filters: Any) -> list[str]:
    """Every ticker of a markets query, all pages."""
    tickers: list[str] = []
    after = 0
    while True:
        result = catalog.markets_page(MarketQuery(after_seq=after, **filters))
        tickers.extend(m.ticker for m in result.items)
        if result.next_after_seq is None:
            return tickers
        after = result.next_after_seq


# -- the starting catalog -------------------------------------------------------------------------


def test_large_events_give_players_more_lines_and_tickers_stay_unique() -> None:
    catalog = build_catalog(CatalogSpec(markets=600, markets_per_event=25), [], now_ns=NOW_NS)
    markets = catalog.markets()
    assert len({m.ticker for m in markets}) == len(markets) == 600
    points = [m for m in markets if m.series_ticker == "KXNBAPTS"]
    assert max(len(catalog.markets_of(m.event_ticker)) for m in points) > 10
    assert {m.ticker.rsplit("-", 1)[1][-2:] for m in points} >= {"15", "20"}


def test_same_spec_same_catalog_and_another_seed_differs() -> None:
    again = catalog_of(1_000)
    assert [(m.ticker, m.status) for m in again.markets()] == [
        (m.ticker, m.status) for m in CATALOG.markets()
    ]
    assert [m.ticker for m in catalog_of(1_000, seed=4).markets()] != [
        m.ticker for m in CATALOG.markets()
    ]


def test_catalog_is_realistic_and_lists_the_simulated_markets_as_active() -> None:
    markets = CATALOG.markets()
    assert len(markets) == 1_000 + len(SIMULATED.tickers)
    assert len({m.ticker for m in markets}) == len(markets)
    statuses = Counter(m.status for m in markets)
    assert statuses[MarketStatus.ACTIVE] > len(markets) // 2
    assert {MarketStatus.INITIALIZED, MarketStatus.CLOSED, MarketStatus.FINALIZED} <= set(statuses)
    categories = {CATALOG.series(m.series_ticker).category for m in markets}
    assert {"Sports", "Economics", "Crypto", "Politics"} <= categories
    sports_tags = {t for s in CATALOG.series_list("Sports", None) for t in s.tags}
    assert {"Basketball", "Football"} <= sports_tags
    mve = [m for m in markets if m.mve_collection_ticker is not None]
    assert mve
    assert all(m.ticker.startswith("KXMVE") and m.mve_collection_ticker.startswith("KXMVE")
               for m in mve)  # fmt: skip
    for ticker in SIMULATED.tickers:
        market = CATALOG.market(ticker)
        assert market is not None
        assert market.status is MarketStatus.ACTIVE
        expected = "Crypto" if ticker.startswith("KXSIMBTC") else "Economics"
        assert CATALOG.series(market.series_ticker).category == expected


def test_times_are_consistent_with_each_status() -> None:
    for market in CATALOG.markets():
        assert market.created_ts_ns <= NOW_NS
        if market.ticker in SIMULATED.markets:
            continue
        status, open_ns, close_ns = market.status, market.open_ts_ns, market.close_ts_ns
        assert market.created_ts_ns <= open_ns < close_ns
        if status is MarketStatus.INITIALIZED:
            assert open_ns > NOW_NS
        elif status in (MarketStatus.ACTIVE, MarketStatus.INACTIVE):
            assert open_ns <= NOW_NS < close_ns
        else:
            assert close_ns < NOW_NS
        determined = status in (MarketStatus.DETERMINED, MarketStatus.FINALIZED)
        assert (market.result is not MarketResult.NONE) is determined
        assert (market.settled_ts_ns is not None) is (status is MarketStatus.FINALIZED)
        if market.settled_ts_ns is not None:
            assert close_ns < market.settled_ts_ns < NOW_NS


# -- queries --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "objects"),
    [
        (StatusFilter.UNOPENED, {MarketStatus.INITIALIZED}),
        (StatusFilter.OPEN, {MarketStatus.ACTIVE}),
        (StatusFilter.PAUSED, {MarketStatus.INACTIVE}),
        (StatusFilter.CLOSED, {MarketStatus.CLOSED, MarketStatus.DETERMINED}),
        (StatusFilter.SETTLED, {MarketStatus.FINALIZED}),
    ],
)
def test_status_filter_selects_the_mapped_object_statuses(
    status: StatusFilter, objects: set[MarketStatus]
) -> None:
    assert status.statuses == objects
    listed = page(CATALOG, status=status)
    assert listed == [m.ticker for m in CATALOG.markets() if m.status in objects]
    assert listed


def test_filters_by_event_series_tickers_and_mve() -> None:
    markets = CATALOG.markets()
    event = markets[500].event_ticker
    assert page(CATALOG, event_ticker=event) == [m.ticker for m in markets
                                                 if m.event_ticker == event]  # fmt: skip
    assert page(CATALOG, series_ticker="KXBTCD") == [
        m.ticker for m in markets if m.series_ticker == "KXBTCD"
    ]
    wanted = (markets[900].ticker, "NOPE-1", markets[3].ticker, markets[900].ticker)
    assert page(CATALOG, tickers=wanted) == [markets[3].ticker, markets[900].ticker]
    only = page(CATALOG, mve_filter=MveFilter.ONLY)
    excluded = page(CATALOG, mve_filter=MveFilter.EXCLUDE)
    assert only
    assert all(t.startswith("KXMVE") for t in only)
    assert sorted(only + excluded) == sorted(m.ticker for m in markets)


def test_timestamp_bounds_are_inclusive_unix_seconds() -> None:
    markets = CATALOG.markets()
    pivot_s = markets[400].created_ts_ns // NS_PER_S
    assert page(CATALOG, min_created_ts_s=pivot_s) == [
        m.ticker for m in markets if m.created_ts_ns // NS_PER_S >= pivot_s
    ]
    assert page(CATALOG, max_created_ts_s=pivot_s) == [
        m.ticker for m in markets if m.created_ts_ns // NS_PER_S <= pivot_s
    ]
    settled = [m for m in markets if m.settled_ts_ns is not None]
    low_s = settled[3].settled_ts_ns // NS_PER_S
    assert page(CATALOG, min_settled_ts_s=low_s, max_settled_ts_s=low_s) == [
        m.ticker for m in settled if m.settled_ts_ns // NS_PER_S == low_s
    ]
    assert page(CATALOG, max_close_ts_s=NOW_S) == [
        m.ticker for m in markets if m.close_ts_ns // NS_PER_S <= NOW_S
    ]


def test_market_query_defaults_and_parsing() -> None:
    assert parse_market_query("") == MarketQuery(limit=100)
    assert parse_market_query("limit=0&cursor=").limit == 100
    parsed = parse_market_query(
        f"limit=1000&cursor={encode_cursor('markets', 42)}&status=closed&min_close_ts=5"
        "&tickers=A,%20B%20,,C&mve_filter=exclude&series_ticker=KXBTCD&unknown=1"
    )
    assert parsed == MarketQuery(
        limit=1000,
        after_seq=42,
        status=StatusFilter.CLOSED,
        min_close_ts_s=5,
        tickers=("A", "B", "C"),
        mve_filter=MveFilter.EXCLUDE,
        series_ticker="KXBTCD",
    )
    assert parse_market_query("min_updated_ts=9&mve_filter=exclude&series_ticker=KXCPI") == (
        MarketQuery(min_updated_ts_s=9, mve_filter=MveFilter.EXCLUDE, series_ticker="KXCPI")
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=1001", "limit must be 0 to 1000"),
        ("limit=-1", "limit must be 0 to 1000"),
        ("limit=ten", "limit must be an integer"),
        ("limit=--5", "limit must be an integer"),
        ("status=open,closed", "status takes a single value"),
        ("status=active", "status must be one of unopened, open, paused, closed, settled"),
        ("event_ticker=A,B", "event_ticker takes a single event ticker"),
        ("mve_filter=all", "mve_filter must be only or exclude"),
        ("cursor=garbage!", "invalid cursor"),
        (f"cursor={encode_cursor('events', 3)}", "invalid cursor"),
        ("status=open&status=closed", "status given more than once"),
        ("min_created_ts=1&status=closed", "created timestamp filters combine only with status"),
        ("max_close_ts=1&status=open", "close timestamp filters combine only with status closed"),
        ("min_settled_ts=1&status=closed", "settled timestamp filters combine only with status"),
        ("min_created_ts=1&max_close_ts=2", "created, close and settled timestamp filters can"),
        ("min_updated_ts=1", "min_updated_ts combines only with mve_filter=exclude"),
        ("min_updated_ts=1&mve_filter=exclude&status=open", "min_updated_ts combines only"),
    ],
)
def test_market_query_rules_are_400s(query: str, message: str) -> None:
    parsed = parse_market_query(query)
    assert isinstance(parsed, BadQuery)
    assert parsed.message.startswith(message)


def test_event_queries_and_series_filters() -> None:
    assert parse_event_query("") == EventQuery(limit=200)
    for bad in ("limit=0", "limit=201", "status=paused", "with_nested_markets=yes"):
        assert isinstance(parse_event_query(bad), BadQuery), bad
    first = CATALOG.events_page(EventQuery(limit=4, status=StatusFilter.SETTLED))
    assert len(first.items) == 4
    assert first.next_after_seq == first.items[-1].seq
    rest = CATALOG.events_page(
        EventQuery(limit=200, status=StatusFilter.SETTLED, after_seq=first.items[-1].seq)
    )
    assert rest.next_after_seq is None
    settled = {m.event_ticker for m in CATALOG.markets() if m.status is MarketStatus.FINALIZED}
    # §9.2: the status matches child markets
    assert [e.event_ticker for e in first.items + rest.items] == sorted(
        settled, key=lambda ticker: CATALOG.event(ticker).seq
    )
    every = CATALOG.events_page(EventQuery(limit=200, series_ticker=_MVE_SERIES))
    assert every.items == []
    assert parse_series_query("category=Economics&tags=Fed,%20Interest+Rates%20") == (
        SeriesQuery(category="Economics", tags=("Fed", "Interest Rates"))  # §9.3: spaces inside
    )
    economics = CATALOG.series_list("Economics", ("Interest Rates",))
    assert [s.ticker for s in economics] == ["KXFED"]
    assert {s.ticker for s in CATALOG.series_list(None, ("Basketball", "BTC"))} == {
        "KXNBAGAME", "KXNBAPTS", "KXNBAREB", "KXBTCD",
    }  # fmt: skip


_MVE_SERIES = "KXMVESPORTSMULTIGAMEEXTENDED"


# -- pagination under churn -----------------------------------------------------------------------


def rest_json(rest: CatalogRest, path: str, query: str = "") -> dict[str, Any]:
    reply = rest.reply(f"/trade-api/v2{path}", query)
    assert reply.status == 200, reply.body
    body: dict[str, Any] = json.loads(reply.body)
    return body


@pytest.mark.parametrize("status", [None, "open"])
def test_paging_5000_markets_returns_each_once_while_churn_adds_markets(
    status: str | None,
) -> None:
    catalog = catalog_of(5_000)
    churn = Churn(
        ChurnSpec(create_every_s=1, markets_per_event=7, open_after_s=0, lifetime_s=3),
        catalog,
        start_ns=NOW_NS,
    )
    rest = CatalogRest(catalog, {}, TradeLog())
    before = [m.ticker for m in catalog.markets() if status is None or m.status.value == "active"]
    seen: list[str] = []
    cursor, now_ns, pages = "", NOW_NS, 0
    while True:
        query = f"limit=333&cursor={cursor}" + (f"&status={status}" if status else "")
        body = rest_json(rest, "/markets", query)
        seen.extend(m["ticker"] for m in body["markets"])
        pages += 1
        cursor = body["cursor"]
        if not cursor:
            break
        now_ns += 2 * NS_PER_S  # two new events per page, some markets closing
        churn.advance(now_ns)
    assert pages >= 12
    assert len(seen) == len(set(seen))
    assert set(before) <= set(seen)  # nothing that stayed listed was skipped
    created = [m.ticker for m in catalog.markets() if m.series_ticker == "KXQUICKSETTLE"]
    assert len(created) > 100
    if status is None:
        assert set(seen) == {m.ticker for m in catalog.markets()}


def test_market_json_uses_protocol_field_names_and_formats() -> None:
    generator = MarketGenerator(20, seed=1)
    catalog = build_catalog(CatalogSpec(markets=50), generator.markets.values(), now_ns=NOW_NS)
    register_catalog(catalog, generator)
    rest = CatalogRest(catalog, generator.markets, TradeLog())
    sim = generator.markets["KXSIM-26NOV21-T0000"]
    market = rest_json(rest, "/markets/KXSIM-26NOV21-T0000")["market"]
    stats = sim.ticker_stats()
    assert market["ticker"] == "KXSIM-26NOV21-T0000"
    assert (market["status"], market["market_type"], market["result"]) == ("active", "binary", "")
    assert parse_price(market["yes_bid_dollars"]) == stats.yes_bid_e4
    assert parse_price(market["no_ask_dollars"]) == 10_000 - stats.yes_bid_e4
    assert parse_size(market["yes_ask_size_fp"]) == stats.yes_ask_size_e2
    assert market["close_time"] == "2026-11-22T00:00:00Z"  # the live close_ts_s
    assert market["price_ranges"] == [{"start": "0.0000", "end": "1.0000", "step": "0.0100"}]
    assert "mve_collection_ticker" not in market
    settled = next(m for m in catalog.markets() if m.status is MarketStatus.FINALIZED)
    body = rest_json(rest, f"/markets/{settled.ticker}")["market"]
    assert body["status"] == "finalized"
    assert body["settlement_value_dollars"] in ("1.0000", "0.0000")
    assert body["result"] in ("yes", "no")
    assert body["settlement_ts"] == format_rfc3339_s(settled.settled_ts_ns)
    missing = rest.reply("/trade-api/v2/markets/NOPE-1", "")
    assert (missing.status, json.loads(missing.body)) == (
        404, {"code": "not_found", "message": "market NOPE-1 not found", "details": ""},
    )  # fmt: skip


# -- churn ----------------------------------------------------------------------------------------

SPEC = ChurnSpec(
    create_every_s=10,
    markets_per_event=2,
    open_after_s=5,
    lifetime_s=30,
    determine_after_s=4,
    settle_after_s=6,
    max_events=2,
    seed=5,
)


def at(seconds: float) -> int:
    return NOW_NS + round(seconds * NS_PER_S)


def frames(changes: list[CatalogChange]) -> list[tuple[str, dict[str, Any]]]:
    return [lifecycle_msg(c.announce) for c in changes if c.announce is not None]


def test_churn_creates_opens_closes_determines_and_settles_on_time() -> None:
    catalog = Catalog()
    churn = Churn(SPEC, catalog, start_ns=NOW_NS)
    assert churn.next_due_ns() == at(10)
    assert churn.advance(at(9.999)) == []
    created = churn.advance(at(10))
    event = created[0].ticker
    assert event.startswith("KXQUICKSETTLE-26NOV21H1600N0")
    markets = [f"{event}-1", f"{event}-2"]
    assert frames(created) == [
        ("event_lifecycle", {
            "event_ticker": event, "exchange_index": 0, "title": "Quick settle #0",
            "subtitle": "Nov 21 at 16:00", "collateral_return_type": "MECNET",
            "series_ticker": "KXQUICKSETTLE",
        }),
        *[("market_lifecycle_v2", {
            "market_ticker": ticker, "exchange_index": 0, "open_ts": NOW_S + 15,
            "close_ts": NOW_S + 45,
            "additional_metadata": {
                "name": f"Outcome {n}", "title": "Quick settle #0",
                "yes_sub_title": f"Outcome {n}", "no_sub_title": f"Outcome {n}",
                "rules_primary": f"If outcome {n} happens, the market resolves to Yes.",
                "rules_secondary": "", "can_close_early": True, "event_ticker": event,
                "expected_expiration_ts": NOW_S + 49,
            },
            "event_type": "created", "price_level_structure": "linear_cent",
        }) for n, ticker in enumerate(markets, 1)],
    ]  # fmt: skip
    assert [catalog.market(t).status for t in markets] == [MarketStatus.INITIALIZED] * 2
    # §7.5: no frame at open_time; the status changes.
    opened = churn.advance(at(15))
    assert [(c.ticker, c.status, c.announce) for c in opened] == [
        (t, MarketStatus.ACTIVE, None) for t in markets
    ]
    assert [c.ts_ns for c in churn.advance(at(20))] == [at(20)] * 3  # the second event
    assert churn.next_due_ns() == at(25)
    closed = churn.advance(at(45))  # the second event's opens at 25, the first's closes at 45
    assert all(c.announce is None for c in closed)  # §7.5: no frame at close_time either
    assert [c.status for c in closed] == [MarketStatus.ACTIVE] * 2 + [MarketStatus.CLOSED] * 2
    assert [c.ticker for c in closed[2:]] == markets
    determined = [c for c in churn.advance(at(49)) if c.ticker in markets]
    results = {}
    for change in determined:
        kind, msg = lifecycle_msg(change.announce)
        result = catalog.market(change.ticker).result
        results[change.ticker] = result
        assert (kind, msg) == ("market_lifecycle_v2", {
            "market_ticker": change.ticker, "determination_ts": NOW_S + 49,
            "result": result.value,
            "settlement_value": "1.0000" if result is MarketResult.YES else "0.0000",
            "event_type": "determined",
        })  # fmt: skip
    assert set(results) == set(markets)
    settled = [c for c in churn.advance(at(55)) if c.ticker in markets]
    assert frames(settled) == [
        ("market_lifecycle_v2", {"market_ticker": t, "settled_ts": NOW_S + 55,
                                 "event_type": "settled"}) for t in markets
    ]  # fmt: skip
    assert catalog.market(markets[0]).status is MarketStatus.FINALIZED
    churn.advance(at(10_000))
    assert churn.events_created == 2  # max_events
    assert churn.next_due_ns() is None


def test_a_late_advance_applies_everything_in_time_order_with_due_times() -> None:
    churn = Churn(SPEC, Catalog(), start_ns=NOW_NS)
    changes = churn.advance(at(1_000))
    assert [c.ts_ns for c in changes] == sorted(c.ts_ns for c in changes)
    kinds = Counter(
        c.announce.event_type if isinstance(c.announce, Lifecycle) else type(c.announce).__name__
        for c in changes
    )
    assert kinds == {
        "EventLifecycle": 2, LifecycleType.CREATED: 4, "NoneType": 8,
        LifecycleType.DETERMINED: 4, LifecycleType.SETTLED: 4,
    }  # fmt: skip


def test_paused_markets_deactivate_and_reactivate_mid_life() -> None:
    spec = ChurnSpec(create_every_s=10, markets_per_event=1, open_after_s=0, lifetime_s=30,
                     deactivate_fraction=1.0, max_events=1)  # fmt: skip
    churn = Churn(spec, Catalog(), start_ns=NOW_NS)
    changes = churn.advance(at(35))
    steps = [(c.ts_ns, c.status, c.announce and lifecycle_msg(c.announce)[1]) for c in changes]
    ticker = changes[1].ticker
    assert steps[2:] == [
        (at(10), MarketStatus.ACTIVE, None),
        (at(20), MarketStatus.INACTIVE,
         {"market_ticker": ticker, "is_deactivated": True, "event_type": "deactivated"}),
        (at(30), MarketStatus.ACTIVE,
         {"market_ticker": ticker, "is_deactivated": False, "event_type": "activated"}),
    ]  # fmt: skip


def test_generator_follows_churn_opening_books_and_halting_closed_markets() -> None:
    generator = MarketGenerator(5, seed=2)
    catalog = build_catalog(None, generator.markets.values(), now_ns=NOW_NS)
    churn = Churn(SPEC, catalog, start_ns=NOW_NS)

    def step(seconds: float) -> list[Any]:
        return [e for c in churn.advance(at(seconds))
                for e in apply_to_generator(c, catalog, generator)]  # fmt: skip

    created = step(10)
    assert isinstance(created[0], EventLifecycle)
    assert len(created) == 3
    tickers = [e.market for e in created[1:]]
    for ticker in tickers:
        assert generator.markets[ticker].yes_bids == generator.markets[ticker].no_bids == {}
        assert not generator.is_streaming(ticker)
    opened = step(15)
    for ticker in tickers:
        market = generator.markets[ticker]
        book = [e for e in opened if isinstance(e, BookChange) and e.market == ticker]
        assert book
        assert [(c.side, c.price_e4, c.delta_e2) for c in book] == [
            (side, price, size) for side in (Side.YES, Side.NO) for price, size in
            market.levels(side)
        ]  # fmt: skip
        assert not market.is_crossed()
        assert generator.is_streaming(ticker)
        assert any(isinstance(e, TickerChange) and e.market == ticker for e in opened)
    drawn = {getattr(generator.next_event(at(16)), "market", None) for _ in range(3_000)}
    assert set(tickers) <= drawn
    step(45)
    assert not any(generator.is_streaming(t) for t in tickers)
    assert generator.markets[tickers[0]].close_ts_s == NOW_S + 45
    later = {getattr(generator.next_event(at(46)), "market", None) for _ in range(3_000)}
    assert later.isdisjoint(tickers)


def test_registering_only_the_simulated_markets_leaves_the_stream_unchanged() -> None:
    plain, registered = MarketGenerator(12, seed=7), MarketGenerator(12, seed=7)
    register_catalog(build_catalog(None, registered.markets.values(), now_ns=NOW_NS), registered)
    assert registered.tickers == plain.tickers
    events = [(plain.next_event(at(i)), registered.next_event(at(i))) for i in range(2_000)]
    assert all(a == b for a, b in events)


def test_catalog_markets_stream_unless_unopened() -> None:
    generator = MarketGenerator(5, seed=2)
    catalog = build_catalog(CatalogSpec(markets=300), generator.markets.values(), now_ns=NOW_NS)
    register_catalog(catalog, generator)
    for market in catalog.markets():
        streaming = generator.is_streaming(market.ticker)
        assert streaming is (market.status is MarketStatus.ACTIVE), market
        if market.status is MarketStatus.INITIALIZED:
            sim = generator.markets[market.ticker]
            assert (sim.yes_bids, sim.no_bids) == ({}, {})
            assert len(sim.market_id) == 36


# -- settings -------------------------------------------------------------------------------------


def test_churn_spec_text_and_validation() -> None:
    assert parse_churn_spec("none") is None
    assert parse_churn_spec("default", seed=9) == ChurnSpec(seed=9)
    assert parse_churn_spec(
        "create_every_s=2.5, markets_per_event=3,series_ticker=KXTEST,max_events=4", seed=9
    ) == ChurnSpec(create_every_s=2.5, markets_per_event=3, series_ticker="KXTEST",
                   max_events=4, seed=9)  # fmt: skip
    for bad, field in (
        ("lifetime=3", "--churn"),
        ("lifetime_s", "--churn"),
        ("lifetime_s=soon", "--churn"),
        ("lifetime_s=1,lifetime_s=2", "--churn"),
        ("lifetime_s=0", "churn.lifetime_s"),
        ("deactivate_fraction=2", "churn.deactivate_fraction"),
        ("series_ticker=KXMVEFOO", "churn.series_ticker"),
        ("series_ticker=kx-a", "churn.series_ticker"),
    ):
        with pytest.raises(ConfigError) as caught:
            parse_churn_spec(bad)
        assert caught.value.field == field, bad


def test_cli_and_settings_build_the_same_simulator_arguments() -> None:
    args = build_parser().parse_args(
        ["--catalog-markets", "500", "--churn", "create_every_s=5", "--rest-rate", "20",
         "--max-markets-per-subscription", "256", "--seed", "4"]
    )  # fmt: skip
    assert (args.catalog_markets, args.max_markets_per_subscription) == (500, 256)
    assert parse_rest_rate(args.rest_rate) == (20.0, 40.0)  # 2 s of budget (§9.6)
    with pytest.raises(ConfigError):
        parse_rest_rate(0)
    settings = SimulatorSettings.model_validate(
        {"seed": 4, "catalog_markets": 500, "churn": {"create_every_s": 5},
         "rest_tokens_per_s": 20, "max_markets_per_subscription": 256}
    )  # fmt: skip
    assert settings.catalog_spec() == CatalogSpec(markets=500, seed=4)
    assert settings.churn_spec() == parse_churn_spec(args.churn, seed=args.seed)
    assert settings.rest_rate() == parse_rest_rate(args.rest_rate)
    plain = SimulatorSettings()
    assert (plain.catalog_spec(), plain.churn_spec(), plain.rest_rate()) == (None, None, None)


def test_pages_end_without_an_empty_last_page() -> None:
    """A cursor only when one more market matches: 1,000 markets in 4 pages of 250."""
    catalog = catalog_of(980)  # + 20 simulated = 1,000
    sizes = []
    after = 0
    for _ in itertools.count():
        result = catalog.markets_page(MarketQuery(limit=250, after_seq=after))
        sizes.append(len(result.items))
        if result.next_after_seq is None:
            break
        after = result.next_after_seq
    assert sizes == [250] * 4
