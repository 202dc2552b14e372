"""Exact fixed-point numbers for prices and sizes (PROTOCOL.md §8): no binary floats, ever.

Prices are integers of 1/10,000 dollar (`*_e4`, Kalshi's smallest tick is $0.0001); sizes are
integers of 1/100 contract (`*_e2`, Kalshi sends 2-decimal `*_fp` strings and fractional
contracts exist). Legacy integer cents and whole-contract counts convert exactly.
"""

from __future__ import annotations

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
    # Fast path: the current wire form has exactly `digits` decimals ("0.4800", "136.00").
    dot = text.find(".")
    if dot > 0 and len(text) - dot - 1 == digits and text[0] != "-" and text[0] != "+":
        whole = text[:dot]
        frac = text[dot + 1 :]
        if whole.isdigit() and frac.isdigit() and whole.isascii() and frac.isascii():
            return int(whole) * _POW10[digits] + int(frac)
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


def parse_price(text: str) -> int:
    """A `*_dollars` price string to integer 1/10,000 dollars."""
    return parse_fixed(text, PRICE_DIGITS)


def parse_size(text: str) -> int:
    """A `*_fp` contract-count string to integer 1/100 contracts."""
    return parse_fixed(text, SIZE_DIGITS)


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
