"""Exchange times (PROTOCOL.md §8) to integer ns: exact, checked against frames' own `ts_ms`."""

from __future__ import annotations

import calendar
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ssmd.wiretime
from ssmd.wiretime import (
    _rfc3339_to_ns_slow,
    ms_to_ns,
    ns_to_rfc3339,
    rfc3339_to_ns,
    seconds_to_ns,
)

MAX_NS = 253_402_300_799_999_999_999  # 9999-12-31T23:59:59.999999999Z
MIN_NS = -62_167_219_200_000_000_000  # 0000-01-01T00:00:00Z


def test_integer_seconds_and_ms() -> None:
    assert seconds_to_ns(1669149841) == 1_669_149_841_000_000_000
    assert ms_to_ns(1787838983996) == 1_787_838_983_996_000_000
    assert seconds_to_ns(0) == ms_to_ns(0) == 0


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        # 0 fractional digits (spec example; its ts_ms is 1669149841000)
        ("2022-11-22T20:44:01Z", 1_669_149_841_000_000_000),
        # 5 digits, trailing zero trimmed (prod 2026-08-20, ts_ms 1787186160630)
        ("2026-08-20T00:36:00.63094Z", 1_787_186_160_630_940_000),
        # 6 digits (demo 2026-08-27, ts_ms 1787838983996)
        ("2026-08-27T13:56:23.996443Z", 1_787_838_983_996_443_000),
        # 9 digits (2025-08-12 legacy delta)
        ("2025-08-12T21:00:32.539836022Z", 1_755_032_432_539_836_022),
        ("2026-08-17T08:49:57.58821Z", 1_786_956_597_588_210_000),
        ("2026-08-17T08:49:57.5Z", 1_786_956_597_500_000_000),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999999999Z", -1),
        ("2024-02-29T12:00:00Z", 1_709_208_000_000_000_000),
        ("2000-03-01T00:00:00z", 951_868_800_000_000_000),
        ("2000-03-01t00:00:00Z", 951_868_800_000_000_000),
        # offsets: the same instants written in other zones
        ("2026-08-20T02:36:00.63094+02:00", 1_787_186_160_630_940_000),
        ("2026-08-19T19:06:00.63094-05:30", 1_787_186_160_630_940_000),
        ("2022-11-22T20:44:01+00:00", 1_669_149_841_000_000_000),
        ("2022-11-23T00:00:01+03:15", 1_669_149_901_000_000_000),  # 20:45:01Z
    ],
)
def test_rfc3339_to_ns_exact(text: str, ns: int) -> None:
    assert rfc3339_to_ns(text) == ns


@pytest.mark.parametrize(
    ("text", "ts_ms"),
    [
        ("2026-08-17T08:49:57.530542Z", 1786956597530),
        ("2026-08-17T08:49:57.86889Z", 1786956597868),
        ("2026-08-17T08:53:40.021784Z", 1786956820021),
        ("2026-08-27T13:56:23.996443Z", 1787838983996),
    ],
)
def test_rfc3339_agrees_with_the_frames_own_ts_ms(text: str, ts_ms: int) -> None:
    """Live frames carry both `ts` and `ts_ms` (§7.1.2): truncating ours must give theirs."""
    assert rfc3339_to_ns(text) // 1_000_000 == ts_ms


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-08-20",
        "2026-08-20T00:36:00",  # no zone
        "2026-08-20 00:36:00Z",  # space separator
        "2026-08-20T00:36:00.Z",  # dot without digits
        "2026-08-20T00:36:00.1234567890Z",  # 10 fractional digits
        "2026-08-20T00:36:00,5Z",
        "2026-02-30T00:00:00Z",  # no such day
        "2025-02-29T00:00:00Z",  # not a leap year
        "2026-13-01T00:00:00Z",
        "2026-08-20T24:00:00Z",
        "2026-08-20T23:60:00Z",
        "2026-08-20T23:59:61Z",
        "2026-08-20T00:36:00+2:00",
        "2026-08-20T00:36:00+24:00",
        "2026-08-20T00:36:00+0200",
        "\uff12026-08-20T00:36:00Z",  # fullwidth digit
        "2026-08-20T00:36:00Z ",
        "1787186160630",
    ],
)
def test_rfc3339_rejections(text: str) -> None:
    with pytest.raises(ValueError, match=r"RFC3339|offset"):
        rfc3339_to_ns(text)


@given(st.integers(min_value=MIN_NS, max_value=MAX_NS))
def test_round_trip_ns_rfc3339_ns_all_digits(ns: int) -> None:
    assert rfc3339_to_ns(ns_to_rfc3339(ns)) == ns
    assert rfc3339_to_ns(ns_to_rfc3339(ns, digits=None)) == ns


@given(st.integers(min_value=MIN_NS, max_value=MAX_NS), st.integers(min_value=0, max_value=9))
def test_fewer_digits_truncate_towards_the_past(ns: int, digits: int) -> None:
    unit = 10 ** (9 - digits)
    assert rfc3339_to_ns(ns_to_rfc3339(ns, digits=digits)) == ns - ns % unit


@given(
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
def test_agrees_with_an_independent_calendar(moment: dt.datetime, offset_min: int) -> None:
    """calendar.timegm is the oracle for the seconds; the offset is applied by hand."""
    zone = dt.timezone(dt.timedelta(minutes=offset_min))
    text = moment.replace(tzinfo=zone).isoformat(timespec="microseconds")
    utc_seconds = calendar.timegm(moment.timetuple()) - offset_min * 60
    assert rfc3339_to_ns(text) == utc_seconds * 10**9 + moment.microsecond * 1000


def test_kalshi_style_formatting() -> None:
    assert ns_to_rfc3339(1_787_186_160_630_940_000, digits=None) == "2026-08-20T00:36:00.63094Z"
    assert ns_to_rfc3339(1_669_149_841_000_000_000, digits=None) == "2022-11-22T20:44:01Z"
    assert ns_to_rfc3339(1_669_149_841_000_000_000, digits=0) == "2022-11-22T20:44:01Z"
    assert ns_to_rfc3339(1_787_838_983_996_443_000, digits=6) == "2026-08-27T13:56:23.996443Z"
    assert ns_to_rfc3339(-1) == "1969-12-31T23:59:59.999999999Z"


@pytest.mark.parametrize("digits", [-1, 10])
def test_ns_to_rfc3339_rejects_bad_digits(digits: int) -> None:
    with pytest.raises(ValueError, match="digits"):
        ns_to_rfc3339(0, digits=digits)


def test_ns_to_rfc3339_rejects_years_beyond_9999() -> None:
    with pytest.raises(ValueError, match="9999"):
        ns_to_rfc3339(MAX_NS + 1)


# --- the cached-second fast path agrees with the reference parser ------------------------


@given(st.integers(min_value=MIN_NS, max_value=MAX_NS), st.integers(min_value=1, max_value=9))
def test_fast_path_equals_the_reference_on_kalshi_form(ns: int, digits: int) -> None:
    text = ns_to_rfc3339(ns, digits=digits)  # "…:SS.fffZ", the fast path's shape
    expected = _rfc3339_to_ns_slow(text)
    assert rfc3339_to_ns(text) == expected  # first sight of the second: parsed, cached
    assert rfc3339_to_ns(text) == expected  # served from the cached second


@given(st.integers(min_value=MIN_NS, max_value=MAX_NS), st.text(max_size=11))
def test_fast_path_rejects_what_the_reference_rejects(ns: int, fraction: str) -> None:
    text = ns_to_rfc3339(ns, digits=0)[:-1] + "." + fraction + "Z"
    rfc3339_to_ns(ns_to_rfc3339(ns, digits=3))  # warm the cache for this second
    try:
        expected: int | None = _rfc3339_to_ns_slow(text)
    except ValueError:
        expected = None
    try:
        got: int | None = rfc3339_to_ns(text)
    except ValueError:
        got = None
    assert got == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-08-20T00:36:00.1234567890Z",  # 10 digits
        "2026-08-20T00:36:00.63\u0660Z",  # Arabic-Indic digit passes str.isdigit()
        "2026-08-20T00:36:00.+5Z",
        "2026-13-20T00:36:00.5Z",  # bad month in an otherwise fast-path shape
    ],
)
def test_fast_path_shape_rejections_name_the_text(text: str) -> None:
    rfc3339_to_ns("2026-08-20T00:36:00.5Z")
    with pytest.raises(ValueError, match="RFC3339") as info:
        rfc3339_to_ns(text)
    assert repr(text) in str(info.value)


def test_second_cache_is_bounded() -> None:
    capacity = ssmd.wiretime._SECOND_NS_CAPACITY
    for second in range(capacity + 10):
        ns = second * 1_000_000_000 + 5_000
        assert rfc3339_to_ns(ns_to_rfc3339(ns, digits=6)) == ns
    assert len(ssmd.wiretime._SECOND_NS) <= capacity
