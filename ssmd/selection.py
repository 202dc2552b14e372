"""Which markets an operator selected (pure): the REST queries that find them (PROTOCOL.md §9.1-
§9.3), the filters, the deterministic cap, the stable shard hash, and `matches` for a market
the connector learns about later. No I/O: ssmd.discovery runs the queries."""

from __future__ import annotations

import enum
import fnmatch
import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ssmd.config.selection import SelectionSettings, ShardSettings

NS_PER_HOUR: Final = 3_600 * 1_000_000_000
TICKERS_PER_QUERY: Final = 100  # `tickers=A,B,...` per request: keeps URLs short (§9.1, §9.2)
_GLOB_CHARS: Final = frozenset("*?[")
UNKNOWN_SERIES: Final = "(unknown)"  # by_series key of markets whose series nobody named


class StatusFilter(enum.Enum):
    """The `status` query values of GET /markets (§9.1); GET /events has all but `paused`."""

    UNOPENED = "unopened"
    OPEN = "open"
    PAUSED = "paused"
    CLOSED = "closed"
    SETTLED = "settled"


class MarketStatus(enum.Enum):
    """The `status` of a Market object (§9.1, [S9]); UNKNOWN for a value Kalshi adds later."""

    INITIALIZED = "initialized"
    INACTIVE = "inactive"
    ACTIVE = "active"
    CLOSED = "closed"
    DETERMINED = "determined"
    DISPUTED = "disputed"
    AMENDED = "amended"
    FINALIZED = "finalized"
    UNKNOWN = "unknown"

    @classmethod
    def from_wire(cls, text: str) -> MarketStatus:
        try:
            return cls(text)
        except ValueError:
            return cls.UNKNOWN


# §9.1 filter -> object statuses: unopened->initialized, open->active, paused->inactive,
# closed->closed... (our reading of "closed…": closed and the states before settlement),
# settled->finalized.
STATUSES_OF_FILTER: Final[Mapping[StatusFilter, frozenset[MarketStatus]]] = {
    StatusFilter.UNOPENED: frozenset({MarketStatus.INITIALIZED}),
    StatusFilter.OPEN: frozenset({MarketStatus.ACTIVE}),
    StatusFilter.PAUSED: frozenset({MarketStatus.INACTIVE}),
    StatusFilter.CLOSED: frozenset(
        {MarketStatus.CLOSED, MarketStatus.DETERMINED, MarketStatus.DISPUTED, MarketStatus.AMENDED}
    ),
    StatusFilter.SETTLED: frozenset({MarketStatus.FINALIZED}),
}


class MveFilter(enum.Enum):
    """GET /markets `mve_filter` (§9.1): only or exclude multivariate (combo) markets."""

    ONLY = "only"
    EXCLUDE = "exclude"


@dataclass(frozen=True, slots=True)
class MarketInfo:
    """A venue-neutral view of one market. `series_ticker` is None when nobody said (Kalshi's
    Market object has none); times are Unix ns, None when the exchange gave none."""

    ticker: str
    event_ticker: str
    series_ticker: str | None
    status: MarketStatus
    open_ts_ns: int | None = None
    close_ts_ns: int | None = None
    created_ts_ns: int | None = None
    is_multivariate: bool = False


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """One series of GET /series (§9.3)."""

    ticker: str
    title: str = ""
    category: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Shard:
    """This process takes the markets whose `shard_of(ticker, count) == index`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} is not in 0..{self.count - 1}")

    def owns(self, ticker: str) -> bool:
        return shard_of(ticker, self.count) == self.index


def shard_of(ticker: str, count: int) -> int:
    """The shard (0..count-1) of a ticker: the first 8 bytes of BLAKE2b(UTF-8 ticker, digest 8),
    big-endian, modulo `count`. Stable across processes, runs and Python versions (unlike
    hash()), so N processes configured `{index: i, count: N}` split any set of tickers into N
    disjoint parts that together cover it."""
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    digest = hashlib.blake2b(ticker.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def is_glob(pattern: str) -> bool:
    """Whether a series entry is an fnmatch pattern (`KXBTC*`) rather than a ticker."""
    return not _GLOB_CHARS.isdisjoint(pattern)


@dataclass(frozen=True, slots=True)
class Selection:
    """What to stream. Sources are unioned: explicit `tickers` (kept whatever their status),
    `series` (entries may be globs), `events`, `categories` and `tags` (both name series). No
    source at all means every market of `statuses`. Filters then apply to what the sources
    found: status, closing within N hours, multivariate; then the shard (to everything) and
    the cap (explicit tickers are never cut)."""

    tickers: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    statuses: tuple[StatusFilter, ...] = (StatusFilter.OPEN,)
    closing_within_h: float | None = None
    exclude_multivariate: bool = True
    max_markets: int | None = None
    shard: Shard | None = None

    @classmethod
    def from_settings(
        cls,
        select: SelectionSettings,
        *,
        tickers: Sequence[str] = (),
        shard: ShardSettings | None = None,
    ) -> Selection:
        """From `subscription.select`, `subscription.markets` and `subscription.shard`."""
        return cls(
            tickers=tuple(tickers),
            series=tuple(select.series),
            events=tuple(select.events),
            categories=tuple(select.categories),
            tags=tuple(select.tags),
            statuses=tuple(select.status),
            closing_within_h=select.closing_within_h,
            exclude_multivariate=select.exclude_multivariate,
            max_markets=select.max_markets,
            shard=None if shard is None else Shard(shard.index, shard.count),
        )

    @property
    def has_source(self) -> bool:
        return bool(self.tickers or self.series or self.events or self.categories or self.tags)

    @property
    def mve_filter(self) -> MveFilter | None:
        return MveFilter.EXCLUDE if self.exclude_multivariate else None


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """One GET /series (§9.3): every series, or those of one category or one tag."""

    category: str | None = None
    tag: str | None = None

    def describe(self) -> str:
        if self.category is not None:
            return f"GET /series?category={self.category}"
        if self.tag is not None:
            return f"GET /series?tags={self.tag}"
        return "GET /series"


_CREATED_OK: Final = frozenset({None, StatusFilter.UNOPENED, StatusFilter.OPEN})
_CLOSE_OK: Final = frozenset({None, StatusFilter.CLOSED})
_SETTLED_OK: Final = frozenset({None, StatusFilter.SETTLED})


@dataclass(frozen=True, slots=True)
class MarketsQuery:
    """One paginated GET /markets (§9.1): one status per request, at most one series or
    event, or explicit tickers (the planner sends those without status: they are kept
    whatever it is); time ranges in Unix s. Raises ValueError for combinations §9.1 refuses."""

    status: StatusFilter | None = None
    series_ticker: str | None = None
    event_ticker: str | None = None
    tickers: tuple[str, ...] = ()
    mve_filter: MveFilter | None = None
    min_created_ts_s: int | None = None
    max_created_ts_s: int | None = None
    min_close_ts_s: int | None = None
    max_close_ts_s: int | None = None
    min_settled_ts_s: int | None = None
    max_settled_ts_s: int | None = None
    min_updated_ts_s: int | None = None

    def __post_init__(self) -> None:
        for name, value, statuses in self._time_ranges():
            if value is not None and self.status not in statuses:
                raise ValueError(f"§9.1: {name} cannot be combined with status={self.status}")
        if self.min_updated_ts_s is not None and (
            self.mve_filter is not MveFilter.EXCLUDE
            or set(self.params()) - {"mve_filter", "series_ticker", "min_updated_ts"}
        ):
            raise ValueError(
                "§9.1: min_updated_ts needs mve_filter=exclude and allows only series_ticker"
            )

    def _time_ranges(self) -> list[tuple[str, int | None, frozenset[StatusFilter | None]]]:
        """Each time-range filter, its value, and the statuses (None: no status) it allows."""
        return [
            ("min_created_ts", self.min_created_ts_s, _CREATED_OK),
            ("max_created_ts", self.max_created_ts_s, _CREATED_OK),
            ("min_close_ts", self.min_close_ts_s, _CLOSE_OK),
            ("max_close_ts", self.max_close_ts_s, _CLOSE_OK),
            ("min_settled_ts", self.min_settled_ts_s, _SETTLED_OK),
            ("max_settled_ts", self.max_settled_ts_s, _SETTLED_OK),
        ]

    def params(self) -> dict[str, str]:
        """The query string, without `limit` and `cursor`."""
        params: dict[str, str] = {}
        if self.status is not None:
            params["status"] = self.status.value
        if self.series_ticker is not None:
            params["series_ticker"] = self.series_ticker
        if self.event_ticker is not None:
            params["event_ticker"] = self.event_ticker
        if self.tickers:
            params["tickers"] = ",".join(self.tickers)
        if self.mve_filter is not None:
            params["mve_filter"] = self.mve_filter.value
        for name, value, _statuses in self._time_ranges():
            if value is not None:
                params[name] = str(value)
        if self.min_updated_ts_s is not None:
            params["min_updated_ts"] = str(self.min_updated_ts_s)
        return params

    def describe(self) -> str:
        query = "&".join(f"{key}={value}" for key, value in self.params().items())
        return f"GET /markets?{query}" if query else "GET /markets"


def chunks(items: Sequence[str], size: int = TICKERS_PER_QUERY) -> list[tuple[str, ...]]:
    """`items` in consecutive groups of at most `size` (for comma-separated `tickers`)."""
    return [tuple(items[start : start + size]) for start in range(0, len(items), size)]


def series_lookups(selection: Selection) -> tuple[SeriesQuery, ...]:
    """The GET /series calls the selection needs: all series when a series entry is a glob,
    one per category and one per tag (one tag each, so "any of the tags" is our union)."""
    lookups: list[SeriesQuery] = []
    if any(is_glob(entry) for entry in selection.series):
        lookups.append(SeriesQuery())
    lookups += [SeriesQuery(category=category) for category in selection.categories]
    lookups += [SeriesQuery(tag=tag) for tag in selection.tags]
    return tuple(lookups)


def resolve_series(
    selection: Selection, found: Mapping[SeriesQuery, Sequence[SeriesInfo]]
) -> tuple[str, ...]:
    """The series tickers to query markets of, sorted: exact series entries, glob entries
    expanded (case-sensitive fnmatch) against the unfiltered GET /series answer, and every
    series of the category and tag lookups."""
    tickers = {entry for entry in selection.series if not is_glob(entry)}
    patterns = [entry for entry in selection.series if is_glob(entry)]
    for query, series_list in found.items():
        for series in series_list:
            if query == SeriesQuery():
                if any(fnmatch.fnmatchcase(series.ticker, p) for p in patterns):
                    tickers.add(series.ticker)
            else:
                tickers.add(series.ticker)
    return tuple(sorted(tickers))


def market_queries(selection: Selection, series_tickers: Sequence[str]) -> tuple[MarketsQuery, ...]:
    """The GET /markets calls: explicit tickers in chunks (no status), then per status one per
    series and one per event; with no source at all, one per status."""
    mve = selection.mve_filter
    queries = [MarketsQuery(tickers=chunk) for chunk in chunks(sorted(set(selection.tickers)))]
    for status in selection.statuses:
        queries += [
            MarketsQuery(status=status, series_ticker=series, mve_filter=mve)
            for series in series_tickers
        ]
        queries += [
            MarketsQuery(status=status, event_ticker=event, mve_filter=mve)
            for event in selection.events
        ]
        if not selection.has_source:
            queries.append(MarketsQuery(status=status, mve_filter=mve))
    return tuple(queries)


@dataclass(frozen=True, slots=True)
class Selected:
    """The outcome of `select_markets`: the markets kept (sorted by ticker), how many the cap
    cut, and the explicit tickers no query returned (still to be subscribed)."""

    markets: tuple[MarketInfo, ...]
    cut_by_cap: int = 0
    missing_tickers: tuple[str, ...] = ()
    filtered_out: int = 0

    @property
    def tickers(self) -> tuple[str, ...]:
        return tuple(sorted({m.ticker for m in self.markets} | set(self.missing_tickers)))


def closes_in_time(selection: Selection, market: MarketInfo, now_ns: int) -> bool:
    """closing_within_h: the market closes at or before now + N hours (unknown close: no)."""
    if selection.closing_within_h is None:
        return True
    if market.close_ts_ns is None:
        return False
    return market.close_ts_ns <= now_ns + round(selection.closing_within_h * NS_PER_HOUR)


def passes_filters(selection: Selection, market: MarketInfo, now_ns: int) -> bool:
    """The filters other than status, shard and cap: closing time and multivariate."""
    if selection.exclude_multivariate and market.is_multivariate:
        return False
    return closes_in_time(selection, market, now_ns)


def _cap_order(market: MarketInfo) -> tuple[bool, int, str]:
    """Soonest close first (unknown close last), then ticker: the same input, the same cut."""
    return (market.close_ts_ns is None, market.close_ts_ns or 0, market.ticker)


def merge_markets(found: Iterable[MarketInfo]) -> dict[str, MarketInfo]:
    """One entry per ticker; a copy that knows its series wins over one that does not."""
    merged: dict[str, MarketInfo] = {}
    for market in found:
        known = merged.get(market.ticker)
        if known is None or (known.series_ticker is None and market.series_ticker is not None):
            merged[market.ticker] = market
    return merged


def select_markets(selection: Selection, found: Iterable[MarketInfo], now_ns: int) -> Selected:
    """Apply the filters, the shard and the cap to what the queries returned.

    Status was filtered by the exchange (one request per status); explicit tickers skip the
    filters. The shard applies to everything. The cap keeps every explicit ticker and fills
    the rest by soonest close, then ticker.
    """
    explicit = set(selection.tickers)
    merged = merge_markets(found)
    shard = selection.shard
    kept_explicit: list[MarketInfo] = []
    candidates: list[MarketInfo] = []
    filtered_out = 0
    for ticker, market in merged.items():
        if shard is not None and not shard.owns(ticker):
            continue
        if ticker in explicit:
            kept_explicit.append(market)
        elif passes_filters(selection, market, now_ns):
            candidates.append(market)
        else:
            filtered_out += 1
    missing = sorted(t for t in explicit if t not in merged and (shard is None or shard.owns(t)))
    cut = 0
    if selection.max_markets is not None:
        room = max(0, selection.max_markets - len(kept_explicit) - len(missing))
        candidates.sort(key=_cap_order)
        cut = max(0, len(candidates) - room)
        candidates = candidates[:room]
    markets = sorted([*kept_explicit, *candidates], key=lambda m: m.ticker)
    return Selected(
        markets=tuple(markets),
        cut_by_cap=cut,
        missing_tickers=tuple(missing),
        filtered_out=filtered_out,
    )


@dataclass(frozen=True, slots=True)
class CatalogCache:
    """What the driver knows beyond a lifecycle frame: series by ticker, series of events."""

    series: Mapping[str, SeriesInfo] = field(default_factory=dict)
    series_of_event: Mapping[str, str] = field(default_factory=dict)


def matches(
    selection: Selection,
    market: MarketInfo,
    now_ns: int,
    cache: CatalogCache | None = None,
) -> bool:
    """Whether one market (e.g. announced by a `market_lifecycle_v2` `created` frame, §7.5)
    belongs to the selection: shard, then a source, then the filters incl. status. Series
    entries match as globs directly. The cap is the caller's: it knows how many it has."""
    if selection.shard is not None and not selection.shard.owns(market.ticker):
        return False
    if market.ticker in selection.tickers:
        return True
    if selection.has_source and not _from_a_source(selection, market, cache or CatalogCache()):
        return False
    allowed = set().union(*(STATUSES_OF_FILTER[s] for s in selection.statuses))
    return market.status in allowed and passes_filters(selection, market, now_ns)


def _from_a_source(selection: Selection, market: MarketInfo, cache: CatalogCache) -> bool:
    if market.event_ticker in selection.events:
        return True
    series_ticker = market.series_ticker or cache.series_of_event.get(market.event_ticker)
    if series_ticker is None:
        return False
    if any(fnmatch.fnmatchcase(series_ticker, entry) for entry in selection.series):
        return True
    series = cache.series.get(series_ticker)
    if series is None:
        return False
    return series.category in selection.categories or any(
        tag in selection.tags for tag in series.tags
    )


@dataclass(frozen=True)
class Discovered:
    """The outcome of `discover`: the selected markets (by ticker), explicit tickers the
    exchange did not return (still selected), what the cap cut and the filters dropped, the
    queries made (one line per logical query, pages not repeated), and the series and
    event->series facts learned (a CatalogCache for `ssmd.selection.matches`)."""

    markets: tuple[MarketInfo, ...]
    missing_tickers: tuple[str, ...] = ()
    cut_by_cap: int = 0
    filtered_out: int = 0
    queries: tuple[str, ...] = ()
    series: Mapping[str, SeriesInfo] = field(default_factory=dict)
    series_of_event: Mapping[str, str] = field(default_factory=dict)

    @property
    def tickers(self) -> tuple[str, ...]:
        return tuple(sorted({m.ticker for m in self.markets} | set(self.missing_tickers)))

    @property
    def by_series(self) -> dict[str, int]:
        """Selected markets per series ticker (UNKNOWN_SERIES when nobody said), largest first."""
        counts = Counter(m.series_ticker or UNKNOWN_SERIES for m in self.markets)
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def cache(self) -> CatalogCache:
        return CatalogCache(series=self.series, series_of_event=self.series_of_event)
