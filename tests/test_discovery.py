"""Market discovery against a small real Kalshi-shaped REST server on 127.0.0.1 (aiohttp):
cursor pagination, the filters sent, the union and series facts, signing, the rate limit
under 429s, retries, refusals, and `ssmd markets` (run_markets) end to end."""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.auth import HEADER_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP, Credentials, verify
from ssmd.cli import run_markets
from ssmd.config import Settings
from ssmd.config.selection import SelectionSettings
from ssmd.discovery import CatalogClient, discover
from ssmd.errors import AuthError, ExchangeUnavailable, ProtocolError
from ssmd.ratelimit import Backoff, TokenBucket
from ssmd.selection import MarketStatus, MveFilter, Selection, StatusFilter
from ssmd.wiretime import NS_PER_S, ns_to_rfc3339

from .conftest import write_pem

API = "/trade-api/v2"
KEY_ID = "discovery-test-key"
BASE_S = 1_787_000_000  # 2026-08-17
# The server's own reading of §9.1's filter -> object status mapping.
OBJECT_STATUSES = {
    "unopened": {"initialized"},
    "open": {"active"},
    "paused": {"inactive"},
    "closed": {"closed", "determined"},
    "settled": {"finalized"},
}
SERIES = [
    ("KXBTC", "Crypto", ["Bitcoin"]),
    ("KXBTCD", "Crypto", ["Bitcoin"]),
    ("KXETH", "Crypto", ["Ethereum"]),
    ("KXFED", "Economics", ["Interest rates"]),
    ("KXCPI", "Economics", ["Inflation"]),
    ("KXNBA", "Sports", ["Basketball"]),
    ("KXNFL", "Sports", ["Football"]),
    ("KXMVECROSS", "Sports", []),  # multivariate combos
]
STATUS_CYCLE = ["active"] * 7 + ["initialized", "closed", "finalized"]


@dataclass(frozen=True)
class Mkt:
    ticker: str
    event: str
    series: str
    status: str
    close_s: int
    mve: bool

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ticker": self.ticker,
            "event_ticker": self.event,
            "market_type": "binary",
            "status": self.status,
            "open_time": ns_to_rfc3339((BASE_S - 86_400) * NS_PER_S, 0),
            "close_time": ns_to_rfc3339(self.close_s * NS_PER_S, 0),
            "created_time": ns_to_rfc3339((BASE_S - 90_000) * NS_PER_S, 6),
            "yes_bid_dollars": "0.4500",
            "volume_fp": "10.00",
        }
        if self.mve:
            body["mve_collection_ticker"] = "KXMVECROSSCOLLECTION"
        return body


def make_universe() -> list[Mkt]:
    """4,400 markets: 8 series x 10 events x 55; a status and close time cycle by index."""
    markets: list[Mkt] = []
    for series, _category, _tags in SERIES:
        for day in range(1, 11):
            event = f"{series}-26AUG{day:02d}"
            for n in range(55):
                i = len(markets)
                markets.append(
                    Mkt(
                        ticker=f"{event}-T{n}",
                        event=event,
                        series=series,
                        status=STATUS_CYCLE[i % 10],
                        close_s=BASE_S + 3_600 * (i % 97),
                        mve=series.startswith("KXMVE"),
                    )
                )
    return markets


UNIVERSE = make_universe()
BY_TICKER = {m.ticker: m for m in UNIVERSE}


def bad_request(message: str, status: int = 400) -> web.Response:
    return web.json_response(
        {"code": "bad_request", "message": message, "details": ""}, status=status
    )


@dataclass
class FakeKalshi:
    """Kalshi's discovery REST surface (§9.1-§9.3, §9.5) over an in-test market list."""

    page_max: int = 1000
    public_keys: dict[str, rsa.RSAPublicKey] | None = None
    bucket: TokenBucket | None = None  # refuse with 429 when short (§9.6)
    script: list[int] = field(default_factory=list)  # statuses to answer next, in order
    always: int | None = None
    outage: bool = False
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    hits: int = 0
    throttled: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        path = request.path.removeprefix(API)
        query = dict(request.query)
        self.requests.append((path, query))
        if path == "/markets":
            return self._markets(query)
        if path == "/events":
            return self._events(query)
        if path == "/series":
            return self._series(query)
        if path == "/exchange/status":
            return self._exchange_status()
        if path.startswith("/markets/"):
            found = BY_TICKER.get(path.removeprefix("/markets/"))
            if found is None:
                return bad_request("market not found", 404)
            return web.json_response({"market": found.wire()})
        return bad_request("no route", 404)

    def _refusal(self, request: web.Request) -> web.Response | None:
        status = self.script.pop(0) if self.script else self.always
        if status == 429:
            self.throttled += 1
            return web.json_response({"error": "too many requests"}, status=429)
        if status is not None:
            return bad_request("down for maintenance" if status >= 500 else "bad cursor", status)
        if self.public_keys is not None:
            key = self.public_keys.get(request.headers.get(HEADER_KEY, ""))
            timestamp = request.headers.get(HEADER_TIMESTAMP, "")
            signature = request.headers.get(HEADER_SIGNATURE, "")
            # §2.2: the signed path starts at the API root and has no query string.
            if key is None or not timestamp.isdigit():
                return bad_request("missing or unknown key", 401)
            if not verify(key, signature, int(timestamp), "GET", request.path):
                return bad_request("invalid signature", 401)
        if self.bucket is not None and not self.bucket.try_take(10.0, time.monotonic()):
            self.throttled += 1
            return web.json_response({"error": "too many requests"}, status=429)
        return None

    def _page(
        self, items: list[Any], query: dict[str, str], limit_max: int
    ) -> tuple[list[Any], str]:
        limit = int(query.get("limit", "100"))
        if not 1 <= limit <= limit_max:
            raise web.HTTPBadRequest(text=f"limit {limit} out of range")
        offset = int(query.get("cursor", "c0").removeprefix("c") or 0)
        end = offset + min(limit, self.page_max)
        return items[offset:end], f"c{end}" if end < len(items) else ""

    def _markets(self, query: dict[str, str]) -> web.Response:
        status = query.get("status")
        if status is not None and status not in OBJECT_STATUSES:
            return bad_request(f"status {status!r}: one of unopened, open, paused, closed, settled")
        wanted = set(query["tickers"].split(",")) if "tickers" in query else None
        mve = query.get("mve_filter")
        chosen = [
            m
            for m in UNIVERSE
            if (status is None or m.status in OBJECT_STATUSES[status])
            and query.get("series_ticker", m.series) == m.series
            and query.get("event_ticker", m.event) == m.event
            and (wanted is None or m.ticker in wanted)
            and (mve != "exclude" or not m.mve)
            and (mve != "only" or m.mve)
        ]
        page, cursor = self._page(chosen, query, 1000)
        return web.json_response({"markets": [m.wire() for m in page], "cursor": cursor})

    def _events(self, query: dict[str, str]) -> web.Response:
        events = sorted({(m.event, m.series) for m in UNIVERSE if not m.mve})  # §9.2: no MVE
        if "tickers" in query:
            wanted = set(query["tickers"].split(","))
            events = [e for e in events if e[0] in wanted]
        page, cursor = self._page(events, query, 200)
        body = [
            {"event_ticker": e, "series_ticker": s, "title": e, "sub_title": ""} for e, s in page
        ]
        return web.json_response({"events": body, "cursor": cursor, "milestones": []})

    def _series(self, query: dict[str, str]) -> web.Response:
        tags = set(query["tags"].split(",")) if "tags" in query else None
        found = [
            {"ticker": t, "title": t, "category": c, "tags": g, "frequency": "daily"}
            for t, c, g in SERIES
            if query.get("category", c) == c and (tags is None or tags & set(g))
        ]
        return web.json_response({"series": found})

    def _exchange_status(self) -> web.Response:
        if self.outage:
            body = {
                "exchange_active": False,
                "trading_active": False,
                "exchange_estimated_resume_time": "2026-08-20T12:00:00Z",
            }
            return web.json_response(body, status=503)
        return web.json_response({"exchange_active": True, "trading_active": True})

    def paths(self, path: str) -> list[dict[str, str]]:
        return [q for p, q in self.requests if p == path]


@asynccontextmanager
async def serving(fake: FakeKalshi) -> AsyncIterator[str]:
    """The fake on a free port of 127.0.0.1; yields its REST base URL."""
    app = web.Application()
    app.router.add_get(API + "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}{API}"
    finally:
        await runner.cleanup()


class InstantSleep:
    """An injected sleep that returns at once and remembers what it was asked to wait."""

    def __init__(self) -> None:
        self.waits_s: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits_s.append(seconds)


def catalog(
    url: str,
    credentials: Credentials | None = None,
    *,
    max_retries: int = 3,
    sleep: InstantSleep | None = None,
) -> CatalogClient:
    """A client whose own bucket never waits: these tests are about the server's answers."""
    return CatalogClient(
        url,
        credentials,
        rate=TokenBucket(1e9, 1e9, now_s=time.monotonic()),
        backoff=Backoff(0.01, 0.05, random.Random(7)),
        sleep=sleep or asyncio.sleep,
        max_retries=max_retries,
    )


NOW_NS = BASE_S * NS_PER_S


# -- pagination and filters --------------------------------------------------------------------


@pytest.mark.parametrize("page_max", [1000, 300])
async def test_pagination_returns_each_market_exactly_once(page_max: int) -> None:
    fake = FakeKalshi(page_max=page_max)
    expected = [m.ticker for m in UNIVERSE if m.status == "active"]
    async with serving(fake) as url, catalog(url) as client:
        got = [m.ticker async for m in client.markets(status=StatusFilter.OPEN)]
    assert len(expected) == 3_080
    assert Counter(got) == Counter(expected)
    pages = fake.paths("/markets")
    assert len(pages) == math.ceil(len(expected) / page_max)
    assert all(q["limit"] == "1000" and q["status"] == "open" for q in pages)
    assert [q.get("cursor") for q in pages] == [None] + [
        f"c{n * page_max}" for n in range(1, len(pages))
    ]
    assert client.stats.calls == len(pages)


async def test_market_fields_are_read_exactly() -> None:
    async with serving(FakeKalshi()) as url, catalog(url) as client:
        one = await client.market("KXETH-26AUG03-T4")
        combo = await client.market("KXMVECROSS-26AUG01-T0")
        missing = await client.market("KXETH-NOPE")
    expected = BY_TICKER["KXETH-26AUG03-T4"]
    assert one is not None
    assert (one.ticker, one.event_ticker, one.series_ticker) == (
        expected.ticker,
        expected.event,
        None,
    )
    assert one.status is MarketStatus(expected.status)
    assert one.close_ts_ns == expected.close_s * NS_PER_S
    assert one.open_ts_ns == (BASE_S - 86_400) * NS_PER_S
    assert one.created_ts_ns == (BASE_S - 90_000) * NS_PER_S
    assert not one.is_multivariate
    assert combo is not None
    assert combo.is_multivariate
    assert missing is None


async def test_discover_sends_every_filter_and_unions_the_sources() -> None:
    fake = FakeKalshi()
    selection = Selection(
        series=("KXBTC*",),
        events=("KXFED-26AUG03",),
        categories=("Sports",),
        tags=("Inflation",),
        statuses=(StatusFilter.OPEN, StatusFilter.CLOSED),
    )
    async with serving(fake) as url, catalog(url) as client:
        found = await discover(selection, client, NOW_NS)
    # GET /series: all (for the glob), by category, by tag (§9.3).
    assert fake.paths("/series") == [{}, {"category": "Sports"}, {"tags": "Inflation"}]
    series = ["KXBTC", "KXBTCD", "KXCPI", "KXMVECROSS", "KXNBA", "KXNFL"]
    sent = sorted(tuple(sorted(q.items())) for q in fake.paths("/markets"))
    expected_sent = sorted(
        tuple(
            sorted({"limit": "1000", "mve_filter": "exclude", "status": status, key: value}.items())
        )
        for status in ("open", "closed")
        for key, value in [
            *(("series_ticker", s) for s in series),
            ("event_ticker", "KXFED-26AUG03"),
        ]
    )
    assert sent == expected_sent  # one status per request, one series or event each
    wanted = {
        m
        for m in UNIVERSE
        if m.status in {"active", "closed", "determined"}
        and not m.mve
        and (
            m.series in {"KXBTC", "KXBTCD", "KXCPI", "KXNBA", "KXNFL"} or m.event == "KXFED-26AUG03"
        )
    }
    assert [m.ticker for m in found.markets] == sorted(m.ticker for m in wanted)
    # Every market knows its series: from the query, or (the event's) from GET /events.
    assert all(m.series_ticker == BY_TICKER[m.ticker].series for m in found.markets)
    assert fake.paths("/events") == [{"limit": "200", "tickers": "KXFED-26AUG03"}]
    assert found.by_series == dict(Counter(m.series for m in wanted).most_common())
    assert found.series_of_event["KXFED-26AUG03"] == "KXFED"
    assert found.cache().series["KXNBA"].category == "Sports"
    assert "GET /markets?status=open&series_ticker=KXBTC&mve_filter=exclude" in found.queries


async def test_explicit_tickers_are_kept_whatever_their_status() -> None:
    fake = FakeKalshi()
    settled = next(m for m in UNIVERSE if m.status == "finalized" and m.series == "KXNBA")
    selection = Selection(tickers=(settled.ticker, "KXNBA-GONE"), series=("KXETH",), max_markets=10)
    async with serving(fake) as url, catalog(url) as client:
        found = await discover(selection, client, NOW_NS)
    explicit = [q for q in fake.paths("/markets") if "tickers" in q]
    assert explicit == [{"tickers": f"{settled.ticker},KXNBA-GONE", "limit": "1000"}]  # no status
    assert settled.ticker in found.tickers
    assert found.missing_tickers == ("KXNBA-GONE",)
    assert len(found.tickers) == 10  # the explicit two count towards the cap and are never cut
    eth = sorted(
        (m for m in UNIVERSE if m.series == "KXETH" and m.status == "active"),
        key=lambda m: (m.close_s, m.ticker),
    )
    assert set(found.tickers) == {settled.ticker, "KXNBA-GONE", *(m.ticker for m in eth[:8])}
    assert found.cut_by_cap == len(eth) - 8


async def test_no_source_takes_every_market_and_fills_series_from_events() -> None:
    fake = FakeKalshi()
    selection = Selection(closing_within_h=2.0)
    async with serving(fake) as url, catalog(url) as client:
        found = await discover(selection, client, NOW_NS)
    assert fake.paths("/markets")[0] == {"status": "open", "mve_filter": "exclude", "limit": "1000"}
    expected = {
        m.ticker
        for m in UNIVERSE
        if m.status == "active" and not m.mve and m.close_s <= BASE_S + 7_200
    }
    assert set(found.tickers) == expected
    assert found.filtered_out == sum(
        1 for m in UNIVERSE if m.status == "active" and not m.mve
    ) - len(expected)
    assert all(m.series_ticker == BY_TICKER[m.ticker].series for m in found.markets)


async def test_filter_combinations_outside_section_9_1_are_refused_before_sending() -> None:
    fake = FakeKalshi()
    async with serving(fake) as url, catalog(url) as client:
        with pytest.raises(ValueError, match="min_close_ts cannot be combined with status"):
            [m async for m in client.markets(status=StatusFilter.OPEN, min_close_ts_s=1)]
        with pytest.raises(ValueError, match="min_updated_ts needs mve_filter=exclude"):
            [m async for m in client.markets(min_updated_ts_s=1)]
        with pytest.raises(ValueError, match="no status=paused"):
            [e async for e in client.events(status=StatusFilter.PAUSED)]
        assert fake.hits == 0
        closed = client.markets(
            status=StatusFilter.CLOSED, min_close_ts_s=BASE_S, tickers=["KXETH-26AUG01-T8"]
        )
        assert [m.ticker async for m in closed] == ["KXETH-26AUG01-T8"]
        updated = client.markets(
            mve_filter=MveFilter.EXCLUDE, series_ticker="KXFED", min_updated_ts_s=5
        )
        assert len([m async for m in updated]) == 550
    assert fake.requests[0][1] == {
        "status": "closed",
        "tickers": "KXETH-26AUG01-T8",
        "min_close_ts": str(BASE_S),
        "limit": "1000",
    }
    assert fake.requests[1][1]["min_updated_ts"] == "5"


# -- signing, refusals and retries -------------------------------------------------------------


async def test_signed_requests_are_accepted(rsa_key: rsa.RSAPrivateKey) -> None:
    fake = FakeKalshi(public_keys={KEY_ID: rsa_key.public_key()})
    async with serving(fake) as url, catalog(url, Credentials(KEY_ID, rsa_key)) as client:
        found = await discover(Selection(events=("KXCPI-26AUG02",)), client, NOW_NS)
        status = await client.exchange_status()
    assert len(found.tickers) == sum(
        1 for m in UNIVERSE if m.event == "KXCPI-26AUG02" and m.status == "active"
    )
    assert status.exchange_active
    assert status.trading_active
    assert status.resume_ts_ns is None


async def test_refused_credentials_raise_auth_error_naming_the_key_id(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    fake = FakeKalshi(public_keys={KEY_ID: rsa_key.public_key()})
    async with serving(fake) as url:
        async with catalog(url, Credentials(KEY_ID, other_rsa_key)) as client:
            with pytest.raises(AuthError) as refused:
                await discover(Selection(series=("KXETH",)), client, NOW_NS)
        async with catalog(url) as unsigned:
            with pytest.raises(AuthError) as anonymous:
                await unsigned.market("KXETH-26AUG01-T0")
    message = str(refused.value)
    assert f"{url}/markets: HTTP 401 invalid signature" in message
    assert repr(KEY_ID) in message
    assert "PRIVATE KEY" not in message
    assert (client.stats.calls, client.stats.retried, client.stats.failed) == (1, 0, 1)
    assert "HTTP 401 missing or unknown key" in str(anonymous.value)
    assert "unsigned: configure credentials" in str(anonymous.value)


async def test_retries_exhausted_raise_exchange_unavailable_naming_the_url() -> None:
    fake = FakeKalshi(always=503)
    sleep = InstantSleep()
    async with serving(fake) as url, catalog(url, max_retries=3, sleep=sleep) as client:
        with pytest.raises(ExchangeUnavailable) as down:
            await discover(Selection(), client, NOW_NS)
    assert down.value.url == f"{url}/markets"
    assert "HTTP 503: down for maintenance" in down.value.reason
    assert "gave up after 4 attempts" in down.value.reason
    assert (client.stats.calls, client.stats.retried, client.stats.failed) == (4, 3, 1)
    assert fake.hits == 4
    assert len(sleep.waits_s) == 3  # one backoff before each retry, none after the last
    assert all(0 <= wait <= 0.05 for wait in sleep.waits_s)


async def test_a_refused_connection_is_retried_then_exchange_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    url = f"http://127.0.0.1:{port}{API}"
    async with catalog(url, max_retries=2, sleep=InstantSleep()) as client:
        with pytest.raises(ExchangeUnavailable) as down:
            await client.series()
    assert down.value.url == f"{url}/series"
    assert "ConnectError" in down.value.reason
    assert (client.stats.calls, client.stats.retried, client.stats.failed) == (3, 2, 1)


async def test_transient_429_and_503_are_retried_and_counted() -> None:
    fake = FakeKalshi(script=[429, 503])
    async with serving(fake) as url, catalog(url, sleep=InstantSleep()) as client:
        got = [m.ticker async for m in client.markets(series_ticker="KXNFL")]
    assert sorted(got) == sorted(m.ticker for m in UNIVERSE if m.series == "KXNFL")
    assert (client.stats.calls, client.stats.throttled, client.stats.retried) == (3, 1, 2)
    assert client.stats.failed == 0


async def test_other_4xx_raise_protocol_error_with_the_body_message() -> None:
    fake = FakeKalshi(script=[400])
    async with serving(fake) as url, catalog(url, sleep=InstantSleep()) as client:
        with pytest.raises(ProtocolError, match=r"/events: HTTP 400: bad cursor"):
            [e async for e in client.events(series_ticker="KXFED")]
    assert (client.stats.calls, client.stats.retried, client.stats.failed) == (1, 0, 1)


async def test_exchange_status_during_an_outage_is_an_answer() -> None:
    fake = FakeKalshi(outage=True)
    async with serving(fake) as url, catalog(url, sleep=InstantSleep()) as client:
        status = await client.exchange_status()
    assert not status.exchange_active
    assert status.resume_ts_ns == 1_787_227_200 * NS_PER_S  # 2026-08-20T12:00:00Z
    assert client.stats.calls == 1


# -- the rate limit (§9.6) ---------------------------------------------------------------------


async def test_the_bucket_paces_requests_before_they_are_sent() -> None:
    now_s = [0.0]

    async def advance(seconds: float) -> None:
        now_s[0] += seconds

    fake = FakeKalshi()
    async with serving(fake) as url:
        client = CatalogClient(
            url,
            None,
            rate=TokenBucket(10.0, 10.0, now_s=0.0),  # one request per second, no burst
            backoff=Backoff(0.01, 0.05, random.Random(7)),
            monotonic_s=lambda: now_s[0],
            sleep=advance,
        )
        async with client:
            got = [m async for m in client.markets(status=StatusFilter.OPEN)]
    assert len(got) == 3_080
    assert client.stats.calls == 4
    assert now_s[0] == pytest.approx(3.0)  # waited 1 s before each request after the first


async def test_a_low_server_rate_limit_is_survived_without_a_storm() -> None:
    # The server refills 100 tokens/s and holds 20 (10 requests/s, bursts of 2); the client
    # believes in the Basic tier (200/s, 400 held), so it overshoots and meets 429s.
    fake = FakeKalshi(page_max=250, bucket=TokenBucket(100.0, 20.0, now_s=time.monotonic()))
    statuses = (StatusFilter.OPEN, StatusFilter.UNOPENED, StatusFilter.CLOSED)
    async with serving(fake) as url:
        client = CatalogClient(
            url,
            None,
            rate=TokenBucket(200.0, 400.0, now_s=time.monotonic()),
            backoff=Backoff(0.05, 0.5, random.Random(3)),
            max_retries=30,
        )
        async with client:
            found = await discover(
                Selection(statuses=statuses, exclude_multivariate=False), client, NOW_NS
            )
    assert len(found.tickers) == sum(1 for m in UNIVERSE if m.status != "finalized")
    answered = len(fake.requests)
    assert fake.throttled > 0
    assert client.stats.throttled == fake.throttled
    assert client.stats.calls == fake.hits == answered + fake.throttled
    assert client.stats.failed == 0
    assert client.stats.calls <= 3 * answered  # backoff spreads the retries: no storm


# -- ssmd markets ------------------------------------------------------------------------------


def real_exchange_settings(url: str, pem: Path, markets: list[str]) -> Settings:
    return Settings.model_validate(
        {
            "name": "discovery-test",
            "exchange": {"ws_url": "ws://127.0.0.1:9/trade-api/ws/v2", "rest_url": url},
            "credentials": {"key_id": KEY_ID, "private_key_file": str(pem)},
            "subscription": {"markets": markets},
        }
    )


async def test_markets_command_prints_json(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    fake = FakeKalshi(public_keys={KEY_ID: rsa_key.public_key()})
    pem = write_pem(tmp_path / "key.pem", rsa_key)
    settled = "KXNBA-26AUG01-T2"
    out = StringIO()
    async with serving(fake) as url:
        settings = real_exchange_settings(url, pem, [settled])
        select = SelectionSettings(series=["KXBTC*"], max_markets=100)
        code = await run_markets(settings, select, out=out, as_json=True, clock_ns=lambda: NOW_NS)
    assert code == 0
    document = json.loads(out.getvalue())
    btc = sorted(
        (m for m in UNIVERSE if m.series in ("KXBTC", "KXBTCD") and m.status == "active"),
        key=lambda m: (m.close_s, m.ticker),
    )
    kept = btc[:99]  # the explicit ticker takes one of the 100 places
    assert document["count"] == 100
    assert document["tickers"] == sorted([settled, *(m.ticker for m in kept)])
    by_series = Counter(m.series for m in kept) + Counter({"KXNBA": 1})
    assert document["by_series"] == dict(sorted(by_series.items(), key=lambda kv: (-kv[1], kv[0])))
    assert document["missing_tickers"] == []
    assert document["cut_by_cap"] == len(btc) - 99
    assert document["queries"][0] == "GET /series"
    assert document["requests"]["calls"] == len(fake.requests)


async def test_markets_command_prints_a_readable_summary(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake = FakeKalshi(public_keys={KEY_ID: rsa_key.public_key()})
    pem = write_pem(tmp_path / "key.pem", rsa_key)
    out = StringIO()
    async with serving(fake) as url:
        settings = real_exchange_settings(url, pem, ["KXCPI-GONE"])
        select = SelectionSettings(events=["KXCPI-26AUG04"])
        code = await run_markets(settings, select, out=out, sample=3)
    lines = out.getvalue().splitlines()
    active = sorted(
        m.ticker for m in UNIVERSE if m.event == "KXCPI-26AUG04" and m.status == "active"
    )
    count = len(active) + 1  # and the explicit ticker the exchange does not know
    assert code == 0
    assert lines[0] == f"{count} markets selected in discovery-test ({url})"
    assert "  listed but not found (still subscribed): KXCPI-GONE" in lines
    assert f"sample: {', '.join(active[:3])} … (+{count - 3} more)" in lines
    assert lines[lines.index("by series:") + 1].split() == ["KXCPI", str(len(active))]


async def test_markets_command_asks_the_in_process_simulator() -> None:
    settings = Settings.model_validate(
        {"name": "sim-test", "exchange": {"simulator": {"markets": 5, "rate_hz": 0}}}
    )
    out = StringIO()
    code = await run_markets(settings, SelectionSettings(), out=out, as_json=True)
    document = json.loads(out.getvalue())
    assert code == 0
    assert document["rest_url"].startswith("http://127.0.0.1:")
    assert document["count"] == 5  # every simulated market is open
    assert sum(document["by_series"].values()) == 5
    assert document["queries"] == ["GET /markets?status=open&mve_filter=exclude"]
