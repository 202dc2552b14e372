"""Binds market discovery (ssmd.discovery, ssmd.selection) to the follower (ssmd.follow): the
discover and look-up calls over one CatalogClient, keeping what discovery learned about series
and events so a market the lifecycle channel announces (PROTOCOL.md §7.5) can be judged."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import structlog

from ssmd.discovery import CatalogClient, discover
from ssmd.follow import Candidate
from ssmd.selection import CatalogCache, MarketStatus, Selection, StatusFilter, matches


class Secmaster:
    """What the follower calls: `discover(now_ns)` → selected tickers, `look_up(tickers,
    now_ns)` → a Candidate per market found. Errors (ExchangeUnavailable, AuthError,
    ProtocolError) propagate: the follower logs them and tries again later."""

    def __init__(self, selection: Selection, client: CatalogClient) -> None:
        self.selection = selection
        self.client = client
        self.cache = CatalogCache()
        self.last_count = 0
        self._log = structlog.get_logger("ssmd.secmaster")

    async def discover(self, now_ns: int) -> Sequence[str]:
        found = await discover(self.selection, self.client, now_ns)
        self.cache = CatalogCache(
            series={**self.cache.series, **found.series},
            series_of_event={**self.cache.series_of_event, **found.series_of_event},
        )
        self.last_count = len(found.tickers)
        if found.cut_by_cap or found.missing_tickers:
            self._log.warning(
                "secmaster.selection_trimmed",
                cut_by_cap=found.cut_by_cap,
                missing_tickers=list(found.missing_tickers[:20]),
            )
        return found.tickers

    async def look_up(self, tickers: Sequence[str], now_ns: int) -> Mapping[str, Candidate]:
        """A market announced `created` is usually not open yet (status initialized) and opens
        at open_ts with no frame (§7.5): when the selection wants open markets, judge it as if
        open and say when it opens."""
        found: dict[str, Candidate] = {}
        for ticker in tickers:
            market = await self.client.market(ticker)
            if market is None:
                continue
            if market.series_ticker is None and market.event_ticker not in (
                self.cache.series_of_event
            ):
                learned = await self.client.series_of_events([market.event_ticker])
                self.cache = dataclasses.replace(
                    self.cache, series_of_event={**self.cache.series_of_event, **learned}
                )
            opening = (
                market.status is MarketStatus.INITIALIZED
                and StatusFilter.OPEN in self.selection.statuses
            )
            probe = dataclasses.replace(market, status=MarketStatus.ACTIVE) if opening else market
            found[ticker] = Candidate(
                matches=matches(self.selection, probe, now_ns, self.cache),
                open_ts_ns=market.open_ts_ns if opening else None,
            )
        return found
