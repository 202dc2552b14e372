"""Connection survival against the real simulator misbehaving on 127.0.0.1: reconnects with
fresh signatures and restored subscriptions, fatal credential errors, liveness, REST backfill."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.auth import Credentials
from ssmd.errors import HandshakeRejected
from ssmd.exchange.faults import (
    CloseConnection,
    RejectHandshakes,
    SkipSeq,
    Stall,
    StallMode,
)
from ssmd.exchange.server import ExchangeSimulator
from ssmd.messages import Channel
from ssmd.records import Flag, Record, Status, StatusEvent, Trade
from ssmd.rest import KalshiRest, rest_base_url
from ssmd.retry import RetryPolicy
from ssmd.supervisor import ConnectionPlan, ConnectionSupervisor
from tests.conftest import wait_until

KEY_ID = "supervisor-test-key"
ALL_CHANNELS = list(Channel)


class Collected:
    """Drains the supervisor's sink, as the runner's publisher would."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Record | None] = asyncio.Queue(maxsize=10_000)
        self.records: list[Record] = []

    async def drain(self) -> None:
        while True:
            record = await self.queue.get()
            if record is None:
                return
            self.records.append(record)

    def statuses(self) -> list[StatusEvent]:
        return [r.event for r in self.records if isinstance(r, Status)]


@asynccontextmanager
async def supervised(
    sim: ExchangeSimulator,
    key: rsa.RSAPrivateKey,
    *,
    ping_interval_s: float | None = 10.0,
    rest: bool = False,
    max_auth_retries: int = 3,
    failure_expected: bool = False,
) -> AsyncIterator[tuple[ConnectionSupervisor, Collected, asyncio.Task[None]]]:
    credentials = Credentials(KEY_ID, key)
    plan = ConnectionPlan(
        name="t",
        url=sim.url,
        credentials=credentials,
        channels=ALL_CHANNELS,
        markets=sim.markets,
        use_yes_price=True,
        ping_interval_s=ping_interval_s,
    )
    collected = Collected()
    client = KalshiRest(rest_base_url(sim.url), credentials) if rest else None
    supervisor = ConnectionSupervisor(
        plan,
        sink=collected.queue,
        policy=RetryPolicy(
            base_s=0.01, cap_s=0.05, max_auth_retries=max_auth_retries, rng=random.Random(7)
        ),
        rest=client,
    )
    stop = asyncio.Event()
    drain = asyncio.create_task(collected.drain())
    run = asyncio.create_task(supervisor.run(stop))
    try:
        yield supervisor, collected, run
    finally:
        stop.set()
        done, _ = await asyncio.wait({run}, timeout=30)
        await collected.queue.put(None)
        await drain
        if client is not None:
            await client.close()
    assert done, "the supervisor did not stop"
    failure = run.exception()
    if failure is not None and not failure_expected:
        raise failure


def simulator(key: rsa.RSAPrivateKey, **kwargs: float) -> ExchangeSimulator:
    return ExchangeSimulator(
        public_keys={KEY_ID: key.public_key()}, market_count=4, rate_hz=400.0, seed=3, **kwargs
    )


async def test_reconnects_after_a_close_and_restores_every_subscription(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    async with simulator(rsa_key) as sim, supervised(sim, rsa_key) as (supervisor, got, _):
        await wait_until(lambda: got.statuses().count(StatusEvent.SUBSCRIBED) == 4, 10, "4 subs")
        assert await sim.inject_fault(CloseConnection())
        await wait_until(
            lambda: got.statuses().count(StatusEvent.SUBSCRIBED) == 8, 10, "resubscribed"
        )
        before = len(got.records)
        await wait_until(lambda: len(got.records) > before + 50, 10, "data after reconnect")
        assert supervisor.connected
    sent = list(sim.sent)
    assert not supervisor.connected
    assert supervisor.connections == 2
    assert supervisor.reconnects == 1
    # Totals span both connections exactly: a clean close loses no frame.
    assert supervisor.total_stats().frames_received == len(sent)
    events = got.statuses()
    assert events[:1] == [StatusEvent.CONNECTED]
    assert events.count(StatusEvent.CONNECTED) == 2
    assert StatusEvent.DISCONNECTED in events
    connection_ids = {r.connection_id for r in got.records if isinstance(r, Status)}
    assert connection_ids == {"t/1", "t/2"}


async def test_401_on_the_first_connection_is_fatal(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    async with (
        simulator(rsa_key) as sim,
        supervised(sim, other_rsa_key, failure_expected=True) as (supervisor, _, run),
    ):
        with pytest.raises(HandshakeRejected) as info:
            await asyncio.wait_for(asyncio.shield(run), 10)
    assert info.value.status_code == 401
    assert supervisor.connections == 1


async def test_401s_after_a_good_connection_are_retried_with_fresh_signatures(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    async with simulator(rsa_key) as sim, supervised(sim, rsa_key) as (supervisor, got, _):
        await wait_until(lambda: got.statuses().count(StatusEvent.SUBSCRIBED) == 4, 10, "4 subs")
        assert await sim.inject_fault(RejectHandshakes(count=2))
        assert await sim.inject_fault(CloseConnection())
        await wait_until(lambda: got.statuses().count(StatusEvent.SUBSCRIBED) == 8, 10, "back")
    assert supervisor.connections == 4  # the first, two refused, the one that worked


async def test_repeated_401s_after_a_good_connection_end_fatally(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    async with (
        simulator(rsa_key) as sim,
        supervised(sim, rsa_key, max_auth_retries=2, failure_expected=True) as (
            supervisor,
            got,
            run,
        ),
    ):
        await wait_until(lambda: got.statuses().count(StatusEvent.SUBSCRIBED) == 4, 10, "4 subs")
        assert await sim.inject_fault(RejectHandshakes(count=10))
        assert await sim.inject_fault(CloseConnection())
        with pytest.raises(HandshakeRejected):
            await asyncio.wait_for(asyncio.shield(run), 10)
    assert supervisor.connections == 4  # the first, then 2 retried 401s, then the fatal one


async def test_trades_lost_in_a_gap_are_backfilled_from_rest_once(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    async with simulator(rsa_key) as sim, supervised(sim, rsa_key, rest=True) as (sup, got, _):
        await wait_until(lambda: got.statuses().count(StatusEvent.SUBSCRIBED) == 4, 10, "4 subs")
        trade_sid = next(
            r.sid
            for r in got.records
            if isinstance(r, Status) and r.event is StatusEvent.SUBSCRIBED and r.channel == "trade"
        )
        assert await sim.inject_fault(SkipSeq(sid=trade_sid))
        await wait_until(lambda: sup.backfilled >= 1, 15, "a backfilled trade")
        await sim.pause()
        # Every trade the exchange made is now published exactly once, live or backfilled.
        await wait_until(
            lambda: (
                {r.trade_id for r in got.records if isinstance(r, Trade)}
                >= {t.trade_id for t in sim.trades.all_trades()}
            ),
            15,
            "every exchange trade published",
        )
    trades = [r for r in got.records if isinstance(r, Trade)]
    ids = [t.trade_id for t in trades]
    assert len(ids) == len(set(ids))
    backfilled = [t for t in trades if Flag.BACKFILLED in t.flags]
    skipped_ids = {
        s.data.split(b'"trade_id":"')[1].split(b'"')[0].decode()
        for s in sim.skipped
        if b'"type":"trade"' in s.data
    }
    assert skipped_ids
    assert skipped_ids <= {t.trade_id for t in backfilled}
    assert StatusEvent.GAP in got.statuses()


async def test_a_silent_exchange_is_declared_stale_and_reconnected(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    async with (
        simulator(rsa_key) as sim,
        supervised(sim, rsa_key, ping_interval_s=0.2) as (
            supervisor,
            got,
            _,
        ),
    ):
        await wait_until(lambda: got.statuses().count(StatusEvent.SUBSCRIBED) == 4, 10, "4 subs")
        assert await sim.inject_fault(Stall(duration_s=30, mode=StallMode.SILENT))
        await wait_until(lambda: supervisor.connections >= 2, 15, "a reconnect")
        await wait_until(lambda: got.statuses().count(StatusEvent.SUBSCRIBED) >= 8, 10, "back")
    assert StatusEvent.STALE in got.statuses()


async def test_a_quiet_exchange_that_still_pings_is_not_reconnected(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    async with (
        simulator(rsa_key, ping_interval_s=0.1) as sim,
        supervised(sim, rsa_key, ping_interval_s=0.2) as (supervisor, got, _),
    ):
        await wait_until(lambda: got.statuses().count(StatusEvent.SUBSCRIBED) == 4, 10, "4 subs")
        assert await sim.inject_fault(Stall(duration_s=2.0, mode=StallMode.PINGS_ONLY))
        await asyncio.sleep(1.5)  # ten of our ping intervals with no data at all
        assert supervisor.connections == 1
    assert StatusEvent.STALE not in got.statuses()
