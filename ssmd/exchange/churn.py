"""Market churn (PROTOCOL.md §7.5, §9.1): events created on a schedule, their markets opened,
optionally paused, closed, determined and settled, each change with its lifecycle message; and
how catalog changes reach the market generator. Pure: time arrives as `now_ns`.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import random
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from ssmd.errors import ConfigError
from ssmd.exchange.catalog import (
    MVE_PREFIX,
    NS_PER_S,
    Catalog,
    CatalogMarket,
    Event,
    EventLifecycle,
    Lifecycle,
    LifecycleType,
    MarketMetadata,
    MarketResult,
    MarketStatus,
    Series,
    date_code,
)
from ssmd.exchange.market import MarketEvent, MarketGenerator, TickerChange
from ssmd.fixedpoint import ONE_DOLLAR_E4

CHURN_SYNTAX = (
    "none, or KEY=VALUE,... with keys create_every_s, markets_per_event, series_ticker,"
    " open_after_s, lifetime_s, determine_after_s, settle_after_s, deactivate_fraction,"
    " max_events, seed; e.g. create_every_s=30,markets_per_event=4,lifetime_s=120"
)
# A market in these states no longer trades: the generator stops drawing events for it.
HALTED_STATUSES = frozenset(
    {MarketStatus.INACTIVE, MarketStatus.CLOSED, MarketStatus.DETERMINED, MarketStatus.FINALIZED}
)


@dataclass(frozen=True)
class ChurnSpec:
    """Every `create_every_s` (the first one after the start) a new event in `series_ticker` with
    `markets_per_event` markets: each opens `open_after_s` later, closes `lifetime_s` after
    opening, is determined `determine_after_s` after closing and settled `settle_after_s`
    after that. `deactivate_fraction` of them are paused for the middle third of their
    lifetime. `max_events` None: no end. `seed` draws results and which markets pause."""

    create_every_s: float = 60.0
    markets_per_event: int = 5
    series_ticker: str = "KXQUICKSETTLE"
    open_after_s: float = 10.0
    lifetime_s: float = 300.0
    determine_after_s: float = 30.0
    settle_after_s: float = 60.0
    deactivate_fraction: float = 0.0
    max_events: int | None = None
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("create_every_s", "lifetime_s", "markets_per_event"):
            if getattr(self, name) <= 0:
                raise _invalid(name, f"must be > 0, got {getattr(self, name)}")
        for name in ("open_after_s", "determine_after_s", "settle_after_s"):
            if getattr(self, name) < 0:
                raise _invalid(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.deactivate_fraction <= 1:
            raise _invalid("deactivate_fraction", f"must be 0 to 1, got {self.deactivate_fraction}")
        if self.max_events is not None and self.max_events < 1:
            raise _invalid("max_events", f"must be >= 1, got {self.max_events}")
        ticker = self.series_ticker
        if not (ticker.isascii() and ticker.isalnum() and ticker.isupper()):
            raise _invalid("series_ticker", f"must be upper-case letters/digits, got {ticker!r}")
        if ticker.startswith(MVE_PREFIX):  # §7.5: multivariate markets have another channel
            raise _invalid("series_ticker", f"must not start with {MVE_PREFIX}")


def _invalid(field: str, message: str) -> ConfigError:
    return ConfigError(message, source="exchange", field=f"churn.{field}", fix=CHURN_SYNTAX)


def parse_churn_spec(text: str, *, seed: int = 1) -> ChurnSpec | None:
    """`none`, `default`, or `KEY=VALUE,...` over ChurnSpec's fields (`ssmd exchange --churn`);
    `seed` unless the text names one."""
    text = text.strip()
    if text == "none":
        return None
    if text == "default":
        return ChurnSpec(seed=seed)
    types = {f.name: f.type for f in fields(ChurnSpec)}
    values: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in types or key in values:
            problem = "repeated" if key in values else "unknown or malformed"
            raise ConfigError(
                f"{problem} churn setting {item!r}",
                source="command line",
                field="--churn",
                fix=CHURN_SYNTAX,
            )
        try:
            if key == "series_ticker":
                values[key] = value
            elif "float" in str(types[key]):
                values[key] = float(value)
            else:
                values[key] = int(value)
        except ValueError as exc:
            message = f"churn setting {key} is not a number: {value!r}"
            raise ConfigError(
                message, source="command line", field="--churn", fix=CHURN_SYNTAX
            ) from exc
    return ChurnSpec(**{"seed": seed, **values})


@dataclass(frozen=True)
class CatalogChange:
    """One applied change, in the order they happened: a new event (`status` None) or a market
    now in `status`. `announce` is its §7.5 message, None when Kalshi sends none (§7.5: no
    frame for the normal open at open_time nor the close at close_time)."""

    ts_ns: int
    ticker: str
    status: MarketStatus | None
    announce: Lifecycle | EventLifecycle | None


class _Step(enum.Enum):
    CREATE = "create"
    OPEN = "open"
    DEACTIVATE = "deactivate"
    ACTIVATE = "activate"
    CLOSE = "close"
    DETERMINE = "determine"
    SETTLE = "settle"


class Churn:
    """Applies a ChurnSpec's schedule to a catalog as time passes (`advance`)."""

    def __init__(self, spec: ChurnSpec, catalog: Catalog, *, start_ns: int) -> None:
        self._spec = spec
        self._catalog = catalog
        self._rng = random.Random(spec.seed)
        self._due: list[tuple[int, int, _Step, str]] = []  # (due_ns, order, step, ticker)
        self._order = itertools.count()
        self._events_created = 0
        catalog.add_series(
            Series(spec.series_ticker, "Quick settle", "Economics", ("Simulated",), "custom")
        )
        self._schedule(start_ns + _ns(spec.create_every_s), _Step.CREATE, "")

    @property
    def events_created(self) -> int:
        return self._events_created

    def next_due_ns(self) -> int | None:
        """When the next change is due (None: nothing more will happen)."""
        return self._due[0][0] if self._due else None

    def advance(self, now_ns: int) -> list[CatalogChange]:
        """Apply every change due at or before `now_ns`, in time order; each is stamped with
        the time it was due, however late `advance` is called."""
        changes: list[CatalogChange] = []
        while self._due and self._due[0][0] <= now_ns:
            due_ns, _, step, ticker = heapq.heappop(self._due)
            if step is _Step.CREATE:
                changes.extend(self._create(due_ns))
            else:
                changes.append(self._transition(step, ticker, due_ns))
        return changes

    def _schedule(self, due_ns: int, step: _Step, ticker: str) -> None:
        heapq.heappush(self._due, (due_ns, next(self._order), step, ticker))

    def _create(self, ts_ns: int) -> list[CatalogChange]:
        spec = self._spec
        number = self._events_created
        self._events_created += 1
        if spec.max_events is None or self._events_created < spec.max_events:
            self._schedule(ts_ns + _ns(spec.create_every_s), _Step.CREATE, "")
        moment = datetime.fromtimestamp(ts_ns // NS_PER_S, UTC)
        subtitle = f"{moment:%b} {moment.day} at {moment:%H:%M}"  # as §7.5's "Jan 25 at 21:50"
        event = self._catalog.add_event(
            Event(
                event_ticker=f"{spec.series_ticker}-{date_code(ts_ns)}H{moment:%H%M}N{number}",
                series_ticker=spec.series_ticker,
                title=f"Quick settle #{number}",
                sub_title=subtitle,
                category="Economics",
            )
        )
        changes = [
            CatalogChange(
                ts_ns,
                event.event_ticker,
                None,
                EventLifecycle(event.event_ticker, spec.series_ticker, event.title, subtitle),
            )
        ]
        open_ns = ts_ns + _ns(spec.open_after_s)
        close_ns = open_ns + _ns(spec.lifetime_s)
        determine_ns = close_ns + _ns(spec.determine_after_s)
        for index in range(spec.markets_per_event):
            market = self._catalog.add_market(
                CatalogMarket(
                    ticker=f"{event.event_ticker}-{index + 1}",
                    event_ticker=event.event_ticker,
                    series_ticker=spec.series_ticker,
                    title=event.title,
                    yes_sub_title=f"Outcome {index + 1}",
                    status=MarketStatus.INITIALIZED,
                    created_ts_ns=ts_ns,
                    open_ts_ns=open_ns,
                    close_ts_ns=close_ns,
                    expected_expiration_ts_ns=determine_ns,
                    rules_primary=f"If outcome {index + 1} happens, the market resolves to Yes.",
                )
            )
            changes.append(CatalogChange(ts_ns, market.ticker, market.status, _created(market)))
            for due_ns, step in (
                (open_ns, _Step.OPEN),
                (close_ns, _Step.CLOSE),
                (determine_ns, _Step.DETERMINE),
                (determine_ns + _ns(spec.settle_after_s), _Step.SETTLE),
            ):
                self._schedule(due_ns, step, market.ticker)
            if self._rng.random() < spec.deactivate_fraction:
                third_ns = (close_ns - open_ns) // 3
                self._schedule(open_ns + third_ns, _Step.DEACTIVATE, market.ticker)
                self._schedule(open_ns + 2 * third_ns, _Step.ACTIVATE, market.ticker)
        return changes

    def _transition(self, step: _Step, ticker: str, ts_ns: int) -> CatalogChange:
        ts_s = ts_ns // NS_PER_S
        market = self._catalog.market(ticker)
        assert market is not None  # only markets this churn created are scheduled
        announce: Lifecycle | None = None
        if step is _Step.OPEN:
            status = MarketStatus.ACTIVE
        elif step is _Step.CLOSE:
            status = MarketStatus.CLOSED
        elif step in (_Step.DEACTIVATE, _Step.ACTIVATE):
            paused = step is _Step.DEACTIVATE
            status = MarketStatus.INACTIVE if paused else MarketStatus.ACTIVE
            kind = LifecycleType.DEACTIVATED if paused else LifecycleType.ACTIVATED
            announce = Lifecycle(ticker, kind, is_deactivated=paused)
        elif step is _Step.DETERMINE:
            status = MarketStatus.DETERMINED
            result = self._rng.choice((MarketResult.YES, MarketResult.NO))
            market.result = result
            market.determination_ts_ns = ts_ns
            announce = Lifecycle(
                ticker,
                LifecycleType.DETERMINED,
                result=result,
                settlement_value_e4=ONE_DOLLAR_E4 if result is MarketResult.YES else 0,
                determination_ts_s=ts_s,
            )
        else:
            status = MarketStatus.FINALIZED
            market.settled_ts_ns = ts_ns
            announce = Lifecycle(ticker, LifecycleType.SETTLED, settled_ts_s=ts_s)
        self._catalog.set_status(ticker, status, ts_ns)
        return CatalogChange(ts_ns, ticker, status, announce)


def _ns(seconds: float) -> int:
    return round(seconds * NS_PER_S)


def _created(market: CatalogMarket) -> Lifecycle:
    """The §7.5 `created` message of a new market."""
    return Lifecycle(
        market.ticker,
        LifecycleType.CREATED,
        open_ts_s=market.open_ts_ns // NS_PER_S,
        close_ts_s=market.close_ts_ns // NS_PER_S,
        price_level_structure=market.price_level_structure,
        metadata=MarketMetadata(
            name=market.yes_sub_title,
            title=market.title,
            yes_sub_title=market.yes_sub_title,
            no_sub_title=market.yes_sub_title,
            rules_primary=market.rules_primary,
            can_close_early=market.can_close_early,
            event_ticker=market.event_ticker,
            expected_expiration_ts_s=market.expected_expiration_ts_ns // NS_PER_S,
        ),
    )


# -- the catalog and the market generator --------------------------------------------------------


def _add_to_generator(market: CatalogMarket, generator: MarketGenerator) -> None:
    generator.add_market(
        market.ticker,
        event_ticker=market.event_ticker,
        yes_sub_title=market.yes_sub_title,
        close_ts_s=market.close_ts_ns // NS_PER_S,
        tick_e4=market.price_level_structure.tick_e4,
    )


def register_catalog(catalog: Catalog, generator: MarketGenerator) -> None:
    """Give the generator every catalog market it lacks that is not closed yet: active ones
    stream from now on with a seeded book, paused ones keep a seeded book, unopened ones an
    empty one (subscribers get their market_id and an empty snapshot)."""
    for market in catalog.markets():
        status = market.status
        if market.ticker in generator.markets or status not in _LISTED_IN_GENERATOR:
            continue
        _add_to_generator(market, generator)
        if status is not MarketStatus.INITIALIZED:
            generator.open_market(market.ticker)
        if status is MarketStatus.INACTIVE:
            generator.halt_market(market.ticker)


_LISTED_IN_GENERATOR = frozenset(
    {MarketStatus.INITIALIZED, MarketStatus.ACTIVE, MarketStatus.INACTIVE}
)


def apply_to_generator(
    change: CatalogChange, catalog: Catalog, generator: MarketGenerator
) -> list[MarketEvent]:
    """Make the generator follow `change` and return the market events to publish for it, in
    order: its lifecycle message, then (a first open) the opening book as deltas and a ticker."""
    events: list[MarketEvent] = [] if change.announce is None else [change.announce]
    market = catalog.market(change.ticker) if change.status is not None else None
    if market is None:
        return events
    if market.ticker not in generator.markets:
        _add_to_generator(market, generator)
    if change.status is MarketStatus.ACTIVE:
        opening = generator.open_market(market.ticker)
        events.extend(opening)
        if opening:
            sim = generator.markets[market.ticker]
            events.append(TickerChange(market=sim.ticker, stats=sim.ticker_stats()))
    elif change.status in HALTED_STATUSES:
        generator.halt_market(market.ticker)
        if change.status is MarketStatus.CLOSED:
            generator.markets[market.ticker].close_ts_s = change.ts_ns // NS_PER_S
    return events
