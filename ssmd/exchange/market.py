"""Simulated Kalshi binary markets: exact bid-only books, per-market stats, a seeded event stream.

Pure: the RNG is a `random.Random(seed)` owned by the generator and time arrives as `now_ns`,
so the same seed always yields the same markets and the same event sequence.
"""

from __future__ import annotations

import enum
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from ssmd.errors import ConfigError
from ssmd.exchange.catalog import EventLifecycle as EventLifecycle  # re-exported: events
from ssmd.exchange.catalog import Lifecycle as Lifecycle
from ssmd.exchange.catalog import LifecycleType as LifecycleType
from ssmd.fixedpoint import ONE_DOLLAR_E4

CENT_TICK_E4 = 100  # `linear_cent` markets (PROTOCOL.md §7.1.5)
DECI_CENT_TICK_E4 = 10  # `deci_cent` markets: 0.001 steps
_MAX_LEVEL_PRICE_E4 = 9_900  # new orders rest between one tick and $0.99 ...
_MIN_LEVEL_PRICE_E4 = 100  # ... and $0.01 on either leg, so a book always has room to move
_NEW_LEVEL_SPAN_TICKS = 20  # new levels appear at most this many ticks behind the touch
_EXPIRY_DATE = "26NOV21"


class Side(enum.Enum):
    """A book side: the resting bids to buy YES or to buy NO (§7.1.1: only bids are sent)."""

    YES = "yes"
    NO = "no"

    @property
    def other(self) -> Side:
        return Side.NO if self is Side.YES else Side.YES


class TakerBookSide(enum.Enum):
    """§7.4 `taker_book_side`: `bid` when the taker bought YES, `ask` when it bought NO."""

    BID = "bid"
    ASK = "ask"


class EventKind(enum.Enum):  # each named after its EventMix field
    BOOK_CHANGE = "book_change"
    TICKER_CHANGE = "ticker_change"
    TRADE = "trade"
    OTHER = "other"
    SNAPSHOT = "snapshot"  # a load-mix device: see SnapshotResend


@dataclass(frozen=True)
class EventMix:
    """Relative weights of the event kinds `next_event` draws (non-negative integers); `other`
    is lifecycle, `snapshot` SnapshotResend (drawn only when > 0: the default stream stays)."""

    book_change: int = 60
    ticker_change: int = 25
    trade: int = 10
    other: int = 5
    snapshot: int = 0

    def weights(self) -> list[tuple[EventKind, int]]:
        weights = [(kind, getattr(self, kind.name.lower())) for kind in EventKind]
        return weights if self.snapshot else weights[:-1]


DEFAULT_MIX = EventMix()


@dataclass(frozen=True)
class TickerStats:
    """Everything a §7.2 ticker frame says about one market, taken from its book and stats."""

    market: str
    market_id: str
    last_price_e4: int
    yes_bid_e4: int
    yes_ask_e4: int
    yes_bid_size_e2: int
    yes_ask_size_e2: int
    last_trade_size_e2: int
    volume_e2: int
    open_interest_e2: int
    dollar_volume: int
    dollar_open_interest: int


@dataclass(frozen=True)
class BookChange:
    """A signed size change at one level (§7.1.2); `price_e4` is in that side's own leg."""

    market: str
    side: Side
    price_e4: int
    delta_e2: int


@dataclass(frozen=True)
class Trade:
    """A taker filled against the best resting bid; `book_change` is the size it consumed."""

    market: str
    trade_id: str
    yes_price_e4: int
    size_e2: int
    taker_side: Side
    book_change: BookChange

    @property
    def no_price_e4(self) -> int:
        return ONE_DOLLAR_E4 - self.yes_price_e4

    @property
    def taker_book_side(self) -> TakerBookSide:
        return TakerBookSide.BID if self.taker_side is Side.YES else TakerBookSide.ASK


@dataclass(frozen=True)
class TickerChange:
    """The market's ticker fields as of this event (§7.2)."""

    market: str
    stats: TickerStats


@dataclass(frozen=True)
class SnapshotResend:
    """Re-send `market`'s book as an `orderbook_snapshot` (orderbook sid, next seq, no id,
    §4.2.8). A bench load-mix device (EventMix.snapshot): a real exchange sends snapshots only
    on subscribe, get_snapshot or resubscribe."""

    market: str


MarketEvent = BookChange | Trade | TickerChange | Lifecycle | EventLifecycle | SnapshotResend


class SimMarket:
    """One binary market: bids to buy YES and bids to buy NO, each priced in its own leg."""

    def __init__(
        self,
        *,
        ticker: str,
        market_id: str,
        event_ticker: str,
        tick_e4: int,
        yes_sub_title: str,
        close_ts_s: int,
    ) -> None:
        self.ticker = ticker
        self.market_id = market_id
        self.event_ticker = event_ticker
        self.tick_e4 = tick_e4
        self.yes_sub_title = yes_sub_title
        self.close_ts_s = close_ts_s
        self.yes_bids: dict[int, int] = {}
        self.no_bids: dict[int, int] = {}
        self.last_price_e4 = 0
        self.last_trade_size_e2 = 0
        self.volume_e2 = 0
        self.open_interest_e2 = 0

    def bids(self, side: Side) -> dict[int, int]:
        return self.yes_bids if side is Side.YES else self.no_bids

    def best_bid(self, side: Side) -> tuple[int, int] | None:
        """(price_e4, size_e2) of the highest bid on `side`, None when that side is empty."""
        bids = self.bids(side)
        if not bids:
            return None
        price_e4 = max(bids)
        return price_e4, bids[price_e4]

    def levels(self, side: Side) -> list[tuple[int, int]]:
        """The side's levels ascending by its own leg price (best bid last, as Kalshi sends)."""
        return sorted(self.bids(side).items())

    def is_crossed(self) -> bool:
        """True if best YES bid >= best YES ask (= 1 - best NO bid, §7.1.1)."""
        yes = self.best_bid(Side.YES)
        no = self.best_bid(Side.NO)
        return yes is not None and no is not None and yes[0] + no[0] >= ONE_DOLLAR_E4

    def apply_book_change(self, change: BookChange) -> None:
        """Apply a signed delta exactly; a level reaching 0 disappears."""
        bids = self.bids(change.side)
        size_e2 = bids.get(change.price_e4, 0) + change.delta_e2
        if size_e2 == 0:
            bids.pop(change.price_e4, None)
        else:
            bids[change.price_e4] = size_e2

    def ticker_stats(self) -> TickerStats:
        """§7.2 fields. An empty bid side reads 0.0000/0.00, an empty ask side 1.0000/0.00."""
        yes = self.best_bid(Side.YES)
        no = self.best_bid(Side.NO)
        return TickerStats(
            market=self.ticker,
            market_id=self.market_id,
            last_price_e4=self.last_price_e4,
            yes_bid_e4=yes[0] if yes else 0,
            yes_ask_e4=ONE_DOLLAR_E4 - no[0] if no else ONE_DOLLAR_E4,
            yes_bid_size_e2=yes[1] if yes else 0,
            yes_ask_size_e2=no[1] if no else 0,
            last_trade_size_e2=self.last_trade_size_e2,
            volume_e2=self.volume_e2,
            open_interest_e2=self.open_interest_e2,
            # Observed: dollar_volume == floor(volume / 2) and dollar_open_interest ==
            # floor(open_interest / 2) in whole dollars, in the docs example and every demo
            # ticker of captures/ericsngyun__probability-arena__demo-2026-08-17-wire.jsonl.
            dollar_volume=self.volume_e2 // 200,
            dollar_open_interest=self.open_interest_e2 // 200,
        )


class MarketGenerator:
    """N simulated markets and a seeded stream of events that keeps their books exact."""

    def __init__(
        self,
        market_count: int,
        seed: int,
        ticker_prefix: str = "KXSIM",
        mix: EventMix = DEFAULT_MIX,
        *,
        max_levels_per_side: int = 12,
        trade_id_salt: int = 0,
    ) -> None:
        """`trade_id_salt` (128 bits) is XORed into every trade id: the seed decides the market
        data, the salt makes one run's trade ids differ from another's, as Kalshi's never repeat
        (a stream's Msg-Id dedupe would otherwise drop a second run's trades)."""
        if market_count < 1:
            raise ConfigError(
                f"must be at least 1, got {market_count}",
                source="exchange",
                field="market_count",
            )
        weights = mix.weights()
        if any(weight < 0 for _, weight in weights) or sum(w for _, w in weights) <= 0:
            raise ConfigError(
                f"weights must be >= 0 with a positive sum, got {mix}",
                source="exchange",
                field="mix",
            )
        self._seed = seed
        self._rng = random.Random(seed)
        self._trade_id_salt = trade_id_salt
        self._prefix = ticker_prefix
        self._kinds = [kind for kind, _ in weights]
        self._kind_weights = [weight for _, weight in weights]
        self._max_levels = max_levels_per_side
        self._events_announced = 0
        self._revisions = 0
        self._markets: dict[str, SimMarket] = {}
        for market in map(self._create_market, range(market_count)):
            self._markets[market.ticker] = market
        self._tickers = list(self._markets)
        self._streaming = set(self._tickers)
        self._opening_rngs: dict[str, random.Random] = {}  # added, never opened

    @property
    def markets(self) -> Mapping[str, SimMarket]:
        return self._markets

    @property
    def tickers(self) -> list[str]:
        """The markets events are drawn for (all but halted ones), in the order added."""
        return list(self._tickers)

    def is_streaming(self, ticker: str) -> bool:
        return ticker in self._streaming

    # -- markets added later (the catalog, churn) ----------------------------------------------

    def add_market(
        self,
        ticker: str,
        *,
        event_ticker: str,
        yes_sub_title: str,
        close_ts_s: int,
        tick_e4: int = CENT_TICK_E4,
    ) -> SimMarket:
        """A new market with an empty book that no event is drawn for until `open_market`.
        Its market id and opening book come from an RNG seeded with (seed, ticker), so they do
        not depend on when it is added, and the main stream's draws are left alone."""
        if ticker in self._markets:
            raise ConfigError(f"market {ticker} exists already", source="exchange", field="ticker")
        rng = random.Random(f"{self._seed}:{ticker}")
        market = SimMarket(
            ticker=ticker,
            market_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            event_ticker=event_ticker,
            tick_e4=tick_e4,
            yes_sub_title=yes_sub_title,
            close_ts_s=close_ts_s,
        )
        self._markets[ticker] = market
        self._opening_rngs[ticker] = rng
        return market

    def open_market(self, ticker: str) -> list[BookChange]:
        """Draw events for `ticker` (again). The first time, seed its book and return the
        seeding as book changes (already applied): subscribers see the opening orders arrive."""
        market = self._markets[ticker]
        changes: list[BookChange] = []
        rng = self._opening_rngs.pop(ticker, None)
        if rng is not None and not market.yes_bids and not market.no_bids:
            self._seed_book(market, rng)
            changes = [
                BookChange(ticker, side, price_e4, size_e2)
                for side in (Side.YES, Side.NO)
                for price_e4, size_e2 in market.levels(side)
            ]
        if ticker not in self._streaming:
            self._streaming.add(ticker)
            self._tickers.append(ticker)
        return changes

    def halt_market(self, ticker: str) -> None:
        """Stop drawing events for `ticker` (paused, closed or settled); its book stays."""
        if ticker not in self._streaming:
            return
        if len(self._tickers) == 1:
            raise ConfigError(
                f"cannot halt {ticker}: at least one market must stream",
                source="exchange",
                field="ticker",
            )
        self._streaming.discard(ticker)
        self._tickers.remove(ticker)

    def next_event(self, now_ns: int, tickers: list[str] | None = None) -> MarketEvent:
        """Draw one event from the mix (for one of `tickers`, default: any streaming market)
        and apply it to the market state."""
        kind = self._rng.choices(self._kinds, weights=self._kind_weights)[0]
        market = self._markets[self._rng.choice(tickers or self._tickers)]
        if kind is EventKind.TRADE:  # a book change when no bid rests to trade against
            return self._trade(market) or self._book_change(market)
        if kind is EventKind.TICKER_CHANGE:
            return TickerChange(market=market.ticker, stats=market.ticker_stats())
        if kind is EventKind.OTHER:
            return self._other(market, now_ns)
        if kind is EventKind.SNAPSHOT:
            return SnapshotResend(market.ticker)
        return self._book_change(market)

    # -- market creation ----------------------------------------------------------------------

    def _create_market(self, index: int) -> SimMarket:
        rng = self._rng
        if index % 5 == 1:
            # Real tickers carry dots, e.g. KXBTCD-26MAR1213-T69499.99 (captures, §7.4).
            strike = 97_499 + 500 * (index // 5)
            series = f"{self._prefix}BTC"
            ticker = f"{series}-{_EXPIRY_DATE}-T{strike}.99"
            sub_title = f"${strike + 1:,} or above"
        else:
            series = self._prefix
            ticker = f"{series}-{_EXPIRY_DATE}-T{index:04d}"
            sub_title = f"Outcome {index:04d}"
        tick_e4 = DECI_CENT_TICK_E4 if index % 7 == 3 else CENT_TICK_E4
        market = SimMarket(
            ticker=ticker,
            market_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            event_ticker=f"{series}-{_EXPIRY_DATE}",
            tick_e4=tick_e4,
            yes_sub_title=sub_title,
            close_ts_s=1_795_305_600,  # 2026-11-22T00:00:00Z
        )
        self._seed_book(market, rng)
        return market

    def _seed_book(self, market: SimMarket, rng: random.Random) -> None:
        tick = market.tick_e4
        mid_e4 = (
            rng.randint(15, 85) * CENT_TICK_E4 + rng.randint(0, CENT_TICK_E4 // tick - 1) * tick
        )
        best_yes_bid_e4 = mid_e4 - rng.randint(1, 3) * tick
        best_yes_ask_e4 = mid_e4 + rng.randint(1, 3) * tick
        for side, best_e4 in (
            (Side.YES, best_yes_bid_e4),
            (Side.NO, ONE_DOLLAR_E4 - best_yes_ask_e4),
        ):
            bids = market.bids(side)
            price_e4 = best_e4
            for _ in range(rng.randint(3, 8)):
                if price_e4 < _MIN_LEVEL_PRICE_E4:
                    break
                bids[price_e4] = self._draw_size_e2(rng)
                price_e4 -= rng.randint(1, 3) * tick

    def _draw_size_e2(self, rng: random.Random | None = None) -> int:
        """Mostly whole contracts, about a third with a fractional part (§7.1.1 observed)."""
        rng = rng or self._rng
        size_e2 = rng.choice((1, 2, 5, 10, 25, 100, 250, 500)) * rng.randint(1, 20) * 100
        if rng.random() < 0.35:
            size_e2 += rng.randint(1, 99)
        return size_e2

    # -- events -------------------------------------------------------------------------------

    def _book_change(self, market: SimMarket) -> BookChange:
        rng = self._rng
        side = rng.choice((Side.YES, Side.NO))
        change = self._draw_book_change(market, side) or self._draw_book_change(market, side.other)
        if change is None:
            # Unreachable while the book is uncrossed (one side always has room for a new
            # level); kept total so the stream never stops: add to the YES side's best.
            price_e4 = max(market.yes_bids, default=_MIN_LEVEL_PRICE_E4)
            change = BookChange(market.ticker, Side.YES, price_e4, self._draw_size_e2())
        market.apply_book_change(change)
        return change

    def _draw_book_change(self, market: SimMarket, side: Side) -> BookChange | None:
        rng = self._rng
        bids = market.bids(side)
        modify = bids and (len(bids) >= self._max_levels or rng.random() < 0.5)
        if modify:
            price_e4 = rng.choice(sorted(bids))
            size_e2 = bids[price_e4]
            if len(bids) >= 3 and rng.random() < 0.5:
                delta_e2 = -min(size_e2, self._draw_size_e2())
            else:
                delta_e2 = self._draw_size_e2()
            return BookChange(market.ticker, side, price_e4, delta_e2)
        # A new level, never at or through the other side's implied ask (§7.1.1).
        tick = market.tick_e4
        other = market.best_bid(side.other)
        top_e4 = min(_MAX_LEVEL_PRICE_E4, ONE_DOLLAR_E4 - (other[0] if other else 0) - tick)
        if top_e4 < _MIN_LEVEL_PRICE_E4:
            return None
        low_e4 = max(_MIN_LEVEL_PRICE_E4, top_e4 - _NEW_LEVEL_SPAN_TICKS * tick)
        price_e4 = low_e4 + rng.randint(0, (top_e4 - low_e4) // tick) * tick
        return BookChange(market.ticker, side, price_e4, self._draw_size_e2())

    def _trade(self, market: SimMarket) -> Trade | None:
        rng = self._rng
        taker = rng.choice((Side.YES, Side.NO))
        # A YES taker lifts the implied YES ask, i.e. fills resting NO bids, and vice versa.
        if market.best_bid(taker.other) is None:
            taker = taker.other
        best = market.best_bid(taker.other)
        if best is None:
            return None
        price_e4, resting_e2 = best
        size_e2 = min(resting_e2, self._draw_size_e2() // rng.choice((1, 5, 20)) or 1)
        yes_price_e4 = ONE_DOLLAR_E4 - price_e4 if taker is Side.YES else price_e4
        change = BookChange(market.ticker, taker.other, price_e4, -size_e2)
        market.apply_book_change(change)
        market.last_price_e4 = yes_price_e4
        market.last_trade_size_e2 = size_e2
        market.volume_e2 += size_e2
        if rng.random() < 0.6 or market.open_interest_e2 < size_e2:
            market.open_interest_e2 += size_e2
        else:
            market.open_interest_e2 -= size_e2
        return Trade(
            market=market.ticker,
            trade_id=str(uuid.UUID(int=rng.getrandbits(128) ^ self._trade_id_salt)),
            yes_price_e4=yes_price_e4,
            size_e2=size_e2,
            taker_side=taker,
            book_change=change,
        )

    def _other(self, market: SimMarket, now_ns: int) -> Lifecycle | EventLifecycle:
        rng = self._rng
        roll = rng.random()
        if roll < 0.4:
            self._revisions += 1
            market.yes_sub_title = (
                f"{market.yes_sub_title.split(' (rev')[0]} (rev {self._revisions})"
            )
            return Lifecycle(
                market=market.ticker,
                event_type=LifecycleType.METADATA_UPDATED,
                yes_sub_title=market.yes_sub_title,
            )
        if roll < 0.8:
            market.close_ts_s = now_ns // 1_000_000_000 + rng.randint(3_600, 7 * 86_400)
            return Lifecycle(
                market=market.ticker,
                event_type=LifecycleType.CLOSE_DATE_UPDATED,
                close_ts_s=market.close_ts_s,
            )
        number = self._events_announced
        self._events_announced += 1
        hhmm = f"{(number // 60) % 24:02d}{number % 60:02d}"
        return EventLifecycle(
            event_ticker=f"{self._prefix}-{_EXPIRY_DATE}H{hhmm}",
            series_ticker=self._prefix,
            title=f"Simulated event {number}",
            subtitle=f"Nov 21 at {hhmm[:2]}:{hhmm[2:]}",
        )
