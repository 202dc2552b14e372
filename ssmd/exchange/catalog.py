"""The simulated exchange's market catalog (PROTOCOL.md §9.1-§9.3, §7.5): series, events and
markets with their Kalshi object status, the lifecycle messages that announce changes, and the
paged queries REST serves. Pure: no clock of its own, time arrives as `*_ns` arguments.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from ssmd.errors import ConfigError
from ssmd.fixedpoint import format_price

MVE_PREFIX = "KXMVE"  # multivariate (combo) markets, series and events (§7.5, §9.1 mve_filter)
NS_PER_S = 1_000_000_000

_T = TypeVar("_T")
_Item = TypeVar("_Item", "CatalogMarket", "Event")


def format_rfc3339_us(ts_ns: int) -> str:
    """RFC3339 UTC with 6 fractional digits, like live deltas (`…T08:53:39.843496Z`, §7.1.2)."""
    seconds, rest_ns = divmod(ts_ns, 1_000_000_000)
    whole = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{rest_ns // 1_000:06d}Z"


def date_code(ts_ns: int) -> str:
    """The date in Kalshi's tickers, e.g. 26NOV21."""
    day = datetime.fromtimestamp(ts_ns // NS_PER_S, UTC)
    month = "JANFEBMARAPRMAYJUNJULAUGSEPOCTNOVDEC"[3 * day.month - 3 : 3 * day.month]
    return f"{day.year % 100:02d}{month}{day.day:02d}"


def format_rfc3339_s(ts_ns: int) -> str:
    """RFC3339 UTC to the second, as REST market times read (`2026-11-21T18:00:00Z`, §9)."""
    return datetime.fromtimestamp(ts_ns // NS_PER_S, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- §7.5 lifecycle messages ---------------------------------------------------------------------


class LifecycleType(enum.Enum):
    """The `market_lifecycle_v2` event types the simulator emits (§7.5); the market generator
    draws the last two, market churn (churn.py) the others."""

    CREATED = "created"
    ACTIVATED = "activated"
    DEACTIVATED = "deactivated"
    DETERMINED = "determined"
    SETTLED = "settled"
    METADATA_UPDATED = "metadata_updated"
    CLOSE_DATE_UPDATED = "close_date_updated"


@dataclass(frozen=True)
class MarketMetadata:
    """`additional_metadata` of a §7.5 `created` message."""

    name: str
    title: str
    yes_sub_title: str
    no_sub_title: str
    rules_primary: str
    can_close_early: bool
    event_ticker: str
    expected_expiration_ts_s: int


@dataclass(frozen=True)
class Lifecycle:
    """A `market_lifecycle_v2` message (§7.5); only the fields of its `event_type` are set:
    created: open/close_ts_s, metadata, price_level_structure; determined: result,
    settlement_value_e4, determination_ts_s; settled: settled_ts_s; (de)activated:
    is_deactivated; close_date_updated: close_ts_s; metadata_updated: yes_sub_title."""

    market: str
    event_type: LifecycleType
    close_ts_s: int | None = None
    yes_sub_title: str | None = None
    open_ts_s: int | None = None
    metadata: MarketMetadata | None = None
    price_level_structure: PriceLevelStructure | None = None
    result: MarketResult | None = None
    settlement_value_e4: int | None = None
    determination_ts_s: int | None = None
    settled_ts_s: int | None = None
    is_deactivated: bool | None = None


@dataclass(frozen=True)
class EventLifecycle:
    """An `event_lifecycle` announcement of a new event (§7.5)."""

    event_ticker: str
    series_ticker: str
    title: str
    subtitle: str


def lifecycle_msg(event: Lifecycle | EventLifecycle) -> tuple[str, dict[str, Any]]:
    """The frame type and `msg` of a lifecycle message, keys in the order of the §7.5 examples."""
    if isinstance(event, EventLifecycle):
        return "event_lifecycle", {
            "event_ticker": event.event_ticker,
            "exchange_index": 0,
            "title": event.title,
            "subtitle": event.subtitle,
            "collateral_return_type": "MECNET",
            "series_ticker": event.series_ticker,
        }
    kind = event.event_type
    msg: dict[str, Any] = {"market_ticker": event.market}
    if kind is LifecycleType.CREATED:
        meta = event.metadata
        msg |= {"exchange_index": 0, "open_ts": event.open_ts_s, "close_ts": event.close_ts_s}
        if meta is not None:
            msg["additional_metadata"] = {
                "name": meta.name,
                "title": meta.title,
                "yes_sub_title": meta.yes_sub_title,
                "no_sub_title": meta.no_sub_title,
                "rules_primary": meta.rules_primary,
                "rules_secondary": "",
                "can_close_early": meta.can_close_early,
                "event_ticker": meta.event_ticker,
                "expected_expiration_ts": meta.expected_expiration_ts_s,
            }
        msg["event_type"] = kind.value
        structure = event.price_level_structure or PriceLevelStructure.LINEAR_CENT
        msg["price_level_structure"] = structure.value
        return "market_lifecycle_v2", msg
    if kind is LifecycleType.METADATA_UPDATED:
        msg = {"event_type": kind.value, **msg, "yes_sub_title": event.yes_sub_title}
        return "market_lifecycle_v2", msg
    if kind is LifecycleType.DETERMINED:
        msg["determination_ts"] = event.determination_ts_s
        msg["result"] = event.result.value if event.result else ""
        msg["settlement_value"] = format_price(event.settlement_value_e4 or 0)  # since 2026-02-26
    elif kind is LifecycleType.SETTLED:
        msg["settled_ts"] = event.settled_ts_s
    elif kind in (LifecycleType.ACTIVATED, LifecycleType.DEACTIVATED):
        msg["is_deactivated"] = kind is LifecycleType.DEACTIVATED
    else:  # close_date_updated
        msg["close_ts"] = event.close_ts_s
    msg["event_type"] = kind.value
    return "market_lifecycle_v2", msg


# -- the catalog's objects -----------------------------------------------------------------------


class MarketStatus(enum.Enum):
    """A market object's `status` (§9.1); `disputed` and `amended` are never simulated."""

    INITIALIZED = "initialized"
    ACTIVE = "active"
    INACTIVE = "inactive"
    CLOSED = "closed"
    DETERMINED = "determined"
    FINALIZED = "finalized"


class StatusFilter(enum.Enum):
    """The `status` query values of GET /markets and /events and the object statuses each
    selects (§9.1: unopened→initialized, open→active, paused→inactive, closed→closed…,
    settled→finalized; "closed…" read as every closed-but-unsettled state)."""

    UNOPENED = "unopened"
    OPEN = "open"
    PAUSED = "paused"
    CLOSED = "closed"
    SETTLED = "settled"

    @property
    def statuses(self) -> frozenset[MarketStatus]:
        return _FILTER_STATUSES[self]


_FILTER_STATUSES = {
    StatusFilter.UNOPENED: frozenset({MarketStatus.INITIALIZED}),
    StatusFilter.OPEN: frozenset({MarketStatus.ACTIVE}),
    StatusFilter.PAUSED: frozenset({MarketStatus.INACTIVE}),
    StatusFilter.CLOSED: frozenset({MarketStatus.CLOSED, MarketStatus.DETERMINED}),
    StatusFilter.SETTLED: frozenset({MarketStatus.FINALIZED}),
}


class MveFilter(enum.Enum):
    """§9.1 `mve_filter`: only or no multivariate (KXMVE…) markets."""

    ONLY = "only"
    EXCLUDE = "exclude"


class MarketResult(enum.Enum):
    """A market's `result`: "" until determined."""

    NONE = ""
    YES = "yes"
    NO = "no"


class PriceLevelStructure(enum.Enum):
    """§7.1.5 tick regimes the simulator uses: one price range over the whole $0-$1."""

    LINEAR_CENT = "linear_cent"
    DECI_CENT = "deci_cent"

    @property
    def tick_e4(self) -> int:
        return 100 if self is PriceLevelStructure.LINEAR_CENT else 10

    @classmethod
    def for_tick(cls, tick_e4: int) -> PriceLevelStructure:
        return cls.DECI_CENT if tick_e4 < 100 else cls.LINEAR_CENT


@dataclass(frozen=True)
class Series:
    ticker: str
    title: str
    category: str
    tags: tuple[str, ...]
    frequency: str


@dataclass(frozen=True)
class Event:
    """One event; `seq` is its creation order (the /events cursor)."""

    event_ticker: str
    series_ticker: str
    title: str
    sub_title: str
    category: str
    mutually_exclusive: bool = True
    collateral_return_type: str = "MECNET"
    seq: int = 0

    @property
    def is_multivariate(self) -> bool:
        return self.event_ticker.startswith(MVE_PREFIX)


@dataclass
class CatalogMarket:
    """One market. `seq` is its creation order, set by `Catalog.add_market`: pages follow it,
    so markets created while a client pages land after every one it has not seen yet."""

    ticker: str
    event_ticker: str
    series_ticker: str
    title: str
    yes_sub_title: str
    status: MarketStatus
    created_ts_ns: int
    open_ts_ns: int
    close_ts_ns: int
    expected_expiration_ts_ns: int
    price_level_structure: PriceLevelStructure = PriceLevelStructure.LINEAR_CENT
    can_close_early: bool = True
    mve_collection_ticker: str | None = None
    result: MarketResult = MarketResult.NONE
    determination_ts_ns: int | None = None
    settled_ts_ns: int | None = None
    updated_ts_ns: int = 0
    seq: int = 0
    rules_primary: str = field(default="", repr=False)


# -- queries -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarketQuery:
    """GET /markets filters (§9.1), already checked (rest_catalog.parse_market_query).
    `after_seq` is the decoded cursor; `*_ts_s` bounds are Unix seconds, inclusive."""

    limit: int = 100
    after_seq: int = 0
    event_ticker: str | None = None
    series_ticker: str | None = None
    status: StatusFilter | None = None
    tickers: tuple[str, ...] | None = None
    mve_filter: MveFilter | None = None
    min_created_ts_s: int | None = None
    max_created_ts_s: int | None = None
    min_close_ts_s: int | None = None
    max_close_ts_s: int | None = None
    min_settled_ts_s: int | None = None
    max_settled_ts_s: int | None = None
    min_updated_ts_s: int | None = None


@dataclass(frozen=True)
class EventQuery:
    """GET /events filters (§9.2); multivariate events are never listed."""

    limit: int = 200
    after_seq: int = 0
    status: StatusFilter | None = None
    series_ticker: str | None = None
    tickers: tuple[str, ...] | None = None
    min_close_ts_s: int | None = None
    min_updated_ts_s: int | None = None
    with_nested_markets: bool = False  # rendering only
    with_milestones: bool = False


@dataclass(frozen=True)
class Page(Generic[_T]):
    """One page and the seq to continue after (None: this was the last page)."""

    items: list[_T]
    next_after_seq: int | None


class Catalog:
    """Every series, event and market the exchange lists, in creation order."""

    def __init__(self) -> None:
        self._series: dict[str, Series] = {}
        self._events: list[Event] = []  # seq order: seq == index + 1
        self._event_by_ticker: dict[str, Event] = {}
        self._markets: list[CatalogMarket] = []  # seq order: seq == index + 1
        self._market_by_ticker: dict[str, CatalogMarket] = {}
        self._markets_by_event: dict[str, list[CatalogMarket]] = {}

    def __len__(self) -> int:
        return len(self._markets)

    # -- building ----------------------------------------------------------------------------------

    def add_series(self, series: Series) -> Series:
        """Register `series` unless one with its ticker exists; return the registered one."""
        return self._series.setdefault(series.ticker, series)

    def add_event(self, event: Event) -> Event:
        """Register `event` (its series first); returns it with its `seq`."""
        if event.series_ticker not in self._series:
            raise ConfigError(f"unknown series {event.series_ticker}", source="exchange")
        if event.event_ticker in self._event_by_ticker:
            raise ConfigError(f"event {event.event_ticker} exists already", source="exchange")
        numbered = dataclasses.replace(event, seq=len(self._events) + 1)
        self._events.append(numbered)
        self._event_by_ticker[numbered.event_ticker] = numbered
        self._markets_by_event[numbered.event_ticker] = []
        return numbered

    def add_market(self, market: CatalogMarket) -> CatalogMarket:
        """Register `market` (its event first), numbering it after every market so far."""
        if market.event_ticker not in self._event_by_ticker:
            raise ConfigError(f"unknown event {market.event_ticker}", source="exchange")
        if market.ticker in self._market_by_ticker:
            raise ConfigError(f"market {market.ticker} exists already", source="exchange")
        market.seq = len(self._markets) + 1
        market.updated_ts_ns = market.updated_ts_ns or market.created_ts_ns
        self._markets.append(market)
        self._market_by_ticker[market.ticker] = market
        self._markets_by_event[market.event_ticker].append(market)
        return market

    def set_status(self, ticker: str, status: MarketStatus, ts_ns: int) -> CatalogMarket:
        market = self._market_by_ticker[ticker]
        market.status = status
        market.updated_ts_ns = ts_ns
        return market

    # -- lookups -----------------------------------------------------------------------------------

    def market(self, ticker: str) -> CatalogMarket | None:
        return self._market_by_ticker.get(ticker)

    def event(self, event_ticker: str) -> Event | None:
        return self._event_by_ticker.get(event_ticker)

    def series(self, ticker: str) -> Series | None:
        return self._series.get(ticker)

    def markets(self) -> list[CatalogMarket]:
        """Every market, in creation order."""
        return list(self._markets)

    def markets_of(self, event_ticker: str) -> list[CatalogMarket]:
        return list(self._markets_by_event.get(event_ticker, ()))

    # -- queries -----------------------------------------------------------------------------------

    def markets_page(self, query: MarketQuery) -> Page[CatalogMarket]:
        """The next `limit` markets after `after_seq` that match, in creation order."""
        candidates: Iterable[CatalogMarket]
        after = query.after_seq
        if query.tickers is not None:
            found = (self._market_by_ticker.get(ticker) for ticker in query.tickers)
            candidates = sorted(
                {m.seq: m for m in found if m is not None and m.seq > after}.values(),
                key=lambda m: m.seq,
            )
        elif query.event_ticker is not None:
            of_event = self._markets_by_event.get(query.event_ticker, [])
            start = bisect.bisect_right(of_event, after, key=lambda m: m.seq)
            candidates = _from(of_event, start)
        else:
            candidates = _from(self._markets, min(after, len(self._markets)))
        return _page((m for m in candidates if _market_matches(m, query)), query.limit)

    def events_page(self, query: EventQuery) -> Page[Event]:
        """The next `limit` non-multivariate events after `after_seq` that match."""
        if query.tickers is not None:
            found = (self._event_by_ticker.get(ticker) for ticker in query.tickers)
            candidates: Iterable[Event] = sorted(
                {e.seq: e for e in found if e is not None and e.seq > query.after_seq}.values(),
                key=lambda e: e.seq,
            )
        else:
            candidates = _from(self._events, min(query.after_seq, len(self._events)))
        return _page((e for e in candidates if self._event_matches(e, query)), query.limit)

    def series_list(self, category: str | None, tags: tuple[str, ...] | None) -> list[Series]:
        """§9.3: every series of `category` carrying any of `tags` (None: no such filter)."""
        wanted = None if tags is None else set(tags)
        return [
            series
            for series in self._series.values()
            if (category is None or series.category == category)
            and (wanted is None or not wanted.isdisjoint(series.tags))
        ]

    def _event_matches(self, event: Event, query: EventQuery) -> bool:
        if event.is_multivariate:  # §9.2: excluded since 2025-12-04
            return False
        if query.series_ticker is not None and event.series_ticker != query.series_ticker:
            return False
        markets = self._markets_by_event[event.event_ticker]
        if query.status is not None:  # §9.2: the status matches child markets
            statuses = query.status.statuses
            if not any(m.status in statuses for m in markets):
                return False
        if query.min_close_ts_s is not None and not any(
            m.close_ts_ns // NS_PER_S >= query.min_close_ts_s for m in markets
        ):
            return False
        return query.min_updated_ts_s is None or any(
            m.updated_ts_ns // NS_PER_S >= query.min_updated_ts_s for m in markets
        )


def _from(items: list[_T], start: int) -> Iterator[_T]:
    return (items[index] for index in range(start, len(items)))


def _page(matches: Iterator[_Item], limit: int) -> Page[_Item]:
    """Up to `limit` matches; a continuation only when one more exists (no empty last page)."""
    items: list[_Item] = []
    for item in matches:
        if len(items) == limit:
            return Page(items, items[-1].seq)
        items.append(item)
    return Page(items, None)


def _within(value_ns: int | None, low_s: int | None, high_s: int | None) -> bool:
    if low_s is None and high_s is None:
        return True
    if value_ns is None:
        return False
    value_s = value_ns // NS_PER_S
    return (low_s is None or value_s >= low_s) and (high_s is None or value_s <= high_s)


def _market_matches(market: CatalogMarket, query: MarketQuery) -> bool:
    if query.event_ticker is not None and market.event_ticker != query.event_ticker:
        return False
    if query.series_ticker is not None and market.series_ticker != query.series_ticker:
        return False
    if query.status is not None and market.status not in query.status.statuses:
        return False
    if query.mve_filter is not None and (market.mve_collection_ticker is not None) is (
        query.mve_filter is MveFilter.EXCLUDE
    ):
        return False
    if query.min_updated_ts_s is not None and market.updated_ts_ns < (
        query.min_updated_ts_s * NS_PER_S
    ):
        return False
    return (
        _within(market.created_ts_ns, query.min_created_ts_s, query.max_created_ts_s)
        and _within(market.close_ts_ns, query.min_close_ts_s, query.max_close_ts_s)
        and _within(market.settled_ts_ns, query.min_settled_ts_s, query.max_settled_ts_s)
    )
