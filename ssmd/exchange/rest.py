"""The simulator's REST trade history, `GET /trade-api/v2/markets/trades` (PROTOCOL.md §9.5).

Pure: `TradeLog` keeps every trade the generator made with its creation time; `parse_trade_query`
reads the query string; `TradeLog.page` answers one request, newest first, with a cursor.
"""

from __future__ import annotations

import bisect
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

from ssmd.exchange.market import Trade
from ssmd.exchange.protocol import format_rfc3339_us
from ssmd.fixedpoint import format_price, format_size

TRADES_PATH = "/trade-api/v2/markets/trades"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
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
    values: dict[str, str] = {}
    for name, given in urllib.parse.parse_qs(query, keep_blank_values=True).items():
        if len(given) > 1:
            return BadQuery(f"{name} given more than once")
        if given[0]:
            values[name] = given[0]
    numbers: dict[str, int] = {}
    for name in ("min_ts", "max_ts", "limit", "cursor"):
        text = values.get(name)
        if text is None:
            continue
        if not (text.isascii() and text.lstrip("-").isdigit()):
            return BadQuery(f"{name} must be an integer, got {text!r}")
        numbers[name] = int(text)
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
