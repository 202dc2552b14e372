"""Normalized, venue-neutral records: the public contract for downstream subscribers.

Every record is a frozen msgspec Struct tagged by `kind`. Prices are integers of 1/10,000
dollar (`*_e4`), sizes integers of 1/100 contract (`*_e2`), times integer nanoseconds since the
Unix epoch (`*_ts_ns`). Book records always quote NO-side levels in NO-leg price (the default
Kalshi convention, PROTOCOL.md §7.1.4), whatever `use_yes_price` the subscription used.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

VENUE = "kalshi"


class Side(enum.Enum):
    """A contract side (outcome)."""

    YES = "yes"
    NO = "no"


class BookSide(enum.Enum):
    """Which side of the YES book a taker hit (PROTOCOL.md §7.4: bid == yes, ask == no)."""

    BID = "bid"
    ASK = "ask"


class Flag(enum.Enum):
    """Why a record's values are outside their domain. Flagged records are still published."""

    PRICE_OUT_OF_RANGE = "price_out_of_range"
    NEGATIVE_SIZE = "negative_size"
    PRICE_SUM_MISMATCH = "price_sum_mismatch"
    AFTER_RESYNC = "after_resync"
    BACKFILLED = "backfilled"


class LifecycleScope(enum.Enum):
    MARKET = "market"
    EVENT = "event"


class StatusEvent(enum.Enum):
    """Connector-level events published as `status` records."""

    CONNECTED = "connected"
    SUBSCRIBED = "subscribed"
    DISCONNECTED = "disconnected"
    STALE = "stale"
    GAP = "gap"
    RESYNCED = "resynced"
    EXCHANGE_ERROR = "exchange_error"
    DROPPED = "dropped"
    MARKETS_ADDED = "markets_added"  # these markets' streams start on this connection
    MARKETS_REMOVED = "markets_removed"  # ... and these end (settled, deselected, moved)


class TopTrigger(enum.Enum):
    """Which best level changed since the market's previous `top` record (the first is BOTH).

    BID is the best YES bid; ASK is the best YES ask, i.e. the best NO bid.
    """

    BID = "bid"
    ASK = "ask"
    BOTH = "both"


class LiquidityTier(enum.Enum):
    """How much rests near a top-of-book price (thresholds: ssmd.config.top.TopSettings)."""

    NONE = "none"  # nothing to take: the side is empty
    THIN = "thin"  # below moderate_min_contracts
    MODERATE = "moderate"  # at least moderate_min_contracts, below deep_min_contracts
    DEEP = "deep"  # at least deep_min_contracts


class Level(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One book level, encoded as the pair [price_e4, size_e2]."""

    price_e4: int
    size_e2: int


class PriceRange(msgspec.Struct, frozen=True, gc=False):
    """A tick band: prices in [start_e4, end_e4] must be multiples of step_e4 (§7.1.5)."""

    start_e4: int
    end_e4: int
    step_e4: int


class RecordBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", gc=False):
    """Fields every record carries.

    `market` is the exchange ticker, unchanged (for event-scoped lifecycle records it is the
    event ticker; for connector-wide status records it is ""). `exchange_ts_ns` is None when
    the exchange frame carried no time (book snapshots). `sid`/`seq` are the frame's
    subscription id and sequence number where it had them.
    """

    venue: str = VENUE
    market: str
    exchange_ts_ns: int | None = None
    receive_ts_ns: int
    sid: int | None = None
    seq: int | None = None
    flags: tuple[Flag, ...] = ()


class Trade(RecordBase, frozen=True, kw_only=True, tag="trade"):
    trade_id: str
    yes_price_e4: int
    no_price_e4: int
    size_e2: int
    taker_side: Side | None = None
    taker_book_side: BookSide | None = None
    is_block_trade: bool | None = None


class Ticker(RecordBase, frozen=True, kw_only=True, tag="ticker"):
    """Top of book and market statistics. Fields the frame's era lacked are None."""

    market_id: str | None = None
    last_price_e4: int | None = None
    yes_bid_e4: int | None = None
    yes_ask_e4: int | None = None
    yes_bid_size_e2: int | None = None
    yes_ask_size_e2: int | None = None
    last_trade_size_e2: int | None = None
    volume_e2: int | None = None
    open_interest_e2: int | None = None
    notional_volume_usd: int | None = None
    notional_open_interest_usd: int | None = None


class BookSnapshot(RecordBase, frozen=True, kw_only=True, tag="book_snapshot"):
    """A full replacement of one market's book: resting bids to buy YES and to buy NO.

    Levels are sorted by ascending price; NO levels are in NO-leg price (a NO bid at 0.30 is
    a YES ask at 0.70).
    """

    market_id: str | None = None
    yes_bids: tuple[Level, ...] = ()
    no_bids: tuple[Level, ...] = ()


class BookDelta(RecordBase, frozen=True, kw_only=True, tag="book_delta"):
    """A signed change to the resting size at (side, price); NO side in NO-leg price."""

    market_id: str | None = None
    side: Side
    price_e4: int
    delta_e2: int


class Lifecycle(RecordBase, frozen=True, kw_only=True, tag="lifecycle", gc=True):
    """Market and event lifecycle (market_lifecycle_v2, event_lifecycle, event_fee_update).

    `event_type` is the exchange's word (created, activated, deactivated, close_date_updated,
    determined, settled, price_level_structure_updated, metadata_updated) or, for
    event-scoped records, `event_created` / `event_fee_updated`.
    """

    scope: LifecycleScope
    event_type: str
    event_ticker: str | None = None
    series_ticker: str | None = None
    title: str | None = None
    subtitle: str | None = None
    open_ts_ns: int | None = None
    close_ts_ns: int | None = None
    expected_expiration_ts_ns: int | None = None
    determination_ts_ns: int | None = None
    settled_ts_ns: int | None = None
    result: str | None = None
    settlement_value_e4: int | None = None
    is_deactivated: bool | None = None
    price_level_structure: str | None = None
    price_ranges: tuple[PriceRange, ...] | None = None
    strike_type: str | None = None
    floor_strike: str | None = None
    cap_strike: str | None = None
    custom_strike: dict[str, Any] | None = None
    fee_type_override: str | None = None
    fee_multiplier_override: str | None = None


class Status(RecordBase, frozen=True, kw_only=True, tag="status"):
    """A connector event downstream subscribers must know about (gaps, reconnects, ...)."""

    event: StatusEvent
    connection_id: str
    channel: str | None = None
    expected_seq: int | None = None
    received_seq: int | None = None
    markets: tuple[str, ...] = ()
    reason: str = ""


class Top(RecordBase, frozen=True, kw_only=True, tag="top"):
    """Derived top of book (ssmd.top): the best prices and sizes of the local book, with the
    implied probabilities, American odds and liquidity of buying each side there.

    Every value is an exact integer. YES ask = $1 - best NO bid, with that bid's size; NO bid
    = best NO bid; NO ask = $1 - best YES bid (NO-leg prices, §7.1.1, §7.1.4). `mid_e5` is
    (YES bid + YES ask) / 2 in 1/100,000 dollar, so a half-tick mid is exact (0.48505 ->
    48505); `spread_e4` = YES ask - YES bid (<= 0 only for a crossed local book). Both are
    None when a side is empty. The implied probability of each side is the price of buying it
    (its ask): the break-even probability of the trade one can make, the same number the odds
    encode; YES + NO exceeds 1 by the spread (the overround). The fair estimate is the mid.
    `*_american_odds_e2` are American odds in hundredths for buying at the ask price p:
    p < 0.5 -> +100(1-p)/p, p > 0.5 -> -100p/(1-p), p = 0.5 -> +100, rounded down (toward
    -infinity: the quoted odds never promise more than the price pays); None at p <= 0 or
    p >= 1 or when that ask does not exist. `*_ask_depth_e2` is the resting size within
    TopSettings.depth_window_e4 of that ask (its tier in `*_liquidity`). sid, seq,
    exchange_ts_ns and receive_ts_ns are those of the book record the values follow from.
    """

    trigger: TopTrigger
    yes_bid_e4: int | None = None
    yes_bid_size_e2: int | None = None
    yes_ask_e4: int | None = None
    yes_ask_size_e2: int | None = None
    no_bid_e4: int | None = None
    no_ask_e4: int | None = None
    mid_e5: int | None = None
    spread_e4: int | None = None
    yes_implied_prob_e4: int | None = None
    no_implied_prob_e4: int | None = None
    yes_american_odds_e2: int | None = None
    no_american_odds_e2: int | None = None
    yes_ask_depth_e2: int = 0
    no_ask_depth_e2: int = 0
    yes_liquidity: LiquidityTier = LiquidityTier.NONE
    no_liquidity: LiquidityTier = LiquidityTier.NONE


Record = Trade | Ticker | BookSnapshot | BookDelta | Lifecycle | Status | Top
RECORD_TYPES: tuple[type[RecordBase], ...] = (
    Trade,
    Ticker,
    BookSnapshot,
    BookDelta,
    Lifecycle,
    Status,
    Top,
)


def record_kind(record: RecordBase) -> str:
    """The `kind` tag of a record ("trade", "book_delta", ...)."""
    tag = type(record).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of every record kind, for `ssmd schema`."""
    (refs,), components = msgspec.json.schema_components([Record], ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ssmd records",
        **refs,
        "$defs": components,
    }
