"""Wire data frames (ssmd.messages) to normalized records (ssmd.records): a pure function.

Exact strings (`*_dollars`, `*_fp`) win over legacy integer cents/counts (PROTOCOL.md §8);
NO-side book prices always leave in NO-leg price (§7.1.4). Also the `ssmd normalize` engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from itertools import starmap
from operator import itemgetter
from typing import Any, BinaryIO, Final, TextIO, TypeAlias

import msgspec

from ssmd.errors import FrameDecodeError
from ssmd.fixedpoint import (
    ONE_DOLLAR_E4,
    cents_to_price,
    count_to_size,
    lookup_price_e4,
    parse_price,
    parse_size,
)
from ssmd.messages import (
    CONTROL_FRAME_TYPES,
    DataFrame,
    EventFeeUpdate,
    EventLifecycle,
    FrameDecoder,
    MarketLifecycleV2,
    MultivariateMarketLifecycle,
    OrderbookDelta,
    OrderbookSnapshot,
    TickerFrame,
    TradeFrame,
)
from ssmd.normalize_fields import (
    OUT_OF_RANGE,
    invalid_field,
    missing_field,
    price_field,
    rfc3339_field,
)
from ssmd.normalize_lifecycle import (
    normalize_event_fee_update,
    normalize_event_lifecycle,
    normalize_market_lifecycle_v2,
    normalize_multivariate_lifecycle,
)
from ssmd.records import (
    BookDelta,
    BookSnapshot,
    Flag,
    Level,
    Record,
    Side,
    Ticker,
    Trade,
)
from ssmd.wiretime import ms_to_ns, rfc3339_to_ns, seconds_to_ns

_NO: Final = Side.NO  # a module global: enum member lookups cost ~50 ns (3.11)

# --- orderbook (§7.1) --------------------------------------------------------------------

_SNAPSHOT = "orderbook_snapshot"
_SIZE_E2: Final = itemgetter(1)


def _levels(
    fp: tuple[tuple[str, str], ...] | None,
    dollars: tuple[tuple[str, int], ...] | None,
    cents: tuple[tuple[int, int], ...] | None,
    side: str,
    flip: bool,
) -> list[tuple[int, int]]:
    """One side of a snapshot as (price_e4, size_e2) pairs from the newest representation
    present, ascending by (converted) price; one loop, no helper call per level."""
    if fp is None and dollars is None:
        pairs = [(cents_to_price(p), count_to_size(c)) for p, c in cents or ()]
    else:
        levels: Iterable[tuple[str, Any]] = fp if fp is not None else dollars or ()
        size_of: Callable[[Any], int] = parse_size if fp is not None else count_to_size
        lookup, pairs = lookup_price_e4, []
        try:
            for price_text, size in levels:
                price_e4 = lookup(price_text)
                price_e4 = parse_price(price_text) if price_e4 is None else price_e4
                pairs.append((price_e4, size_of(size)))
        except ValueError as exc:
            field = f"{side}_dollars_fp" if fp is not None else f"{side}_dollars"
            raise invalid_field(_SNAPSHOT, field, exc) from exc
    if flip:
        pairs = [(ONE_DOLLAR_E4 - p, s) for p, s in pairs]
    pairs.sort()
    return pairs


def _book_flags(*sides: list[tuple[int, int]]) -> tuple[Flag, ...]:
    """Flags of a snapshot from its sides' ascending (price_e4, size_e2) pairs."""
    out_of_range = negative = False
    for pairs in sides:
        if pairs:
            out_of_range = out_of_range or pairs[0][0] < 0 or pairs[-1][0] > ONE_DOLLAR_E4
            negative = negative or min(map(_SIZE_E2, pairs)) < 0
    if not (out_of_range or negative):
        return ()
    if not negative:
        return OUT_OF_RANGE
    return (Flag.PRICE_OUT_OF_RANGE, Flag.NEGATIVE_SIZE) if out_of_range else (Flag.NEGATIVE_SIZE,)


def _snapshot(frame: OrderbookSnapshot, receive_ts_ns: int, flip: bool) -> BookSnapshot:
    msg = frame.msg
    yes = _levels(msg.yes_dollars_fp, msg.yes_dollars, msg.yes, "yes", False)
    no = _levels(msg.no_dollars_fp, msg.no_dollars, msg.no, "no", flip)
    return BookSnapshot(
        market=msg.market_ticker,
        market_id=msg.market_id or None,
        receive_ts_ns=receive_ts_ns,
        sid=frame.sid,
        seq=frame.seq,
        flags=_book_flags(yes, no),
        yes_bids=tuple(starmap(Level, yes)),
        no_bids=tuple(starmap(Level, no)),
    )


_DELTA = "orderbook_delta"


def _delta(frame: OrderbookDelta, receive_ts_ns: int, flip: bool) -> BookDelta:
    # The hottest function of the connector: table lookups, no helper calls on the happy path.
    msg = frame.msg
    text = msg.price_dollars
    if text:
        price_e4 = lookup_price_e4(text)
        if price_e4 is None:
            price_e4 = price_field(text, "price_dollars", _DELTA)
    elif msg.price is not None:
        price_e4 = cents_to_price(msg.price)
    else:
        raise missing_field(_DELTA, "price_dollars")
    text = msg.delta_fp
    if text is not None:
        try:
            delta_e2 = parse_size(text)
        except ValueError as exc:
            raise invalid_field(_DELTA, "delta_fp", exc) from exc
    elif msg.delta is not None:
        delta_e2 = count_to_size(msg.delta)
    else:
        raise missing_field(_DELTA, "delta_fp")
    side = msg.side
    if flip and side is _NO:
        price_e4 = ONE_DOLLAR_E4 - price_e4
    ts = msg.ts
    if ts and "." in ts:
        try:
            exchange_ts_ns: int | None = rfc3339_to_ns(ts)
        except ValueError as exc:
            raise invalid_field(_DELTA, "ts", exc) from exc
    elif msg.ts_ms is not None:
        exchange_ts_ns = ms_to_ns(msg.ts_ms)
    elif ts:
        exchange_ts_ns = rfc3339_field(ts, "ts", _DELTA)
    else:
        exchange_ts_ns = None
    return BookDelta(
        market=msg.market_ticker,
        market_id=msg.market_id or None,
        exchange_ts_ns=exchange_ts_ns,
        receive_ts_ns=receive_ts_ns,
        sid=frame.sid,
        seq=frame.seq,
        flags=() if 0 <= price_e4 <= ONE_DOLLAR_E4 else OUT_OF_RANGE,
        side=side,
        price_e4=price_e4,
        delta_e2=delta_e2,
    )


# --- ticker (§7.2) and trade (§7.4) ------------------------------------------------------


def _ticker_price(text: str | None, cents: int | None, field: str) -> int | None:
    if text:
        price_e4 = lookup_price_e4(text)
        return price_e4 if price_e4 is not None else price_field(text, field, "ticker")
    if cents is not None:
        return cents_to_price(cents)
    return None


def _opt_size(text: str | None, count: int | None, field: str, type_name: str) -> int | None:
    if text is not None:
        try:
            return parse_size(text)
        except ValueError as exc:
            raise invalid_field(type_name, field, exc) from exc
    if count is not None:
        return count_to_size(count)
    return None


def _ticker(frame: TickerFrame, receive_ts_ns: int, _flip: bool = False) -> Ticker:
    msg = frame.msg
    last_price_e4 = _ticker_price(msg.price_dollars, msg.price, "price_dollars")
    if last_price_e4 == 0:  # "" / 0 / "0.0000": never traded (§7.2)
        last_price_e4 = None
    yes_bid_e4 = _ticker_price(msg.yes_bid_dollars, msg.yes_bid, "yes_bid_dollars")
    yes_ask_e4 = _ticker_price(msg.yes_ask_dollars, msg.yes_ask, "yes_ask_dollars")
    time = msg.time
    if time and "." in time:
        exchange_ts_ns: int | None = rfc3339_field(time, "time", "ticker")
    elif msg.ts_ms is not None:
        exchange_ts_ns = ms_to_ns(msg.ts_ms)
    elif msg.ts is not None:
        exchange_ts_ns = seconds_to_ns(msg.ts)
    elif time:
        exchange_ts_ns = rfc3339_field(time, "time", "ticker")
    else:
        exchange_ts_ns = None
    in_range = (
        (last_price_e4 is None or 0 <= last_price_e4 <= ONE_DOLLAR_E4)
        and (yes_bid_e4 is None or 0 <= yes_bid_e4 <= ONE_DOLLAR_E4)
        and (yes_ask_e4 is None or 0 <= yes_ask_e4 <= ONE_DOLLAR_E4)
    )
    yes_bid_size_e2 = _opt_size(msg.yes_bid_size_fp, None, "yes_bid_size_fp", "ticker")
    yes_ask_size_e2 = _opt_size(msg.yes_ask_size_fp, None, "yes_ask_size_fp", "ticker")
    last_trade_size_e2 = _opt_size(msg.last_trade_size_fp, None, "last_trade_size_fp", "ticker")
    volume_e2 = _opt_size(msg.volume_fp, msg.volume, "volume_fp", "ticker")
    open_interest_e2 = _opt_size(
        msg.open_interest_fp, msg.open_interest, "open_interest_fp", "ticker"
    )
    if in_range and frame.seq is None:
        # Tickers carry no seq (§7.2) and are rarely flagged: leaving those two at their
        # defaults keeps the call at 15 keywords; msgspec construction is ~5x slower from 16.
        return Ticker(
            market=msg.market_ticker,
            exchange_ts_ns=exchange_ts_ns,
            receive_ts_ns=receive_ts_ns,
            sid=frame.sid,
            market_id=msg.market_id or None,
            last_price_e4=last_price_e4,
            yes_bid_e4=yes_bid_e4,
            yes_ask_e4=yes_ask_e4,
            yes_bid_size_e2=yes_bid_size_e2,
            yes_ask_size_e2=yes_ask_size_e2,
            last_trade_size_e2=last_trade_size_e2,
            volume_e2=volume_e2,
            open_interest_e2=open_interest_e2,
            notional_volume_usd=msg.dollar_volume,
            notional_open_interest_usd=msg.dollar_open_interest,
        )
    return Ticker(
        market=msg.market_ticker,
        exchange_ts_ns=exchange_ts_ns,
        receive_ts_ns=receive_ts_ns,
        sid=frame.sid,
        seq=frame.seq,
        flags=() if in_range else OUT_OF_RANGE,
        market_id=msg.market_id or None,
        last_price_e4=last_price_e4,
        yes_bid_e4=yes_bid_e4,
        yes_ask_e4=yes_ask_e4,
        yes_bid_size_e2=yes_bid_size_e2,
        yes_ask_size_e2=yes_ask_size_e2,
        last_trade_size_e2=last_trade_size_e2,
        volume_e2=volume_e2,
        open_interest_e2=open_interest_e2,
        notional_volume_usd=msg.dollar_volume,
        notional_open_interest_usd=msg.dollar_open_interest,
    )


def _trade(frame: TradeFrame, receive_ts_ns: int, _flip: bool = False) -> Trade:
    msg = frame.msg
    name = "trade"
    text = msg.yes_price_dollars
    if text:
        yes_e4 = lookup_price_e4(text)
        if yes_e4 is None:
            yes_e4 = price_field(text, "yes_price_dollars", name)
    elif msg.yes_price is not None:
        yes_e4 = cents_to_price(msg.yes_price)
    else:
        raise missing_field(name, "yes_price_dollars")
    text = msg.no_price_dollars
    if text:
        no_e4 = lookup_price_e4(text)
        if no_e4 is None:
            no_e4 = price_field(text, "no_price_dollars", name)
    elif msg.no_price is not None:
        no_e4 = cents_to_price(msg.no_price)
    else:
        raise missing_field(name, "no_price_dollars")
    size_e2 = _opt_size(msg.count_fp, msg.count, "count_fp", name)
    if size_e2 is None:
        raise missing_field(name, "count_fp")
    flags: tuple[Flag, ...] = ()
    if yes_e4 + no_e4 != ONE_DOLLAR_E4:
        flags = (Flag.PRICE_SUM_MISMATCH,)
    if not (0 <= yes_e4 <= ONE_DOLLAR_E4 and 0 <= no_e4 <= ONE_DOLLAR_E4):
        flags = (Flag.PRICE_OUT_OF_RANGE, *flags)
    if msg.ts_ms is not None:
        exchange_ts_ns: int | None = ms_to_ns(msg.ts_ms)
    elif msg.ts is not None:
        exchange_ts_ns = seconds_to_ns(msg.ts)
    else:
        exchange_ts_ns = None
    return Trade(
        market=msg.market_ticker,
        exchange_ts_ns=exchange_ts_ns,
        receive_ts_ns=receive_ts_ns,
        sid=frame.sid,
        seq=frame.seq,
        flags=flags,
        trade_id=msg.trade_id or "",
        yes_price_e4=yes_e4,
        no_price_e4=no_e4,
        size_e2=size_e2,
        taker_side=msg.taker_outcome_side or msg.taker_side,
        taker_book_side=msg.taker_book_side,
        is_block_trade=msg.is_block_trade,
    )


# --- lifecycle (§7.5) --------------------------------------------------------------------


Normalizer: TypeAlias = Callable[[Any, int, bool], Record]
"""(frame, receive_ts_ns, no_side_in_yes_price) -> record, for one data frame type."""

# One dict lookup instead of an isinstance chain. Control frame types are absent, so a driver
# can also use it to tell data frames from control frames.
NORMALIZER_BY_FRAME_TYPE: Final[Mapping[type, Normalizer]] = {
    OrderbookDelta: _delta,
    TickerFrame: _ticker,
    TradeFrame: _trade,
    OrderbookSnapshot: _snapshot,
    MarketLifecycleV2: normalize_market_lifecycle_v2,
    MultivariateMarketLifecycle: normalize_multivariate_lifecycle,
    EventLifecycle: normalize_event_lifecycle,
    EventFeeUpdate: normalize_event_fee_update,
}


def normalize(
    frame: DataFrame, receive_ts_ns: int, *, no_side_in_yes_price: bool = False
) -> Record:
    """One data frame to its record. `no_side_in_yes_price`: the orderbook subscription used
    `use_yes_price: true` (§7.1.4), so NO-side prices are converted p -> $1 - p.

    Out-of-domain values are flagged, not rejected. A string that is not a decimal number
    raises FrameDecodeError(INVALID_FIELDS) naming the field.
    """
    return NORMALIZER_BY_FRAME_TYPE[type(frame)](frame, receive_ts_ns, no_side_in_yes_price)


def run_normalize(
    lines: Iterable[bytes],
    out: BinaryIO,
    err: TextIO,
    *,
    no_side_in_yes_price: bool,
    clock_ns: Callable[[], int],
) -> int:
    """Engine of `ssmd normalize FILE`: one JSON record line on `out` per data frame, control
    frames skipped, `line N: <reason>: <detail or type>` on `err` per unusable line.

    Returns 0 when every non-blank line was handled, else 1.
    """
    decoder = FrameDecoder()
    encoder = msgspec.json.Encoder()
    status = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            frame = decoder.decode(line)
            if isinstance(frame, CONTROL_FRAME_TYPES):
                continue
            record = normalize(frame, clock_ns(), no_side_in_yes_price=no_side_in_yes_price)
        except FrameDecodeError as exc:
            err.write(f"line {number}: {exc.reason}: {exc.detail or exc.type_name}\n")
            status = 1
            continue
        out.write(encoder.encode(record) + b"\n")
    return status
