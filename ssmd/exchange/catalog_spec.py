"""The simulated exchange's starting catalog (PROTOCOL.md §9.1-§9.3): the simulator's own markets
plus, from a seeded `CatalogSpec`, realistic sports, economics, crypto, politics and multivariate
series, events and markets in every status. Pure: the same spec and `now_ns`, the same catalog.
"""

from __future__ import annotations

import enum
import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from ssmd.errors import ConfigError
from ssmd.exchange.catalog import (
    MVE_PREFIX,
    NS_PER_S,
    Catalog,
    CatalogMarket,
    Event,
    MarketResult,
    MarketStatus,
    PriceLevelStructure,
    Series,
    date_code,
)

_HOUR_NS = 3_600 * NS_PER_S
_DAY_NS = 24 * _HOUR_NS


@dataclass(frozen=True)
class CatalogSpec:
    """`markets` markets besides the simulator's own (KXSIM…), drawn from `seed`: sports,
    economics, crypto and politics series, events of 2 to `markets_per_event` markets, mostly
    active, and about `mve_fraction` of them multivariate (KXMVE…)."""

    markets: int = 200
    seed: int = 1
    markets_per_event: int = 8
    mve_fraction: float = 0.02

    def __post_init__(self) -> None:
        if self.markets < 0:
            raise _invalid("markets", f"must be >= 0, got {self.markets}")
        if self.markets_per_event < 2:
            raise _invalid("markets_per_event", f"must be >= 2, got {self.markets_per_event}")
        if not 0 <= self.mve_fraction <= 1:
            raise _invalid("mve_fraction", f"must be 0 to 1, got {self.mve_fraction}")


def _invalid(field: str, message: str) -> ConfigError:
    return ConfigError(message, source="exchange", field=field)


class _Kind(enum.Enum):
    GAME = "game"  # one market per team
    PLAYER = "player"  # one market per player, "THRESHOLD+"
    STRIKE = "strike"  # a ladder of "above STRIKE" markets


@dataclass(frozen=True)
class _Plan:
    series: Series
    kind: _Kind
    base: int = 0  # STRIKE/PLAYER: the first strike or threshold and the step between them
    step: int = 1
    decimals: int = 0


def _series(ticker: str, title: str, category: str, *tags: str, frequency: str) -> Series:
    return Series(ticker, title, category, tags, frequency)


_PLANS = (
    _Plan(_series("KXNBAGAME", "Pro Basketball Game", "Sports", "Basketball", frequency="daily"),
          _Kind.GAME),
    _Plan(_series("KXNBAPTS", "Pro Basketball Points", "Sports", "Basketball", frequency="daily"),
          _Kind.PLAYER, 15, 5),
    _Plan(_series("KXNBAREB", "Pro Basketball Rebounds", "Sports", "Basketball",
                  frequency="daily"), _Kind.PLAYER, 6, 2),
    _Plan(_series("KXNFLGAME", "Pro Football Game", "Sports", "Football", frequency="weekly"),
          _Kind.GAME),
    _Plan(_series("KXNFLANYTD", "Pro Football Anytime Touchdown", "Sports", "Football",
                  frequency="weekly"), _Kind.PLAYER, 1, 1),
    _Plan(_series("KXCPI", "CPI month over month", "Economics", "Inflation",
                  frequency="monthly"), _Kind.STRIKE, 0, 1, 1),
    _Plan(_series("KXFED", "Fed funds target rate", "Economics", "Fed", "Interest Rates",
                  frequency="custom"), _Kind.STRIKE, 300, 25, 2),
    _Plan(_series("KXBTCD", "Bitcoin price today at 5pm EDT", "Crypto", "BTC",
                  frequency="daily"), _Kind.STRIKE, 9_000_000, 50_000, 2),
    _Plan(_series("KXETHD", "Ethereum price today at 5pm EDT", "Crypto", "ETH",
                  frequency="daily"), _Kind.STRIKE, 300_000, 2_500, 2),
    _Plan(_series("KXAPPROVAL", "Presidential approval rating", "Politics", "Approval Ratings",
                  frequency="weekly"), _Kind.STRIKE, 380, 5, 1),
)  # fmt: skip
_MVE_SERIES = _series(
    f"{MVE_PREFIX}SPORTSMULTIGAMEEXTENDED", "Multi-game parlays", "Sports", "Parlays",
    frequency="custom",
)  # fmt: skip
_TEAMS = {
    "Basketball": ("LAL", "BOS", "GSW", "NYK", "MIA", "CHI", "DEN", "PHX", "DAL", "MIL", "OKC"),
    "Football": ("KC", "BUF", "SF", "PHI", "DET", "BAL", "MIA", "GB", "CIN", "LAR", "NYJ", "DAL"),
}
_PLAYERS = {
    "Basketball": ("LJAMES", "SCURRY", "JTATUM", "NJOKIC", "LDONCIC", "KDURANT", "JEMBIID",
                   "SGILGEOUS", "AEDWARDS", "JBRUNSON"),
    "Football": ("PMAHOMES", "JALLEN", "CMCCAFFREY", "TKELCE", "JCHASE", "SBARKLEY", "DHENRY",
                 "AJBROWN", "JJEFFERSON"),
}  # fmt: skip
# Statuses of generated events, by weight: mostly trading (§9.1 object statuses).
_STATUS_WEIGHTS = {
    MarketStatus.ACTIVE: 78,
    MarketStatus.INITIALIZED: 8,
    MarketStatus.INACTIVE: 2,
    MarketStatus.CLOSED: 4,
    MarketStatus.DETERMINED: 2,
    MarketStatus.FINALIZED: 6,
}


class SimulatedMarket(Protocol):
    """What the catalog needs of a market the generator made itself (market.SimMarket)."""

    ticker: str
    event_ticker: str
    yes_sub_title: str
    close_ts_s: int
    tick_e4: int


def build_catalog(
    spec: CatalogSpec | None, simulated: Iterable[SimulatedMarket], *, now_ns: int
) -> Catalog:
    """The simulator's own markets (active, series KXSIM → Economics, KXSIMBTC → Crypto) and,
    with `spec`, a generated catalog; numbered in creation-time order. Same inputs, same
    catalog."""
    catalog = Catalog()
    drafts: list[tuple[CatalogMarket, Event]] = []
    for sim in simulated:
        series_ticker = sim.event_ticker.split("-")[0]
        category = "Crypto" if series_ticker.endswith("BTC") else "Economics"
        title = f"Simulated {series_ticker}"
        catalog.add_series(_series(series_ticker, title, category, "Simulated", frequency="daily"))
        event = Event(sim.event_ticker, series_ticker, title, sim.event_ticker[-7:], category)
        market = CatalogMarket(
            ticker=sim.ticker,
            event_ticker=sim.event_ticker,
            series_ticker=series_ticker,
            title=title,
            yes_sub_title=sim.yes_sub_title,
            status=MarketStatus.ACTIVE,
            created_ts_ns=now_ns - _DAY_NS,
            open_ts_ns=now_ns - _DAY_NS + _HOUR_NS,
            close_ts_ns=sim.close_ts_s * NS_PER_S,
            expected_expiration_ts_ns=sim.close_ts_s * NS_PER_S,
            price_level_structure=PriceLevelStructure.for_tick(sim.tick_e4),
        )
        drafts.append((market, event))
    if spec is not None:
        for plan in _PLANS:
            catalog.add_series(plan.series)
        catalog.add_series(_MVE_SERIES)
        drafts.extend(_Generator(spec, now_ns).drafts())
    for market, event in sorted(drafts, key=lambda draft: draft[0].created_ts_ns):
        if catalog.event(event.event_ticker) is None:
            catalog.add_event(event)
        catalog.add_market(market)
    return catalog


@dataclass(frozen=True)
class _Timeline:
    created_ns: int
    open_ns: int
    close_ns: int
    determined_ns: int | None = None
    settled_ns: int | None = None


class _Generator:
    """Draws a CatalogSpec's events and markets."""

    def __init__(self, spec: CatalogSpec, now_ns: int) -> None:
        self._spec = spec
        self._now_ns = now_ns
        self._rng = random.Random(spec.seed)
        self._event_tickers: set[str] = set()

    def drafts(self) -> list[tuple[CatalogMarket, Event]]:
        rng = self._rng
        mve = round(self._spec.markets * self._spec.mve_fraction)
        drafts = [self._mve_market() for _ in range(mve)]
        remaining = self._spec.markets - mve
        for plan in itertools.cycle(_PLANS):
            if remaining <= 0:
                break
            count = 2 if plan.kind is _Kind.GAME else rng.randint(2, self._spec.markets_per_event)
            batch = self._event(plan, min(count, remaining))
            drafts.extend(batch)
            remaining -= len(batch)
        return drafts

    def _timeline(self, status: MarketStatus) -> _Timeline:
        """Times consistent with `status` at now (opened before now when trading, …), in
        whole seconds."""
        now = self._now_ns - self._now_ns % NS_PER_S

        def uniform(low_ns: int, high_ns: int) -> int:
            return self._rng.randint(low_ns // NS_PER_S, high_ns // NS_PER_S) * NS_PER_S

        if status is MarketStatus.INITIALIZED:
            open_ns = now + uniform(_HOUR_NS, 3 * _DAY_NS)
            created = now - uniform(_HOUR_NS, 2 * _DAY_NS)
            return _Timeline(created, open_ns, open_ns + uniform(_HOUR_NS, 7 * _DAY_NS))
        if status in (MarketStatus.ACTIVE, MarketStatus.INACTIVE):
            open_ns = now - uniform(_HOUR_NS, 5 * _DAY_NS)
            close = now + uniform(_HOUR_NS, 14 * _DAY_NS)
            return _Timeline(open_ns - uniform(_HOUR_NS, _DAY_NS), open_ns, close)
        close = now - (
            uniform(_DAY_NS, 30 * _DAY_NS)
            if status is MarketStatus.FINALIZED
            else uniform(_HOUR_NS // 6, _HOUR_NS * 12)
        )
        open_ns = close - uniform(_DAY_NS, 7 * _DAY_NS)
        created = open_ns - uniform(_HOUR_NS, _DAY_NS)
        if status is MarketStatus.CLOSED:
            return _Timeline(created, open_ns, close)
        determined = close + uniform(_HOUR_NS // 12, _HOUR_NS // 2)
        settled = determined + uniform(_HOUR_NS // 6, 12 * _HOUR_NS)
        if status is MarketStatus.DETERMINED:
            return _Timeline(created, open_ns, close, determined)
        return _Timeline(created, open_ns, close, determined, settled)

    def _event(self, plan: _Plan, count: int) -> list[tuple[CatalogMarket, Event]]:
        rng = self._rng
        statuses, weights = zip(*_STATUS_WEIGHTS.items(), strict=True)
        status = rng.choices(statuses, weights)[0]
        times = self._timeline(status)
        series = plan.series
        date = date_code(times.close_ns)
        if plan.kind is _Kind.STRIKE:
            base, title = f"{series.ticker}-{date}", f"{series.title} on {date}"
            outcomes = [plan.base + plan.step * j for j in range(count)]
            names = [(f"T{_decimal(v, plan.decimals)}", f"Above {_decimal(v, plan.decimals)}")
                     for v in outcomes]  # fmt: skip
        else:
            teams = rng.sample(_TEAMS[series.tags[0]], 2)
            base, title = f"{series.ticker}-{date}{teams[0]}{teams[1]}", f"{teams[0]} at {teams[1]}"
            if plan.kind is _Kind.GAME:
                names = [(team, team) for team in teams[:count]]
            else:
                roster = _PLAYERS[series.tags[0]]
                players = rng.sample(roster, min(count, len(roster)))
                # More markets than players: the next threshold for each player.
                lines = [(players[j % len(players)], plan.base + plan.step * (j // len(players)))
                         for j in range(count)]  # fmt: skip
                names = [(f"{p}{line}", f"{p}: {line}+") for p, line in lines]
        event_ticker = base
        while event_ticker in self._event_tickers:
            event_ticker = f"{base}N{rng.randint(2, 99)}"
        self._event_tickers.add(event_ticker)
        event = Event(event_ticker, series.ticker, title, date, series.category)
        deci = rng.random() < 1 / 7  # §7.1.5: some markets quote in 0.001 steps
        return [
            (self._market(event, suffix, sub_title, status, times, deci=deci), event)
            for suffix, sub_title in names
        ]

    def _market(
        self,
        event: Event,
        suffix: str,
        sub_title: str,
        status: MarketStatus,
        times: _Timeline,
        *,
        deci: bool,
        mve_collection: str | None = None,
    ) -> CatalogMarket:
        result = MarketResult.NONE
        if times.determined_ns is not None:
            result = self._rng.choice((MarketResult.YES, MarketResult.NO))
        return CatalogMarket(
            ticker=f"{event.event_ticker}-{suffix}",
            event_ticker=event.event_ticker,
            series_ticker=event.series_ticker,
            title=event.title,
            yes_sub_title=sub_title,
            status=status,
            created_ts_ns=times.created_ns,
            open_ts_ns=times.open_ns,
            close_ts_ns=times.close_ns,
            expected_expiration_ts_ns=times.close_ns + _HOUR_NS,
            price_level_structure=(
                PriceLevelStructure.DECI_CENT if deci else PriceLevelStructure.LINEAR_CENT
            ),
            can_close_early=event.category == "Sports",
            mve_collection_ticker=mve_collection,
            result=result,
            determination_ts_ns=times.determined_ns,
            settled_ts_ns=times.settled_ns,
            updated_ts_ns=max(t for t in _times(times) if t <= self._now_ns),
            rules_primary=f"If {sub_title} for {event.title}, the market resolves to Yes.",
        )

    def _mve_market(self) -> tuple[CatalogMarket, Event]:
        """A combo market: its own event, listed with its collection (§9.1 mve_filter)."""
        rng = self._rng
        times = self._timeline(MarketStatus.ACTIVE)
        series = _MVE_SERIES.ticker
        year = datetime.fromtimestamp(times.created_ns // NS_PER_S, UTC).year
        event_ticker = f"{series}-S{year}{rng.getrandbits(40):010X}"
        event = Event(event_ticker, series, "Multi-game parlay", "", "Sports", False, "")
        legs = ",".join(f"yes {team}" for team in rng.sample(_TEAMS["Basketball"], 3))
        market = self._market(
            event,
            f"{rng.getrandbits(44):011X}",
            legs,
            MarketStatus.ACTIVE,
            times,
            deci=False,
            mve_collection=f"{series}-R",
        )
        return market, event


def _times(timeline: _Timeline) -> list[int]:
    moments = (timeline.determined_ns, timeline.settled_ns)
    return [timeline.created_ns, timeline.open_ns, timeline.close_ns, *filter(None, moments)]


def _decimal(value: int, decimals: int) -> str:
    """`value` in units of 10^-decimals as exact text: (350, 2) → 3.50."""
    if decimals == 0:
        return str(value)
    sign, magnitude = ("-" if value < 0 else ""), abs(value)
    whole, fraction = divmod(magnitude, 10**decimals)
    return f"{sign}{whole}.{fraction:0{decimals}d}"
