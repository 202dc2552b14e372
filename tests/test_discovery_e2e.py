"""Issue 5 end to end on 127.0.0.1: the connector resolves a selection over the simulator's REST
side, follows markets as they are created, open and settle (churn, PROTOCOL.md §7.5), spreads a
large selection over several connections, and two shard processes split every market."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.config import Settings
from ssmd.exchange.catalog_spec import CatalogSpec
from ssmd.exchange.churn import ChurnSpec
from ssmd.exchange.server import ExchangeSimulator
from ssmd.records import BookDelta, BookSnapshot, Record, Status, StatusEvent
from ssmd.runner import Connector
from ssmd.selection import shard_of
from ssmd.transport.files import read_records

from .conftest import wait_until, write_pem
from .test_connector_e2e import CONNECTOR, KEY_ID

pytestmark = pytest.mark.integration
CHURN_SERIES = "KXQUICKSETTLE"


def settings_for(
    tmp_path: Path, sim: ExchangeSimulator, key: rsa.RSAPrivateKey, subscription: dict[str, Any]
) -> Settings:
    return Settings.model_validate(
        {
            "name": "disco",
            "exchange": {"ws_url": sim.url, "rest_url": sim.rest_url},
            "credentials": {
                "key_id": KEY_ID,
                "private_key_file": str(write_pem(tmp_path / "key.pem", key)),
            },
            "subscription": subscription,
            "transport": {"kind": "file", "dir": str(tmp_path / "records")},
            "runtime": {"summary_interval_s": 0},
        }
    )


def book_markets(records: list[Record]) -> set[str]:
    return {r.market for r in records if isinstance(r, BookSnapshot | BookDelta)}


async def test_markets_created_and_settled_are_added_and_removed_live(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    churn = ChurnSpec(
        create_every_s=0.4,
        markets_per_event=2,
        series_ticker=CHURN_SERIES,
        open_after_s=0.3,
        lifetime_s=1.2,
        determine_after_s=0.2,
        settle_after_s=0.2,
        max_events=4,
    )
    async with ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()},
        market_count=4,
        rate_hz=1500,
        seed=9,
        churn=churn,
    ) as sim:
        # Only the churn series: the simulator's own four markets must never be subscribed.
        settings = settings_for(tmp_path, sim, rsa_key, {"select": {"series": [CHURN_SERIES]}})
        connector = Connector(settings)
        stop = asyncio.Event()
        run = asyncio.create_task(connector.run(stop))
        catalog = sim.catalog
        assert catalog is not None

        def churn_markets(status: str | None = None) -> list[str]:
            return [
                m.ticker
                for m in catalog.markets()
                if m.series_ticker == CHURN_SERIES and (status is None or m.status.value == status)
            ]

        await wait_until(
            lambda: len(churn_markets("finalized")) == 8, 20, "every churn market settled"
        )
        follower = connector.follower
        assert follower is not None
        await wait_until(lambda: follower.removed >= 8, 10, "every settled market removed")
        stop.set()
        assert await asyncio.wait_for(run, 20) == 0
    records = read_records(tmp_path / "records")
    created = set(churn_markets())
    assert len(created) == 8
    assert book_markets(records) == created  # data for each, and for nothing else
    statuses = [r for r in records if isinstance(r, Status)]
    added = {m for s in statuses if s.event is StatusEvent.MARKETS_ADDED for m in s.markets}
    removed = {m for s in statuses if s.event is StatusEvent.MARKETS_REMOVED for m in s.markets}
    assert created <= added | {
        m for s in statuses if s.event is StatusEvent.SUBSCRIBED for m in s.markets
    }
    assert removed == created
    # After a market's removal is confirmed, no book record for it follows.
    removed_at: dict[str, int] = {}
    for index, record in enumerate(records):
        if isinstance(record, Status) and record.event is StatusEvent.MARKETS_REMOVED:
            for market in record.markets:
                removed_at.setdefault(market, index)
    for index, record in enumerate(records):
        if isinstance(record, BookSnapshot | BookDelta) and record.market in removed_at:
            assert index < removed_at[record.market], f"{record.market} after its removal"


async def test_a_selection_beyond_the_cap_spreads_over_connections(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    async with ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()},
        market_count=10,
        rate_hz=3000,
        seed=4,
        catalog=CatalogSpec(markets=240, seed=4),
        max_markets_per_subscription=40,  # the exchange's own cap (error 26 beyond it)
    ) as sim:
        settings = settings_for(
            tmp_path,
            sim,
            rsa_key,
            # 50 per connection is above the exchange's cap of 40: error 26 moves the excess.
            {"select": {"status": ["open"]}, "markets_per_connection": 50},
        )
        connector = Connector(settings)
        stop = asyncio.Event()
        run = asyncio.create_task(connector.run(stop))
        catalog = sim.catalog
        assert catalog is not None
        # Every open market, multivariate ones excluded (the selection's default).
        expected = {
            m.ticker
            for m in catalog.markets()
            if m.status.value == "active" and m.mve_collection_ticker is None
        }
        assert len(expected) > 100
        await wait_until(
            lambda: connector.fleet is not None and connector.fleet.markets == len(expected),
            20,
            "discovery placing every market",
        )
        fleet = connector.fleet
        assert fleet is not None
        await wait_until(
            lambda: (
                all(s.session is not None and s.session.all_subscribed for s in fleet.supervisors)
                and sum(len(s.markets) for s in fleet.supervisors) == len(expected)
            ),
            30,
            "every connection subscribed",
        )
        loads = [len(s.markets) for s in fleet.supervisors]
        assert max(loads) <= 40
        assert len(loads) >= len(expected) // 40
        stop.set()
        assert await asyncio.wait_for(run, 30) == 0
        # The ssmd_rest_* metrics read these: every request the exchange saw, none throttled.
        rest = connector.rest_stats()
        assert rest["calls"] == sim.rest_requests > 0
        assert (rest["throttled"], rest["failed"]) == (0, 0)
    records = read_records(tmp_path / "records")
    by_connection: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if isinstance(record, Status) and record.event in (
            StatusEvent.SUBSCRIBED,
            StatusEvent.MARKETS_ADDED,
        ):
            by_connection[record.connection_id.split("/")[1].split("#")[1]].update(record.markets)
    loaded = {str(index) for index, load in enumerate(loads) if load}
    assert {k for k, markets in by_connection.items() if markets} == loaded
    owners: dict[str, int] = defaultdict(int)
    for markets in by_connection.values():
        for market in markets:
            owners[market] += 1
    assert set(owners) == expected
    assert set(owners.values()) == {1}  # each market on exactly one connection
    assert book_markets(records) == expected
    refused = [
        r
        for r in records
        if isinstance(r, Status)
        and r.event is StatusEvent.EXCHANGE_ERROR
        and r.reason.startswith("code 26")
    ]
    assert refused  # the exchange's cap was hit and handled


def shard_env(tmp_path: Path, sim: ExchangeSimulator, key_file: Path, index: int) -> Path:
    env = tmp_path / f"shard{index}.yaml"
    env.write_text(
        json.dumps(
            {
                "name": f"shard{index}",
                "exchange": {"ws_url": sim.url, "rest_url": sim.rest_url},
                "credentials": {
                    "key_id_env": "SSMD_TEST_KEY_ID",
                    "private_key_file": str(key_file),
                },
                "subscription": {
                    "select": {"categories": ["Sports", "Crypto"]},
                    "shard": {"index": index, "count": 2},
                },
                "transport": {"kind": "file", "dir": str(tmp_path / f"records{index}")},
                "runtime": {"summary_interval_s": 0},
                "log": {"format": "json"},
            }
        )
    )
    return env


async def test_two_shard_processes_publish_every_market_exactly_once(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_file = write_pem(tmp_path / "key.pem", rsa_key)
    async with ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()},
        market_count=10,
        rate_hz=2000,
        seed=6,
        catalog=CatalogSpec(markets=120, seed=6),
    ) as sim:
        catalog = sim.catalog
        assert catalog is not None
        wanted = {
            m.ticker
            for m in catalog.markets()
            if m.status.value == "active"
            and (series := catalog.series(m.series_ticker)) is not None
            and series.category in ("Sports", "Crypto")
            and m.mve_collection_ticker is None
        }
        assert len(wanted) > 20
        processes = [
            await asyncio.create_subprocess_exec(
                CONNECTOR,
                "--env",
                str(shard_env(tmp_path, sim, key_file, index)),
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "SSMD_TEST_KEY_ID": KEY_ID},
            )
            for index in (0, 1)
        ]
        try:
            # Wait until the exchange sent a snapshot of every wanted market: both processes
            # discovered, placed and subscribed their shares (their files complete only at exit).
            snapshotted: set[str] = set()
            read = 0

            def every_market_snapshotted() -> bool:
                nonlocal read
                for frame in sim.sent[read:]:
                    if b'"orderbook_snapshot"' in frame.data:
                        snapshotted.add(json.loads(frame.data)["msg"]["market_ticker"])
                read = len(sim.sent)
                return snapshotted >= wanted

            await wait_until(every_market_snapshotted, 60, "both shards subscribed")
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            # communicate(), not wait(): a full stderr pipe would block the process.
            logs = [(await asyncio.wait_for(p.communicate(), 30))[1] for p in processes]
        assert [p.returncode for p in processes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    seen = [book_markets(read_records(tmp_path / f"records{index}")) for index in (0, 1)]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == wanted
    for index in (0, 1):
        assert all(shard_of(market, 2) == index for market in seen[index])
