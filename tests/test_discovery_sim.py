"""ssmd's REST catalog client (ssmd.discovery) against the simulator's REST side on 127.0.0.1:
pagination over thousands of markets returns each once and filters match the exchange's own
catalog; under a forced low rate limit discovery completes, absorbing the 429s without a storm."""

from __future__ import annotations

import random
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.auth import Credentials
from ssmd.discovery import CatalogClient, discover
from ssmd.exchange.catalog_spec import CatalogSpec
from ssmd.exchange.server import ExchangeSimulator
from ssmd.ratelimit import Backoff, TokenBucket
from ssmd.selection import MveFilter, Selection, StatusFilter

pytestmark = pytest.mark.integration
KEY_ID = "discovery-sim-key"


def simulator(key: rsa.RSAPrivateKey, **kwargs: object) -> ExchangeSimulator:
    return ExchangeSimulator(
        public_keys={KEY_ID: key.public_key()},
        market_count=5,
        rate_hz=50,
        seed=8,
        catalog=CatalogSpec(markets=3000, seed=8),
        **kwargs,  # type: ignore[arg-type]
    )


def client(sim: ExchangeSimulator, key: rsa.RSAPrivateKey, tokens_per_s: float) -> CatalogClient:
    return CatalogClient(
        sim.rest_url,
        Credentials(KEY_ID, key),
        rate=TokenBucket(tokens_per_s, 2 * tokens_per_s, now_s=time.monotonic()),
        backoff=Backoff(base_s=0.05, cap_s=0.5, rng=random.Random(3)),
        max_retries=8,
    )


async def test_pagination_returns_each_market_once_and_filters_match(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    async with simulator(rsa_key) as sim, client(sim, rsa_key, 10_000) as catalog_client:
        catalog = sim.catalog
        everything = [m.ticker async for m in catalog_client.markets()]
        assert len(everything) == len(set(everything)) == len(catalog.markets()) > 3000
        assert set(everything) == {m.ticker for m in catalog.markets()}
        # One series, open only, no multivariate: exactly the catalog's answer.
        series = "KXNBAPTS"
        found = [
            m
            async for m in catalog_client.markets(
                status=StatusFilter.OPEN, series_ticker=series, mve_filter=MveFilter.EXCLUDE
            )
        ]
        truth = {
            m.ticker
            for m in catalog.markets()
            if m.series_ticker == series
            and m.status.value == "active"
            and m.mve_collection_ticker is None
        }
        assert truth
        assert {m.ticker for m in found} == truth
        assert all(m.series_ticker == series and m.status.value == "active" for m in found)
        assert catalog_client.stats.throttled == 0


async def test_discovery_under_a_low_rate_limit_absorbs_429s_without_a_storm(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    # The exchange allows 50 tokens/s (5 requests/s, 10 in a burst); the client believes it
    # may make 100 requests/s, so it runs into 429s and must back off.
    async with simulator(rsa_key, rest_rate=(50.0, 100.0)) as sim:
        selection = Selection(categories=("Sports", "Economics", "Crypto", "Politics"))
        async with client(sim, rsa_key, 1000) as catalog_client:
            found = await discover(selection, catalog_client, time.time_ns())
        stats = catalog_client.stats
    catalog = sim.catalog
    truth = {
        m.ticker
        for m in catalog.markets()
        if m.status.value == "active"
        and m.mve_collection_ticker is None
        and (s := catalog.series(m.series_ticker)) is not None
        and s.category in selection.categories
    }
    assert set(found.tickers) == truth
    assert stats.throttled > 0  # the limit was hit ...
    assert stats.throttled == sim.rest_throttled  # ... every 429 the exchange sent was seen
    assert stats.failed == 0  # ... and absorbed
    answered = sim.rest_requests - sim.rest_throttled
    assert stats.calls == sim.rest_requests
    assert sim.rest_requests <= 3 * answered  # no request storm
