"""The pure selection: series globs, the union of sources, the queries planned, filters with an
injected now, the deterministic cap, shard_of's stable values and partition, and matches()."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pytest

from ssmd.config.selection import SelectionSettings, ShardSettings
from ssmd.selection import (
    NS_PER_HOUR,
    CatalogCache,
    MarketInfo,
    MarketsQuery,
    MarketStatus,
    MveFilter,
    Selection,
    SeriesInfo,
    SeriesQuery,
    Shard,
    StatusFilter,
    is_glob,
    market_queries,
    matches,
    resolve_series,
    select_markets,
    series_lookups,
    shard_of,
)

NOW_NS = 1_787_000_000 * 1_000_000_000
OPEN = StatusFilter.OPEN


def market(
    ticker: str,
    *,
    event: str = "",
    series: str | None = None,
    status: MarketStatus = MarketStatus.ACTIVE,
    close_in_h: float | None = 24.0,
    mve: bool = False,
) -> MarketInfo:
    close_ns = None if close_in_h is None else NOW_NS + round(close_in_h * NS_PER_HOUR)
    return MarketInfo(
        ticker=ticker,
        event_ticker=event or ticker.rsplit("-", 1)[0],
        series_ticker=series,
        status=status,
        close_ts_ns=close_ns,
        is_multivariate=mve,
    )


def tickers(markets: Iterable[MarketInfo]) -> list[str]:
    return [m.ticker for m in markets]


# -- shard_of ----------------------------------------------------------------------------------


def test_shard_of_known_values_never_change() -> None:
    # Pinned: a change here would move markets between running shards.
    assert shard_of("KXBTCD-26AUG2017-T73749.99", 16) == 13
    assert shard_of("INXD-23SEP14-B4487", 16) == 15
    assert shard_of("HIGHNY-22DEC23-B53.5", 16) == 12
    assert shard_of("INXD-23SEP14-B4487", 3) == 2
    assert shard_of("anything", 1) == 0


def test_shard_of_is_documented_blake2b() -> None:
    ticker = "KXETH-26AUG21-B4000"
    digest = hashlib.blake2b(ticker.encode("utf-8"), digest_size=8).digest()
    assert shard_of(ticker, 7) == int.from_bytes(digest, "big") % 7


def test_shards_partition_ten_thousand_tickers() -> None:
    universe = [f"KXS{n % 37}-26AUG{n % 28:02d}-T{n}" for n in range(10_000)]
    count = 5
    parts = [
        select_markets(Selection(shard=Shard(i, count)), [market(t) for t in universe], NOW_NS)
        for i in range(count)
    ]
    taken = [set(tickers(part.markets)) for part in parts]
    assert sum(len(part) for part in taken) == len(universe)  # disjoint
    assert set().union(*taken) == set(universe)  # covering
    assert all(1_600 < len(part) < 2_400 for part in taken)  # roughly even


def test_shard_rejects_an_index_outside_the_count() -> None:
    with pytest.raises(ValueError, match=r"not in 0\.\.2"):
        Shard(3, 3)
    with pytest.raises(ValueError, match=">= 1"):
        shard_of("X", 0)


# -- planning ----------------------------------------------------------------------------------


def test_globs_are_recognised() -> None:
    assert all(is_glob(p) for p in ("KXBTC*", "KX?TC", "KX[AB]TC"))
    assert not is_glob("KXBTCD")


def test_series_lookups_fetch_all_series_only_for_globs() -> None:
    assert series_lookups(Selection(series=("KXBTCD",))) == ()
    plan = series_lookups(
        Selection(series=("KXBTC*", "KXFED"), categories=("Crypto",), tags=("Bitcoin", "Fed"))
    )
    assert plan == (
        SeriesQuery(),
        SeriesQuery(category="Crypto"),
        SeriesQuery(tag="Bitcoin"),
        SeriesQuery(tag="Fed"),
    )
    assert [q.describe() for q in plan] == [
        "GET /series",
        "GET /series?category=Crypto",
        "GET /series?tags=Bitcoin",
        "GET /series?tags=Fed",
    ]


def test_resolve_series_expands_globs_and_unions_categories_and_tags() -> None:
    selection = Selection(series=("KXBTC*", "KXFED"), categories=("Sports",), tags=("Oil",))
    everything = [SeriesInfo(t) for t in ("KXBTC", "KXBTCD", "KXETH", "kxbtcz", "KXNBA")]
    found = {
        SeriesQuery(): everything,
        SeriesQuery(category="Sports"): [SeriesInfo("KXNBA"), SeriesInfo("KXNFL")],
        SeriesQuery(tag="Oil"): [SeriesInfo("KXWTI")],
    }
    # fnmatch is case-sensitive (kxbtcz is not KXBTC*); the exact entry needs no lookup.
    assert resolve_series(selection, found) == (
        "KXBTC",
        "KXBTCD",
        "KXFED",
        "KXNBA",
        "KXNFL",
        "KXWTI",
    )


def test_market_queries_one_per_status_and_source() -> None:
    selection = Selection(
        tickers=("B-1", "A-1", "B-1"),
        events=("EV-1",),
        statuses=(OPEN, StatusFilter.CLOSED),
    )
    queries = market_queries(selection, ("S1", "S2"))
    ex = MveFilter.EXCLUDE
    assert queries == (
        MarketsQuery(tickers=("A-1", "B-1")),  # explicit: no status, no mve filter
        MarketsQuery(status=OPEN, series_ticker="S1", mve_filter=ex),
        MarketsQuery(status=OPEN, series_ticker="S2", mve_filter=ex),
        MarketsQuery(status=OPEN, event_ticker="EV-1", mve_filter=ex),
        MarketsQuery(status=StatusFilter.CLOSED, series_ticker="S1", mve_filter=ex),
        MarketsQuery(status=StatusFilter.CLOSED, series_ticker="S2", mve_filter=ex),
        MarketsQuery(status=StatusFilter.CLOSED, event_ticker="EV-1", mve_filter=ex),
    )
    assert queries[1].params() == {"status": "open", "series_ticker": "S1", "mve_filter": "exclude"}
    assert queries[0].describe() == "GET /markets?tickers=A-1,B-1"


def test_no_source_means_every_market_of_each_status() -> None:
    selection = Selection(statuses=(OPEN, StatusFilter.UNOPENED), exclude_multivariate=False)
    assert market_queries(selection, ()) == (
        MarketsQuery(status=OPEN),
        MarketsQuery(status=StatusFilter.UNOPENED),
    )


def test_a_glob_matching_nothing_is_still_a_source() -> None:
    selection = Selection(series=("NOPE*",))
    assert market_queries(selection, resolve_series(selection, {SeriesQuery(): []})) == ()


def test_explicit_tickers_are_chunked_by_one_hundred() -> None:
    many = tuple(f"T-{n:03d}" for n in range(250))
    queries = market_queries(Selection(tickers=many), ())
    assert [len(q.tickers) for q in queries] == [100, 100, 50]
    assert [t for q in queries for t in q.tickers] == sorted(many)


# -- filters, union, cap -----------------------------------------------------------------------


def test_union_deduplicates_and_prefers_the_copy_that_knows_its_series() -> None:
    found = [
        market("KXA-1-T1", event="KXA-1"),  # from an event query: series unknown
        market("KXA-1-T1", event="KXA-1", series="KXA"),  # from a series query
        market("KXB-1-T1", series="KXB"),
    ]
    selected = select_markets(Selection(series=("KXA",), events=("KXA-1",)), found, NOW_NS)
    assert [(m.ticker, m.series_ticker) for m in selected.markets] == [
        ("KXA-1-T1", "KXA"),
        ("KXB-1-T1", "KXB"),
    ]


def test_closing_within_uses_the_injected_now() -> None:
    found = [
        market("A-1", close_in_h=1.0),
        market("B-1", close_in_h=6.0),  # exactly at the edge: kept
        market("C-1", close_in_h=6.01),
        market("D-1", close_in_h=None),  # unknown close: cannot prove it closes in time
    ]
    selection = Selection(closing_within_h=6.0)
    selected = select_markets(selection, found, NOW_NS)
    assert tickers(selected.markets) == ["A-1", "B-1"]
    assert selected.filtered_out == 2
    later = select_markets(selection, found, NOW_NS + NS_PER_HOUR // 100)
    assert tickers(later.markets) == ["A-1", "B-1", "C-1"]


def test_multivariate_markets_are_dropped_unless_asked_for() -> None:
    found = [market("KXMVECROSS-1-T1", mve=True), market("KXA-1-T1")]
    assert tickers(select_markets(Selection(), found, NOW_NS).markets) == ["KXA-1-T1"]
    kept = select_markets(Selection(exclude_multivariate=False), found, NOW_NS)
    assert tickers(kept.markets) == ["KXA-1-T1", "KXMVECROSS-1-T1"]


def test_explicit_tickers_skip_the_filters_and_missing_ones_stay_selected() -> None:
    settled = market("OLD-1", status=MarketStatus.FINALIZED, close_in_h=-100.0, mve=True)
    selection = Selection(tickers=("OLD-1", "GONE-1"), closing_within_h=1.0)
    selected = select_markets(selection, [settled], NOW_NS)
    assert tickers(selected.markets) == ["OLD-1"]
    assert selected.missing_tickers == ("GONE-1",)
    assert selected.tickers == ("GONE-1", "OLD-1")


def test_cap_keeps_the_soonest_closing_then_by_ticker_deterministically() -> None:
    found = [
        market("E-1", close_in_h=5.0),
        market("D-1", close_in_h=1.0),
        market("C-1", close_in_h=2.0),
        market("B-1", close_in_h=2.0),
        market("A-1", close_in_h=None),
        market("X-1", close_in_h=9.0),
    ]
    selection = Selection(tickers=("X-1",), max_markets=4)
    first = select_markets(selection, found, NOW_NS)
    # X-1 is explicit (never cut); 3 more by close time, ties by ticker; A-1 (no close) last.
    assert tickers(first.markets) == ["B-1", "C-1", "D-1", "X-1"]
    assert first.cut_by_cap == 2
    again = select_markets(selection, list(reversed(found)), NOW_NS)
    assert again == first


def test_selection_from_settings() -> None:
    select = SelectionSettings(
        series=["KXBTC*"],
        status=["open", "closed"],
        closing_within_h=12,
        max_markets=50,
        exclude_multivariate=False,
    )
    selection = Selection.from_settings(
        select, tickers=["KXFED-1"], shard=ShardSettings(index=1, count=4)
    )
    assert selection == Selection(
        tickers=("KXFED-1",),
        series=("KXBTC*",),
        statuses=(OPEN, StatusFilter.CLOSED),
        closing_within_h=12.0,
        exclude_multivariate=False,
        max_markets=50,
        shard=Shard(1, 4),
    )
    assert selection.mve_filter is None


# -- matches() for a market learned later -----------------------------------------------------


CACHE = CatalogCache(
    series={
        "KXBTCD": SeriesInfo("KXBTCD", category="Crypto", tags=("Bitcoin",)),
        "KXNBA": SeriesInfo("KXNBA", category="Sports", tags=("Basketball",)),
    },
    series_of_event={"KXBTCD-26AUG20": "KXBTCD", "KXNBA-26AUG20": "KXNBA"},
)


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (Selection(series=("KXBTC*",)), True),  # glob against the event's series
        (Selection(series=("KXETH*",)), False),
        (Selection(events=("KXBTCD-26AUG20",)), True),
        (Selection(categories=("Crypto",)), True),
        (Selection(categories=("Sports",)), False),
        (Selection(tags=("Bitcoin",)), True),
        (Selection(), True),  # no source: every market of the statuses
        (Selection(statuses=(StatusFilter.CLOSED,)), False),
        (Selection(closing_within_h=1.0), False),
        (Selection(closing_within_h=48.0), True),
    ],
)
def test_matches_a_lifecycle_market(selection: Selection, expected: bool) -> None:
    new = market("KXBTCD-26AUG20-T1", event="KXBTCD-26AUG20")  # series learned via the cache
    assert matches(selection, new, NOW_NS, CACHE) is expected


def test_matches_without_the_series_facts_says_no_to_series_sources() -> None:
    new = market("KXBTCD-26AUG20-T1", event="KXBTCD-26AUG20")
    assert not matches(Selection(series=("KXBTCD",)), new, NOW_NS)
    assert matches(Selection(events=("KXBTCD-26AUG20",)), new, NOW_NS)


def test_matches_explicit_tickers_and_the_shard() -> None:
    closed = market("KXNBA-26AUG20-LAL", status=MarketStatus.CLOSED, close_in_h=None)
    assert matches(Selection(tickers=(closed.ticker,)), closed, NOW_NS)
    owner = shard_of(closed.ticker, 3)
    assert matches(Selection(tickers=(closed.ticker,), shard=Shard(owner, 3)), closed, NOW_NS)
    other = Shard((owner + 1) % 3, 3)
    assert not matches(Selection(tickers=(closed.ticker,), shard=other), closed, NOW_NS)


def test_matches_maps_filter_statuses_to_market_statuses() -> None:
    determined = market("KXNBA-26AUG20-LAL", status=MarketStatus.DETERMINED)
    assert matches(Selection(statuses=(StatusFilter.CLOSED,)), determined, NOW_NS)
    assert not matches(Selection(), determined, NOW_NS)
    assert MarketStatus.from_wire("brand_new_state") is MarketStatus.UNKNOWN
