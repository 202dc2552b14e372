"""The normalizers' inlined fast paths agree with the reference parsers on any text: the same
value where ssmd.fixedpoint parses it, INVALID_FIELDS naming the field where it refuses."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ssmd.errors import FrameDecodeError
from ssmd.fixedpoint import ONE_DOLLAR_E4, parse_price, parse_size
from ssmd.messages import INVALID_FIELDS, FrameDecoder
from ssmd.normalize import normalize
from ssmd.records import BookDelta, BookSnapshot, Flag, Level, Record, Ticker, Trade

RX = 1_787_000_000_123_456_789
DECODER = FrameDecoder()

# Sizes in every shape a feed could send: the wire form, negatives, other decimal counts,
# signs, blanks, non-ASCII digits and non-numbers.
size_texts = st.one_of(
    st.builds(lambda n: f"{n // 100}.{n % 100:02d}", st.integers(0, 10**9)),
    st.builds(lambda n: f"-{n // 100}.{n % 100:02d}", st.integers(0, 10**6)),
    st.sampled_from(
        ["0.00", ".00", "-.00", "5", "1.5", "1.000", "1.001", "+1.00", " 1.00", "1_0.00", "1.2.00"]
    ),
    st.sampled_from(
        ["--1.00", "1e3", "", "\u0661.\u0660\u0660", "12.3\u0664", "x.00", "-", "1.-0", "00.00"]
    ),
    st.text(alphabet="0123456789.-+ _", max_size=8),
)
price_texts = st.one_of(
    st.builds(lambda p: f"{p // 10_000}.{p % 10_000:04d}", st.integers(0, ONE_DOLLAR_E4)),
    st.sampled_from(["1.0500", "-0.0100", "0.54", "0.540000", "2", "0.00005", "abc", "0.5.00"]),
)


def decoded(frame: dict[str, Any], *, yes_price: bool = False) -> Record:
    data = DECODER.decode(msgspec.json.encode(frame))
    return normalize(data, RX, no_side_in_yes_price=yes_price)  # type: ignore[arg-type]


def parsed(parse: Any, text: str) -> int | None:
    """The reference value, or None where the reference refuses the text."""
    try:
        value: int = parse(text)
    except ValueError:
        return None
    return value


def assert_refused(frame: dict[str, Any], field: str) -> None:
    with pytest.raises(FrameDecodeError) as caught:
        decoded(frame)
    assert caught.value.reason == INVALID_FIELDS
    assert field in caught.value.detail


def delta_frame(price: str, size: str, side: str = "no") -> dict[str, Any]:
    msg = {"market_ticker": "M", "side": side, "price_dollars": price, "delta_fp": size}
    return {"type": "orderbook_delta", "sid": 1, "seq": 2, "msg": msg}


@given(size_texts)
@example("1.2.00")
@example("-1.-00")
def test_delta_sizes_agree_with_parse_size(text: str) -> None:
    expected = parsed(parse_size, text)
    frame = delta_frame("0.5000", text)
    if expected is None:
        assert_refused(frame, "delta_fp")
        return
    record = decoded(frame)
    assert isinstance(record, BookDelta)
    assert record.delta_e2 == expected


@given(price_texts, st.sampled_from(["yes", "no"]), st.booleans())
def test_delta_prices_and_the_no_leg_flip_agree_with_parse_price(
    text: str, side: str, yes_price: bool
) -> None:
    expected = parsed(parse_price, text)
    frame = delta_frame(text, "1.00", side)
    if expected is None:
        assert_refused(frame, "price_dollars")
        return
    record = decoded(frame, yes_price=yes_price)
    assert isinstance(record, BookDelta)
    flipped = yes_price and side == "no"
    assert record.price_e4 == (ONE_DOLLAR_E4 - expected if flipped else expected)
    in_range = 0 <= expected <= ONE_DOLLAR_E4
    assert record.flags == (() if in_range else (Flag.PRICE_OUT_OF_RANGE,))


valid_prices = st.builds(lambda p: f"0.{p:04d}", st.integers(0, 9999))


@given(
    st.one_of(
        st.lists(st.tuples(price_texts, st.just("1.00")), max_size=6),
        st.lists(st.tuples(valid_prices, size_texts), max_size=6),
    ),
    st.booleans(),
)
@example([("0.5000", "1.2.00")], False)
@example([("0.5000", "1.000")], False)
@example([("0.5000", "-1.00"), ("0.4000", "2.00")], True)
def test_snapshot_levels_agree_with_the_reference_parsers(
    levels: list[tuple[str, str]], yes_price: bool
) -> None:
    parsed_levels = [(parsed(parse_price, p), parsed(parse_size, s)) for p, s in levels]
    msg = {"market_ticker": "M", "yes_dollars_fp": levels, "no_dollars_fp": levels}
    frame = {"type": "orderbook_snapshot", "sid": 1, "seq": 1, "msg": msg}
    pairs = [(p, s) for p, s in parsed_levels if p is not None and s is not None]
    if len(pairs) < len(levels):
        assert_refused(frame, "yes_dollars_fp")
        return
    record = decoded(frame, yes_price=yes_price)
    assert isinstance(record, BookSnapshot)
    yes = sorted(pairs)
    no = sorted((ONE_DOLLAR_E4 - p if yes_price else p, s) for p, s in pairs)
    assert record.yes_bids == tuple(Level(p, s) for p, s in yes)
    assert record.no_bids == tuple(Level(p, s) for p, s in no)
    out_of_range = any(not 0 <= p <= ONE_DOLLAR_E4 for p, _ in yes)
    negative = any(s < 0 for _, s in yes)
    expected_flags = (
        *((Flag.PRICE_OUT_OF_RANGE,) if out_of_range else ()),
        *((Flag.NEGATIVE_SIZE,) if negative else ()),
    )
    assert record.flags == expected_flags


TICKER_SIZES = (
    "yes_bid_size_fp",
    "yes_ask_size_fp",
    "last_trade_size_fp",
    "volume_fp",
    "open_interest_fp",
)


@given(st.lists(st.one_of(st.none(), size_texts), min_size=5, max_size=5))
def test_ticker_sizes_agree_with_parse_size_and_name_the_first_bad_field(
    texts: list[str | None],
) -> None:
    msg: dict[str, Any] = {"market_ticker": "M", "yes_bid_dollars": "0.4000"}
    msg.update({f: t for f, t in zip(TICKER_SIZES, texts, strict=True) if t is not None})
    frame = {"type": "ticker", "sid": 2, "msg": msg}
    expected = [None if t is None else parsed(parse_size, t) for t in texts]
    bad = [f for f, t, v in zip(TICKER_SIZES, texts, expected, strict=True) if t and v is None]
    bad += [f for f, t in zip(TICKER_SIZES, texts, strict=True) if t == ""]
    first_bad = next((f for f in TICKER_SIZES if f in bad), None)
    if first_bad is not None:
        assert_refused(frame, first_bad)
        return
    record = decoded(frame)
    assert isinstance(record, Ticker)
    got = [
        record.yes_bid_size_e2,
        record.yes_ask_size_e2,
        record.last_trade_size_e2,
        record.volume_e2,
        record.open_interest_e2,
    ]
    assert got == expected


@given(size_texts)
def test_trade_counts_agree_with_parse_size(text: str) -> None:
    msg = {
        "market_ticker": "M",
        "trade_id": "t",
        "yes_price_dollars": "0.4000",
        "no_price_dollars": "0.6000",
        "count_fp": text,
    }
    frame = {"type": "trade", "sid": 3, "seq": 1, "msg": msg}
    expected = parsed(parse_size, text)
    if expected is None:
        assert_refused(frame, "count_fp")
        return
    record = decoded(frame)
    assert isinstance(record, Trade)
    assert record.size_e2 == expected
