"""The simulator's REST query strings (PROTOCOL.md §9.1-§9.5) and its trade history.

Pure: `parse_*_query` read a query string into a typed query or a `BadQuery` (HTTP 400);
`TradeLog` keeps every trade the generator made with its creation time and answers
`GET /trade-api/v2/markets/trades` (§9.5) newest first, with a cursor.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import msgspec

from ssmd.exchange.catalog import (
    EventQuery,
    MarketQuery,
    MveFilter,
    StatusFilter,
    format_rfc3339_us,
)
from ssmd.exchange.market import Trade
from ssmd.fixedpoint import format_price, format_size

TRADES_PATH = "/trade-api/v2/markets/trades"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MARKETS_DEFAULT_LIMIT, MARKETS_MAX_LIMIT = 100, 1000  # §9.1
EVENTS_DEFAULT_LIMIT, EVENTS_MAX_LIMIT = 200, 200  # §9.2
_MARKET_TS = ("created", "close", "settled")  # the §9.1 timestamp filter families
_EVENT_STATUSES = (StatusFilter.UNOPENED, StatusFilter.OPEN, StatusFilter.CLOSED,
                   StatusFilter.SETTLED)  # fmt: skip
_NS_PER_S = 1_000_000_000


class RestTrade(msgspec.Struct, frozen=True):
    """One §9.5 Trade object, fields in the order the reference lists them."""

    trade_id: str
    ticker: str
    count_fp: str
    yes_price_dollars: str
    no_price_dollars: str
    taker_side: str
    taker_outcome_side: str
    taker_book_side: str
    created_time: str
    is_block_trade: bool


class _TradesResponse(msgspec.Struct):
    trades: list[RestTrade]
    cursor: str


def rest_trade(trade: Trade, ts_ns: int) -> RestTrade:
    """The REST form of a generated trade; the same facts as its WS `trade` frame (§7.4)."""
    taker = trade.taker_side.value
    return RestTrade(
        trade_id=trade.trade_id,
        ticker=trade.market,
        count_fp=format_size(trade.size_e2),
        yes_price_dollars=format_price(trade.yes_price_e4),
        no_price_dollars=format_price(trade.no_price_e4),
        taker_side=taker,
        taker_outcome_side=taker,
        taker_book_side=trade.taker_book_side.value,
        created_time=format_rfc3339_us(ts_ns),
        is_block_trade=False,
    )


@dataclass(frozen=True)
class TradeQuery:
    """The request's filters. `min_ts_s`/`max_ts_s` bound `created_time` in Unix seconds,
    both inclusive (the reference does not say; inclusive loses nothing at the edges)."""

    ticker: str | None = None
    min_ts_s: int | None = None
    max_ts_s: int | None = None
    limit: int = DEFAULT_LIMIT
    cursor: int | None = None
    is_block_trade: bool | None = None


@dataclass(frozen=True)
class BadQuery:
    """A query the endpoint answers with HTTP 400; `message` names the parameter."""

    message: str


@dataclass(frozen=True)
class TradePage:
    """One response: the trades, newest first, and the cursor of the next page ("" = last)."""

    trades: list[RestTrade]
    cursor: str

    def to_json(self) -> bytes:
        return msgspec.json.encode(_TradesResponse(self.trades, self.cursor))


def parse_trade_query(query: str) -> TradeQuery | BadQuery:
    """Read `ticker`, `min_ts`, `max_ts`, `limit`, `cursor`, `is_block_trade`; an empty value
    counts as absent (a first page sends `cursor=`); unknown parameters are ignored."""
    values = _values(query)
    if isinstance(values, BadQuery):
        return values
    numbers = _ints(values, ("min_ts", "max_ts", "limit", "cursor"))
    if isinstance(numbers, BadQuery):
        return numbers
    limit = numbers.get("limit", DEFAULT_LIMIT)
    if not 1 <= limit <= MAX_LIMIT:
        return BadQuery(f"limit must be 1 to {MAX_LIMIT}, got {limit}")
    cursor = numbers.get("cursor")
    if cursor is not None and cursor < 0:
        return BadQuery("invalid cursor")
    block_text = values.get("is_block_trade")
    if block_text not in (None, "true", "false"):
        return BadQuery(f"is_block_trade must be true or false, got {block_text!r}")
    return TradeQuery(
        ticker=values.get("ticker"),
        min_ts_s=numbers.get("min_ts"),
        max_ts_s=numbers.get("max_ts"),
        limit=limit,
        cursor=cursor,
        is_block_trade=None if block_text is None else block_text == "true",
    )


# -- catalog query strings (§9.1-§9.3) -----------------------------------------------------------


def encode_cursor(kind: str, seq: int) -> str:
    """An opaque cursor naming the last item seen; "" = no more pages (§9.1)."""
    return base64.urlsafe_b64encode(f"{kind}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> int | None:
    """The seq a cursor of `kind` continues after; None if it is not one of ours."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    prefix, _, number = text.partition(":")
    if prefix != kind or not (number.isascii() and number.isdigit()):
        return None
    return int(number)


@dataclass(frozen=True)
class SeriesQuery:
    """GET /series filters (§9.3): a category, and tags of which a series must carry one."""

    category: str | None = None
    tags: tuple[str, ...] | None = None


def _values(query: str) -> dict[str, str] | BadQuery:
    """Parameters by name; an empty value counts as absent, a repeated one is a 400."""
    values: dict[str, str] = {}
    for name, given in urllib.parse.parse_qs(query, keep_blank_values=True).items():
        if len(given) > 1:
            return BadQuery(f"{name} given more than once")
        if given[0]:
            values[name] = given[0]
    return values


def _ints(values: Mapping[str, str], names: tuple[str, ...]) -> dict[str, int] | BadQuery:
    numbers: dict[str, int] = {}
    for name in names:
        text = values.get(name)
        if text is None:
            continue
        digits = text[1:] if text.startswith("-") else text
        if not (digits.isascii() and digits.isdigit()):
            return BadQuery(f"{name} must be an integer, got {text!r}")
        numbers[name] = int(text)
    return numbers


def _list(text: str | None) -> tuple[str, ...] | None:
    """A comma list (spaces inside an item kept, around it dropped); None when absent."""
    if text is None:
        return None
    return tuple(item.strip() for item in text.split(",") if item.strip()) or None


def _status(text: str | None, allowed: tuple[StatusFilter, ...]) -> StatusFilter | BadQuery | None:
    if text is None:
        return None
    names = ", ".join(status.value for status in allowed)
    if "," in text:  # §9.1: only one value per request since 2025-11-27
        return BadQuery(f"status takes a single value, one of {names}")
    try:
        status = StatusFilter(text)
    except ValueError:
        status = None
    if status not in allowed:
        return BadQuery(f"status must be one of {names}, got {text!r}")
    return status


def _bool(values: Mapping[str, str], name: str) -> bool | BadQuery:
    text = values.get(name, "false")
    if text not in ("true", "false"):
        return BadQuery(f"{name} must be true or false, got {text!r}")
    return text == "true"


def parse_market_query(query: str) -> MarketQuery | BadQuery:
    """GET /markets parameters with §9.1's rules: one status; timestamp filters of one family
    only (created with unopened/open, close with closed, settled with settled, or no status);
    min_updated_ts only with mve_filter=exclude and at most series_ticker besides."""
    values = _values(query)
    if isinstance(values, BadQuery):
        return values
    ts_names = tuple(f"{bound}_{f}_ts" for f in _MARKET_TS for bound in ("min", "max"))
    numbers = _ints(values, ("limit", "min_updated_ts", *ts_names))
    if isinstance(numbers, BadQuery):
        return numbers
    # §9.1 allows 0 to 1000; what 0 returns is not documented: it serves the default.
    limit = numbers.get("limit") or MARKETS_DEFAULT_LIMIT
    if not 1 <= limit <= MARKETS_MAX_LIMIT:
        return BadQuery(f"limit must be 0 to {MARKETS_MAX_LIMIT}, got {limit}")
    after_seq = decode_cursor("markets", values.get("cursor", encode_cursor("markets", 0)))
    if after_seq is None:
        return BadQuery("invalid cursor")
    event_ticker = values.get("event_ticker")
    if event_ticker is not None and "," in event_ticker:
        return BadQuery("event_ticker takes a single event ticker")
    status = _status(values.get("status"), tuple(StatusFilter))
    if isinstance(status, BadQuery):
        return status
    mve_text = values.get("mve_filter")
    if mve_text is not None and mve_text not in ("only", "exclude"):
        return BadQuery(f"mve_filter must be only or exclude, got {mve_text!r}")
    mve_filter = MveFilter(mve_text) if mve_text is not None else None
    families = [f for f in _MARKET_TS if f"min_{f}_ts" in numbers or f"max_{f}_ts" in numbers]
    if len(families) > 1:
        return BadQuery("created, close and settled timestamp filters cannot be combined")
    compatible = {
        "created": (StatusFilter.UNOPENED, StatusFilter.OPEN),
        "close": (StatusFilter.CLOSED,),
        "settled": (StatusFilter.SETTLED,),
    }
    if families and status is not None and status not in compatible[families[0]]:
        allowed = " or ".join(s.value for s in compatible[families[0]])
        return BadQuery(f"{families[0]} timestamp filters combine only with status {allowed}")
    others = families or status or event_ticker or "tickers" in values
    if "min_updated_ts" in numbers and (mve_filter is not MveFilter.EXCLUDE or others):
        return BadQuery("min_updated_ts combines only with mve_filter=exclude and series_ticker")
    return MarketQuery(
        limit=limit,
        after_seq=after_seq,
        event_ticker=event_ticker,
        series_ticker=values.get("series_ticker"),
        status=status,
        tickers=_list(values.get("tickers")),
        mve_filter=mve_filter,
        min_created_ts_s=numbers.get("min_created_ts"),
        max_created_ts_s=numbers.get("max_created_ts"),
        min_close_ts_s=numbers.get("min_close_ts"),
        max_close_ts_s=numbers.get("max_close_ts"),
        min_settled_ts_s=numbers.get("min_settled_ts"),
        max_settled_ts_s=numbers.get("max_settled_ts"),
        min_updated_ts_s=numbers.get("min_updated_ts"),
    )


def parse_event_query(query: str) -> EventQuery | BadQuery:
    """GET /events parameters (§9.2): limit 1-200, status unopened|open|closed|settled."""
    values = _values(query)
    if isinstance(values, BadQuery):
        return values
    numbers = _ints(values, ("limit", "min_close_ts", "min_updated_ts"))
    if isinstance(numbers, BadQuery):
        return numbers
    limit = numbers.get("limit", EVENTS_DEFAULT_LIMIT)
    if not 1 <= limit <= EVENTS_MAX_LIMIT:
        return BadQuery(f"limit must be 1 to {EVENTS_MAX_LIMIT}, got {limit}")
    after_seq = decode_cursor("events", values.get("cursor", encode_cursor("events", 0)))
    if after_seq is None:
        return BadQuery("invalid cursor")
    status = _status(values.get("status"), _EVENT_STATUSES)
    if isinstance(status, BadQuery):
        return status
    nested = _bool(values, "with_nested_markets")
    milestones = _bool(values, "with_milestones")
    for flag in (nested, milestones):
        if isinstance(flag, BadQuery):
            return flag
    return EventQuery(
        limit=limit,
        after_seq=after_seq,
        status=status,
        series_ticker=values.get("series_ticker"),
        tickers=_list(values.get("tickers")),
        min_close_ts_s=numbers.get("min_close_ts"),
        min_updated_ts_s=numbers.get("min_updated_ts"),
        with_nested_markets=nested is True,
        with_milestones=milestones is True,
    )


def parse_series_query(query: str) -> SeriesQuery | BadQuery:
    """GET /series parameters (§9.3); include_* flags are accepted and change nothing."""
    values = _values(query)
    if isinstance(values, BadQuery):
        return values
    for name in ("include_product_metadata", "include_volume"):
        flag = _bool(values, name)
        if isinstance(flag, BadQuery):
            return flag
    return SeriesQuery(category=values.get("category"), tags=_list(values.get("tags")))


# -- the trade history (§9.5) --------------------------------------------------------------------


class TradeLog:
    """Every trade, in the order made, addressed by a position that never changes.

    A cursor is the position of the last trade returned: the next page continues with older
    trades, so trades made while a client pages never shift or repeat its pages. With
    `max_trades` the oldest trades beyond that count are forgotten (long `ssmd exchange` runs).
    """

    def __init__(self, max_trades: int | None = None) -> None:
        self._max_trades = max_trades
        self._base = 0  # position of _trades[0]
        self._trades: list[RestTrade] = []
        self._created_s: list[int] = []
        self._by_ticker: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self._trades)

    def record(self, trade: Trade, ts_ns: int) -> None:
        position = self._base + len(self._trades)
        self._trades.append(rest_trade(trade, ts_ns))
        self._created_s.append(ts_ns // _NS_PER_S)
        self._by_ticker.setdefault(trade.market, []).append(position)
        if self._max_trades is not None and len(self._trades) > self._max_trades * 1.1:
            self._forget(len(self._trades) - self._max_trades)

    def all_trades(self) -> list[RestTrade]:
        """Every trade still kept, oldest first."""
        return list(self._trades)

    def page(self, query: TradeQuery) -> TradePage:
        end = self._base + len(self._trades)
        start = end if query.cursor is None else min(query.cursor, end)
        candidates: Iterator[int]
        if query.ticker is not None:
            positions = self._by_ticker.get(query.ticker, [])
            below = bisect.bisect_left(positions, start)
            candidates = (positions[i] for i in range(below - 1, -1, -1))
        else:
            candidates = iter(range(start - 1, self._base - 1, -1))
        matches: list[int] = []
        cursor = ""
        for position in candidates:
            if position < self._base:
                break
            if not self._matches(position - self._base, query):
                continue
            if len(matches) == query.limit:
                cursor = str(matches[-1])  # one more exists: the client may ask for it
                break
            matches.append(position)
        return TradePage([self._trades[p - self._base] for p in matches], cursor)

    def _matches(self, index: int, query: TradeQuery) -> bool:
        created_s = self._created_s[index]
        if query.min_ts_s is not None and created_s < query.min_ts_s:
            return False
        if query.max_ts_s is not None and created_s > query.max_ts_s:
            return False
        return query.is_block_trade is None or self._trades[index].is_block_trade is (
            query.is_block_trade
        )

    def _forget(self, count: int) -> None:
        self._base += count
        del self._trades[:count]
        del self._created_s[:count]
        for ticker, positions in list(self._by_ticker.items()):
            del positions[: bisect.bisect_left(positions, self._base)]
            if not positions:
                del self._by_ticker[ticker]
