"""The Kalshi REST calls ssmd makes (PROTOCOL.md §9), on httpx: `SignedGet`, the one signed-GET
path every REST client shares, and `KalshiRest`, `GET /markets/trades` with cursor pagination
to backfill trades a WebSocket gap lost (§9.5). Market discovery is in ssmd.discovery."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
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


class _ErrorBody(msgspec.Struct, frozen=True):
    """§9: {"code", "message", "details"}; a 429 says {"error": ...} (§9.6)."""

    code: str = ""
    message: str = ""
    details: str = ""
    error: str = ""


_PAGE_DECODER = msgspec.json.Decoder(TradesPage)
_ERROR_BODY = msgspec.json.Decoder(_ErrorBody)


def error_text(response: httpx.Response) -> str:
    """What a non-200 answer says: the §9 error body's message (and details), else its text."""
    try:
        body = _ERROR_BODY.decode(response.content)
    except msgspec.DecodeError:
        return response.text[:200]
    text = body.message or body.error or body.code or response.text[:200]
    return f"{text} ({body.details})" if body.details else text


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


class SignedGet:
    """One keep-alive httpx.AsyncClient on a REST base (`.../trade-api/v2`); every GET is
    signed (§2) when there are credentials. Transport failures raise httpx.HTTPError and every
    HTTP status is returned: what to retry and what to raise is the caller's policy."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None,
        *,
        timeout_s: float = 10.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self._path_root = urlsplit(self.base_url).path
        self._clock_ns = clock_ns
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s)

    def url(self, path: str) -> str:
        """The absolute URL of `path` (for messages; no query string)."""
        return self.base_url + path

    async def get(self, path: str, params: Mapping[str, str | int]) -> httpx.Response:
        headers: dict[str, str] = {}
        if self.credentials is not None:
            # §2.2: sign the path from the API root, without the query string.
            headers = self.credentials.headers(
                self._clock_ns() // 1_000_000, "GET", self._path_root + path
            )
        return await self._http.get(path, params=params, headers=headers)

    async def close(self) -> None:
        await self._http.aclose()


class KalshiRest:
    """The trade backfill client (§9.5) on one SignedGet (connection pooling, timeouts)."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None,
        *,
        timeout_s: float = 10.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._signed = SignedGet(base_url, credentials, timeout_s=timeout_s, clock_ns=clock_ns)
        self.base_url = self._signed.base_url
        self._clock_ns = clock_ns

    async def close(self) -> None:
        await self._signed.close()

    async def _get(self, path: str, params: dict[str, str | int]) -> bytes:
        try:
            response = await self._signed.get(path, params)
        except httpx.HTTPError as exc:
            raise ExchangeUnavailable(
                self._signed.url(path), f"REST request failed: {exc}"
            ) from exc
        if response.status_code != 200:
            raise ExchangeUnavailable(
                self._signed.url(path), f"HTTP {response.status_code}: {error_text(response)}"
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
