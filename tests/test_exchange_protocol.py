"""The simulator's per-connection protocol core, by plain function calls (PROTOCOL.md §4-§7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ssmd.exchange.market import (
    BookChange,
    EventMix,
    MarketGenerator,
    Side,
    TickerChange,
    Trade,
)
from ssmd.exchange.protocol import ErrorCode, ExchangeConnection
from ssmd.fixedpoint import ONE_DOLLAR_E4, format_price, parse_price, parse_size

NOW_NS = 1_787_000_000_123_456_789
Frame = dict[str, Any]


def new_connection(generator: MarketGenerator) -> ExchangeConnection:
    return ExchangeConnection(generator.markets, clock_ns=lambda: NOW_NS)


def command(conn: ExchangeConnection, cmd: dict[str, Any] | str) -> list[Frame]:
    data = cmd if isinstance(cmd, str) else json.dumps(cmd)
    return [json.loads(frame) for frame in conn.receive_command(data)]


def subscribe(
    conn: ExchangeConnection, cmd_id: int, channels: list[str], **params: Any
) -> list[Frame]:
    return command(
        conn, {"id": cmd_id, "cmd": "subscribe", "params": {"channels": channels, **params}}
    )


def drive(
    generator: MarketGenerator, conns: list[ExchangeConnection], count: int
) -> list[list[Frame]]:
    """Run `count` market events, returning the frames each connection got."""
    out: list[list[Frame]] = [[] for _ in conns]
    for i in range(count):
        now_ns = NOW_NS + i * 1_000_000
        event = generator.next_event(now_ns)
        for index, conn in enumerate(conns):
            out[index].extend(json.loads(f) for f in conn.frames_for_event(event, now_ns))
    return out


def seqs(frames: list[Frame], sid: int) -> list[int]:
    return [f["seq"] for f in frames if f.get("sid") == sid and "seq" in f]


def levels(frame_levels: list[list[str]]) -> dict[int, int]:
    return {parse_price(price): parse_size(size) for price, size in frame_levels}


@pytest.fixture
def generator() -> MarketGenerator:
    return MarketGenerator(6, seed=11)


@pytest.fixture
def conn(generator: MarketGenerator) -> ExchangeConnection:
    return new_connection(generator)


# -- subscribe ---------------------------------------------------------------------------------


def test_subscribed_acks_sids_from_one_per_connection(
    generator: MarketGenerator, conn: ExchangeConnection
) -> None:
    markets = generator.tickers[:2]
    frames = subscribe(conn, 1, ["orderbook_delta", "ticker", "trade"], market_tickers=markets)
    acks = [f for f in frames if f["type"] == "subscribed"]
    assert acks == [
        {"type": "subscribed", "id": 1, "msg": {"channel": "orderbook_delta", "sid": 1}},
        {"type": "subscribed", "id": 1, "msg": {"channel": "ticker", "sid": 2}},
        {"type": "subscribed", "id": 1, "msg": {"channel": "trade", "sid": 3}},
    ]
    frames = subscribe(conn, 2, ["market_lifecycle_v2"])
    assert frames == [
        {"type": "subscribed", "id": 2, "msg": {"channel": "market_lifecycle_v2", "sid": 4}}
    ]
    other = new_connection(generator)
    assert subscribe(other, 1, ["trade"]) == [
        {"type": "subscribed", "id": 1, "msg": {"channel": "trade", "sid": 1}}
    ]


def test_frames_match_live_captures_byte_for_byte(
    conn: ExchangeConnection, captures_dir: Path
) -> None:
    live = captures_dir / "Haripratiik__prediction-market-trading-engine__test-kalshi-ws-py.jsonl"
    lines = live.read_text().splitlines()
    subscribed = conn.receive_command(
        b'{"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta"],'
        b'"market_tickers":["KXBTCD-25AUG2617-T112999.99"]}}'
    )
    # An unknown ticker gets a ladder-less snapshot with market_id "" (observed, §7.1.1).
    assert subscribed == [lines[0].encode(), lines[6].encode()]
    ticker_v2 = b'{"id":3,"cmd":"subscribe","params":{"channels":["ticker_v2"]}}'
    assert conn.receive_command(ticker_v2) == [lines[5].encode()]


def test_snapshots_then_deltas_share_one_seq_counter(
    generator: MarketGenerator, conn: ExchangeConnection
) -> None:
    markets = generator.tickers[:4]
    frames = subscribe(conn, 1, ["orderbook_delta"], market_tickers=markets)
    snapshots = frames[1:]
    assert [f["type"] for f in snapshots] == ["orderbook_snapshot"] * 4
    assert [f["seq"] for f in snapshots] == [1, 2, 3, 4]
    assert [f["msg"]["market_ticker"] for f in snapshots] == markets
    assert all(f["sid"] == 1 and "id" not in f for f in snapshots)
    for frame in snapshots:
        market = generator.markets[frame["msg"]["market_ticker"]]
        assert frame["msg"]["market_id"] == market.market_id
        assert levels(frame["msg"]["yes_dollars_fp"]) == market.yes_bids
        assert levels(frame["msg"]["no_dollars_fp"]) == market.no_bids
        prices = [parse_price(p) for p, _ in frame["msg"]["yes_dollars_fp"]]
        assert prices == sorted(prices)  # ascending, best bid last
    (data,) = drive(generator, [conn], 400)
    deltas = [f for f in data if f["type"] == "orderbook_delta"]
    assert seqs(data, 1) == list(range(5, 5 + len(deltas)))
    assert len({f["msg"]["market_ticker"] for f in deltas}) == 4  # one counter across markets
    assert {f["msg"]["market_ticker"] for f in deltas} == set(markets)


def test_snapshot_plus_deltas_rebuild_the_exact_book(generator: MarketGenerator) -> None:
    default, yes_priced = new_connection(generator), new_connection(generator)
    markets = generator.tickers
    books: list[dict[str, dict[str, dict[int, int]]]] = []
    for conn, flag in ((default, False), (yes_priced, True)):
        frames = subscribe(conn, 1, ["orderbook_delta"], market_tickers=markets, use_yes_price=flag)
        books.append(
            {
                f["msg"]["market_ticker"]: {
                    "yes": levels(f["msg"].get("yes_dollars_fp", [])),
                    "no": levels(f["msg"].get("no_dollars_fp", [])),
                }
                for f in frames[1:]
            }
        )
    streams = drive(generator, [default, yes_priced], 3_000)
    for book, stream, yes_price in zip(books, streams, (False, True), strict=True):
        for frame in stream:
            if frame["type"] != "orderbook_delta":
                continue
            msg = frame["msg"]
            side = book[msg["market_ticker"]][msg["side"]]
            price = parse_price(msg["price_dollars"])
            size = side.get(price, 0) + parse_size(msg["delta_fp"])
            assert size >= 0
            if size:
                side[price] = size
            else:
                del side[price]
        for ticker, market in generator.markets.items():
            assert book[ticker]["yes"] == market.yes_bids
            no = book[ticker]["no"]
            if yes_price:  # §7.1.4: NO levels quoted in YES-leg price
                no = {ONE_DOLLAR_E4 - price: size for price, size in no.items()}
            assert no == market.no_bids


def test_use_yes_price_converts_no_side_only(generator: MarketGenerator) -> None:
    default, yes_priced = new_connection(generator), new_connection(generator)
    market = generator.tickers[0]
    plain = subscribe(default, 1, ["orderbook_delta"], market_ticker=market)[1]["msg"]
    converted = subscribe(
        yes_priced, 1, ["orderbook_delta"], market_ticker=market, use_yes_price=True
    )[1]["msg"]
    assert plain["yes_dollars_fp"] == converted["yes_dollars_fp"]
    assert converted["no_dollars_fp"] == [
        [format_price(ONE_DOLLAR_E4 - parse_price(p)), s] for p, s in plain["no_dollars_fp"]
    ]
    quoted = [parse_price(p) for p, _ in converted["no_dollars_fp"]]
    assert quoted == sorted(quoted, reverse=True)  # still ascending in NO-leg price
    for side, price_e4 in ((Side.NO, 3_000), (Side.YES, 3_000)):
        event = BookChange(market, side, price_e4, 500)
        (plain_delta,) = [json.loads(f) for f in default.frames_for_event(event, NOW_NS)]
        (yes_delta,) = [json.loads(f) for f in yes_priced.frames_for_event(event, NOW_NS)]
        assert plain_delta["msg"]["price_dollars"] == "0.3000"
        expected = "0.7000" if side is Side.NO else "0.3000"
        assert yes_delta["msg"]["price_dollars"] == expected
        assert yes_delta["msg"]["side"] == plain_delta["msg"]["side"] == side.value


def test_delta_frame_shape(generator: MarketGenerator, conn: ExchangeConnection) -> None:
    market = generator.tickers[1]
    subscribe(conn, 1, ["orderbook_delta"], market_tickers=[market])
    event = BookChange(market, Side.YES, 4_530, -3_087)
    (frame,) = conn.frames_for_event(event, 1_787_186_160_630_940_123)
    market_id = generator.markets[market].market_id
    assert (
        frame
        == (
            '{"type":"orderbook_delta","sid":1,"seq":2,"msg":{"market_ticker":"' + market + '",'
            '"market_id":"' + market_id + '","price_dollars":"0.4530","delta_fp":"-30.87",'
            '"side":"yes","ts":"2026-08-20T00:36:00.630940Z","ts_ms":1787186160630}}'
        ).encode()
    )


def test_empty_side_key_is_omitted(generator: MarketGenerator, conn: ExchangeConnection) -> None:
    market = generator.markets[generator.tickers[0]]
    market.no_bids.clear()
    (_, snapshot) = subscribe(conn, 1, ["orderbook_delta"], market_ticker=market.ticker)
    assert set(snapshot["msg"]) == {"market_ticker", "market_id", "yes_dollars_fp"}
    market.yes_bids.clear()
    conn2 = new_connection(generator)
    (_, snapshot) = subscribe(conn2, 1, ["orderbook_delta"], market_ticker=market.ticker)
    assert snapshot["msg"] == {"market_ticker": market.ticker, "market_id": market.market_id}


# -- ticker, trade, lifecycle ------------------------------------------------------------------


def test_ticker_has_no_seq_and_all_fields(
    generator: MarketGenerator, conn: ExchangeConnection
) -> None:
    subscribe(conn, 1, ["ticker"])  # no markets = every market
    (data,) = drive(generator, [conn], 300)
    tickers = [f for f in data if f["type"] == "ticker"]
    assert len({f["msg"]["market_ticker"] for f in tickers}) == len(generator.tickers)
    for frame in tickers:
        assert set(frame) == {"type", "sid", "msg"}
        assert frame["sid"] == 1
        assert list(frame["msg"]) == [
            "market_id", "market_ticker", "price_dollars", "yes_bid_dollars",
            "yes_ask_dollars", "volume_fp", "open_interest_fp", "dollar_volume",
            "dollar_open_interest", "yes_bid_size_fp", "yes_ask_size_fp",
            "last_trade_size_fp", "ts", "ts_ms", "time",
        ]  # fmt: skip
        msg = frame["msg"]
        assert parse_price(msg["yes_bid_dollars"]) < parse_price(msg["yes_ask_dollars"])
        assert msg["ts_ms"] // 1000 == msg["ts"]
        assert msg["time"].endswith("Z")
        assert len(msg["time"]) == len("2026-08-17T08:49:57.868890Z")


def test_ticker_frame_reflects_the_book(
    generator: MarketGenerator, conn: ExchangeConnection
) -> None:
    subscribe(conn, 1, ["ticker"])
    market = generator.markets[generator.tickers[2]]
    event = TickerChange(market.ticker, market.ticker_stats())
    (frame,) = [json.loads(f) for f in conn.frames_for_event(event, NOW_NS)]
    msg = frame["msg"]
    assert parse_price(msg["yes_bid_dollars"]) == max(market.yes_bids)
    assert parse_size(msg["yes_bid_size_fp"]) == market.yes_bids[max(market.yes_bids)]
    assert parse_price(msg["yes_ask_dollars"]) == ONE_DOLLAR_E4 - max(market.no_bids)
    assert parse_size(msg["yes_ask_size_fp"]) == market.no_bids[max(market.no_bids)]
    assert msg["price_dollars"] == "0.0000"  # never traded
    assert msg["market_id"] == market.market_id


def test_trade_has_its_own_seq() -> None:
    mix = EventMix(book_change=1, ticker_change=0, trade=1, other=0)
    busy = MarketGenerator(6, seed=11, mix=mix)
    conn = new_connection(busy)
    subscribe(conn, 1, ["orderbook_delta", "trade"], market_tickers=busy.tickers)
    (data,) = drive(busy, [conn], 300)
    trades = [f for f in data if f["type"] == "trade"]
    assert len(trades) > 50
    assert seqs(data, 2) == list(range(1, len(trades) + 1))
    for frame in trades:
        msg = frame["msg"]
        assert parse_price(msg["yes_price_dollars"]) + parse_price(msg["no_price_dollars"]) == (
            ONE_DOLLAR_E4
        )
        assert msg["taker_outcome_side"] == msg["taker_side"]
        assert msg["taker_book_side"] == ("bid" if msg["taker_side"] == "yes" else "ask")
        assert msg["is_block_trade"] is False
        assert set(msg) >= {"trade_id", "market_ticker", "count_fp", "ts", "ts_ms"}
    # every trade also moved the book on the orderbook sid (the consumed level)
    deltas = [f for f in data if f["type"] == "orderbook_delta"]
    assert seqs(data, 1)[-1] == len(busy.tickers) + len(deltas)


def test_trade_frame_matches_event(generator: MarketGenerator, conn: ExchangeConnection) -> None:
    subscribe(conn, 1, ["trade"])
    change = BookChange(generator.tickers[0], Side.YES, 3_600, -13_600)
    trade = Trade(generator.tickers[0], "d91bc706-ee49-470d-82d8-11418bda6fed", 3_600, 13_600,
                  Side.NO, change)  # fmt: skip
    (frame,) = conn.frames_for_event(trade, 1_669_149_841_000_000_000)
    assert (
        frame
        == (
            '{"type":"trade","sid":1,"seq":1,"msg":{"trade_id":"d91bc706-ee49-470d-82d8-11418bda6fed",'
            '"market_ticker":"' + generator.tickers[0] + '","yes_price_dollars":"0.3600",'
            '"no_price_dollars":"0.6400","count_fp":"136.00","taker_side":"no",'
            '"taker_outcome_side":"no","taker_book_side":"ask","is_block_trade":false,'
            '"ts":1669149841,"ts_ms":1669149841000}}'
        ).encode()
    )


def test_lifecycle_single_sid_ignores_markets() -> None:
    generator = MarketGenerator(4, seed=2, mix=EventMix(0, 0, 0, 1))
    conn = new_connection(generator)
    frames = subscribe(conn, 1, ["market_lifecycle_v2"], market_tickers=["SOMETHING-ELSE"])
    assert frames == [
        {"type": "subscribed", "id": 1, "msg": {"channel": "market_lifecycle_v2", "sid": 1}}
    ]
    (data,) = drive(generator, [conn], 100)
    assert len(data) == 100
    assert seqs(data, 1) == list(range(1, 101))
    assert {f["type"] for f in data} == {"market_lifecycle_v2", "event_lifecycle"}
    event_types = {f["msg"].get("event_type") for f in data if f["type"] == "market_lifecycle_v2"}
    assert event_types == {"metadata_updated", "close_date_updated"}


def test_send_initial_snapshot_sends_current_tickers(
    generator: MarketGenerator, conn: ExchangeConnection
) -> None:
    markets = generator.tickers[:2]
    frames = subscribe(conn, 4, ["ticker"], market_tickers=markets, send_initial_snapshot=True)
    assert frames[0]["type"] == "subscribed"
    assert [f["msg"]["market_ticker"] for f in frames[1:]] == markets
    assert all(f["type"] == "ticker" and f["msg"]["ts_ms"] == NOW_NS // 10**6 for f in frames[1:])


# -- acks and seq accounting -------------------------------------------------------------------


def test_resubscribe_ok_consumes_seq_and_snapshots_only_new_markets(
    generator: MarketGenerator, conn: ExchangeConnection
) -> None:
    a, b, c = generator.tickers[:3]
    subscribe(conn, 1, ["orderbook_delta"], market_tickers=[a, b])
    frames = subscribe(conn, 2, ["orderbook_delta"], market_tickers=[b, c])
    assert frames[0] == {
        "type": "ok", "id": 2, "sid": 1, "seq": 3, "msg": {"market_tickers": [a, b, c]}
    }  # fmt: skip
    assert [(f["type"], f["seq"], f["msg"]["market_ticker"]) for f in frames[1:]] == [
        ("orderbook_snapshot", 4, c)
    ]
    assert subscribe(conn, 3, ["orderbook_delta"], market_tickers=[a]) == [
        {"type": "ok", "id": 3, "sid": 1, "seq": 5, "msg": {"market_tickers": [a, b, c]}}
    ]
    (data,) = drive(generator, [conn], 50)
    assert seqs(data, 1)[0] == 6


def test_resubscribe_with_skip_ticker_ack(
    generator: MarketGenerator, conn: ExchangeConnection
) -> None:
    subscribe(conn, 1, ["ticker"], market_tickers=generator.tickers[:1], skip_ticker_ack=True)
    assert subscribe(conn, 2, ["ticker"], market_tickers=generator.tickers[1:2]) == [
        {"type": "ok", "id": 2, "sid": 1, "seq": 1, "msg": {}}
    ]


def test_unsubscribed_consumes_seq_and_resubscribe_restarts(
    generator: MarketGenerator, conn: ExchangeConnection
) -> None:
    markets = generator.tickers[:2]
    subscribe(conn, 1, ["orderbook_delta", "trade"], market_tickers=markets)
    (data,) = drive(generator, [conn], 30)
    last = seqs(data, 1)[-1] if seqs(data, 1) else 2
    frames = command(conn, {"id": 5, "cmd": "unsubscribe", "params": {"sids": [1]}})
    assert frames == [{"type": "unsubscribed", "id": 5, "sid": 1, "seq": last + 1}]
    (data,) = drive(generator, [conn], 30)
    assert seqs(data, 1) == []
    frames = subscribe(conn, 6, ["orderbook_delta"], market_tickers=markets)
    assert frames[0] == {
        "type": "subscribed",
        "id": 6,
        "msg": {"channel": "orderbook_delta", "sid": 3},
    }
    assert [f["seq"] for f in frames[1:]] == [1, 2]
    assert all(f["sid"] == 3 for f in frames[1:])


def test_get_snapshot_carries_id_and_next_seqs(
    generator: MarketGenerator, conn: ExchangeConnection
) -> None:
    a, b, c = generator.tickers[:3]
    subscribe(conn, 1, ["orderbook_delta", "ticker", "trade"], market_tickers=[a, b, c])
    (data,) = drive(generator, [conn], 40)
    next_seq = (seqs(data, 1) or [3])[-1] + 1
    frames = command(
        conn,
        {"id": 2, "cmd": "update_subscription",
         "params": {"sids": [1], "market_tickers": [c, a], "action": "get_snapshot"}},
    )  # fmt: skip
    assert [
        (f["type"], f["id"], f["sid"], f["seq"], f["msg"]["market_ticker"]) for f in frames
    ] == [
        ("orderbook_snapshot", 2, 1, next_seq, c),
        ("orderbook_snapshot", 2, 1, next_seq + 1, a),
    ]  # no `ok` (§12 #22)
    assert levels(frames[0]["msg"]["yes_dollars_fp"]) == generator.markets[c].yes_bids
    (data,) = drive(generator, [conn], 40)
    assert seqs(data, 1)[0] == next_seq + 2


def test_get_snapshot_on_trade_sid_is_error_13(
    generator: MarketGenerator, conn: ExchangeConnection
) -> None:
    subscribe(conn, 1, ["orderbook_delta", "ticker", "trade"], market_tickers=generator.tickers)
    trade = Trade(generator.tickers[0], "t1", 5_000, 100, Side.YES,
                  BookChange(generator.tickers[0], Side.NO, 5_000, -100))  # fmt: skip
    conn.frames_for_event(trade, NOW_NS)  # trade seq 1 on sid 3
    frames = command(
        conn,
        {"id": 2, "cmd": "update_subscription",
         "params": {"sids": [3], "market_tickers": [generator.tickers[0]],
                    "action": "get_snapshot"}},
    )  # fmt: skip
    # exactly as captured on demo 2026-08-17: sid + next seq, no id
    assert frames == [
        {"type": "error", "sid": 3, "seq": 2, "msg": {"code": 13, "msg": "Unsupported action"}}
    ]
    frames = [json.loads(f) for f in conn.frames_for_event(trade, NOW_NS)]
    assert [(f["type"], f["sid"], f["seq"]) for f in frames] == [
        ("orderbook_delta", 1, len(generator.tickers) + 2),
        ("trade", 3, 3),
    ]


def test_add_and_delete_markets(generator: MarketGenerator, conn: ExchangeConnection) -> None:
    a, b, c = generator.tickers[:3]
    subscribe(conn, 1, ["orderbook_delta"], market_tickers=[a])
    frames = command(
        conn,
        {"id": 2, "cmd": "update_subscription",
         "params": {"sid": 1, "market_tickers": [b, c], "action": "add_markets"}},
    )  # fmt: skip
    assert frames[0] == {
        "type": "ok",
        "id": 2,
        "sid": 1,
        "seq": 2,
        "msg": {"market_tickers": [a, b, c]},
    }
    assert [(f["seq"], f["msg"]["market_ticker"]) for f in frames[1:]] == [(3, b), (4, c)]
    frames = command(
        conn,
        {"id": 3, "cmd": "update_subscription",
         "params": {"sids": [1], "market_ticker": a, "action": "delete_markets"}},
    )  # fmt: skip
    assert frames == [
        {"type": "ok", "id": 3, "sid": 1, "seq": 5, "msg": {"market_tickers": [b, c]}}
    ]
    (data,) = drive(generator, [conn], 300)
    assert {f["msg"]["market_ticker"] for f in data} == {b, c}
    assert seqs(data, 1)[0] == 6


def test_list_subscriptions(generator: MarketGenerator, conn: ExchangeConnection) -> None:
    subscribe(conn, 1, ["orderbook_delta", "ticker"], market_tickers=generator.tickers[:1])
    assert command(conn, {"id": 3, "cmd": "list_subscriptions"}) == [
        {"type": "ok", "id": 3,
         "msg": [{"channel": "orderbook_delta", "sid": 1}, {"channel": "ticker", "sid": 2}]}
    ]  # fmt: skip


# -- errors (§6.6, exact message text) ---------------------------------------------------------


def error(cmd_id: int | None, code: int, text: str) -> Frame:
    frame: Frame = {"type": "error"}
    if cmd_id is not None:
        frame["id"] = cmd_id
    frame["msg"] = {"code": code, "msg": text}
    return frame


UPDATE = "update_subscription"


@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        ('{"id": 1, "cmd": "subscribe", ', error(None, 1, "Unable to process message")),
        ("[1, 2]", error(None, 1, "Unable to process message")),
        ({"id": 9, "cmd": "subscribe", "params": {"channels": "ticker"}},
         error(9, 1, "Unable to process message")),
        ({"id": 9, "cmd": "subscribe", "params": {"channels": ["ticker"], "use_yes_price": "yes"}},
         error(9, 1, "Unable to process message")),
        ({"id": 2, "cmd": "subscribe"}, error(2, 2, "Params required")),
        ({"id": 3, "cmd": "subscribe", "params": {}}, error(3, 3, "Channels required")),
        ({"id": 3, "cmd": "subscribe", "params": {"channels": []}},
         error(3, 3, "Channels required")),
        ({"id": 4, "cmd": "unsubscribe", "params": {}}, error(4, 4, "Subscription IDs required")),
        ({"id": 4, "cmd": "unsubscribe", "params": {"sids": []}},
         error(4, 4, "Subscription IDs required")),
        ({"id": 5, "cmd": "subscribe_all", "params": {}}, error(5, 5, "Unknown command")),
        ({"id": 5, "params": {}}, error(5, 5, "Unknown command")),
        ({"id": 7, "cmd": "unsubscribe", "params": {"sids": [42]}},
         error(7, 7, "Unknown subscription ID")),
        ({"id": 7, "cmd": UPDATE, "params": {"sid": 42, "action": "add_markets"}},
         error(7, 7, "Unknown subscription ID")),
        ({"id": 8, "cmd": "subscribe", "params": {"channels": ["ticker_v2"]}},
         error(8, 8, "Unknown channel name")),
        ({"id": 8, "cmd": "subscribe", "params": {"channels": ["ticker", "multivariate"]}},
         error(8, 8, "Unknown channel name")),
        ({"id": 12, "cmd": UPDATE, "params": {"sids": [1, 2], "action": "add_markets"}},
         error(12, 12, "Exactly one subscription ID is required")),
        ({"id": 12, "cmd": UPDATE, "params": {"action": "add_markets"}},
         error(12, 12, "Exactly one subscription ID is required")),
        ({"id": 14, "cmd": "subscribe", "params": {"channels": ["orderbook_delta", "ticker"]}},
         error(14, 14, "Market Ticker required")),
        ({"id": 15, "cmd": UPDATE, "params": {"sids": [1]}}, error(15, 15, "Action required")),
        ({"cmd": "subscribe", "params": {}}, error(None, 3, "Channels required")),
    ],
)  # fmt: skip
def test_command_errors(
    generator: MarketGenerator, cmd: dict[str, Any] | str, expected: Frame
) -> None:
    conn = new_connection(generator)
    subscribe(conn, 100, ["ticker"])  # sid 1 exists
    assert command(conn, cmd) == [expected]
    assert [s.sid for s in conn.subscriptions] == [1]  # a rejected command changes nothing


def test_unsupported_actions_are_sid_scoped(
    generator: MarketGenerator, conn: ExchangeConnection
) -> None:
    subscribe(conn, 1, ["market_lifecycle_v2", "ticker"])
    cases = ((2, 1, "add_markets", 1), (3, 2, "get_snapshot", 1), (4, 2, "bogus", 2))
    for cmd_id, sid, action, seq in cases:
        frames = command(
            conn,
            {"id": cmd_id, "cmd": UPDATE,
             "params": {"sid": sid, "action": action, "market_tickers": generator.tickers[:1]}},
        )  # fmt: skip
        assert frames == [
            {"type": "error", "sid": sid, "seq": seq,
             "msg": {"code": 13, "msg": "Unsupported action"}}
        ]  # fmt: skip


def test_unsubscribe_mixes_known_and_unknown_sids(conn: ExchangeConnection) -> None:
    subscribe(conn, 1, ["ticker", "trade"])
    frames = command(conn, {"id": 2, "cmd": "unsubscribe", "params": {"sids": [2, 9, 1]}})
    assert frames == [
        {"type": "unsubscribed", "id": 2, "sid": 2, "seq": 1},
        error(2, 7, "Unknown subscription ID"),
        {"type": "unsubscribed", "id": 2, "sid": 1, "seq": 1},
    ]
    assert conn.subscriptions == []


# -- exchange-initiated frames (faults) ---------------------------------------------------------


def test_terminal_error_consumes_a_seq_and_drops_the_subscription(
    generator: MarketGenerator, conn: ExchangeConnection
) -> None:
    markets = generator.tickers[:2]
    subscribe(conn, 1, ["orderbook_delta", "trade"], market_tickers=markets)  # sid 1: seq 1, 2
    frames = [json.loads(f) for f in conn.terminate_subscription(1, ErrorCode.BUFFER_OVERFLOW)]
    overflow = {"code": 25, "msg": "Subscription buffer overflow"}
    assert frames == [{"type": "error", "sid": 1, "seq": 3, "msg": overflow}]
    assert [sub.sid for sub in conn.subscriptions] == [2]
    assert conn.subscription(1) is None
    assert conn.terminate_subscription(1, ErrorCode.CHANNEL_ERROR) == []  # already gone
    # None = the lowest active sid; a trade sid has not consumed a seq yet.
    (raw,) = conn.terminate_subscription(None, ErrorCode.CHANNEL_ERROR)
    assert json.loads(raw) == {
        "type": "error", "sid": 2, "seq": 1, "msg": {"code": 10, "msg": "Channel error"}
    }  # fmt: skip
    assert conn.subscriptions == []
    # The channel is free again: a new subscribe gets a new sid from the counter (§4.2.6).
    assert subscribe(conn, 2, ["trade"]) == [
        {"type": "subscribed", "id": 2, "msg": {"channel": "trade", "sid": 3}}
    ]


def test_unsolicited_snapshot_is_the_current_book_with_the_next_seq() -> None:
    busy = MarketGenerator(3, seed=5, mix=EventMix(1, 0, 0, 0))
    conn = new_connection(busy)
    assert conn.unsolicited_snapshot(None) == []  # no orderbook sid
    markets = busy.tickers[1:]
    subscribe(conn, 1, ["orderbook_delta"], market_tickers=markets)  # seq 1, 2
    (data,) = drive(busy, [conn], 40)
    last_seq = seqs(data, 1)[-1]
    first, second = (
        json.loads(f)
        for f in conn.unsolicited_snapshot(None) + conn.unsolicited_snapshot(markets[1])
    )
    assert (first["seq"], second["seq"]) == (last_seq + 1, last_seq + 2)
    for frame, ticker in ((first, markets[0]), (second, markets[1])):
        assert frame["type"] == "orderbook_snapshot"
        assert "id" not in frame
        assert frame["msg"]["market_ticker"] == ticker
        market = busy.markets[ticker]
        assert levels(frame["msg"].get("yes_dollars_fp", [])) == market.yes_bids
        assert levels(frame["msg"].get("no_dollars_fp", [])) == market.no_bids
    assert conn.unsolicited_snapshot(busy.tickers[0]) == []  # not covered by the sid
