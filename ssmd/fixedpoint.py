"""Exact fixed-point numbers for prices and sizes (PROTOCOL.md §8): no binary floats, ever.

Prices are integers of 1/10,000 dollar (`*_e4`, Kalshi's smallest tick is $0.0001); sizes are
integers of 1/100 contract (`*_e2`, Kalshi sends 2-decimal `*_fp` strings and fractional
contracts exist). Legacy integer cents and whole-contract counts convert exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

PRICE_DIGITS = 4
SIZE_DIGITS = 2
PRICE_SCALE: int = 10**PRICE_DIGITS
SIZE_SCALE: int = 10**SIZE_DIGITS
ONE_DOLLAR_E4: int = PRICE_SCALE

_DIGITS = frozenset("0123456789")
_POW10: tuple[int, ...] = tuple(10**n for n in range(19))


def parse_fixed(text: str, digits: int) -> int:
    """Parse a decimal string into an integer scaled by 10**digits, exactly.

    Accepts an optional leading sign, an optional fractional part, and more fractional digits
    than `digits` only when the extra ones are zeros ("0.010000" is fine for 4 digits,
    "0.00005" is not). Raises ValueError with the offending text otherwise.
    """
    # Fast path: the current wire form, ASCII digits with exactly `digits` decimals ("0.4800",
    # "136.00"): dropping the one dot gives the scaled integer. isascii() is O(1) and keeps
    # out the non-ASCII digits int() would accept; isdigit() keeps out signs, "_" and spaces.
    if len(text) > digits + 1 and text[-digits - 1] == ".":
        body = text.replace(".", "")
        if len(body) == len(text) - 1 and body.isdigit() and body.isascii():
            return int(body)
    return _parse_fixed_slow(text, digits)


def _parse_fixed_slow(text: str, digits: int) -> int:
    body = text
    sign = 1
    if body[:1] in ("-", "+"):
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    whole, dot, frac = body.partition(".")
    if not whole and not frac:
        raise ValueError(f"not a decimal number: {text!r}")
    if not set(whole) <= _DIGITS or not set(frac) <= _DIGITS or (dot and not frac and not whole):
        raise ValueError(f"not a decimal number: {text!r}")
    if len(frac) > digits:
        extra = frac[digits:]
        if extra.strip("0"):
            raise ValueError(f"{text!r} has more than {digits} significant decimals")
        frac = frac[:digits]
    frac = frac.ljust(digits, "0")
    return sign * (int(whole or "0") * _POW10[digits] + int(frac or "0"))


def format_fixed(value: int, digits: int) -> str:
    """Format a scaled integer back to its canonical decimal string ("0.4800", "-54.00")."""
    sign = "-" if value < 0 else ""
    magnitude = -value if value < 0 else value
    scale = 10**digits
    return f"{sign}{magnitude // scale}.{magnitude % scale:0{digits}d}"


# Every canonical in-domain wire price, "0.0000" to "1.0000" (10,001 entries, built once and
# never grown, so a feed cannot inflate it): one dict lookup instead of a parse.
_PRICE_E4_BY_TEXT: Final[dict[str, int]] = {
    format_fixed(price_e4, PRICE_DIGITS): price_e4 for price_e4 in range(ONE_DOLLAR_E4 + 1)
}
lookup_price_e4: Final[Callable[[str], int | None]] = _PRICE_E4_BY_TEXT.get
"""The price of a canonical in-domain wire price string, or None: then call parse_price."""


def parse_price(text: str) -> int:
    """A `*_dollars` price string to integer 1/10,000 dollars."""
    price_e4 = _PRICE_E4_BY_TEXT.get(text)
    if price_e4 is not None:
        return price_e4
    return parse_fixed(text, PRICE_DIGITS)


def parse_size(text: str) -> int:
    """A `*_fp` contract-count string to integer 1/100 contracts."""
    # parse_fixed's fast path, inlined, plus negative deltas ("-10.00"). Sizes are parsed, not
    # cached: a bounded cache measured slower end to end (every decoded string is new, so each
    # lookup pays for hashing it, and misses pay twice).
    if len(text) > 3 and text[-3] == "." and text.isascii():
        body = text.replace(".", "")
        if len(body) == len(text) - 1 and (
            body.isdigit() or (body[0] == "-" and body[1:].isdigit())
        ):
            return int(body)
    return _parse_fixed_slow(text, SIZE_DIGITS)


def format_price(price_e4: int) -> str:
    return format_fixed(price_e4, PRICE_DIGITS)


def format_size(size_e2: int) -> str:
    return format_fixed(size_e2, SIZE_DIGITS)


def cents_to_price(cents: int) -> int:
    """Legacy integer cents (1-99) to 1/10,000 dollars."""
    return cents * (PRICE_SCALE // 100)


def count_to_size(count: int) -> int:
    """Legacy whole-contract integer counts to 1/100 contracts."""
    return count * SIZE_SCALE


def price_in_domain(price_e4: int) -> bool:
    """A binary contract's price lies in [$0, $1]."""
    return 0 <= price_e4 <= ONE_DOLLAR_E4
