"""Exchange time formats (PROTOCOL.md §8) to integer nanoseconds since the Unix epoch, exactly.

Integer seconds (`ts`, lifecycle `*_ts`), integer milliseconds (`ts_ms`) and RFC3339 strings
with 0-9 fractional digits (`orderbook_delta.ts`, `ticker.time`). No floats, no datetime.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

NS_PER_S: Final = 1_000_000_000
NS_PER_MS: Final = 1_000_000
_S_PER_DAY: Final = 86_400

# "YYYY-MM-DDTHH:MM:" — the part deltas share for a minute; parsed once per minute (cached).
_PREFIX_LEN: Final = 17
_PREFIX = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):", re.ASCII)
# "SS[.fffffffff](Z|±HH:MM)"
_TAIL = re.compile(r"(\d\d)(?:\.(\d{1,9}))?(?:[Zz]|([+-])(\d\d):(\d\d))", re.ASCII)
_FRACTION_SCALE: Final[tuple[int, ...]] = tuple(10 ** (9 - n) for n in range(10))


def seconds_to_ns(seconds: int) -> int:
    """Integer Unix seconds to ns."""
    return seconds * NS_PER_S


def ms_to_ns(ms: int) -> int:
    """Integer Unix milliseconds to ns."""
    return ms * NS_PER_MS


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01 (inverse of _days_from_civil)."""
    days += 719_468
    era = days // 146_097
    doe = days - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


@lru_cache(maxsize=1024)
def _minute_base_s(prefix: str) -> int:
    """Unix seconds at the start of the minute "YYYY-MM-DDTHH:MM:" (local to its offset)."""
    match = _PREFIX.fullmatch(prefix)
    if match is None:
        raise ValueError(f"not an RFC3339 date-time: {prefix!r}")
    year, month, day, hour, minute = (int(g) for g in match.groups())
    if not 1 <= month <= 12 or not 1 <= day <= _days_in_month(year, month):
        raise ValueError(f"not a calendar date: {prefix[:10]!r}")
    if hour > 23 or minute > 59:
        raise ValueError(f"not a time of day: {prefix[11:16]!r}")
    return _days_from_civil(year, month, day) * _S_PER_DAY + hour * 3600 + minute * 60


# "YYYY-MM-DDTHH:MM:SS." -> Unix ns of that UTC second: deltas within one second share it.
# Only keys of texts the full parser accepted with a `Z` get in. Bounded: cleared when full,
# so a feed of ever-new seconds cannot grow it.
_SECOND_NS: dict[str, int] = {}
_SECOND_NS_GET: Final = _SECOND_NS.get
_SECOND_NS_CAPACITY: Final = 4096
_SECOND_KEY_LEN: Final = 20


def rfc3339_to_ns(text: str) -> int:
    """An RFC3339 date-time ("2026-08-20T00:36:00.63094Z", "...+02:00") to Unix ns, exactly.

    0-9 fractional digits; `Z` or a ±HH:MM offset. Second 60 (a leap second) is accepted and
    reads as the next second, as POSIX time does. Raises ValueError on anything else.
    """
    # Fast path, Kalshi's form "…:SS.f{1,9}Z" (§7.1.2): the second is looked up (validated by
    # the full parse the first time it was seen), only the fraction is parsed here.
    base_ns = _SECOND_NS_GET(text[:_SECOND_KEY_LEN])
    if base_ns is not None and text[-1] == "Z":
        fraction = text[20:-1]
        if fraction.isdigit() and fraction.isascii() and len(fraction) <= 9:
            return base_ns + int(fraction) * _FRACTION_SCALE[len(fraction)]
    ns = _rfc3339_to_ns_slow(text)
    if len(text) > 21 and text[19] == "." and text[-1] == "Z":
        fraction = text[20:-1]  # the slow parse accepted it: 1-9 ASCII digits
        if len(_SECOND_NS) >= _SECOND_NS_CAPACITY:
            _SECOND_NS.clear()
        _SECOND_NS[text[:_SECOND_KEY_LEN]] = ns - int(fraction) * _FRACTION_SCALE[len(fraction)]
    return ns


def _rfc3339_to_ns_slow(text: str) -> int:
    """The reference parser: every form rfc3339_to_ns accepts."""
    try:
        base_s = _minute_base_s(text[:_PREFIX_LEN])
    except ValueError as exc:
        raise ValueError(f"not an RFC3339 date-time: {text!r}") from exc
    match = _TAIL.fullmatch(text, _PREFIX_LEN)
    if match is None:
        raise ValueError(f"not an RFC3339 date-time: {text!r}")
    second_text, fraction, sign, off_hour, off_minute = match.groups()
    second = int(second_text)
    if second > 60:
        raise ValueError(f"not an RFC3339 date-time: {text!r}")
    seconds = base_s + second
    if sign is not None:
        offset_hour = int(off_hour)
        offset_minute = int(off_minute)
        if offset_hour > 23 or offset_minute > 59:
            raise ValueError(f"bad UTC offset in {text!r}")
        offset_s = offset_hour * 3600 + offset_minute * 60
        seconds = seconds - offset_s if sign == "+" else seconds + offset_s
    ns = seconds * NS_PER_S
    if fraction is not None:
        ns += int(fraction) * _FRACTION_SCALE[len(fraction)]
    return ns


def ns_to_rfc3339(ns: int, digits: int | None = 9) -> str:
    """Unix ns to an RFC3339 UTC string with `digits` (0-9) fractional digits, truncated.

    `digits=None` trims trailing zeros (and the dot for whole seconds), the way Kalshi prints
    `orderbook_delta.ts` (Go's RFC3339Nano; "…:00.63094Z", §7.1.2).
    """
    if digits is not None and not 0 <= digits <= 9:
        raise ValueError(f"digits must be 0-9 or None, got {digits}")
    seconds, sub_ns = divmod(ns, NS_PER_S)
    days, second_of_day = divmod(seconds, _S_PER_DAY)
    year, month, day = _civil_from_days(days)
    if not 0 <= year <= 9999:
        raise ValueError(f"{ns} ns is outside years 0000-9999")
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    nine = f"{sub_ns:09d}"
    fraction = nine.rstrip("0") if digits is None else nine[:digits]
    if fraction:
        text += "." + fraction
    return text + "Z"
