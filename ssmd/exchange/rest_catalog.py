"""The simulator's REST surface under /trade-api/v2 (PROTOCOL.md §9): GET /markets, /markets/{t},
/markets/trades, /events, /events/{t}, /series, /series/{t}, /exchange/status, in §9's names;
`CatalogRest` routes (pure), `RestFront` adds the §9.6 rate limit and builds HTTP responses.
"""

from __future__ import annotations

import http
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from ssmd.auth import HEADER_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP, verify
from ssmd.exchange.catalog import (
    NS_PER_S,
    Catalog,
    CatalogMarket,
    Event,
    MarketResult,
    MarketStatus,
    Series,
    format_rfc3339_s,
)
from ssmd.exchange.market import SimMarket
from ssmd.exchange.rest import (
    TRADES_PATH,
    BadQuery,
    TradeLog,
    encode_cursor,
    parse_event_query,
    parse_market_query,
    parse_series_query,
    parse_trade_query,
)
from ssmd.fixedpoint import ONE_DOLLAR_E4, format_price, format_size
from ssmd.ratelimit import DEFAULT_REQUEST_COST, TokenBucket

REST_ROOT = "/trade-api/v2"
_TOO_MANY = msgspec.json.encode({"error": "too many requests"})  # §9.6 429 body


@dataclass(frozen=True)
class RestReply:
    status: http.HTTPStatus
    body: bytes


def error_reply(status: http.HTTPStatus, code: str, message: str) -> RestReply:
    """A §9 error body: {"code", "message", "details"}."""
    return RestReply(status, msgspec.json.encode({"code": code, "message": message, "details": ""}))


# -- the §9 objects ------------------------------------------------------------------------------


class RestPriceRange(msgspec.Struct, frozen=True):
    start: str
    end: str
    step: str


class RestMarket(msgspec.Struct, frozen=True, omit_defaults=True):
    """A §9.1 Market object (the optional last three only when they apply)."""

    ticker: str
    event_ticker: str
    market_type: str
    title: str
    yes_sub_title: str
    no_sub_title: str
    created_time: str
    open_time: str
    close_time: str
    expected_expiration_time: str
    status: str
    yes_bid_dollars: str
    yes_bid_size_fp: str
    yes_ask_dollars: str
    yes_ask_size_fp: str
    no_bid_dollars: str
    no_ask_dollars: str
    last_price_dollars: str
    volume_fp: str
    volume_24h_fp: str
    open_interest_fp: str
    result: str
    can_close_early: bool
    price_level_structure: str
    price_ranges: list[RestPriceRange]
    exchange_index: int
    updated_time: str
    rules_primary: str
    settlement_value_dollars: str | None = None
    settlement_ts: str | None = None
    mve_collection_ticker: str | None = None


class RestEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    event_ticker: str
    series_ticker: str
    title: str
    sub_title: str
    mutually_exclusive: bool
    collateral_return_type: str
    category: str
    markets: list[RestMarket] | None = None  # with_nested_markets=true


class RestSeries(msgspec.Struct, frozen=True):
    ticker: str
    frequency: str
    title: str
    category: str
    tags: list[str]
    settlement_sources: list[dict[str, str]]
    contract_url: str
    contract_terms_url: str
    fee_type: str
    fee_multiplier: int
    additional_prohibitions: list[str]


class _MarketsPage(msgspec.Struct):
    markets: list[RestMarket]
    cursor: str


class _EventsPage(msgspec.Struct):
    events: list[RestEvent]
    cursor: str
    milestones: list[dict[str, str]]


_QUOTING = frozenset({MarketStatus.ACTIVE, MarketStatus.INACTIVE})


def rest_market(market: CatalogMarket, sim: SimMarket | None) -> RestMarket:
    """A catalog market as §9.1 lists it; quotes, close time and subtitle from its live book
    when it has one. Without one, or once closed, it quotes an empty book: bid 0, ask 1."""
    stats = sim.ticker_stats() if sim is not None else None
    quotes = stats if market.status in _QUOTING else None
    yes_bid_e4 = quotes.yes_bid_e4 if quotes else 0
    yes_ask_e4 = quotes.yes_ask_e4 if quotes else ONE_DOLLAR_E4
    volume = format_size(stats.volume_e2 if stats else 0)
    close_ts_ns = sim.close_ts_s * 1_000_000_000 if sim else market.close_ts_ns
    sub_title = sim.yes_sub_title if sim else market.yes_sub_title
    step = format_price(market.price_level_structure.tick_e4)
    settlement: str | None = None
    if market.result is not MarketResult.NONE:
        settlement = format_price(ONE_DOLLAR_E4 if market.result is MarketResult.YES else 0)
    settled_ns = market.settled_ts_ns
    return RestMarket(
        ticker=market.ticker,
        event_ticker=market.event_ticker,
        market_type="binary",
        title=market.title,
        yes_sub_title=sub_title,
        no_sub_title=sub_title,
        created_time=format_rfc3339_s(market.created_ts_ns),
        open_time=format_rfc3339_s(market.open_ts_ns),
        close_time=format_rfc3339_s(close_ts_ns),
        expected_expiration_time=format_rfc3339_s(market.expected_expiration_ts_ns),
        status=market.status.value,
        yes_bid_dollars=format_price(yes_bid_e4),
        yes_bid_size_fp=format_size(quotes.yes_bid_size_e2 if quotes else 0),
        yes_ask_dollars=format_price(yes_ask_e4),
        yes_ask_size_fp=format_size(quotes.yes_ask_size_e2 if quotes else 0),
        no_bid_dollars=format_price(ONE_DOLLAR_E4 - yes_ask_e4),
        no_ask_dollars=format_price(ONE_DOLLAR_E4 - yes_bid_e4),
        last_price_dollars=format_price(stats.last_price_e4 if stats else 0),
        volume_fp=volume,
        volume_24h_fp=volume,  # a simulator run is shorter than a day
        open_interest_fp=format_size(stats.open_interest_e2 if stats else 0),
        result=market.result.value,
        can_close_early=market.can_close_early,
        price_level_structure=market.price_level_structure.value,
        price_ranges=[RestPriceRange("0.0000", "1.0000", step)],
        exchange_index=0,
        updated_time=format_rfc3339_s(market.updated_ts_ns),
        rules_primary=market.rules_primary,
        settlement_value_dollars=settlement,
        settlement_ts=format_rfc3339_s(settled_ns) if settled_ns is not None else None,
        mve_collection_ticker=market.mve_collection_ticker,
    )


def rest_series(series: Series) -> RestSeries:
    return RestSeries(
        ticker=series.ticker,
        frequency=series.frequency,
        title=series.title,
        category=series.category,
        tags=list(series.tags),
        settlement_sources=[],
        contract_url="",
        contract_terms_url="",
        fee_type="quadratic",
        fee_multiplier=1,
        additional_prohibitions=[],
    )


# -- routing -------------------------------------------------------------------------------------


class CatalogRest:
    """Answers one REST GET (path without the query string, and the query string)."""

    def __init__(self, catalog: Catalog, books: Mapping[str, SimMarket], trades: TradeLog) -> None:
        self._catalog = catalog
        self._books = books
        self._trades = trades

    def reply(self, path: str, query: str) -> RestReply:
        if path == TRADES_PATH:
            trade_query = parse_trade_query(query)
            if isinstance(trade_query, BadQuery):
                return _bad(trade_query)
            return RestReply(http.HTTPStatus.OK, self._trades.page(trade_query).to_json())
        if not path.startswith(REST_ROOT + "/"):
            return _not_found("no route")
        parts = [urllib.parse.unquote(p) for p in path[len(REST_ROOT) + 1 :].split("/")]
        match parts:
            case ["markets"]:
                return self._markets(query)
            case ["markets", ticker]:
                market = self._catalog.market(ticker)
                if market is None:
                    return _not_found(f"market {ticker} not found")
                return _ok({"market": self._rest_market(market)})
            case ["events"]:
                return self._events(query)
            case ["events", event_ticker]:
                event = self._catalog.event(event_ticker)
                if event is None:
                    return _not_found(f"event {event_ticker} not found")
                markets = [self._rest_market(m) for m in self._catalog.markets_of(event_ticker)]
                return _ok({"event": self._rest_event(event, nested=False), "markets": markets})
            case ["series"]:
                series_query = parse_series_query(query)
                if isinstance(series_query, BadQuery):
                    return _bad(series_query)
                found = self._catalog.series_list(series_query.category, series_query.tags)
                return _ok({"series": [rest_series(series) for series in found]})
            case ["series", series_ticker]:
                series = self._catalog.series(series_ticker)
                if series is None:
                    return _not_found(f"series {series_ticker} not found")
                return _ok({"series": rest_series(series)})
            case ["exchange", "status"]:
                return _ok(
                    {
                        "exchange_active": True,
                        "trading_active": True,
                        "intra_exchange_transfers_active": True,
                        "exchange_estimated_resume_time": None,
                        "exchange_index_statuses": [],
                    }
                )
        return _not_found("no route")

    def _markets(self, query: str) -> RestReply:
        market_query = parse_market_query(query)
        if isinstance(market_query, BadQuery):
            return _bad(market_query)
        page = self._catalog.markets_page(market_query)
        cursor = (
            "" if page.next_after_seq is None else encode_cursor("markets", page.next_after_seq)
        )
        return _ok(_MarketsPage([self._rest_market(m) for m in page.items], cursor))

    def _events(self, query: str) -> RestReply:
        event_query = parse_event_query(query)
        if isinstance(event_query, BadQuery):
            return _bad(event_query)
        page = self._catalog.events_page(event_query)
        cursor = "" if page.next_after_seq is None else encode_cursor("events", page.next_after_seq)
        events = [self._rest_event(e, nested=event_query.with_nested_markets) for e in page.items]
        return _ok(_EventsPage(events, cursor, []))

    def _rest_market(self, market: CatalogMarket) -> RestMarket:
        return rest_market(market, self._books.get(market.ticker))

    def _rest_event(self, event: Event, *, nested: bool) -> RestEvent:
        markets = None
        if nested:
            markets = [self._rest_market(m) for m in self._catalog.markets_of(event.event_ticker)]
        return RestEvent(
            event_ticker=event.event_ticker,
            series_ticker=event.series_ticker,
            title=event.title,
            sub_title=event.sub_title,
            mutually_exclusive=event.mutually_exclusive,
            collateral_return_type=event.collateral_return_type,
            category=event.category,
            markets=markets,
        )


def _ok(body: object) -> RestReply:
    return RestReply(http.HTTPStatus.OK, msgspec.json.encode(body))


def _bad(query: BadQuery) -> RestReply:
    return error_reply(http.HTTPStatus.BAD_REQUEST, "bad_request", query.message)


def _not_found(message: str) -> RestReply:
    return error_reply(http.HTTPStatus.NOT_FOUND, "not_found", message)


# -- HTTP ------------------------------------------------------------------------------------


class RestFront:
    """Every REST request: refused when its signature does not verify (the caller checks), then
    10 tokens from the `rest_rate` (tokens_per_s, capacity) bucket or a bare 429 (§9.6: no
    Retry-After), then routed. Counts `requests` and `throttled` (the 429s)."""

    def __init__(
        self,
        rest: CatalogRest,
        *,
        rest_rate: tuple[float, float] | None,
        clock_ns: Callable[[], int],
    ) -> None:
        self._rest = rest
        self._clock_ns = clock_ns
        now_s = clock_ns() / NS_PER_S
        self._bucket = TokenBucket(*rest_rate, now_s=now_s) if rest_rate is not None else None
        self.requests = 0
        self.throttled = 0

    def respond(
        self, connection: ServerConnection, path: str, query: str, *, auth_failure: str | None
    ) -> Response:
        self.requests += 1
        if auth_failure is not None:
            status, code = http.HTTPStatus.UNAUTHORIZED, "authentication_error"
            return json_error(connection, status, code, auth_failure)
        bucket = self._bucket
        if bucket is not None and not bucket.try_take(
            DEFAULT_REQUEST_COST, self._clock_ns() / NS_PER_S
        ):
            self.throttled += 1
            return json_response(connection, http.HTTPStatus.TOO_MANY_REQUESTS, _TOO_MANY)
        reply = self._rest.reply(path, query)
        return json_response(connection, reply.status, reply.body)


def json_error(
    connection: ServerConnection, status: http.HTTPStatus, code: str, message: str
) -> Response:
    """A §9-style error body {"code", "message", "details"} instead of websockets' text/plain."""
    return json_response(connection, status, error_reply(status, code, message).body)


def json_response(connection: ServerConnection, status: http.HTTPStatus, body: bytes) -> Response:
    response = connection.respond(status, "")
    del response.headers["Content-Length"]
    del response.headers["Content-Type"]
    response.headers["Content-Length"] = str(len(body))
    response.headers["Content-Type"] = "application/json"
    response.body = body
    return response


class RequestAuth:
    """Checks the KALSHI-ACCESS-* headers of a GET (§2): RSA-PSS over timestamp + GET + path,
    a registered key id, a timestamp within `max_clock_skew_s` of the injected clock."""

    def __init__(
        self,
        public_keys: Mapping[str, RSAPublicKey],
        clock_ns: Callable[[], int],
        *,
        max_clock_skew_s: float,
    ) -> None:
        self._public_keys = dict(public_keys)
        self._clock_ns = clock_ns
        self._max_clock_skew_ns = int(max_clock_skew_s * NS_PER_S)

    def failure(self, request: Request, path: str, *, required: bool) -> str | None:
        """Why the KALSHI-ACCESS-* headers do not authenticate GET `path`, or None if they do
        (or, when not `required`, if none is sent at all)."""
        key_id, timestamp, signature = (
            single_header(request, name)
            for name in (HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE)
        )
        if not required and not any(request.headers.get_all(name) for name in _AUTH_HEADERS):
            return None
        if not key_id or not timestamp or not signature:
            return f"missing {HEADER_KEY}, {HEADER_TIMESTAMP} or {HEADER_SIGNATURE} header"
        if not (timestamp.isascii() and timestamp.isdigit()):
            return f"{HEADER_TIMESTAMP} must be integer milliseconds"
        timestamp_ms = int(timestamp)
        if abs(timestamp_ms * 1_000_000 - self._clock_ns()) > self._max_clock_skew_ns:
            return f"{HEADER_TIMESTAMP} is outside the allowed clock skew (milliseconds?)"
        public_key = self._public_keys.get(key_id)
        if public_key is None:
            return "unknown API key id"
        if not verify(public_key, signature, timestamp_ms, "GET", path):
            return "invalid signature"
        return None


_AUTH_HEADERS = (HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE)


def single_header(request: Request, name: str) -> str | None:
    values = request.headers.get_all(name)
    return values[0] if len(values) == 1 else None
