"""A running KalshiClient follows a changing market set against the real simulator on
127.0.0.1 (PROTOCOL.md §5.3, §6.3): added markets start streaming after `markets_added`,
removed ones stop at `markets_removed`."""

from __future__ import annotations

import asyncio

from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.auth import Credentials
from ssmd.client import KalshiClient
from ssmd.exchange.server import ExchangeSimulator
from ssmd.messages import Channel
from ssmd.records import BookSnapshot, Lifecycle, Record, Status, StatusEvent
from ssmd.session import KalshiSession
from tests.conftest import wait_until

KEY_ID = "markets-live-test-key"


def status_index(records: list[Record], event: StatusEvent) -> int | None:
    return next(
        (i for i, r in enumerate(records) if isinstance(r, Status) and r.event is event), None
    )


def status_markets(record: Record) -> tuple[str, ...]:
    assert isinstance(record, Status)
    return record.markets


def markets_of(records: list[Record]) -> set[str]:
    """Markets with market data in `records` (lifecycle covers every market, §7.5)."""
    return {r.market for r in records if not isinstance(r, Status | Lifecycle)}


async def test_markets_added_and_removed_while_the_client_runs(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    simulator = ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()}, market_count=4, rate_hz=400.0, seed=11
    )
    async with simulator as sim:
        first, second, added, never = sim.markets
        session = KalshiSession(
            connection_id="t/1", channels=list(Channel), markets=[first, second], use_yes_price=True
        )
        sink: asyncio.Queue[Record | None] = asyncio.Queue(maxsize=10_000)
        client = KalshiClient(
            url=sim.url, credentials=Credentials(KEY_ID, rsa_key), session=session, sink=sink
        )
        records: list[Record] = []

        async def drain() -> None:
            while (record := await sink.get()) is not None:
                records.append(record)

        stop = asyncio.Event()
        drainer = asyncio.create_task(drain())
        runner = asyncio.create_task(client.run(stop))
        await wait_until(lambda: first in markets_of(records), 10, f"data for {first}")

        asked_at = len(records)
        session.add_markets([added])  # the client sends the update after its next frame/tick
        await wait_until(
            lambda: status_index(records, StatusEvent.MARKETS_ADDED) is not None, 10, "the add"
        )
        await wait_until(lambda: added in markets_of(records), 10, f"data for {added}")

        session.remove_markets([first])
        await wait_until(
            lambda: status_index(records, StatusEvent.MARKETS_REMOVED) is not None, 10, "removal"
        )
        removed_at = len(records)
        # Let the exchange keep streaming for a while: 300 more frames after the removal.
        frames_then = session.stats.frames_received
        await wait_until(
            lambda: session.stats.frames_received > frames_then + 300, 10, "more frames"
        )
        stop.set()
        await asyncio.wait_for(runner, 30)
        await sink.put(None)
        await drainer
        assert runner.result() is None

    added_at = status_index(records, StatusEvent.MARKETS_ADDED)
    removed_status_at = status_index(records, StatusEvent.MARKETS_REMOVED)
    assert added_at is not None
    assert removed_status_at is not None
    assert status_markets(records[added_at]) == (added,)
    assert status_markets(records[removed_status_at]) == (first,)
    # Nothing for the added market before it was asked for; its book came first (§4.2.7).
    # (markets_added waits for every channel's ok, so the book may precede it.)
    assert added not in markets_of(records[:asked_at])
    first_added = next(r for r in records if r.market == added)
    assert isinstance(first_added, BookSnapshot)
    assert added in markets_of(records[added_at:])
    # Data for the removed market stops at its status record; the others go on.
    assert first in markets_of(records[:removed_status_at])
    assert first not in markets_of(records[removed_status_at + 1 :])
    assert {second, added} <= markets_of(records[removed_at:])
    assert never not in markets_of(records)
    assert session.markets == (second, added)
    assert StatusEvent.GAP not in {r.event for r in records if isinstance(r, Status)}
