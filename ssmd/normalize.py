"""Wire data frames (ssmd.messages) to normalized records (ssmd.records): a pure function.

Exact strings (`*_dollars`, `*_fp`) win over legacy integer cents/counts (PROTOCOL.md §8);
NO-side book prices always leave in NO-leg price (§7.1.4). Also the `ssmd normalize` engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from itertools import starmap
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
    TickerMsg,
    TradeFrame,
)
from ssmd.normalize_fields import (
    OUT_OF_RANGE,
    invalid_field,
    missing_field,
    price_field,
    rfc3339_field,
    size_field,
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


def _levels(
    fp: tuple[tuple[str, str], ...] | None,
    dollars: tuple[tuple[str, int], ...] | None,
    cents: tuple[tuple[int, int], ...] | None,
    side: str,
    flip: bool,
) -> tuple[list[tuple[int, int]], bool]:
    """One side of a snapshot as (price_e4, size_e2) pairs from the newest representation
    present, ascending by (converted) price, and whether a size is negative."""
    pairs: list[tuple[int, int]] = []
    negative = False
    if fp is not None:
        # The current era (§7.1.1), one loop: the table lookup, parse_size's fast path (no
        # sign: a negative size takes the call) and the flip inline (-1.1 µs a snapshot of 18
        # levels against a call per size, a second pass to flip and one to find a sign).
        lookup, append = lookup_price_e4, pairs.append
        try:
            for price_text, size_text in fp:
                price_e4 = lookup(price_text)
                if price_e4 is None:
                    price_e4 = parse_price(price_text)
                if flip:
                    price_e4 = ONE_DOLLAR_E4 - price_e4
                if len(size_text) > 3 and size_text[-3] == "." and size_text.isascii():
                    body = size_text.replace(".", "")
                    if len(body) == len(size_text) - 1 and body.isdigit():
                        append((price_e4, int(body)))
                        continue
                size_e2 = parse_size(size_text)
                negative = negative or size_e2 < 0
                append((price_e4, size_e2))
        except ValueError as exc:
            raise invalid_field(_SNAPSHOT, f"{side}_dollars_fp", exc) from exc
    elif dollars is not None:
        try:
            for price_text, count in dollars:
                price_e4 = parse_price(price_text)
                negative = negative or count < 0
                pairs.append((ONE_DOLLAR_E4 - price_e4 if flip else price_e4, count_to_size(count)))
        except ValueError as exc:
            raise invalid_field(_SNAPSHOT, f"{side}_dollars", exc) from exc
    elif cents is not None:
        for price_cents, count in cents:
            price_e4 = cents_to_price(price_cents)
            negative = negative or count < 0
            pairs.append((ONE_DOLLAR_E4 - price_e4 if flip else price_e4, count_to_size(count)))
    pairs.sort()
    return pairs, negative


def _book_flags(
    yes: list[tuple[int, int]], no: list[tuple[int, int]], negative: bool
) -> tuple[Flag, ...]:
    """Flags of a snapshot from its sides' ascending (price_e4, size_e2) pairs."""
    out_of_range = bool(yes) and (yes[0][0] < 0 or yes[-1][0] > ONE_DOLLAR_E4)
    out_of_range = out_of_range or (bool(no) and (no[0][0] < 0 or no[-1][0] > ONE_DOLLAR_E4))
    if not (out_of_range or negative):
        return ()
    if not negative:
        return OUT_OF_RANGE
    return (Flag.PRICE_OUT_OF_RANGE, Flag.NEGATIVE_SIZE) if out_of_range else (Flag.NEGATIVE_SIZE,)


def _snapshot(frame: OrderbookSnapshot, receive_ts_ns: int, flip: bool) -> BookSnapshot:
    msg = frame.msg
    yes, yes_negative = _levels(msg.yes_dollars_fp, msg.yes_dollars, msg.yes, "yes", False)
    no, no_negative = _levels(msg.no_dollars_fp, msg.no_dollars, msg.no, "no", flip)
    return BookSnapshot(
        market=msg.market_ticker,
        receive_ts_ns=receive_ts_ns,
        sid=frame.sid,
        seq=frame.seq,
        flags=_book_flags(yes, no, yes_negative or no_negative),
        market_id=msg.market_id or None,
        yes_bids=tuple(starmap(Level, yes)),
        no_bids=tuple(starmap(Level, no)),
    )


_DELTA = "orderbook_delta"


def _delta(frame: OrderbookDelta, receive_ts_ns: int, flip: bool) -> BookDelta:
    # The hottest function of the connector: table lookups and parse_size's fast path inline,
    # no helper call on the happy path.
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
        # parse_size's fast path inline ("-3250.23"): -40 ns a delta against the call.
        body = text.replace(".", "")
        if (
            len(text) > 3
            and text[-3] == "."
            and text.isascii()
            and len(body) == len(text) - 1
            and (body.isdigit() or (body[0] == "-" and body[1:].isdigit()))
        ):
            delta_e2 = int(body)
        else:
            delta_e2 = size_field(text, "delta_fp", _DELTA)
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
    # Keywords in field order: msgspec matches each name at the next position (-30 ns, timeit).
    return BookDelta(
        market=msg.market_ticker,
        exchange_ts_ns=exchange_ts_ns,
        receive_ts_ns=receive_ts_ns,
        sid=frame.sid,
        seq=frame.seq,
        flags=() if 0 <= price_e4 <= ONE_DOLLAR_E4 else OUT_OF_RANGE,
        market_id=msg.market_id or None,
        side=side,
        price_e4=price_e4,
        delta_e2=delta_e2,
    )


# --- ticker (§7.2) and trade (§7.4) ------------------------------------------------------

_TICKER = "ticker"
_TICKER_SIZE_FIELDS: Final = (
    "yes_bid_size_fp",
    "yes_ask_size_fp",
    "last_trade_size_fp",
    "volume_fp",
    "open_interest_fp",
)


def _ticker_size_error(msg: TickerMsg, exc: ValueError) -> FrameDecodeError:
    """The error of the first size field of `msg` that does not parse (`exc`: the first
    failure seen, if somehow none fails again)."""
    for field in _TICKER_SIZE_FIELDS:
        text = getattr(msg, field)
        try:
            if text is not None:
                parse_size(text)
        except ValueError as field_exc:
            return invalid_field(_TICKER, field, field_exc)
    return invalid_field(_TICKER, "size", exc)


def _ticker(frame: TickerFrame, receive_ts_ns: int, _flip: bool = False) -> Ticker:
    # A quarter of the frames, twelve fixed-point fields: every price is an inline table
    # lookup and every size one parse_size call (-0.2 µs a ticker against two helper calls
    # per field; inlining the sizes too measured -0.07 µs more, not worth five copies).
    msg = frame.msg
    lookup = lookup_price_e4
    text = msg.price_dollars
    if text:
        last_price_e4 = lookup(text)
        if last_price_e4 is None:
            last_price_e4 = price_field(text, "price_dollars", _TICKER)
    else:
        last_price_e4 = None if msg.price is None else cents_to_price(msg.price)
    if last_price_e4 == 0:  # "" / 0 / "0.0000": never traded (§7.2)
        last_price_e4 = None
    text = msg.yes_bid_dollars
    if text:
        yes_bid_e4 = lookup(text)
        if yes_bid_e4 is None:
            yes_bid_e4 = price_field(text, "yes_bid_dollars", _TICKER)
    else:
        yes_bid_e4 = None if msg.yes_bid is None else cents_to_price(msg.yes_bid)
    text = msg.yes_ask_dollars
    if text:
        yes_ask_e4 = lookup(text)
        if yes_ask_e4 is None:
            yes_ask_e4 = price_field(text, "yes_ask_dollars", _TICKER)
    else:
        yes_ask_e4 = None if msg.yes_ask is None else cents_to_price(msg.yes_ask)
    time = msg.time
    if time and "." in time:
        try:
            exchange_ts_ns: int | None = rfc3339_to_ns(time)
        except ValueError as exc:
            raise invalid_field(_TICKER, "time", exc) from exc
    elif msg.ts_ms is not None:
        exchange_ts_ns = ms_to_ns(msg.ts_ms)
    elif msg.ts is not None:
        exchange_ts_ns = seconds_to_ns(msg.ts)
    elif time:
        exchange_ts_ns = rfc3339_field(time, "time", _TICKER)
    else:
        exchange_ts_ns = None
    in_range = (
        (last_price_e4 is None or 0 <= last_price_e4 <= ONE_DOLLAR_E4)
        and (yes_bid_e4 is None or 0 <= yes_bid_e4 <= ONE_DOLLAR_E4)
        and (yes_ask_e4 is None or 0 <= yes_ask_e4 <= ONE_DOLLAR_E4)
    )
    try:
        text = msg.yes_bid_size_fp
        yes_bid_size_e2 = None if text is None else parse_size(text)
        text = msg.yes_ask_size_fp
        yes_ask_size_e2 = None if text is None else parse_size(text)
        text = msg.last_trade_size_fp
        last_trade_size_e2 = None if text is None else parse_size(text)
        text = msg.volume_fp
        if text is not None:
            volume_e2: int | None = parse_size(text)
        else:
            volume_e2 = None if msg.volume is None else count_to_size(msg.volume)
        text = msg.open_interest_fp
        if text is not None:
            open_interest_e2: int | None = parse_size(text)
        else:
            open_interest_e2 = (
                None if msg.open_interest is None else count_to_size(msg.open_interest)
            )
    except ValueError as exc:
        raise _ticker_size_error(msg, exc) from exc
    if in_range and frame.seq is None:
        # Tickers carry no seq (§7.2) and are rarely flagged: leaving those two at their
        # defaults keeps the call at 15 keywords; msgspec construction is ~5x slower from 16
        # (CPython then passes a dict).
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


_TRADE = "trade"


def _trade(frame: TradeFrame, receive_ts_ns: int, _flip: bool = False) -> Trade:
    msg = frame.msg
    text = msg.yes_price_dollars
    if text:
        yes_e4 = lookup_price_e4(text)
        if yes_e4 is None:
            yes_e4 = price_field(text, "yes_price_dollars", _TRADE)
    elif msg.yes_price is not None:
        yes_e4 = cents_to_price(msg.yes_price)
    else:
        raise missing_field(_TRADE, "yes_price_dollars")
    text = msg.no_price_dollars
    if text:
        no_e4 = lookup_price_e4(text)
        if no_e4 is None:
            no_e4 = price_field(text, "no_price_dollars", _TRADE)
    elif msg.no_price is not None:
        no_e4 = cents_to_price(msg.no_price)
    else:
        raise missing_field(_TRADE, "no_price_dollars")
    text = msg.count_fp
    if text is not None:
        size_e2 = size_field(text, "count_fp", _TRADE)
    elif msg.count is not None:
        size_e2 = count_to_size(msg.count)
    else:
        raise missing_field(_TRADE, "count_fp")
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
