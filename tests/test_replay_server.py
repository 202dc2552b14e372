"""The exchange-native replay server on 127.0.0.1: a client that is not ssmd's (plain
`websockets`, its own §2 signature) subscribes and gets the recording with this connection's
sids and consecutive seqs, in either price convention; unsigned upgrades are refused; ssmd's own
client streams it without a gap and ends with the recorded books."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from ssmd.auth import Credentials
from ssmd.client import KalshiClient
from ssmd.exchange.market import MarketGenerator, Side
from ssmd.exchange.protocol import ExchangeConnection
from ssmd.exchange.replay_server import ReplayExchange, Timeline, serve_recording
from ssmd.fixedpoint import ONE_DOLLAR_E4, format_price, parse_price
from ssmd.messages import Channel
from ssmd.recording import FrameRecorder, MarkKind, SessionSetup
from ssmd.records import Level, Record, Trade
from ssmd.session import KalshiSession

from .conftest import wait_until

pytestmark = pytest.mark.integration

KEY_ID = "3f1d8c52-replay-server-test"
T0 = 1_787_000_000_000_000_000
EVENTS = 800
TIMEOUT_S = 15
ALL_CHANNELS = [channel.value for channel in Channel]


class Recorded:
    """A recording made from the simulator's own protocol (a connection subscribed to every
    channel and market, use_yes_price true), and the markets' books at its end."""

    def __init__(self, directory: Path) -> None:
        self.generator = MarketGenerator(3, seed=21, trade_id_salt=5)
        tickers = list(self.generator.tickers)
        self.markets = tickers
        now_ns = T0
        protocol = ExchangeConnection(self.generator.markets, clock_ns=lambda: now_ns)
        recorder = FrameRecorder(directory, name="served")
        setup = SessionSetup(channels=tuple(Channel), markets=tuple(tickers), use_yes_price=True)
        recorder.mark("rec/1", MarkKind.CONNECTED, now_ns, setup=setup)
        params = {"channels": ALL_CHANNELS, "market_tickers": tickers, "use_yes_price": True}
        command = json.dumps({"id": 1, "cmd": "subscribe", "params": params})
        self.frames: list[dict[str, Any]] = []
        for frame in protocol.receive_command(command):
            recorder.write_frame("rec/1", frame, now_ns)
            self.frames.append(json.loads(frame))
        for _ in range(EVENTS):
            now_ns += 1_000_000
            for frame in protocol.frames_for_event(self.generator.next_event(now_ns), now_ns):
                recorder.write_frame("rec/1", frame, now_ns)
                self.frames.append(json.loads(frame))
        recorder.mark("rec/1", MarkKind.DISCONNECTED, now_ns, reason="shutdown")
        recorder.close()
        self.files = recorder.completed

    def data(self, channel: str, markets: list[str]) -> list[dict[str, Any]]:
        """The recorded data frames a subscription to `channel` for `markets` gets, in order."""
        types = {
            "orderbook_delta": {"orderbook_snapshot", "orderbook_delta"},
            "ticker": {"ticker"},
            "trade": {"trade"},
            "market_lifecycle_v2": {"market_lifecycle_v2", "event_lifecycle"},
        }[channel]
        return [
            frame
            for frame in self.frames
            if frame["type"] in types
            and (channel == "market_lifecycle_v2" or frame["msg"]["market_ticker"] in markets)
        ]


@pytest.fixture
def recorded(tmp_path: Path) -> Recorded:
    return Recorded(tmp_path / "recording")


def kalshi_headers(key: rsa.RSAPrivateKey) -> dict[str, str]:
    """§2 written out here, independently of ssmd.auth: RSA-PSS(SHA-256, salt = digest length)
    over timestamp_ms + "GET" + path, standard base64."""
    timestamp = str(time.time_ns() // 1_000_000)
    signature = key.sign(
        f"{timestamp}GET/trade-api/ws/v2".encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
        hashes.SHA256(),
    )
    return {
        "KALSHI-ACCESS-KEY": KEY_ID,
        "KALSHI-ACCESS-TIMESTAMP": timestamp,
        "KALSHI-ACCESS-SIGNATURE": base64.b64encode(signature).decode(),
    }


async def receive_json(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(TIMEOUT_S):
        return [json.loads(await ws.recv()) for _ in range(count)]


def replay_exchange(recorded: Recorded, key: rsa.RSAPrivateKey) -> ReplayExchange:
    return ReplayExchange(Timeline.load(recorded.files), public_keys={KEY_ID: key.public_key()})


def flip(price: str) -> str:
    return format_price(ONE_DOLLAR_E4 - parse_price(price))


def in_no_leg_prices(frame: dict[str, Any]) -> dict[str, Any]:
    """A recorded (use_yes_price) orderbook msg as a default-convention client sees it."""
    msg = dict(frame["msg"])
    if frame["type"] == "orderbook_delta" and msg["side"] == "no":
        msg["price_dollars"] = flip(msg["price_dollars"])
    if frame["type"] == "orderbook_snapshot" and "no_dollars_fp" in msg:
        msg["no_dollars_fp"] = [[flip(price), size] for price, size in msg["no_dollars_fp"]]
    return msg


@pytest.mark.parametrize("use_yes_price", [True, False])
async def test_an_independent_client_gets_its_own_sids_and_consecutive_seqs(
    recorded: Recorded, rsa_key: rsa.RSAPrivateKey, use_yes_price: bool
) -> None:
    markets = recorded.markets[:2]  # not every recorded market
    channels = ["orderbook_delta", "trade", "ticker"]
    expected = {channel: recorded.data(channel, markets) for channel in ALL_CHANNELS}
    assert all(expected.values())  # the recording has every kind of data frame
    async with (
        replay_exchange(recorded, rsa_key) as exchange,
        connect(exchange.url, additional_headers=kalshi_headers(rsa_key)) as ws,
    ):
        params = {"channels": channels, "market_tickers": markets, "use_yes_price": use_yes_price}
        await ws.send(json.dumps({"id": 7, "cmd": "subscribe", "params": params}))
        await ws.send(
            json.dumps(
                {"id": 8, "cmd": "subscribe", "params": {"channels": ["market_lifecycle_v2"]}}
            )
        )
        frames = await receive_json(ws, 4 + sum(len(frames) for frames in expected.values()))
        await ws.send(json.dumps({"id": 9, "cmd": "list_subscriptions"}))
        [listing] = await receive_json(ws, 1)

    acks = [frame for frame in frames if frame["type"] == "subscribed"]
    assert acks == [
        {"type": "subscribed", "id": 7, "msg": {"channel": "orderbook_delta", "sid": 1}},
        {"type": "subscribed", "id": 7, "msg": {"channel": "trade", "sid": 2}},
        {"type": "subscribed", "id": 7, "msg": {"channel": "ticker", "sid": 3}},
        {"type": "subscribed", "id": 8, "msg": {"channel": "market_lifecycle_v2", "sid": 4}},
    ]
    assert listing["msg"] == [ack["msg"] for ack in acks]
    channel_of_sid = {ack["msg"]["sid"]: ack["msg"]["channel"] for ack in acks}
    for sid, channel in channel_of_sid.items():
        got = [frame for frame in frames if frame.get("sid") == sid]
        assert all("id" not in frame for frame in got)  # spontaneous data (§4)
        if channel == "ticker":
            assert all("seq" not in frame for frame in got)  # §4.1
        else:
            assert [frame["seq"] for frame in got] == list(range(1, len(got) + 1))
        assert [frame["type"] for frame in got] == [frame["type"] for frame in expected[channel]]
        if channel == "orderbook_delta" and not use_yes_price:
            assert [frame["msg"] for frame in got] == [
                in_no_leg_prices(f) for f in expected[channel]
            ]
        else:
            assert [frame["msg"] for frame in got] == [frame["msg"] for frame in expected[channel]]
    # The order book stream starts with the recorded snapshots of exactly these markets.
    book = [frame for frame in frames if frame.get("sid") == 1]
    assert [frame["msg"]["market_ticker"] for frame in book[:2]] == markets


async def test_an_unsigned_or_wrongly_signed_upgrade_is_refused(
    recorded: Recorded, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    async with replay_exchange(recorded, rsa_key) as exchange:
        with pytest.raises(InvalidStatus) as unsigned:
            await connect(exchange.url)
        with pytest.raises(InvalidStatus) as wrong_key:
            await connect(exchange.url, additional_headers=kalshi_headers(other_rsa_key))
    assert unsigned.value.response.status_code == 401
    assert wrong_key.value.response.status_code == 401
    assert b"invalid signature" in (wrong_key.value.response.body or b"")


async def test_ssmds_client_streams_the_recording_and_ends_with_its_books(
    recorded: Recorded, rsa_key: rsa.RSAPrivateKey
) -> None:
    stop = asyncio.Event()
    exchanges: list[ReplayExchange] = []
    server = asyncio.create_task(
        serve_recording(
            recorded.files,
            public_keys={KEY_ID: rsa_key.public_key()},
            stop=stop,
            on_listening=exchanges.append,
        )
    )
    await wait_until(lambda: bool(exchanges) or server.done(), TIMEOUT_S, "the server")
    session = KalshiSession(
        connection_id="t/1", channels=list(Channel), markets=recorded.markets, use_yes_price=True
    )
    sink: asyncio.Queue[Record | None] = asyncio.Queue()
    client = KalshiClient(
        url=exchanges[0].url, credentials=Credentials(KEY_ID, rsa_key), session=session, sink=sink
    )
    client_stop = asyncio.Event()
    runner = asyncio.create_task(client.run(client_stop))
    data_frames = sum(len(recorded.data(channel, recorded.markets)) for channel in ALL_CHANNELS)
    await wait_until(
        lambda: session.stats.frames_received >= len(Channel) + data_frames or runner.done(),
        TIMEOUT_S,
        "the whole recording",
    )
    client_stop.set()
    await asyncio.wait_for(runner, TIMEOUT_S)
    stop.set()
    await asyncio.wait_for(server, TIMEOUT_S)

    assert session.stats.frames_received == len(Channel) + data_frames
    assert (session.stats.gaps, session.stats.duplicates, session.stats.repairs) == (0, 0, 0)
    assert not session.stats.malformed_by_reason
    records: list[Record] = []
    while not sink.empty():
        record = sink.get_nowait()
        assert record is not None
        records.append(record)
    recorded_trades = [
        frame["msg"]["trade_id"] for frame in recorded.data("trade", recorded.markets)
    ]
    assert [r.trade_id for r in records if isinstance(r, Trade)] == recorded_trades
    for ticker, market in recorded.generator.markets.items():
        yes = tuple(Level(price, size) for price, size in market.levels(Side.YES))
        no = tuple(Level(price, size) for price, size in market.levels(Side.NO))
        assert session.books[ticker].snapshot_levels() == (yes, no)


async def test_a_real_capture_is_served_to_an_independent_client(
    captures_dir: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A wire capture from Kalshi's demo exchange (SOURCES.md), bare frames without receive
    times, served as an exchange: the client gets every data frame of what it subscribed to,
    unchanged, under its own sids and seqs."""
    capture = captures_dir / "ericsngyun__probability-arena__demo-2026-08-17-wire.jsonl"
    lines = [json.loads(line) for line in capture.read_text().splitlines() if line.strip()]
    types = {"orderbook_snapshot": "orderbook_delta", "orderbook_delta": "orderbook_delta"}
    types |= {"ticker": "ticker", "trade": "trade"}
    data = [frame for frame in lines if frame.get("type") in types]
    markets = sorted({frame["msg"]["market_ticker"] for frame in data})
    assert len(data) == 35
    async with (
        ReplayExchange(
            Timeline.load([capture]), public_keys={KEY_ID: rsa_key.public_key()}
        ) as exchange,
        connect(exchange.url, additional_headers=kalshi_headers(rsa_key)) as ws,
    ):
        params = {"channels": ["orderbook_delta", "ticker", "trade"], "market_tickers": markets}
        await ws.send(json.dumps({"id": 1, "cmd": "subscribe", "params": params}))
        frames = await receive_json(ws, 3 + len(data))
    acks = {f["msg"]["channel"]: f["msg"]["sid"] for f in frames if f["type"] == "subscribed"}
    assert acks == {"orderbook_delta": 1, "ticker": 2, "trade": 3}
    for channel, sid in acks.items():
        got = [frame for frame in frames if frame.get("sid") == sid]
        wanted = [frame for frame in data if types[frame["type"]] == channel]
        assert [(f["type"], f["msg"]) for f in got] == [(f["type"], f["msg"]) for f in wanted]
        if channel != "ticker":  # §4.1: ticker frames carry no seq
            assert [f["seq"] for f in got] == list(range(1, len(got) + 1))
