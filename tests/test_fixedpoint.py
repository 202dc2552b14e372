"""Exact fixed-point prices (1/10,000 $) and sizes (1/100 contract): round trips and rejections."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssmd.fixedpoint import (
    ONE_DOLLAR_E4,
    _parse_fixed_slow,
    cents_to_price,
    count_to_size,
    format_price,
    format_size,
    lookup_price_e4,
    parse_fixed,
    parse_price,
    parse_size,
    price_in_domain,
)

ANY_E4 = st.integers(min_value=-(10**12), max_value=10**12)
CANONICAL_PRICE = st.from_regex(r"-?(0|[1-9][0-9]{0,7})\.[0-9]{4}", fullmatch=True).filter(
    lambda s: s != "-0.0000"
)
CANONICAL_SIZE = st.from_regex(r"-?(0|[1-9][0-9]{0,9})\.[0-9]{2}", fullmatch=True).filter(
    lambda s: s != "-0.00"
)
UNSIGNED_WIRE_PRICE = st.from_regex(r"[0-9]{1,6}\.[0-9]{4}", fullmatch=True)
UNSIGNED_WIRE_SIZE = st.from_regex(r"[0-9]{1,9}\.[0-9]{2}", fullmatch=True)


@given(ANY_E4)
def test_price_format_then_parse_is_identity(price_e4: int) -> None:
    assert parse_price(format_price(price_e4)) == price_e4


@given(ANY_E4)
def test_size_format_then_parse_is_identity_signed(size_e2: int) -> None:
    assert parse_size(format_size(size_e2)) == size_e2


@given(CANONICAL_PRICE)
def test_canonical_price_parse_then_format_is_identity(text: str) -> None:
    assert format_price(parse_price(text)) == text


@given(CANONICAL_SIZE)
def test_canonical_size_parse_then_format_is_identity(text: str) -> None:
    assert format_size(parse_size(text)) == text


@given(UNSIGNED_WIRE_PRICE)
def test_price_fast_path_agrees_with_slow_path(text: str) -> None:
    assert parse_fixed(text, 4) == _parse_fixed_slow(text, 4)


@given(UNSIGNED_WIRE_SIZE)
def test_size_fast_path_agrees_with_slow_path(text: str) -> None:
    assert parse_fixed(text, 2) == _parse_fixed_slow(text, 2)


@pytest.mark.parametrize(
    ("text", "price_e4"),
    [
        ("0.4800", 4800),
        ("0.480", 4800),  # 3-dp docs examples (PROTOCOL.md §12 #15)
        ("0.48", 4800),
        ("1", 10000),
        ("1.0000", 10000),
        ("0.0001", 1),
        ("0.010000", 100),  # extra zero digits are exact (§8 fee_cost style)
        ("-0.0100", -100),
        ("+0.0100", 100),
        ("12.3456", 123456),
    ],
)
def test_price_accepted_forms(text: str, price_e4: int) -> None:
    assert parse_price(text) == price_e4


@pytest.mark.parametrize(
    ("text", "size_e2"),
    [("136.00", 13600), ("-54.00", -5400), ("101077.14", 10107714), ("3", 300), ("0.5", 50)],
)
def test_size_accepted_forms(text: str, size_e2: int) -> None:
    assert parse_size(text) == size_e2


@pytest.mark.parametrize(
    "text",
    [
        "0.00005",  # sub-tick: a fifth significant decimal
        "0.48001",
        "",
        "-",
        ".",
        "abc",
        "0.48a0",
        "1.2.3",
        "--1.0000",
        "1e-4",
        " 0.4800",
        "0.4800 ",
        "1_000.0000",
        "\u0660.\u0664\u0668\u0660\u0660",  # Arabic-Indic digits pass str.isdigit()
    ],
)
def test_price_rejections(text: str) -> None:
    with pytest.raises(ValueError, match=r"decimal|significant"):
        parse_price(text)


@pytest.mark.parametrize("text", ["1.001", "", "x", "1.0.0", "1,00"])
def test_size_rejections(text: str) -> None:
    with pytest.raises(ValueError, match=r"decimal|significant"):
        parse_size(text)


def test_legacy_cents_and_counts_convert_exactly() -> None:
    assert cents_to_price(48) == 4800
    assert cents_to_price(1) == 100
    assert cents_to_price(99) == 9900
    assert count_to_size(7) == 700
    assert count_to_size(-54) == -5400
    assert count_to_size(0) == 0


@given(st.integers(min_value=0, max_value=99))
def test_legacy_cents_agree_with_dollar_strings(cents: int) -> None:
    assert cents_to_price(cents) == parse_price(f"0.{cents:02d}") == parse_price(f"0.{cents:02d}00")


def test_price_domain_is_zero_to_one_dollar_inclusive() -> None:
    assert ONE_DOLLAR_E4 == 10000
    assert price_in_domain(0)
    assert price_in_domain(10000)
    assert not price_in_domain(-1)
    assert not price_in_domain(10001)


def test_format_is_canonical() -> None:
    assert format_price(4800) == "0.4800"
    assert format_price(-100) == "-0.0100"
    assert format_size(13600) == "136.00"
    assert format_size(-5) == "-0.05"


# --- hot-path shortcuts agree with the reference parser ----------------------------------

# Wire-like text: mostly the real shape, with signs, junk and odd digit counts mixed in.
WIRE_LIKE = st.from_regex(r"[-+]?[0-9]{0,4}\.?[0-9]{0,6}", fullmatch=True) | st.text(
    alphabet="0123456789.-+_ e\u0660\u00b2", max_size=9
)


def _reference(text: str, digits: int) -> int | None:
    try:
        return _parse_fixed_slow(text, digits)
    except ValueError:
        return None


def _parsed(parse: object, text: str) -> int | None:
    assert callable(parse)
    try:
        result = parse(text)
    except ValueError:
        return None
    assert isinstance(result, int)
    return result


@given(WIRE_LIKE)
def test_parse_price_equals_the_reference_on_any_text(text: str) -> None:
    assert _parsed(parse_price, text) == _reference(text, 4)
    assert _parsed(lambda t: parse_fixed(t, 4), text) == _reference(text, 4)


@given(WIRE_LIKE)
def test_parse_size_equals_the_reference_on_any_text(text: str) -> None:
    assert _parsed(parse_size, text) == _reference(text, 2)
    assert _parsed(lambda t: parse_fixed(t, 2), text) == _reference(text, 2)


@given(st.integers(min_value=0, max_value=ONE_DOLLAR_E4))
def test_price_table_covers_every_in_domain_canonical_price(price_e4: int) -> None:
    text = format_price(price_e4)
    assert lookup_price_e4(text) == price_e4 == _parse_fixed_slow(text, 4)


@pytest.mark.parametrize("text", ["1.0001", "-0.0100", "0.48", "0.480", "+0.4800", " 0.4800"])
def test_price_table_holds_only_canonical_in_domain_text(text: str) -> None:
    assert lookup_price_e4(text) is None


def test_negative_sizes_take_the_fast_path_exactly() -> None:
    assert parse_size("-10.00") == -1000
    assert parse_size("-0.50") == -50
