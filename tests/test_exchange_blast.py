"""The simulator's bench devices (issue 7): the `--mix` weights with snapshots re-sent as a
load-mix device, and blast mode (pre-built frames looped with fresh seqs and trade ids), by
plain calls and against a real client session over a socket on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect

from ssmd.auth import WS_PATH, signed_headers
from ssmd.book import BookState
from ssmd.errors import ConfigError
from ssmd.exchange.blast import BlastTape, Slot, make_template
from ssmd.exchange.cli import exchange_main, parse_event_mix
from ssmd.exchange.market import (
    DEFAULT_MIX,
    EventKind,
    EventMix,
    MarketGenerator,
    SnapshotResend,
)
from ssmd.exchange.protocol import ExchangeConnection
from ssmd.exchange.server import ExchangeSimulator
from ssmd.fixedpoint import parse_price, parse_size
from ssmd.messages import Channel
from ssmd.session import KalshiSession
from ssmd.subjects import msg_id_for

NOW_NS = 1_787_000_000_123_456_789
BENCH_MIX = "delta=50,ticker=25,trade=10,snapshot=5"
KEY_ID = "blast-test-key"


def new_session(markets: list[str]) -> KalshiSession:
    return KalshiSession(
        connection_id="blast", channels=list(Channel), markets=markets, use_yes_price=True
    )


def subscribed_pair(generator: MarketGenerator) -> tuple[ExchangeConnection, KalshiSession]:
    """An exchange connection and a client session that subscribed every channel on it."""
    exchange = ExchangeConnection(generator.markets, clock_ns=lambda: NOW_NS)
    session = new_session(generator.tickers)
    for command in session.commands_to_send():
        for frame in exchange.receive_command(command):
            assert session.receive_frame(frame, NOW_NS) is not None or b'"subscribed"' in frame
    assert session.events_to_handle()  # the subscriptions were confirmed
    return exchange, session


def books_of(generator: MarketGenerator) -> dict[str, tuple[dict[int, int], dict[int, int]]]:
    return {t: (dict(m.yes_bids), dict(m.no_bids)) for t, m in generator.markets.items()}


# -- the mix ------------------------------------------------------------------------------------


def test_mix_spec_names_kinds_and_leaves_the_rest_at_zero() -> None:
    assert parse_event_mix(BENCH_MIX) == EventMix(
        book_change=50, ticker_change=25, trade=10, other=0, snapshot=5
    )
    assert parse_event_mix(" delta=1 , lifecycle=2 ") == EventMix(1, 0, 0, 2, 0)
    assert parse_event_mix("delta=60,ticker=25,trade=10,lifecycle=5") == DEFAULT_MIX


@pytest.mark.parametrize(
    "spec",
    ["", "delta", "delta=", "delta=-1", "delta=1.5", "book=5", "delta=1,delta=2", "trade=0"],
)
def test_bad_mix_specs_are_config_errors_naming_the_flag(spec: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_event_mix(spec)
    assert raised.value.field == "--mix"
    assert "delta=50,ticker=25,trade=10,snapshot=5" in raised.value.fix or "0" in str(raised.value)


def test_cli_refuses_a_bad_mix_and_a_negative_blast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--generate-key", str(tmp_path), "--port", "0"]
    assert exchange_main([*base, "--mix", "delta=x"]) == 2
    assert "--mix" in capsys.readouterr().err
    assert exchange_main([*base, "--blast", "-5"]) == 2
    assert "--blast" in capsys.readouterr().err


def test_the_default_mix_draws_no_snapshot_and_its_stream_is_unchanged() -> None:
    assert EventKind.SNAPSHOT not in dict(DEFAULT_MIX.weights())
    explicit = MarketGenerator(8, seed=3, mix=EventMix(60, 25, 10, 5, snapshot=0))
    default = MarketGenerator(8, seed=3)
    assert [explicit.next_event(NOW_NS) for _ in range(2_000)] == [
        default.next_event(NOW_NS) for _ in range(2_000)
    ]


def test_snapshot_weight_draws_snapshot_resends_and_leaves_books_alone() -> None:
    generator = MarketGenerator(8, seed=3, mix=EventMix(0, 0, 0, 0, snapshot=1))
    before = books_of(generator)
    events = [generator.next_event(NOW_NS) for _ in range(500)]
    assert all(isinstance(event, SnapshotResend) for event in events)
    assert {event.market for event in events} == set(generator.tickers)  # type: ignore[union-attr]
    assert books_of(generator) == before


def test_next_event_can_be_restricted_to_some_markets() -> None:
    generator = MarketGenerator(8, seed=3)
    chosen = generator.tickers[2:4]
    drawn = {getattr(generator.next_event(NOW_NS, chosen), "market", None) for _ in range(500)}
    assert drawn - {None} == set(chosen)  # None: an event_lifecycle (no market)


def test_a_snapshot_resend_is_the_current_book_on_the_orderbook_sid_with_its_next_seq() -> None:
    generator = MarketGenerator(4, seed=9)
    exchange = ExchangeConnection(generator.markets, clock_ns=lambda: NOW_NS)
    markets = generator.tickers[:3]
    for cmd_id, channel in enumerate(("orderbook_delta", "ticker", "trade"), start=1):
        params = {"channels": [channel], "market_tickers": markets, "use_yes_price": True}
        exchange.receive_command(json.dumps({"id": cmd_id, "cmd": "subscribe", "params": params}))
    ticker = markets[1]
    (frame_bytes,) = exchange.frames_for_event(SnapshotResend(ticker), NOW_NS)
    frame = json.loads(frame_bytes)
    assert (frame["type"], frame["sid"], frame["seq"]) == (
        "orderbook_snapshot",
        1,
        4,
    )  # 1-3: subscribe
    assert "id" not in frame
    market = generator.markets[ticker]
    yes = {parse_price(p): parse_size(s) for p, s in frame["msg"]["yes_dollars_fp"]}
    no = {10_000 - parse_price(p): parse_size(s) for p, s in frame["msg"]["no_dollars_fp"]}
    assert (yes, no) == (market.yes_bids, market.no_bids)  # NO levels quoted in YES price
    assert exchange.frames_for_event(SnapshotResend(generator.tickers[3]), NOW_NS) == []


def test_the_bench_mix_on_the_wire_is_60_25_10_5() -> None:
    generator = MarketGenerator(50, seed=1, mix=parse_event_mix(BENCH_MIX))
    exchange, _ = subscribed_pair(generator)
    types: Counter[str] = Counter()
    for _ in range(9_000):
        for frame in exchange.frames_for_event(generator.next_event(NOW_NS), NOW_NS):
            types[json.loads(frame)["type"]] += 1
    total = sum(types.values())
    shares = {name: round(100 * count / total) for name, count in types.items()}
    assert shares == {"orderbook_delta": 60, "ticker": 25, "trade": 10, "orderbook_snapshot": 5}


# -- blast tapes ----------------------------------------------------------------------------------


def test_templates_keep_every_byte_but_the_seq_trade_id_tail_and_times() -> None:
    trade = (
        b'{"type":"trade","sid":3,"seq":41,"msg":{"trade_id":'
        b'"d5ebd8c4-3a1f-4a38-9b84-0d2e4f0a9c11","market_ticker":"A%B","ts":1787000000,'
        b'"ts_ms":1787000000123}}'
    )
    template = make_template(trade, 3)
    assert template.sid == 3
    assert template.slots == (Slot.SEQ, Slot.PASS, Slot.TS_S, Slot.TS_MS)
    assert template.text % (7, 0x2A, 1787000005, 1787000005001) == (
        b'{"type":"trade","sid":3,"seq":7,"msg":{"trade_id":'
        b'"d5ebd8c4-3a1f-4a38-9b84-00000000002a","market_ticker":"A%B","ts":1787000005,'
        b'"ts_ms":1787000005001}}'
    )
    ticker = (
        b'{"type":"ticker","sid":2,"msg":{"market_ticker":"100%","ts":1787000000,'
        b'"ts_ms":1787000000123,"time":"2026-08-17T21:33:20.123456Z"}}'
    )
    plain = make_template(ticker, 2)
    assert plain.slots == (Slot.TS_S, Slot.TS_MS, Slot.TIME_RFC3339)
    assert plain.text % (1787000000, 1787000000123, b"2026-08-17T21:33:20.123456Z") == ticker
    snapshot = b'{"type":"orderbook_snapshot","sid":1,"seq":3,"msg":{"market_ticker":"M"}}'
    assert make_template(snapshot, 1).slots == (Slot.SEQ,)


def test_a_looped_tape_keeps_the_client_exact_gap_free_and_trade_ids_unique() -> None:
    generator = MarketGenerator(30, seed=4, mix=parse_event_mix(BENCH_MIX))
    exchange, session = subscribed_pair(generator)
    books_before = books_of(generator)
    next_seqs = [sub.next_seq for sub in exchange.subscriptions]
    tape = BlastTape.build(generator, exchange, 400, NOW_NS)
    assert books_of(generator) == books_before  # put back after building
    assert [sub.next_seq for sub in exchange.subscriptions] == next_seqs
    subscriptions = {sub.sid: sub for sub in exchange.subscriptions}
    msg_ids: list[str] = []  # JetStream would drop a repeated one as a duplicate
    now_ns = NOW_NS
    for loop_number in range(1, 4):
        frames = []
        while not frames or not tape.at_loop_start:
            now_ns += 1_000_000
            frames += tape.frames_to_send(subscriptions, 100, now_ns, stop_at_loop_end=True)
        assert len(frames) == len(tape.templates)  # a forward pass and its mirror
        assert tape.passes == 2 * loop_number
        for data in frames:
            record = session.receive_frame(data, now_ns)
            assert record is not None
            msg_ids.append(msg_id_for(record))
        # Every loop ends where it began: the client's books are the exchange's.
        for ticker, (yes, no) in books_of(generator).items():
            book = session.books[ticker]
            assert book.state is BookState.LIVE
            assert (book.yes_bids, book.no_bids) == (yes, no)
    assert session.stats.gaps == session.stats.duplicates == session.stats.repairs == 0
    assert not session.events_to_handle()
    kinds = Counter(msg_id.split(":")[0] for msg_id in msg_ids)
    assert set(kinds) == {"book_delta", "ticker", "trade", "book_snapshot"}
    assert len(set(msg_ids)) == len(msg_ids)
    assert sum(session.stats.frames_by_type.values()) == session.stats.frames_received


def test_frames_of_a_subscription_gone_are_skipped() -> None:
    generator = MarketGenerator(10, seed=4, mix=parse_event_mix(BENCH_MIX))
    exchange, _ = subscribed_pair(generator)
    tape = BlastTape.build(generator, exchange, 300, NOW_NS)
    live = {sub.sid: sub for sub in exchange.subscriptions if sub.channel.value != "trade"}
    frames = tape.frames_to_send(live, 500, NOW_NS, stop_at_loop_end=True)
    assert frames
    assert not any(frame.startswith(b'{"type":"trade"') for frame in frames)


# -- the server in blast mode ---------------------------------------------------------------------


async def test_blast_mode_serves_a_session_exact_books_at_full_speed(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    simulator = ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()},
        market_count=25,
        seed=2,
        ping_interval_s=None,
        mix=parse_event_mix(BENCH_MIX),
        blast_events=150,
    )
    async with simulator:
        session = new_session(simulator.markets)
        headers = signed_headers(KEY_ID, rsa_key, time.time_ns() // 1_000_000, "GET", WS_PATH)
        async with connect(simulator.url, additional_headers=headers) as ws:
            for command in session.commands_to_send():
                await ws.send(command, text=True)
            async with asyncio.timeout(20):
                while session.stats.frames_received < 3_000:  # the tape loops many times
                    session.receive_frame(await ws.recv(decode=False), time.time_ns())
            ws.transport.abort()  # the server is still blasting: no close handshake to wait for
        assert session.stats.gaps == session.stats.duplicates == session.stats.repairs == 0
        assert session.stats.malformed_by_reason == {}
        by_type = session.stats.frames_by_type
        assert by_type["orderbook_snapshot"] > len(simulator.markets)  # beyond the subscribe's
        assert by_type["orderbook_delta"] > by_type["ticker"] > by_type["trade"] > 0
        assert all(book.state is BookState.LIVE for book in session.books.values())
