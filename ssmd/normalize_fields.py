"""Field conversions the normalizers share (ssmd.normalize, ssmd.normalize_lifecycle): a field
that is not what PROTOCOL.md §8 says becomes a FrameDecodeError naming the frame type and field;
a price outside $0..$1 is flagged, not rejected."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

import msgspec

from ssmd.errors import FrameDecodeError
from ssmd.fixedpoint import ONE_DOLLAR_E4, lookup_price_e4, parse_price, parse_size
from ssmd.messages import INVALID_FIELDS
from ssmd.records import Flag
from ssmd.wiretime import rfc3339_to_ns, seconds_to_ns

OUT_OF_RANGE: Final = (Flag.PRICE_OUT_OF_RANGE,)
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", re.ASCII)


def invalid_field(type_name: str, field: str, exc: ValueError) -> FrameDecodeError:
    return FrameDecodeError(INVALID_FIELDS, detail=f"{field}: {exc}", type_name=type_name)


def price_field(text: str, field: str, type_name: str) -> int:
    price_e4 = lookup_price_e4(text)
    if price_e4 is not None:
        return price_e4
    try:
        return parse_price(text)
    except ValueError as exc:
        raise invalid_field(type_name, field, exc) from exc


def size_field(text: str, field: str, type_name: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise invalid_field(type_name, field, exc) from exc


def rfc3339_field(text: str, field: str, type_name: str) -> int:
    try:
        return rfc3339_to_ns(text)
    except ValueError as exc:
        raise invalid_field(type_name, field, exc) from exc


def missing_field(type_name: str, field: str) -> FrameDecodeError:
    return FrameDecodeError(INVALID_FIELDS, detail=f"missing {field}", type_name=type_name)


def out_of_range(price_e4: int | None) -> bool:
    return price_e4 is not None and not 0 <= price_e4 <= ONE_DOLLAR_E4


def number_text(raw: msgspec.Raw, field: str, type_name: str) -> str | None:
    """Exact decimal text of a JSON number (or of a numeric string, Jan-2026 docs); None when
    absent or null. Never goes through float: "95000.10" stays as sent, "1.5e3" -> "1500"."""
    text = bytes(raw).decode()
    if not text or text == "null":
        return None
    if text.startswith('"'):
        text = msgspec.json.decode(text, type=str)
    if JSON_NUMBER.fullmatch(text) is None:
        raise invalid_field(type_name, field, ValueError(f"not a decimal number: {text!r}"))
    if "e" in text or "E" in text:
        return format(Decimal(text), "f")  # exact: Decimal is base 10
    return text


def opt_ns(seconds: int | None) -> int | None:
    return None if seconds is None else seconds_to_ns(seconds)
