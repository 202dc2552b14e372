"""The simulator over real sockets on 127.0.0.1: auth (§2), pings (§3), streaming, `sent`."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.frames import Frame, Opcode

from ssmd.auth import WS_PATH, signed_headers
from ssmd.exchange.faults import SkipSeq
from ssmd.exchange.server import ExchangeSimulator

KEY_ID = "a952bcbe-ec3b-4b5b-b8f9-11dae589608c"
NOW_MS = 1_787_000_000_000
TIMEOUT_S = 10


def fixed_clock() -> int:
    return NOW_MS * 1_000_000


def headers(key: rsa.RSAPrivateKey, key_id: str = KEY_ID) -> dict[str, str]:
    return signed_headers(key_id, key, NOW_MS, "GET", WS_PATH)


def raw_headers(
    key: rsa.RSAPrivateKey, message: bytes, timestamp: str, pad: padding.AsymmetricPadding
) -> dict[str, str]:
    signature = key.sign(message, pad, hashes.SHA256())
    return {
        "KALSHI-ACCESS-KEY": KEY_ID,
        "KALSHI-ACCESS-TIMESTAMP": timestamp,
        "KALSHI-ACCESS-SIGNATURE": base64.b64encode(signature).decode(),
    }


PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


@pytest.fixture
async def sim(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[ExchangeSimulator]:
    simulator = ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()},
        market_count=5,
        rate_hz=400.0,
        seed=3,
        ping_interval_s=None,
        clock_ns=fixed_clock,
    )
    async with simulator:
        yield simulator


async def receive(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT_S):
        frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


async def subscribe_all(ws: ClientConnection, markets: list[str]) -> None:
    params = {
        "channels": ["orderbook_delta", "ticker", "trade"],
        "market_tickers": markets,
        "use_yes_price": True,
    }
    await ws.send(json.dumps({"id": 1, "cmd": "subscribe", "params": params}))


async def drain(ws: ClientConnection) -> list[bytes]:
    """Every message still in flight, up to the server's normal closure."""
    messages: list[bytes] = []
    async with asyncio.timeout(TIMEOUT_S):
        try:
            while True:
                messages.append(await ws.recv(decode=False))
        except ConnectionClosedOK:
            return messages


def check_contiguous(frames: list[dict[str, Any]]) -> dict[int, list[int]]:
    by_sid: dict[int, list[int]] = {}
    for frame in frames:
        if "seq" in frame:
            by_sid.setdefault(frame["sid"], []).append(frame["seq"])
    for sid, numbers in by_sid.items():
        assert numbers == list(range(1, len(numbers) + 1)), sid
    return by_sid


async def test_signed_client_streams_subscribed_snapshots_and_deltas(
    sim: ExchangeSimulator, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert sim.url == f"ws://127.0.0.1:{sim.port}/trade-api/ws/v2"
    assert len(sim.markets) == 5
    async with connect(sim.url, additional_headers=headers(rsa_key)) as ws:
        await subscribe_all(ws, sim.markets)
        frames = [await receive(ws) for _ in range(3)]
        assert frames == [
            {"type": "subscribed", "id": 1, "msg": {"channel": channel, "sid": sid}}
            for sid, channel in ((1, "orderbook_delta"), (2, "ticker"), (3, "trade"))
        ]
        assert sim.connections == 1
        while sum(f["type"] == "orderbook_delta" for f in frames) < 30:
            frames.append(await receive(ws))
        # A second client gets its own sids and seqs from 1 (§3).
        async with connect(sim.url, additional_headers=headers(rsa_key)) as other:
            await other.send(
                json.dumps({"id": 7, "cmd": "subscribe", "params": {"channels": ["trade"]}})
            )
            assert await receive(other) == {
                "type": "subscribed", "id": 7, "msg": {"channel": "trade", "sid": 1}
            }  # fmt: skip
            assert sim.connections == 2
    snapshots = [f for f in frames if f["type"] == "orderbook_snapshot"]
    assert [s["msg"]["market_ticker"] for s in snapshots] == sim.markets
    assert [s["seq"] for s in snapshots] == [1, 2, 3, 4, 5]
    by_sid = check_contiguous(frames)
    assert by_sid[1][:6] == [1, 2, 3, 4, 5, 6]
    assert all("seq" not in f for f in frames if f["type"] == "ticker")


async def test_sent_equals_what_the_client_received(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    log_path = tmp_path / "frames" / "sent.jsonl"
    sim = ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()},
        market_count=4,
        rate_hz=None,  # as fast as possible
        ping_interval_s=None,
        clock_ns=fixed_clock,
        log_path=log_path,
    )
    received: list[bytes] = []
    async with sim:
        ws = await connect(sim.url, additional_headers=headers(rsa_key))
        await subscribe_all(ws, sim.markets)
        await ws.send(
            json.dumps({"id": 2, "cmd": "subscribe", "params": {"channels": ["ticker_v2"]}})
        )
        async with asyncio.timeout(TIMEOUT_S):
            while len(received) < 500:
                message = await ws.recv(decode=False)
                received.append(message)
        # Keep reading while stop() closes the connection with a normal closure.
        rest = asyncio.create_task(drain(ws))
    received.extend(await rest)
    assert ws.close_code == 1000
    assert sim.connections == 0
    assert not await sim.inject_fault(SkipSeq(), connection_id=1)  # no longer open
    sent = [f.data for f in sim.sent]
    assert {f.connection_id for f in sim.sent} == {1}
    assert sent == received
    frames = [json.loads(m) for m in received]
    assert {"type": "error", "id": 2, "msg": {"code": 8, "msg": "Unknown channel name"}} in frames
    check_contiguous(frames)
    assert log_path.read_bytes().splitlines() == sent


AUTH_CASES = ["no headers", "unknown key id", "wrong key", "pkcs1v15", "seconds", "stale ms",
              "query string signed", "rest path signed", "garbage signature"]  # fmt: skip


@pytest.mark.parametrize("case", AUTH_CASES)
async def test_bad_credentials_get_401(
    sim: ExchangeSimulator,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    case: str,
) -> None:
    good = f"{NOW_MS}GET{WS_PATH}".encode()
    sent_headers: dict[str, str] = {
        "no headers": {},
        "unknown key id": headers(rsa_key, key_id="not-a-registered-key"),
        "wrong key": headers(other_rsa_key),
        "pkcs1v15": raw_headers(rsa_key, good, str(NOW_MS), padding.PKCS1v15()),
        "seconds": raw_headers(
            rsa_key, f"{NOW_MS // 1000}GET{WS_PATH}".encode(), str(NOW_MS // 1000), PSS
        ),
        "stale ms": raw_headers(
            rsa_key, f"{NOW_MS - 31_000}GET{WS_PATH}".encode(), str(NOW_MS - 31_000), PSS
        ),
        "query string signed": raw_headers(
            rsa_key, f"{NOW_MS}GET{WS_PATH}?x=1".encode(), str(NOW_MS), PSS
        ),
        "rest path signed": signed_headers(KEY_ID, rsa_key, NOW_MS, "GET", "/trade-api/v2"),
        "garbage signature": {**headers(rsa_key), "KALSHI-ACCESS-SIGNATURE": "not base64!"},
    }[case]
    with pytest.raises(InvalidStatus) as info:
        async with connect(sim.url, additional_headers=sent_headers):
            pass
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.body)
    assert body["code"] == "authentication_error"
    assert body["message"]
    assert sim.connections == 0


async def test_skew_inside_the_window_is_accepted(
    sim: ExchangeSimulator, rsa_key: rsa.RSAPrivateKey
) -> None:
    ts_ms = NOW_MS - 29_000
    signed = signed_headers(KEY_ID, rsa_key, ts_ms, "GET", WS_PATH)
    async with connect(sim.url + "?client=test", additional_headers=signed) as ws:
        await ws.send(json.dumps({"id": 1, "cmd": "list_subscriptions"}))
        assert await receive(ws) == {"type": "ok", "id": 1, "msg": []}


async def test_wrong_path_is_404(sim: ExchangeSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    url = sim.url.replace("/trade-api/ws/v2", "/trade-api/v2")
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=headers(rsa_key)):
            pass
    assert info.value.response.status_code == 404


class PingRecorder(ClientConnection):
    """A client connection that notes every Ping frame the server sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pings: list[bytes] = []
        self.pinged = asyncio.Event()

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings.append(bytes(event.data))
            if len(self.pings) >= 2:
                self.pinged.set()
        super().process_event(event)


async def test_heartbeat_pings_and_client_pings_answered(rsa_key: rsa.RSAPrivateKey) -> None:
    sim = ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()},
        market_count=2,
        rate_hz=10.0,
        ping_interval_s=0.02,
        clock_ns=fixed_clock,
    )
    async with (
        sim,
        connect(
            sim.url,
            additional_headers=headers(rsa_key),
            create_connection=PingRecorder,
            ping_interval=None,
        ) as ws,
    ):
        assert isinstance(ws, PingRecorder)
        async with asyncio.timeout(TIMEOUT_S):
            await ws.pinged.wait()  # two heartbeats: the first one was answered (pong)
            latency_s = await (await ws.ping(b"client"))
        assert ws.pings[:2] == [b"heartbeat", b"heartbeat"]
        assert latency_s >= 0


async def test_stop_closes_connections_normally(
    sim: ExchangeSimulator, rsa_key: rsa.RSAPrivateKey
) -> None:
    clients = [await connect(sim.url, additional_headers=headers(rsa_key)) for _ in range(3)]
    for ws in clients:
        await ws.send(json.dumps({"id": 1, "cmd": "subscribe", "params": {"channels": ["ticker"]}}))
        assert (await receive(ws))["type"] == "subscribed"
    assert sim.connections == 3
    await sim.stop()
    for ws in clients:
        await drain(ws)
        assert ws.close_code == 1000
    assert sim.connections == 0
    assert {f.connection_id for f in sim.sent} == {1, 2, 3}


async def test_backpressure_keeps_every_frame_in_order(rsa_key: rsa.RSAPrivateKey) -> None:
    """Tiny outboxes force the full-queue path; nothing is lost, reordered or duplicated."""
    sim = ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()},
        market_count=3,
        rate_hz=0,
        ping_interval_s=None,
        clock_ns=fixed_clock,
        outbox_frames=4,
    )

    async def read(ws: ClientConnection, count: int) -> list[bytes]:
        messages: list[bytes] = []
        async with asyncio.timeout(TIMEOUT_S):
            while len(messages) < count:
                messages.append(await ws.recv(decode=False))
        return messages

    async with sim:
        clients = [await connect(sim.url, additional_headers=headers(rsa_key)) for _ in range(2)]
        for ws in clients:
            await subscribe_all(ws, sim.markets)
        received = list(await asyncio.gather(*(read(ws, 300) for ws in clients)))
    for ws, messages in zip(clients, received, strict=True):
        messages.extend(await drain(ws))
    for connection_id, messages in enumerate(received, start=1):
        assert [f.data for f in sim.sent if f.connection_id == connection_id] == messages
        check_contiguous([json.loads(m) for m in messages])


async def test_injected_fault_reaches_the_wire(
    sim: ExchangeSimulator, rsa_key: rsa.RSAPrivateKey
) -> None:
    last_seq: dict[int, int] = {}
    gaps: list[tuple[int, int, int]] = []
    async with connect(sim.url, additional_headers=headers(rsa_key)) as ws:
        await subscribe_all(ws, sim.markets)
        assert (await receive(ws))["type"] == "subscribed"
        assert await sim.inject_fault(SkipSeq(), connection_id=1)
        for _ in range(300):
            frame = await receive(ws)
            if "seq" not in frame:
                continue
            sid, seq = frame["sid"], frame["seq"]
            if seq != last_seq.get(sid, 0) + 1:
                gaps.append((sid, last_seq.get(sid, 0), seq))
            last_seq[sid] = seq
    # exactly one number skipped on one sid: a gap the connector must detect (§4.3)
    assert len(gaps) == 1
    (_, before, after) = gaps[0]
    assert after == before + 2
