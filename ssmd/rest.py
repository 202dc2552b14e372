"""The Kalshi REST calls ssmd makes (PROTOCOL.md §9), on httpx: signed GETs with cursor
pagination. Today: `GET /markets/trades`, to backfill trades a WebSocket gap lost (§9.5)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec

from ssmd.auth import Credentials
from ssmd.errors import ExchangeUnavailable, FrameDecodeError, ProtocolError
from ssmd.fixedpoint import parse_price, parse_size
from ssmd.records import BookSide, Flag, Side, Trade
from ssmd.wiretime import rfc3339_to_ns

REST_PATH = "/trade-api/v2"
_PAGE_LIMIT = 1000
_NS_PER_S = 1_000_000_000


class RestTrade(msgspec.Struct, frozen=True):
    """One trade of `GET /markets/trades` (§9.5); unknown fields are ignored."""

    trade_id: str
    ticker: str
    created_time: str
    count_fp: str | None = None
    count: int | None = None
    yes_price_dollars: str | None = None
    no_price_dollars: str | None = None
    taker_side: Side | None = None
    taker_outcome_side: Side | None = None
    taker_book_side: BookSide | None = None
    is_block_trade: bool | None = None


class TradesPage(msgspec.Struct, frozen=True):
    trades: list[RestTrade]
    cursor: str | None = None


_PAGE_DECODER = msgspec.json.Decoder(TradesPage)


def rest_base_url(ws_url: str) -> str:
    """The REST base beside a WebSocket URL: same host, `/trade-api/v2` (§1: both hosts serve
    both APIs; signing uses the path from the API root, §2.2)."""
    parts = urlsplit(ws_url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, REST_PATH, "", ""))


def trade_record(trade: RestTrade, receive_ts_ns: int) -> Trade:
    """A REST trade as a `trade` record, flagged `backfilled`; prices and sizes exact."""
    try:
        yes_price_e4 = parse_price(trade.yes_price_dollars or "")
        no_price_e4 = parse_price(trade.no_price_dollars or "")
        size_e2 = parse_size(trade.count_fp) if trade.count_fp else (trade.count or 0) * 100
        exchange_ts_ns = rfc3339_to_ns(trade.created_time)
    except ValueError as exc:
        raise FrameDecodeError(
            "invalid_fields", detail=f"REST trade {trade.trade_id}: {exc}", type_name="trade"
        ) from exc
    return Trade(
        market=trade.ticker,
        exchange_ts_ns=exchange_ts_ns,
        receive_ts_ns=receive_ts_ns,
        flags=(Flag.BACKFILLED,),
        trade_id=trade.trade_id,
        yes_price_e4=yes_price_e4,
        no_price_e4=no_price_e4,
        size_e2=size_e2,
        taker_side=trade.taker_outcome_side or trade.taker_side,
        taker_book_side=trade.taker_book_side,
        is_block_trade=trade.is_block_trade,
    )


class KalshiRest:
    """A signed REST client. One httpx.AsyncClient (connection pooling, timeouts)."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None,
        *,
        timeout_s: float = 10.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._path_root = urlsplit(self.base_url).path
        self._credentials = credentials
        self._clock_ns = clock_ns
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s)

    async def close(self) -> None:
        await self._http.aclose()

    async def _get(self, path: str, params: dict[str, str | int]) -> bytes:
        headers: dict[str, str] = {}
        if self._credentials is not None:
            # §2.2: sign the path from the API root, without the query string.
            headers = self._credentials.headers(
                self._clock_ns() // 1_000_000, "GET", self._path_root + path
            )
        try:
            response = await self._http.get(path, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise ExchangeUnavailable(self.base_url + path, f"REST request failed: {exc}") from exc
        if response.status_code != 200:
            raise ExchangeUnavailable(
                self.base_url + path, f"HTTP {response.status_code}: {response.text[:200]}"
            )
        return response.content

    async def trades(
        self, *, min_ts_s: int, max_ts_s: int, ticker: str | None = None
    ) -> list[RestTrade]:
        """Every trade with min_ts_s <= created_time <= max_ts_s, following the cursor."""
        params: dict[str, str | int] = {
            "min_ts": min_ts_s,
            "max_ts": max_ts_s,
            "limit": _PAGE_LIMIT,
        }
        if ticker is not None:
            params["ticker"] = ticker
        trades: list[RestTrade] = []
        cursor = ""
        while True:
            params["cursor"] = cursor
            body = await self._get("/markets/trades", params)
            try:
                page = _PAGE_DECODER.decode(body)
            except msgspec.DecodeError as exc:
                raise ProtocolError(f"GET /markets/trades: unexpected body: {exc}") from exc
            trades.extend(page.trades)
            if not page.cursor:
                return trades
            cursor = page.cursor

    async def trade_records(
        self, markets: Iterable[str], since_ts_ns: int, until_ts_ns: int
    ) -> list[Trade]:
        """Trades of `markets` in [since, until] (whole seconds, widened), oldest first."""
        wanted = set(markets)
        trades = await self.trades(
            min_ts_s=since_ts_ns // _NS_PER_S, max_ts_s=-(-until_ts_ns // _NS_PER_S)
        )
        now_ns = self._clock_ns()
        records = [trade_record(t, now_ns) for t in trades if not wanted or t.ticker in wanted]
        records.sort(key=lambda r: r.exchange_ts_ns or 0)
        return records
