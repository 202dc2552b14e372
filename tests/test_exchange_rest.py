"""The simulator's REST trade history, GET /trade-api/v2/markets/trades (PROTOCOL.md §9.5).

The pure `TradeLog` by direct calls; then the endpoint over real HTTP on 127.0.0.1 (urllib),
served from the WebSocket port, signed (§2) and unsigned (§9 public GET).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect

from ssmd.auth import WS_PATH, signed_headers
from ssmd.exchange.faults import Burst, SkipReason, SkipSeq
from ssmd.exchange.market import BookChange, Side, Trade
from ssmd.exchange.rest import (
    MAX_LIMIT,
    TRADES_PATH,
    BadQuery,
    TradeLog,
    TradeQuery,
    parse_trade_query,
)
from ssmd.exchange.server import ExchangeSimulator
from ssmd.fixedpoint import ONE_DOLLAR_E4, parse_price, parse_size

KEY_ID = "a952bcbe-ec3b-4b5b-b8f9-11dae589608c"
NOW_MS = 1_787_000_000_000
NOW_NS = NOW_MS * 1_000_000
TIMEOUT_S = 10
TRADE_FIELDS = {
    "trade_id", "ticker", "count_fp", "yes_price_dollars", "no_price_dollars", "taker_side",
    "taker_outcome_side", "taker_book_side", "created_time", "is_block_trade",
}  # fmt: skip


def make_trade(number: int, market: str) -> Trade:
    taker = Side.YES if number % 2 else Side.NO
    change = BookChange(market, taker.other, 4_000, -100)
    return Trade(market, f"trade-{number:05d}", 6_000, 100 + number, taker, change)


def fill_log(log: TradeLog, count: int, *, step_ns: int = 250_000_000) -> list[str]:
    """`count` trades over three markets, 4 per second; their ids, oldest first."""
    for number in range(count):
        log.record(make_trade(number, f"M{number % 3}"), NOW_NS + number * step_ns)
    return [f"trade-{number:05d}" for number in range(count)]


def page_all(log: TradeLog, query: TradeQuery) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: int | None = None
    while True:
        page = log.page(TradeQuery(**{**query.__dict__, "cursor": cursor}))
        pages.append([t.trade_id for t in page.trades])
        if not page.cursor:
            return pages
        cursor = int(page.cursor)


# -- pure ---------------------------------------------------------------------------------------


def test_pages_are_newest_first_and_return_every_trade_once() -> None:
    log = TradeLog()
    ids = fill_log(log, 250)
    pages = page_all(log, TradeQuery(limit=40))
    assert [len(p) for p in pages] == [40] * 6 + [10]
    assert list(itertools.chain(*pages)) == ids[::-1]
    exact = page_all(log, TradeQuery(limit=50))  # no empty last page: the cursor looks ahead
    assert [len(p) for p in exact] == [50] * 5
    assert log.page(TradeQuery()).trades == log.all_trades()[::-1][:100]  # default limit 100
    assert page_all(TradeLog(), TradeQuery()) == [[]]


def test_filters_by_ticker_time_window_and_block_flag() -> None:
    log = TradeLog()
    ids = fill_log(log, 120)  # trade n at NOW + n/4 s
    start_s = NOW_NS // 1_000_000_000
    by_ticker = page_all(log, TradeQuery(ticker="M1", limit=7))
    assert list(itertools.chain(*by_ticker)) == ids[1::3][::-1]
    window = TradeQuery(min_ts_s=start_s + 5, max_ts_s=start_s + 9, limit=6)
    assert list(itertools.chain(*page_all(log, window))) == ids[20:40][::-1]  # both ends in
    both = TradeQuery(ticker="M2", min_ts_s=start_s + 5, max_ts_s=start_s + 9, limit=3)
    assert list(itertools.chain(*page_all(log, both))) == ids[20:40][::-1][1::3]
    assert log.page(TradeQuery(is_block_trade=True)).trades == []
    assert len(log.page(TradeQuery(is_block_trade=False, limit=MAX_LIMIT)).trades) == 120
    assert log.page(TradeQuery(ticker="NOPE")).trades == []


def test_a_cursor_is_stable_while_trades_are_added() -> None:
    log = TradeLog()
    ids = fill_log(log, 30)
    first = log.page(TradeQuery(limit=10))
    for number in range(30, 45):
        log.record(make_trade(number, "M0"), NOW_NS)
    second = log.page(TradeQuery(limit=10, cursor=int(first.cursor)))
    assert [t.trade_id for t in second.trades] == ids[10:20][::-1]
    assert log.page(TradeQuery(limit=1)).trades[0].trade_id == "trade-00044"


def test_the_oldest_trades_are_forgotten_beyond_max_trades() -> None:
    log = TradeLog(max_trades=100)
    ids = fill_log(log, 500)
    assert 100 <= len(log) <= 110
    kept = list(itertools.chain(*page_all(log, TradeQuery(limit=33))))
    assert kept == ids[::-1][: len(log)]
    assert [t.trade_id for t in log.page(TradeQuery(ticker="M0", cursor=5)).trades] == []


def test_rest_trade_shape() -> None:
    log = TradeLog()
    log.record(make_trade(3, "KXSIMBTC-26NOV21-T97499.99"), NOW_NS + 123_456_789)
    page = log.page(TradeQuery())
    assert json.loads(page.to_json()) == {
        "trades": [
            {
                "trade_id": "trade-00003",
                "ticker": "KXSIMBTC-26NOV21-T97499.99",
                "count_fp": "1.03",
                "yes_price_dollars": "0.6000",
                "no_price_dollars": "0.4000",
                "taker_side": "yes",
                "taker_outcome_side": "yes",
                "taker_book_side": "bid",
                "created_time": "2026-08-17T20:53:20.123456Z",
                "is_block_trade": False,
            }
        ],
        "cursor": "",
    }


def test_query_parsing() -> None:
    assert parse_trade_query("") == TradeQuery()
    assert parse_trade_query("ticker=A.B&min_ts=5&max_ts=9&limit=1000&cursor=77") == TradeQuery(
        ticker="A.B", min_ts_s=5, max_ts_s=9, limit=1000, cursor=77
    )
    assert parse_trade_query("cursor=&limit=&is_block_trade=false&x=1") == TradeQuery(
        is_block_trade=False
    )
    cases = [("limit=0", "limit"), ("limit=1001", "limit"), ("limit=ten", "limit"),
             ("min_ts=1.5", "min_ts"), ("cursor=-3", "cursor"), ("cursor=abc", "cursor"),
             ("ticker=A&ticker=B", "ticker"), ("is_block_trade=yes", "is_block_trade")]  # fmt: skip
    for bad, word in cases:
        parsed = parse_trade_query(bad)
        assert isinstance(parsed, BadQuery), bad
        assert word in parsed.message


# -- over HTTP ----------------------------------------------------------------------------------


def _http_get(url: str, headers: dict[str, str]) -> tuple[int, str, Any]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], json.loads(exc.read())


async def get_trades(
    sim: ExchangeSimulator, headers: dict[str, str] | None = None, **params: Any
) -> tuple[int, Any]:
    url = f"{sim.rest_url}/markets/trades"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    status, content_type, body = await asyncio.to_thread(_http_get, url, headers or {})
    assert content_type == "application/json"
    return status, body


async def fetch_all(sim: ExchangeSimulator, **params: Any) -> list[dict[str, Any]]:
    trades: list[dict[str, Any]] = []
    cursor = ""
    while True:
        status, body = await get_trades(sim, **params, cursor=cursor)
        assert status == 200
        trades.extend(body["trades"])
        cursor = body["cursor"]
        if not cursor:
            return trades


def stepping_clock(step_ns: int) -> Any:
    counter = itertools.count(NOW_NS, step_ns)
    return lambda: next(counter)


def new_sim(rsa_key: rsa.RSAPrivateKey, **options: Any) -> ExchangeSimulator:
    settings: dict[str, Any] = {"market_count": 5, "rate_hz": 1.0, "seed": 9,
                                "ping_interval_s": None, "clock_ns": lambda: NOW_NS}  # fmt: skip
    settings.update(options)
    return ExchangeSimulator(public_keys={KEY_ID: rsa_key.public_key()}, **settings)


async def test_http_pages_return_every_trade_once(rsa_key: rsa.RSAPrivateKey) -> None:
    async with new_sim(rsa_key) as sim:
        await sim.pause()
        await sim.inject_fault(Burst(3_000))
        trades = await fetch_all(sim, limit=45)
        assert len(trades) == len(sim.trades) > 200
        assert trades == msgspec.to_builtins(sim.trades.all_trades()[::-1])
        assert len({t["trade_id"] for t in trades}) == len(trades)
        for trade in trades:
            assert set(trade) == TRADE_FIELDS
            yes_e4, no_e4 = (
                parse_price(trade[k]) for k in ("yes_price_dollars", "no_price_dollars")
            )
            assert yes_e4 + no_e4 == ONE_DOLLAR_E4
            assert parse_size(trade["count_fp"]) > 0
            assert trade["ticker"] in sim.markets
            assert trade["taker_book_side"] == {"yes": "bid", "no": "ask"}[trade["taker_side"]]
        status, body = await get_trades(sim)
        assert (status, len(body["trades"])) == (200, 100)


async def test_http_filters_by_ticker_and_time_window(rsa_key: rsa.RSAPrivateKey) -> None:
    async with new_sim(rsa_key, clock_ns=stepping_clock(10_000_000)) as sim:
        await sim.pause()
        await sim.inject_fault(Burst(2_000))  # about 20 s of exchange time
        every = msgspec.to_builtins(sim.trades.all_trades()[::-1])

        def created_s(trade: dict[str, Any]) -> int:
            return int(datetime.fromisoformat(trade["created_time"]).timestamp())

        low_s, high_s = created_s(every[-1]) + 5, created_s(every[-1]) + 12
        market = sim.markets[1]
        window = await fetch_all(sim, min_ts=low_s, max_ts=high_s, limit=17)
        assert window == [t for t in every if low_s <= created_s(t) <= high_s]
        assert 0 < len(window) < len(every)
        both = await fetch_all(sim, ticker=market, min_ts=low_s, max_ts=high_s)
        assert both == [t for t in window if t["ticker"] == market]
        assert both
        assert await fetch_all(sim, ticker="KXNOPE-1") == []
        assert await fetch_all(sim, is_block_trade="true") == []


async def test_a_cursor_continues_while_new_trades_arrive(rsa_key: rsa.RSAPrivateKey) -> None:
    async with new_sim(rsa_key) as sim:
        await sim.pause()
        await sim.inject_fault(Burst(500))
        before = [t.trade_id for t in sim.trades.all_trades()[::-1]]
        _, first = await get_trades(sim, limit=10)
        await sim.inject_fault(Burst(500))
        _, second = await get_trades(sim, limit=10, cursor=first["cursor"])
        assert [t["trade_id"] for t in first["trades"] + second["trades"]] == before[:20]
        _, fresh = await get_trades(sim, limit=10)
        assert fresh["trades"][0]["trade_id"] == sim.trades.all_trades()[-1].trade_id
        assert fresh["trades"][0]["trade_id"] not in before


async def test_signed_requests_are_verified_and_unsigned_ones_served(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    async with new_sim(rsa_key) as sim:
        await sim.pause()
        await sim.inject_fault(Burst(300))
        good = signed_headers(KEY_ID, rsa_key, NOW_MS, "GET", TRADES_PATH)
        status, body = await get_trades(sim, good, limit=5, ticker=sim.markets[0])
        assert status == 200
        assert len(body["trades"]) == 5
        assert (await get_trades(sim))[0] == 200  # public GET: no signature needed (§9)
        query_stripped = signed_headers(KEY_ID, rsa_key, NOW_MS, "GET", TRADES_PATH + "?limit=5")
        assert (await get_trades(sim, query_stripped, limit=5))[0] == 200  # §2.2
        for bad in (
            signed_headers(KEY_ID, rsa_key, NOW_MS, "GET", WS_PATH),  # the wrong path
            signed_headers(KEY_ID, other_rsa_key, NOW_MS, "GET", TRADES_PATH),
            signed_headers(KEY_ID, rsa_key, NOW_MS - 60_000, "GET", TRADES_PATH),
            {"KALSHI-ACCESS-KEY": KEY_ID},  # incomplete
        ):
            status, body = await get_trades(sim, bad, limit=5)
            assert status == 401
            assert body["code"] == "authentication_error"
        status, body = await get_trades(sim, limit=MAX_LIMIT + 1)
        assert (status, body["code"]) == (400, "bad_request")
        assert "limit" in body["message"]


async def test_unknown_rest_path_is_404(rsa_key: rsa.RSAPrivateKey) -> None:
    async with new_sim(rsa_key) as sim:
        url = f"{sim.rest_url}/portfolio/balance"  # /markets is served (the catalog)
        status, _, body = await asyncio.to_thread(_http_get, url, {})
        assert (status, body["code"]) == (404, "not_found")


async def test_trades_whose_ws_frame_was_dropped_are_still_served(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    async with new_sim(rsa_key) as sim:
        await sim.pause()
        made_before = {t.trade_id for t in sim.trades.all_trades()}
        headers = signed_headers(KEY_ID, rsa_key, NOW_MS, "GET", WS_PATH)
        async with connect(sim.url, additional_headers=headers) as ws:
            command = {"id": 1, "cmd": "subscribe", "params": {"channels": ["trade"]}}
            await ws.send(json.dumps(command))
            received = [await ws.recv(decode=False)]
            assert json.loads(received[0])["msg"] == {"channel": "trade", "sid": 1}
            await sim.inject_fault(SkipSeq(sid=1))
            await sim.inject_fault(Burst(1_000))
            await sim.pause()
            sent = [f.data for f in sim.sent]
            async with asyncio.timeout(TIMEOUT_S):
                while len(received) < len(sent):
                    received.append(await ws.recv(decode=False))
        assert received == sent
        (skipped,) = sim.skipped
        assert skipped.reason is SkipReason.SKIP_SEQ
        lost_id = json.loads(skipped.data)["msg"]["trade_id"]
        ws_ids = {json.loads(f)["msg"]["trade_id"] for f in received[1:]}
        rest_ids = [t["trade_id"] for t in await fetch_all(sim, limit=MAX_LIMIT)]
        assert lost_id not in ws_ids
        assert set(rest_ids) - made_before == ws_ids | {lost_id}
        assert len(rest_ids) == len(sim.trades) == len(made_before) + len(ws_ids) + 1
