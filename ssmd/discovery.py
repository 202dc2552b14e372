"""Market discovery over Kalshi REST (PROTOCOL.md §9.1-§9.3, §9.5, §9.6): `CatalogClient` (signed,
rate-limited, retrying GETs of markets, events, series and exchange status) and `discover`,
which runs a Selection's queries and returns the markets it selects."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Final, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from ssmd.auth import Credentials
from ssmd.errors import AuthError, ExchangeUnavailable, ProtocolError
from ssmd.ratelimit import DEFAULT_REQUEST_COST, Backoff, TokenBucket
from ssmd.rest import SignedGet, error_text
from ssmd.selection import (
    Discovered,
    MarketInfo,
    MarketsQuery,
    MarketStatus,
    MveFilter,
    Selection,
    SeriesInfo,
    StatusFilter,
    chunks,
    market_queries,
    resolve_series,
    select_markets,
    series_lookups,
)
from ssmd.wiretime import rfc3339_to_ns

if TYPE_CHECKING:
    from ssmd.config.selection import RestRateSettings

MARKETS_PAGE_LIMIT: Final = 1000  # §9.1 maximum
EVENTS_PAGE_LIMIT: Final = 200  # §9.2 maximum
DEFAULT_CONCURRENCY: Final = 4
_RETRYABLE_5XX: Final = range(500, 600)
_T = TypeVar("_T")


# -- Wire shapes (§9); unknown fields are ignored ----------------------------------------------


class _Market(msgspec.Struct, frozen=True):
    ticker: str
    event_ticker: str = ""
    status: str = ""
    open_time: str | None = None
    close_time: str | None = None
    created_time: str | None = None
    mve_collection_ticker: str | None = None


class _MarketsPage(msgspec.Struct, frozen=True):
    markets: list[_Market] | None = None
    cursor: str | None = None


class _MarketBody(msgspec.Struct, frozen=True):
    market: _Market


class _Event(msgspec.Struct, frozen=True):
    event_ticker: str
    series_ticker: str = ""
    title: str = ""


class _EventsPage(msgspec.Struct, frozen=True):
    events: list[_Event] | None = None
    cursor: str | None = None


class _Series(msgspec.Struct, frozen=True):
    ticker: str
    title: str = ""
    category: str = ""
    tags: list[str] | None = None


class _SeriesList(msgspec.Struct, frozen=True):
    series: list[_Series] | None = None


class _ExchangeStatus(msgspec.Struct, frozen=True):
    exchange_active: bool
    trading_active: bool
    exchange_estimated_resume_time: str | None = None


_MARKETS_PAGE = msgspec.json.Decoder(_MarketsPage)
_MARKET_BODY = msgspec.json.Decoder(_MarketBody)
_EVENTS_PAGE = msgspec.json.Decoder(_EventsPage)
_SERIES_LIST = msgspec.json.Decoder(_SeriesList)
_EXCHANGE_STATUS = msgspec.json.Decoder(_ExchangeStatus)


@dataclass(frozen=True, slots=True)
class EventInfo:
    """One event of GET /events (§9.2)."""

    event_ticker: str
    series_ticker: str | None
    title: str = ""


@dataclass(frozen=True, slots=True)
class ExchangeStatus:
    """GET /exchange/status (§9.5); `resume_ts_ns` is the estimated resume time, if any."""

    exchange_active: bool
    trading_active: bool
    resume_ts_ns: int | None = None


def _ts_ns(text: str | None, what: str) -> int | None:
    if not text:
        return None
    try:
        return rfc3339_to_ns(text)
    except ValueError as exc:
        raise ProtocolError(f"{what}: {exc}") from exc


def market_info(wire: _Market, series_ticker: str | None) -> MarketInfo:
    """The venue-neutral view of a §9.1 Market; RFC3339 times to ns (ssmd.wiretime)."""
    what = f"market {wire.ticker}"
    return MarketInfo(
        ticker=wire.ticker,
        event_ticker=wire.event_ticker,
        series_ticker=series_ticker,
        status=MarketStatus.from_wire(wire.status),
        open_ts_ns=_ts_ns(wire.open_time, f"{what} open_time"),
        close_ts_ns=_ts_ns(wire.close_time, f"{what} close_time"),
        created_ts_ns=_ts_ns(wire.created_time, f"{what} created_time"),
        is_multivariate=wire.ticker.startswith("KXMVE") or bool(wire.mve_collection_ticker),
    )


def _decode(decoder: msgspec.json.Decoder[_T], body: bytes, what: str) -> _T:
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"{what}: unexpected body: {exc}") from exc


# -- The client -------------------------------------------------------------------------------


@dataclass
class CatalogStats:
    """Counters for metrics: requests sent (every page and retry), 429s, retries, give-ups."""

    calls: int = 0
    throttled: int = 0
    retried: int = 0
    failed: int = 0


class CatalogClient:
    """Signed GETs (when credentials exist) on one keep-alive httpx client. Every request first
    reserves `request_cost` tokens from `rate` and sleeps what it says (§9.6); a 429, 5xx or
    connection failure is retried after `backoff` up to `max_retries` times, then raises
    ExchangeUnavailable. 401/403 raise AuthError naming the key id; other 4xx ProtocolError."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None,
        *,
        rate: TokenBucket,
        backoff: Backoff,
        monotonic_s: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_retries: int = 5,
        request_cost: float = DEFAULT_REQUEST_COST,
        timeout_s: float = 10.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._signed = SignedGet(base_url, credentials, timeout_s=timeout_s, clock_ns=clock_ns)
        self._rate = rate
        self._backoff = backoff
        self._monotonic_s = monotonic_s
        self._sleep = sleep
        self._max_retries = max_retries
        self._request_cost = request_cost
        self.stats = CatalogStats()

    @classmethod
    def from_settings(
        cls,
        base_url: str,
        credentials: Credentials | None,
        settings: RestRateSettings,
        *,
        monotonic_s: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> CatalogClient:
        """A client with the bucket and backoff of `exchange.rest_rate`."""
        return cls(
            base_url,
            credentials,
            rate=TokenBucket(settings.tokens_per_s, settings.capacity, now_s=monotonic_s()),
            backoff=Backoff(
                settings.backoff_base_s, settings.backoff_cap_s, rng or random.Random()
            ),
            monotonic_s=monotonic_s,
            max_retries=settings.max_retries,
            request_cost=settings.request_cost,
        )

    async def close(self) -> None:
        await self._signed.close()

    async def __aenter__(self) -> CatalogClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def markets(
        self,
        *,
        status: StatusFilter | None = None,
        series_ticker: str | None = None,
        event_ticker: str | None = None,
        tickers: Sequence[str] = (),
        mve_filter: MveFilter | None = None,
        min_created_ts_s: int | None = None,
        max_created_ts_s: int | None = None,
        min_close_ts_s: int | None = None,
        max_close_ts_s: int | None = None,
        min_settled_ts_s: int | None = None,
        max_settled_ts_s: int | None = None,
        min_updated_ts_s: int | None = None,
    ) -> AsyncIterator[MarketInfo]:
        """GET /markets (§9.1) with these filters (ssmd.selection.MarketsQuery checks their
        combinations: ValueError), every page. Markets carry `series_ticker` when it was the
        filter, else None."""
        query = MarketsQuery(
            status=status,
            series_ticker=series_ticker,
            event_ticker=event_ticker,
            tickers=tuple(tickers),
            mve_filter=mve_filter,
            min_created_ts_s=min_created_ts_s,
            max_created_ts_s=max_created_ts_s,
            min_close_ts_s=min_close_ts_s,
            max_close_ts_s=max_close_ts_s,
            min_settled_ts_s=min_settled_ts_s,
            max_settled_ts_s=max_settled_ts_s,
            min_updated_ts_s=min_updated_ts_s,
        )
        async for market in self.markets_of(query):
            yield market

    async def markets_of(self, query: MarketsQuery) -> AsyncIterator[MarketInfo]:
        """Every market of one query, page by page (limit 1000) until the cursor is empty."""
        params: dict[str, str | int] = {**query.params(), "limit": MARKETS_PAGE_LIMIT}
        cursors: set[str] = set()
        while True:
            body = (await self._get("/markets", params)).content
            page = _decode(_MARKETS_PAGE, body, "GET /markets")
            for wire in page.markets or ():
                yield market_info(wire, query.series_ticker)
            if not page.cursor:
                return
            params["cursor"] = _new_cursor(cursors, page.cursor, "GET /markets")

    async def collect_markets(self, query: MarketsQuery) -> list[MarketInfo]:
        """Every market of one planned query (ssmd.selection.market_queries), as a list."""
        return [market async for market in self.markets_of(query)]

    async def market(self, ticker: str) -> MarketInfo | None:
        """GET /markets/{ticker} (§9.5); None when the exchange has no such market (404)."""
        path = f"/markets/{quote(ticker, safe='')}"
        response = await self._get(path, {}, absent_on_404=True)
        if response.status_code == 404:
            return None
        return market_info(_decode(_MARKET_BODY, response.content, f"GET {path}").market, None)

    async def events(
        self,
        *,
        tickers: Sequence[str] = (),
        series_ticker: str | None = None,
        status: StatusFilter | None = None,
    ) -> AsyncIterator[EventInfo]:
        """GET /events (§9.2), every page (limit 200). `status` cannot be `paused` there."""
        if status is StatusFilter.PAUSED:
            raise ValueError("§9.2: GET /events has no status=paused")
        query: dict[str, str | int] = {"limit": EVENTS_PAGE_LIMIT}
        if tickers:
            query["tickers"] = ",".join(tickers)
        if series_ticker is not None:
            query["series_ticker"] = series_ticker
        if status is not None:
            query["status"] = status.value
        cursors: set[str] = set()
        while True:
            body = (await self._get("/events", query)).content
            page = _decode(_EVENTS_PAGE, body, "GET /events")
            for event in page.events or ():
                yield EventInfo(event.event_ticker, event.series_ticker or None, event.title)
            if not page.cursor:
                return
            query["cursor"] = _new_cursor(cursors, page.cursor, "GET /events")

    async def series_of_events(self, event_tickers: Sequence[str]) -> dict[str, str]:
        """Event ticker -> series ticker, by GET /events?tickers=... in chunks of 100."""
        found: dict[str, str] = {}
        for chunk in chunks(sorted(set(event_tickers))):
            async for event in self.events(tickers=chunk):
                if event.series_ticker is not None:
                    found[event.event_ticker] = event.series_ticker
        return found

    async def series(
        self, *, category: str | None = None, tags: Sequence[str] = ()
    ) -> list[SeriesInfo]:
        """GET /series (§9.3; not paginated), optionally by category or tags."""
        query: dict[str, str | int] = {}
        if category is not None:
            query["category"] = category
        if tags:
            query["tags"] = ",".join(tags)
        body = (await self._get("/series", query)).content
        found = _decode(_SERIES_LIST, body, "GET /series").series or ()
        return [SeriesInfo(s.ticker, s.title, s.category, tuple(s.tags or ())) for s in found]

    async def exchange_status(self) -> ExchangeStatus:
        """GET /exchange/status (§9.5). A 5xx with the same schema (an outage) is an answer."""
        body = (await self._get("/exchange/status", {}, status_on_5xx=True)).content
        wire = _decode(_EXCHANGE_STATUS, body, "GET /exchange/status")
        resume_ns = _ts_ns(wire.exchange_estimated_resume_time, "exchange resume time")
        return ExchangeStatus(wire.exchange_active, wire.trading_active, resume_ns)

    async def _get(
        self,
        path: str,
        query: Mapping[str, str | int],
        *,
        absent_on_404: bool = False,
        status_on_5xx: bool = False,
    ) -> httpx.Response:
        """One GET through the bucket, retried per the class policy: a 200 (or a 404 when
        `absent_on_404`, or a 5xx carrying an exchange status when `status_on_5xx`)."""
        url = self._signed.url(path)
        attempt = 0
        while True:
            wait_s = self._rate.reserve(self._request_cost, self._monotonic_s())
            if wait_s > 0:
                await self._sleep(wait_s)
            self.stats.calls += 1
            try:
                response = await self._signed.get(path, query)
            except httpx.TransportError as exc:
                reason = f"request failed: {type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status == 200 or (status == 404 and absent_on_404):
                    return response
                if status == 429:
                    self.stats.throttled += 1
                    self._drain_bucket()
                    reason = "HTTP 429 too many requests (§9.6)"
                elif status in _RETRYABLE_5XX:
                    if status_on_5xx and _is_status_body(response.content):
                        return response
                    reason = f"HTTP {status}: {error_text(response)}"
                else:
                    self.stats.failed += 1
                    raise self._refusal(url, response)
            if attempt >= self._max_retries:
                self.stats.failed += 1
                raise ExchangeUnavailable(url, f"{reason}; gave up after {attempt + 1} attempts")
            self.stats.retried += 1
            await self._sleep(self._backoff.delay_s(attempt))
            attempt += 1

    def _drain_bucket(self) -> None:
        """A 429 says the exchange's bucket is empty (§9.6): empty ours too, so every caller
        sharing it waits for a refill instead of spending a burst the exchange will refuse."""
        now_s = self._monotonic_s()
        self._rate.reserve(max(0.0, self._rate.tokens(now_s)), now_s)

    def _refusal(self, url: str, response: httpx.Response) -> AuthError | ProtocolError:
        status = response.status_code
        text = error_text(response)
        if status in (401, 403):
            credentials = self._signed.credentials
            if credentials is None:
                who = "the request was unsigned: configure credentials"
            else:
                who = (
                    f"API key id {credentials.key_id!r} was refused: check the key id and"
                    " private key belong together and to this environment, and the clock"
                )
            return AuthError(f"{url}: HTTP {status} {text} ({who})")
        return ProtocolError(f"{url}: HTTP {status}: {text}")


def _new_cursor(seen: set[str], cursor: str, what: str) -> str:
    """The next page's cursor; one seen before would page forever."""
    if cursor in seen:
        raise ProtocolError(f"{what}: the cursor {cursor!r} came back twice")
    seen.add(cursor)
    return cursor


def _is_status_body(body: bytes) -> bool:
    try:
        _EXCHANGE_STATUS.decode(body)
    except msgspec.DecodeError:
        return False
    return True


# -- Discovery --------------------------------------------------------------------------------


async def _limited(jobs: Sequence[Callable[[], Awaitable[_T]]], concurrency: int) -> list[_T]:
    """Run `jobs` at most `concurrency` at a time; results in the order of `jobs`."""
    gate = asyncio.Semaphore(concurrency)

    async def run(job: Callable[[], Awaitable[_T]]) -> _T:
        async with gate:
            return await job()

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run(job)) for job in jobs]
    except ExceptionGroup as failed:  # the others were cancelled: the first error is the answer
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def discover(
    selection: Selection,
    client: CatalogClient,
    now_ns: int,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> Discovered:
    """Resolve a selection over REST: series lookups (globs, categories, tags), the market
    queries (≤ `concurrency` at once; the bucket paces them), then the filters, shard and cap
    (ssmd.selection.select_markets), then GET /events for the series of the markets kept
    whose query did not name one."""
    lookups = series_lookups(selection)
    series_jobs = [
        partial(client.series, category=q.category, tags=() if q.tag is None else (q.tag,))
        for q in lookups
    ]
    series_found = await _limited(series_jobs, concurrency)
    known_series = {s.ticker: s for found in series_found for s in found}
    series_tickers = resolve_series(selection, dict(zip(lookups, series_found, strict=True)))
    queries = market_queries(selection, series_tickers)
    found = await _limited([partial(client.collect_markets, q) for q in queries], concurrency)
    selected = select_markets(selection, (m for batch in found for m in batch), now_ns)
    unnamed = [m.event_ticker for m in selected.markets if m.series_ticker is None]
    series_of_event = await client.series_of_events([e for e in unnamed if e])
    markets = tuple(
        m
        if m.series_ticker is not None
        else replace(m, series_ticker=series_of_event.get(m.event_ticker))
        for m in selected.markets
    )
    for market in markets:
        if market.series_ticker is not None:
            series_of_event.setdefault(market.event_ticker, market.series_ticker)
    return Discovered(
        markets=markets,
        missing_tickers=selected.missing_tickers,
        cut_by_cap=selected.cut_by_cap,
        filtered_out=selected.filtered_out,
        queries=(*(q.describe() for q in lookups), *(q.describe() for q in queries)),
        series=known_series,
        series_of_event=series_of_event,
    )
