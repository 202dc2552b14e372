"""The optional picows client against the real simulator on 127.0.0.1: it streams, its records
equal the websockets client's for the same frames, a stop loses nothing the exchange sent,
a 401 is HandshakeRejected, a silent exchange is STALE and reconnected; and its setting."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.server import ServerConnection, serve

from ssmd.auth import Credentials
from ssmd.client import KalshiClient
from ssmd.client_events import ClientKind
from ssmd.client_picows import PicowsKalshiClient
from ssmd.config import load_environment
from ssmd.errors import ConfigError, HandshakeRejected
from ssmd.exchange.faults import Stall, StallMode
from ssmd.exchange.server import ExchangeSimulator
from ssmd.messages import Channel
from ssmd.records import Record, Status, StatusEvent, Trade
from ssmd.retry import RetryPolicy
from ssmd.session import KalshiSession
from ssmd.supervisor import ConnectionPlan, ConnectionSupervisor, client_class
from tests.conftest import wait_until

KEY_ID = "picows-test-key"
ClientClass = type[KalshiClient] | type[PicowsKalshiClient]


def untimed(records: list[Record]) -> list[Record]:
    """The records without their receive times, which differ from run to run."""
    return [msgspec.structs.replace(r, receive_ts_ns=0) for r in records]


def new_session(markets: list[str]) -> KalshiSession:
    return KalshiSession(
        connection_id="t/1", channels=list(Channel), markets=markets, use_yes_price=True
    )


def simulator(key: rsa.RSAPrivateKey, **kwargs: float) -> ExchangeSimulator:
    return ExchangeSimulator(
        public_keys={KEY_ID: key.public_key()}, market_count=4, rate_hz=2000.0, seed=5, **kwargs
    )


async def run_client(
    cls: ClientClass,
    url: str,
    markets: list[str],
    key: rsa.RSAPrivateKey,
    until: Callable[[KalshiSession], bool],
    *,
    sink_size: int = 10_000,
) -> tuple[list[Record], KalshiSession]:
    """Run one client until `until(session)`, then stop it; a small sink is drained slowly."""
    session = new_session(markets)
    sink: asyncio.Queue[Record | None] = asyncio.Queue(maxsize=sink_size)
    client = cls(
        url=url,
        credentials=Credentials(KEY_ID, key),
        session=session,
        sink=sink,
    )
    records: list[Record] = []

    async def drain() -> None:
        while (record := await sink.get()) is not None:
            records.append(record)
            if sink_size < 100:
                await asyncio.sleep(0)  # a consumer slower than the exchange: backpressure

    stop = asyncio.Event()
    drainer = asyncio.create_task(drain())
    runner = asyncio.create_task(client.run(stop))
    await wait_until(lambda: until(session) or runner.done(), 30, "the client to stream")
    stop.set()
    await asyncio.wait_for(runner, 30)
    await sink.put(None)
    await drainer
    return records, session


async def test_streams_and_a_stop_loses_nothing_the_simulator_sent(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    async with simulator(rsa_key) as sim:
        records, session = await run_client(
            PicowsKalshiClient,
            sim.url,
            sim.markets,
            rsa_key,
            lambda s: s.stats.frames_received >= 1500,
            sink_size=8,  # the sink fills over and over: the backlog and paused reads are used
        )
        sent = [f.data for f in sim.sent]
    assert len(sent) >= 1500
    # Every frame the exchange sent before its close frame was read and decoded, none twice.
    assert session.stats.frames_received == len(sent)
    statuses = [r.event for r in records if isinstance(r, Status)]
    assert statuses[0] is StatusEvent.CONNECTED
    assert statuses.count(StatusEvent.SUBSCRIBED) == len(Channel)
    assert statuses[-1] is StatusEvent.DISCONNECTED
    assert untimed(records[-1:]) == untimed(
        [session.status_record(StatusEvent.DISCONNECTED, 0, reason="shutdown")]
    )
    assert StatusEvent.GAP not in statuses
    assert any(isinstance(r, Trade) for r in records)
    assert session.stats.records_out == sum(1 for r in records if not isinstance(r, Status))


async def test_records_equal_the_websockets_clients_for_the_same_frames(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    async with simulator(rsa_key) as sim:
        picows_records, _ = await run_client(
            PicowsKalshiClient,
            sim.url,
            sim.markets,
            rsa_key,
            lambda s: s.stats.frames_received >= 1000,
        )
        frames = [f.data for f in sim.sent]
        markets = sim.markets

    async def replay(ws: ServerConnection) -> None:
        for _ in range(len(Channel)):  # the subscribe commands come first
            await ws.recv()
        for data in frames:
            await ws.send(data.decode())
        await ws.wait_closed()  # the client closes once it has read them all

    async with serve(replay, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        websockets_records, session = await run_client(
            KalshiClient,
            f"ws://127.0.0.1:{port}/trade-api/ws/v2",
            markets,
            rsa_key,
            lambda s: s.stats.frames_received == len(frames),
        )
    assert session.stats.frames_received == len(frames)
    assert len(picows_records) > 1000
    assert untimed(picows_records) == untimed(websockets_records)


async def test_a_wrong_key_is_handshake_rejected_with_401(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    async with simulator(rsa_key) as sim:
        session = new_session(sim.markets)
        client = PicowsKalshiClient(
            url=sim.url,
            credentials=Credentials(KEY_ID, other_rsa_key),
            session=session,
            sink=asyncio.Queue(),
        )
        with pytest.raises(HandshakeRejected) as info:
            await client.run(asyncio.Event())
        assert sim.sent == []
    assert info.value.status_code == 401
    assert not client.connected.is_set()


async def test_a_silent_exchange_is_stale_and_the_supervisor_reconnects(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    records: list[Record] = []
    sink: asyncio.Queue[Record | None] = asyncio.Queue(maxsize=10_000)

    async def drain() -> None:
        while (record := await sink.get()) is not None:
            records.append(record)

    def statuses() -> list[StatusEvent]:
        return [r.event for r in records if isinstance(r, Status)]

    async with simulator(rsa_key) as sim:
        plan = ConnectionPlan(
            name="t",
            url=sim.url,
            credentials=Credentials(KEY_ID, rsa_key),
            channels=list(Channel),
            markets=sim.markets,
            use_yes_price=True,
            ping_interval_s=0.2,
            client=ClientKind.PICOWS,
        )
        policy = RetryPolicy(base_s=0.01, cap_s=0.05, rng=random.Random(7))
        supervisor = ConnectionSupervisor(plan, sink=sink, policy=policy)
        stop = asyncio.Event()
        drainer = asyncio.create_task(drain())
        run = asyncio.create_task(supervisor.run(stop))
        await wait_until(lambda: statuses().count(StatusEvent.SUBSCRIBED) == 4, 10, "4 subs")
        assert isinstance(supervisor.client, PicowsKalshiClient)
        assert await sim.inject_fault(Stall(duration_s=30, mode=StallMode.SILENT))
        await wait_until(lambda: supervisor.connections >= 2, 15, "a reconnect")
        await wait_until(lambda: statuses().count(StatusEvent.SUBSCRIBED) >= 8, 10, "back")
        stop.set()
        await asyncio.wait_for(run, 30)
        await sink.put(None)
        await drainer
    stale = [r for r in records if isinstance(r, Status) and r.event is StatusEvent.STALE]
    assert len(stale) == 1
    assert stale[0].connection_id == "t/1"
    assert "no pong within 0.2 s" in (stale[0].reason or "")


def test_the_setting_chooses_the_client_and_requires_picows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / "env.yaml"
    env.write_text("name: t\nexchange:\n  simulator: {}\n  client: picows\n")
    assert load_environment(str(env)).exchange.client is ClientKind.PICOWS
    assert client_class(ClientKind.PICOWS) is PicowsKalshiClient
    assert client_class(ClientKind.WEBSOCKETS) is KalshiClient
    default = tmp_path / "default.yaml"
    default.write_text("name: t\nexchange:\n  simulator: {}\n")
    assert load_environment(str(default)).exchange.client is ClientKind.WEBSOCKETS
    monkeypatch.setitem(sys.modules, "picows", None)  # as if the extra were not installed
    with pytest.raises(ConfigError) as info:
        load_environment(str(env))
    assert info.value.field == "exchange.client"
    assert info.value.fix == "pip install 'ssmd[fast]'"
    assert info.value.source == str(env)
