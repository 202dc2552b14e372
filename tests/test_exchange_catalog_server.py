"""The simulator's REST discovery surface and market churn over real sockets on 127.0.0.1.

httpx against a started ExchangeSimulator: pages, filters, 400/404 bodies, signed and unsigned
GETs (PROTOCOL.md §9, §2), 429s from the §9.6 bucket; on a real WebSocket: churn's §7.5 frames
as an injected clock reaches them, a market streaming once it opens, and error 26 (§6.6).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import ClientConnection, connect

from ssmd.auth import WS_PATH, signed_headers
from ssmd.exchange.catalog import MarketStatus
from ssmd.exchange.catalog_spec import CatalogSpec
from ssmd.exchange.churn import ChurnSpec
from ssmd.exchange.server import ExchangeSimulator
from ssmd.fixedpoint import parse_price, parse_size
from ssmd.messages import EventLifecycle, FrameDecoder, MarketLifecycleV2

KEY_ID = "a952bcbe-ec3b-4b5b-b8f9-11dae589608c"
NOW_S = 1_795_276_800  # 2026-11-21T16:00:00Z
TIMEOUT_S = 10
PRICE = re.compile(r"^\d\.\d{4}$")
SIZE = re.compile(r"^\d+\.\d{2}$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class Clock:
    """The exchange's injected wall clock; tests move it."""

    def __init__(self) -> None:
        self.now_ns = NOW_S * 1_000_000_000

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * 1_000_000_000)


def new_sim(key: rsa.RSAPrivateKey, clock: Clock, **kwargs: Any) -> ExchangeSimulator:
    options: dict[str, Any] = {"market_count": 20, "rate_hz": 400.0, "seed": 3}
    return ExchangeSimulator(
        public_keys={KEY_ID: key.public_key()},
        ping_interval_s=None,
        clock_ns=clock,
        **(options | kwargs),
    )


@pytest.fixture
async def catalog_sim(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[ExchangeSimulator]:
    async with new_sim(rsa_key, Clock(), catalog=CatalogSpec(markets=1_200, seed=3)) as sim:
        yield sim


async def get_json(
    http: httpx.AsyncClient, path: str, params: dict[str, Any] | None = None, status: int = 200
) -> Any:
    response = await http.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


async def every_page(http: httpx.AsyncClient, params: dict[str, Any]) -> list[dict[str, Any]]:
    """GET /markets page after page until the cursor is "" (§9.1)."""
    listed: list[dict[str, Any]] = []
    params = dict(params)
    while True:
        body = await get_json(http, "/markets", params)
        listed.extend(body["markets"])
        if body["cursor"] == "":
            return listed
        params["cursor"] = body["cursor"]


# -- REST -----------------------------------------------------------------------------------------


async def test_pages_list_every_market_once_in_protocol_shapes(
    catalog_sim: ExchangeSimulator,
) -> None:
    await catalog_sim.pause()  # quotes hold still
    async with httpx.AsyncClient(base_url=catalog_sim.rest_url) as http:
        listed = await every_page(http, {"limit": 500})
    tickers = [m["ticker"] for m in listed]
    assert len(tickers) == len(set(tickers)) == 1_220
    assert tickers == [m.ticker for m in catalog_sim.catalog.markets()]  # creation order
    for market in listed:
        for name, value in market.items():
            if name.endswith("_dollars"):
                assert PRICE.match(value), (name, value)
            elif name.endswith("_fp"):
                assert SIZE.match(value), (name, value)
            elif name.endswith("_time") or name == "settlement_ts":
                assert TIME.match(value), (name, value)
    book = catalog_sim.generator.markets["KXSIM-26NOV21-T0003"].ticker_stats()
    quoted = next(m for m in listed if m["ticker"] == "KXSIM-26NOV21-T0003")
    assert (parse_price(quoted["yes_ask_dollars"]), parse_size(quoted["yes_bid_size_fp"])) == (
        book.yes_ask_e4,
        book.yes_bid_size_e2,
    )


async def test_filters_and_their_400s(catalog_sim: ExchangeSimulator) -> None:
    catalog = catalog_sim.catalog.markets()
    async with httpx.AsyncClient(base_url=catalog_sim.rest_url) as http:
        listed = [m["ticker"] for m in await every_page(http, {"status": "open", "limit": 300})]
        assert listed == [m.ticker for m in catalog if m.status is MarketStatus.ACTIVE]
        assert "KXSIM-26NOV21-T0000" in listed
        body = await get_json(http, "/markets", {"series_ticker": "KXNBAGAME"})
        assert {m["event_ticker"].split("-")[0] for m in body["markets"]} == {"KXNBAGAME"}
        body = await get_json(http, "/markets", {"mve_filter": "only"})
        assert body["markets"]
        assert all(m["mve_collection_ticker"].startswith("KXMVE") for m in body["markets"])
        for params, message in (
            ({"status": "open,closed"}, "status takes a single value"),
            ({"min_created_ts": 1, "status": "closed"}, "created timestamp filters combine"),
            ({"limit": 1001}, "limit must be 0 to 1000"),
        ):
            error = await get_json(http, "/markets", params, status=400)
            assert error["code"] == "bad_request"
            assert error["message"].startswith(message)
            assert error["details"] == ""


async def test_one_market_events_series_and_exchange_status(
    catalog_sim: ExchangeSimulator,
) -> None:
    catalog = catalog_sim.catalog
    async with httpx.AsyncClient(base_url=catalog_sim.rest_url) as http:
        dotted = "KXSIMBTC-26NOV21-T97499.99"
        body = await get_json(http, f"/markets/{dotted}")
        assert (body["market"]["ticker"], body["market"]["status"]) == (dotted, "active")
        missing = await get_json(http, "/markets/KXNOPE-26NOV21-T1", status=404)
        assert missing == {
            "code": "not_found",
            "message": "market KXNOPE-26NOV21-T1 not found",
            "details": "",
        }
        body = await get_json(http, "/events", {"limit": 3, "with_nested_markets": "true"})
        assert len(body["events"]) == 3
        assert body["cursor"]
        assert body["milestones"] == []
        for event in body["events"]:
            assert [m["ticker"] for m in event["markets"]] == [
                m.ticker for m in catalog.markets_of(event["event_ticker"])
            ]
            assert set(event) >= {"series_ticker", "title", "sub_title", "mutually_exclusive",
                                  "collateral_return_type"}  # fmt: skip
        body = await get_json(http, "/series", {"category": "Sports", "tags": "Basketball"})
        assert [s["ticker"] for s in body["series"]] == ["KXNBAGAME", "KXNBAPTS", "KXNBAREB"]
        body = await get_json(http, "/series/KXFED")
        assert body["series"]["tags"] == ["Fed", "Interest Rates"]
        assert await get_json(http, "/exchange/status") == {
            "exchange_active": True,
            "trading_active": True,
            "intra_exchange_transfers_active": True,
            "exchange_estimated_resume_time": None,
            "exchange_index_statuses": [],
        }


async def test_unsigned_gets_are_served_and_signed_ones_must_verify(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = Clock()
    now_ms = clock() // 1_000_000
    path = "/trade-api/v2/markets"
    async with new_sim(rsa_key, clock) as sim, httpx.AsyncClient() as http:
        url = f"http://127.0.0.1:{sim.port}{path}"
        assert (await http.get(url)).status_code == 200
        signed = signed_headers(KEY_ID, rsa_key, now_ms, "GET", path)
        assert (await http.get(url, params={"limit": 5}, headers=signed)).status_code == 200
        for headers in (
            signed_headers(KEY_ID, other_rsa_key, now_ms, "GET", path),
            signed_headers(KEY_ID, rsa_key, now_ms, "GET", "/trade-api/v2/events"),
            signed_headers(KEY_ID, rsa_key, now_ms - 60_000, "GET", path),  # clock skew
            signed_headers("unknown-key", rsa_key, now_ms, "GET", path),
            {"KALSHI-ACCESS-KEY": KEY_ID},
        ):
            response = await http.get(url, params={"limit": 5}, headers=headers)
            assert response.status_code == 401
            assert response.json()["code"] == "authentication_error"
        assert sim.rest_requests == 7


async def test_over_the_rate_429_without_retry_after_until_tokens_refill(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    clock = Clock()
    async with (
        new_sim(rsa_key, clock, rest_rate=(10.0, 30.0)) as sim,
        httpx.AsyncClient(base_url=sim.rest_url) as http,
    ):
        codes = [(await http.get("/exchange/status")).status_code for _ in range(3)]
        refused = await http.get("/markets")
        assert codes == [200, 200, 200]  # 30 tokens, 10 a request (§9.6)
        assert refused.status_code == 429
        assert refused.json() == {"error": "too many requests"}
        assert "retry-after" not in refused.headers
        assert not [h for h in refused.headers if h.lower().startswith("x-ratelimit")]
        clock.advance(0.5)  # 5 tokens: still short
        assert (await http.get("/markets")).status_code == 429
        clock.advance(1.0)
        assert (await http.get("/markets")).status_code == 200
        assert (sim.rest_requests, sim.rest_throttled) == (6, 2)


# -- churn on a WebSocket -------------------------------------------------------------------------


async def receive_until(
    ws: ClientConnection, done: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Frames up to and including the first that is `done`."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            frames.append(json.loads(await ws.recv()))
            if done(frames[-1]):
                return frames


def ws_headers(key: rsa.RSAPrivateKey, clock: Clock) -> dict[str, str]:
    return signed_headers(KEY_ID, key, clock() // 1_000_000, "GET", WS_PATH)


def apply_book(book: dict[str, dict[int, int]], frame: dict[str, Any]) -> None:
    msg = frame["msg"]
    if frame["type"] == "orderbook_snapshot":
        for side in ("yes", "no"):
            levels = msg.get(f"{side}_dollars_fp", [])
            book[side] = {parse_price(p): parse_size(s) for p, s in levels}
    else:
        side = book[msg["side"]]
        price = parse_price(msg["price_dollars"])
        size = side.get(price, 0) + parse_size(msg["delta_fp"])
        side.pop(price) if size == 0 else side.__setitem__(price, size)


async def test_churn_frames_arrive_in_order_and_markets_stream_once_open(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    clock = Clock()
    spec = ChurnSpec(create_every_s=10, markets_per_event=2, open_after_s=5, lifetime_s=20,
                     determine_after_s=5, settle_after_s=5, max_events=1, seed=2)  # fmt: skip
    sim = new_sim(rsa_key, clock, churn=spec)
    async with sim, connect(sim.url, additional_headers=ws_headers(rsa_key, clock)) as ws:
        lifecycle_subscribe = {"channels": ["market_lifecycle_v2"]}
        await ws.send(json.dumps({"id": 1, "cmd": "subscribe", "params": lifecycle_subscribe}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        lifecycle: list[dict[str, Any]] = []  # every frame of the lifecycle sid

        def churn_frame(frame: dict[str, Any], kind: str) -> bool:
            if frame.get("sid") == 1:
                lifecycle.append(frame)
            msg = frame.get("msg")
            ticker = msg.get("market_ticker", "") if isinstance(msg, dict) else ""
            return frame["type"] == kind and ticker.startswith("KXQUICKSETTLE")

        clock.advance(10)  # the event and its markets are created
        frames = await receive_until(ws, lambda f: churn_frame(f, "market_lifecycle_v2"))
        assert frames[-2]["type"] == "event_lifecycle"
        event = frames[-2]["msg"]["event_ticker"]
        tickers = [f"{event}-1", f"{event}-2"]
        assert frames[-1]["msg"]["market_ticker"] == tickers[0]
        await receive_until(ws, lambda f: churn_frame(f, "market_lifecycle_v2"))
        # Subscribe before the open: the snapshot is empty but carries the market id.
        book_subscribe = {"channels": ["orderbook_delta"], "market_tickers": tickers}
        await ws.send(json.dumps({"id": 2, "cmd": "subscribe", "params": book_subscribe}))
        frames = await receive_until(ws, lambda f: f.get("sid") == 2 and f.get("seq") == 2)
        snapshots = [f for f in frames if f["type"] == "orderbook_snapshot"]
        assert [s["msg"] for s in snapshots] == [
            {"market_ticker": t, "market_id": sim.generator.markets[t].market_id} for t in tickers
        ]
        books = {t: {"yes": {}, "no": {}} for t in tickers}
        for snapshot in snapshots:
            apply_book(books[snapshot["msg"]["market_ticker"]], snapshot)
        for frame in frames:
            churn_frame(frame, "")

        clock.advance(5)  # open: no lifecycle frame (§7.5), the opening orders as deltas
        deltas: dict[str, int] = dict.fromkeys(tickers, 0)

        def book_frame(frame: dict[str, Any]) -> bool:
            churn_frame(frame, "")
            if frame.get("sid") == 2 and frame["type"] == "orderbook_delta":
                deltas[frame["msg"]["market_ticker"]] += 1
                apply_book(books[frame["msg"]["market_ticker"]], frame)
            return min(deltas.values()) > 20  # well past the opening book: it streams

        await receive_until(ws, book_frame)
        await sim.pause()  # every frame produced so far is on its way
        await ws.send(json.dumps({"id": 3, "cmd": "list_subscriptions"}))
        await receive_until(ws, lambda f: (book_frame(f), f.get("id") == 3)[1])
        for ticker in tickers:
            market = sim.generator.markets[ticker]
            assert books[ticker] == {"yes": market.yes_bids, "no": market.no_bids}
        async with httpx.AsyncClient(base_url=sim.rest_url) as http:
            body = await get_json(
                http, "/markets", {"status": "open", "tickers": ",".join(tickers)}
            )
            assert [m["ticker"] for m in body["markets"]] == tickers
            sim.resume()
            clock.advance(25)  # closed at +35 (no frame), determined at +40
            await receive_until(ws, lambda f: churn_frame(f, "market_lifecycle_v2"))
            await receive_until(ws, lambda f: churn_frame(f, "market_lifecycle_v2"))
            assert not any(sim.generator.is_streaming(t) for t in tickers)
            body = await get_json(http, f"/markets/{tickers[0]}")
            assert body["market"]["status"] == "determined"
            quotes = ("yes_bid_dollars", "yes_ask_dollars", "yes_bid_size_fp")
            assert [body["market"][name] for name in quotes] == ["0.0000", "1.0000", "0.00"]
            clock.advance(5)  # settled
            await receive_until(ws, lambda f: churn_frame(f, "market_lifecycle_v2"))
            await receive_until(ws, lambda f: churn_frame(f, "market_lifecycle_v2"))
            body = await get_json(http, f"/markets/{tickers[1]}")
            assert body["market"]["status"] == "finalized"
            assert body["market"]["settlement_ts"] == "2026-11-21T16:00:45Z"
    assert [f["seq"] for f in lifecycle] == list(range(1, len(lifecycle) + 1))
    decoder = FrameDecoder()
    ours = [
        decoder.decode(json.dumps(f))
        for f in lifecycle
        if f["msg"].get("market_ticker", f["msg"].get("event_ticker", "")).startswith("KXQUICK")
    ]
    assert isinstance(ours[0], EventLifecycle)
    assert all(isinstance(frame, MarketLifecycleV2) for frame in ours[1:])
    # The generator may also update a streaming market's close date or subtitle (§7.5).
    steps = [
        (f.msg.market_ticker, f.msg.event_type)
        for f in ours[1:]
        if f.msg.event_type not in ("close_date_updated", "metadata_updated")
    ]
    assert steps == [(t, "created") for t in tickers] + [
        (t, kind) for kind in ("determined", "settled") for t in tickers
    ]
    determined = [f.msg for f in ours if getattr(f.msg, "event_type", "") == "determined"]
    for msg in determined:
        assert msg.determination_ts == NOW_S + 40
        assert msg.settlement_value == ("1.0000" if msg.result == "yes" else "0.0000")


async def test_error_26_past_the_market_cap_leaves_the_subscription_unchanged(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    clock = Clock()
    sim = new_sim(rsa_key, clock, market_count=5, max_markets_per_subscription=3)
    async with sim, connect(sim.url, additional_headers=ws_headers(rsa_key, clock)) as ws:
        await sim.pause()  # only replies to commands from here on
        markets = sim.markets
        error_26 = {"code": 26, "msg": "Subscription market limit exceeded"}

        async def command(cmd_id: int, cmd: str, params: dict[str, Any], count: int) -> list[Any]:
            await ws.send(json.dumps({"id": cmd_id, "cmd": cmd, "params": params}))
            return [json.loads(await ws.recv()) for _ in range(count)]

        four = {"channels": ["orderbook_delta"], "market_tickers": markets[:4]}
        assert await command(1, "subscribe", four, 1) == [
            {"type": "error", "id": 1, "msg": error_26}
        ]
        await ws.send(json.dumps({"id": 2, "cmd": "list_subscriptions"}))
        assert json.loads(await ws.recv()) == {"type": "ok", "id": 2, "msg": []}
        three = {"channels": ["orderbook_delta", "trade"], "market_tickers": markets[:3]}
        replies = await command(3, "subscribe", three, 5)
        assert [r["type"] for r in replies] == ["subscribed"] * 2 + ["orderbook_snapshot"] * 3
        add = {"sid": 1, "action": "add_markets", "market_tickers": [markets[3]]}
        assert await command(4, "update_subscription", add, 1) == [
            {"type": "error", "id": 4, "msg": error_26}
        ]
        again = {"sid": 1, "action": "add_markets", "market_tickers": [markets[0]]}
        assert await command(5, "update_subscription", again, 1) == [
            {"type": "ok", "id": 5, "sid": 1, "seq": 4, "msg": {"market_tickers": markets[:3]}}
        ]  # the error consumed no seq; the subscription still lists three markets
        more_trades = {"channels": ["trade"], "market_tickers": markets[3:5]}
        assert await command(6, "subscribe", more_trades, 1) == [
            {"type": "error", "id": 6, "msg": error_26}
        ]
        every = {"channels": ["ticker"]}  # no market list: every market, not capped
        assert await command(7, "subscribe", every, 1) == [
            {"type": "subscribed", "id": 7, "msg": {"channel": "ticker", "sid": 3}}
        ]
