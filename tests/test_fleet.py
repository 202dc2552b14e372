"""Several connections in one process (ssmd.fleet) against the real simulator on 127.0.0.1:
markets spread under the per-connection cap, each connection on its own, markets added and
removed while running, and markets the exchange refuses (error 26) moved elsewhere."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.auth import Credentials
from ssmd.exchange.faults import AbortConnection
from ssmd.exchange.server import ExchangeSimulator
from ssmd.fleet import ConnectionFleet
from ssmd.messages import Channel
from ssmd.records import BookDelta, BookSnapshot, Record, Status, StatusEvent
from ssmd.retry import RetryPolicy
from ssmd.supervisor import ConnectionPlan
from tests.conftest import wait_until

KEY_ID = "fleet-test-key"


class Sink:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Record | None] = asyncio.Queue(maxsize=50_000)
        self.records: list[Record] = []

    async def drain(self) -> None:
        while (record := await self.queue.get()) is not None:
            self.records.append(record)

    def book_markets(self) -> set[str]:
        return {r.market for r in self.records if isinstance(r, BookSnapshot | BookDelta)}

    def book_count(self, markets: set[str]) -> int:
        return sum(
            1
            for r in self.records
            if isinstance(r, BookSnapshot | BookDelta) and r.market in markets
        )

    def statuses(self, event: StatusEvent) -> list[Status]:
        return [r for r in self.records if isinstance(r, Status) and r.event is event]


@asynccontextmanager
async def running_fleet(
    sim: ExchangeSimulator, key: rsa.RSAPrivateKey, markets: list[str], cap: int
) -> AsyncIterator[tuple[ConnectionFleet, Sink]]:
    plan = ConnectionPlan(
        name="fleet",
        url=sim.url,
        credentials=Credentials(KEY_ID, key),
        channels=list(Channel),
        markets=markets,
        use_yes_price=True,
    )
    sink = Sink()
    fleet = ConnectionFleet(
        plan,
        sink=sink.queue,
        new_policy=lambda: RetryPolicy(base_s=0.01, cap_s=0.05, rng=random.Random(5)),
        markets_per_connection=cap,
    )
    stop = asyncio.Event()
    drain = asyncio.create_task(sink.drain())
    run = asyncio.create_task(fleet.run(stop))
    try:
        yield fleet, sink
    finally:
        stop.set()
        await asyncio.wait_for(run, 20)
        await sink.queue.put(None)
        await drain


def simulator(key: rsa.RSAPrivateKey, markets: int, **kwargs: Any) -> ExchangeSimulator:
    return ExchangeSimulator(
        public_keys={KEY_ID: key.public_key()},
        market_count=markets,
        rate_hz=1500.0,
        seed=11,
        **kwargs,
    )


async def test_markets_spread_over_connections_and_each_is_on_exactly_one(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    async with (
        simulator(rsa_key, 12) as sim,
        running_fleet(sim, rsa_key, sim.markets, cap=5) as (fleet, sink),
    ):
        assert [len(s.markets) for s in fleet.supervisors] == [4, 4, 4]
        await wait_until(lambda: sink.book_markets() == set(sim.markets), 20, "every book")
        assert sim.connections == 3
        # Each market was subscribed on one connection only, and lifecycle on the first only.
        subscribed = sink.statuses(StatusEvent.SUBSCRIBED)
        owners: dict[str, set[str]] = {}
        for status in subscribed:
            if status.channel == Channel.ORDERBOOK_DELTA.value:
                for market in status.markets:
                    owners.setdefault(market, set()).add(status.connection_id)
        assert set(owners) == set(sim.markets)
        assert all(len(connections) == 1 for connections in owners.values())
        lifecycle = [s for s in subscribed if s.channel == Channel.MARKET_LIFECYCLE_V2.value]
        assert [s.connection_id.split("/")[0] for s in lifecycle] == ["fleet#0"]


async def test_one_connection_lost_leaves_the_others_streaming(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    async with (
        simulator(rsa_key, 9) as sim,
        running_fleet(sim, rsa_key, sim.markets, cap=3) as (fleet, sink),
    ):
        await wait_until(lambda: sink.book_markets() == set(sim.markets), 20, "every book")
        victim = min(sim.connection_ids)
        assert await sim.inject_fault(AbortConnection(), connection_id=victim)
        await wait_until(
            lambda: sum(s.connections for s in fleet.supervisors) == 4, 20, "one reconnect"
        )
        lost = [s for s in fleet.supervisors if s.connections == 2]
        kept = [s for s in fleet.supervisors if s.connections == 1]
        assert len(lost) == 1
        assert len(kept) == 2
        kept_markets = {m for s in kept for m in s.markets}
        before = sink.book_count(kept_markets)
        await wait_until(
            lambda: sink.book_count(kept_markets) > before + 50, 20, "the others streaming on"
        )
        disconnected = sink.statuses(StatusEvent.DISCONNECTED)
        assert {s.connection_id.split("/")[0] for s in disconnected} == {lost[0].plan.name}


async def test_markets_added_and_removed_while_running(rsa_key: rsa.RSAPrivateKey) -> None:
    async with simulator(rsa_key, 10) as sim:
        first, later = sim.markets[:4], sim.markets[4:]
        async with running_fleet(sim, rsa_key, first, cap=4) as (fleet, sink):
            await wait_until(lambda: sink.book_markets() == set(first), 20, "the first books")
            assert fleet.add_markets(later) == ()
            assert len(fleet.supervisors) == 3  # 10 markets at 4 per connection
            await wait_until(lambda: sink.book_markets() == set(sim.markets), 20, "added books")
            fleet.remove_markets(first)
            removed = sink.statuses(StatusEvent.MARKETS_REMOVED)
            await wait_until(
                lambda: len(sink.statuses(StatusEvent.MARKETS_REMOVED)) > len(removed),
                20,
                "the removal confirmed",
            )
            # Frames before the exchange's ok were queued before the status record: after it,
            # no record of a removed market may follow (the status is published last).
            cut = next(
                i
                for i, r in enumerate(sink.records)
                if isinstance(r, Status) and r.event is StatusEvent.MARKETS_REMOVED
            )
            await wait_until(lambda: len(sink.records) > cut + 200, 20, "more records")
            after = Counter(
                r.market for r in sink.records[cut:] if isinstance(r, BookSnapshot | BookDelta)
            )
            assert not set(after) & set(first)
            assert set(after) <= set(later)
