"""Subjects and Msg-Ids: the reversible token encoding, per-kind subjects and dedupe keys,
and stream filter coverage."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssmd.records import (
    BookDelta,
    BookSnapshot,
    Level,
    Lifecycle,
    LifecycleScope,
    PriceRange,
    Side,
    Status,
    StatusEvent,
    Ticker,
    Trade,
)
from ssmd.subjects import (
    SubjectMapper,
    decode_token,
    encode_token,
    msg_id_for,
    stream_covers,
    subject_covers,
)

PREFIX = "ssmd.test.kalshi"
MARKET = "KXSIMBTC-26NOV21-T97499.99"
TS = 1_763_744_000_000_000_000

# -- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("KXA-26NOV21-T3.5", "KXA-26NOV21-T3%2E5"),
        (MARKET, "KXSIMBTC-26NOV21-T97499%2E99"),
        ("KXBTCD-26AUG2017", "KXBTCD-26AUG2017"),
        ("a*b>c%d", "a%2Ab%3Ec%25d"),
        ("with space\ttab", "with%20space%09tab"),
        ("ctl\x00\x7f", "ctl%00%7F"),
        ("é€", "%C3%A9%E2%82%AC"),
        ("", "%"),
        ("%", "%25"),
        ("$JS_~!#@[]{}", "$JS_~!#@[]{}"),
    ],
)
def test_encode_token_examples(text: str, token: str) -> None:
    assert encode_token(text) == token
    assert decode_token(token) == text


@given(st.text())
def test_token_round_trip_any_unicode(text: str) -> None:
    token = encode_token(text)
    assert decode_token(token) == text
    assert token  # never an empty subject token
    assert token.isascii()
    assert not any(char in token for char in ".*> \t\r\n")
    assert all(0x21 <= ord(char) < 0x7F for char in token)


@given(
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="%.*>")
    )
)
def test_safe_text_is_kept_as_is(text: str) -> None:
    expected = text or "%"
    assert encode_token(text) == expected


@pytest.mark.parametrize("token", ["a.b", "%2", "%zz", "%2e", "a b", "é", "%C3"])
def test_decode_rejects_what_encode_never_makes(token: str) -> None:
    with pytest.raises(ValueError, match=r"token|UTF-8"):
        decode_token(token)


# -- records -----------------------------------------------------------------------------------


def trade(**changes: object) -> Trade:
    base = Trade(
        market=MARKET,
        exchange_ts_ns=TS,
        receive_ts_ns=TS + 500,
        sid=3,
        seq=7,
        trade_id="d91bc706-ee49-470d-82d8-11418bda6fed",
        yes_price_e4=3600,
        no_price_e4=6400,
        size_e2=13600,
        taker_side=Side.NO,
    )
    return msgspec.structs.replace(base, **changes)


def ticker(**changes: object) -> Ticker:
    base = Ticker(
        market=MARKET,
        exchange_ts_ns=TS,
        receive_ts_ns=TS + 900,
        sid=4,
        seq=2,
        last_price_e4=4800,
        yes_bid_e4=4700,
        yes_ask_e4=4900,
        yes_bid_size_e2=100,
        yes_ask_size_e2=None,
        volume_e2=5000,
        open_interest_e2=1200,
    )
    return msgspec.structs.replace(base, **changes)


def lifecycle(**changes: object) -> Lifecycle:
    base = Lifecycle(
        market=MARKET,
        exchange_ts_ns=TS,
        receive_ts_ns=TS + 100,
        sid=5,
        seq=1,
        scope=LifecycleScope.MARKET,
        event_type="created",
        event_ticker="KXSIMBTC-26NOV21",
        title="Bitcoin price",
        price_ranges=(PriceRange(start_e4=0, end_e4=10000, step_e4=100),),
        custom_strike={"b": 1, "a": [1, 2]},
    )
    return msgspec.structs.replace(base, **changes)


def snapshot() -> BookSnapshot:
    return BookSnapshot(
        market=MARKET,
        receive_ts_ns=TS + 5,
        sid=1,
        seq=1,
        yes_bids=(Level(price_e4=4700, size_e2=100),),
        no_bids=(Level(price_e4=5100, size_e2=300),),
    )


def delta() -> BookDelta:
    return BookDelta(
        market=MARKET,
        exchange_ts_ns=TS,
        receive_ts_ns=TS + 6,
        sid=1,
        seq=2,
        side=Side.YES,
        price_e4=4700,
        delta_e2=-100,
    )


def status() -> Status:
    return Status(
        market="",
        receive_ts_ns=TS + 7,
        event=StatusEvent.GAP,
        connection_id="c1",
        expected_seq=3,
        received_seq=5,
    )


def test_subject_for_each_kind() -> None:
    mapper = SubjectMapper(PREFIX)
    token = "KXSIMBTC-26NOV21-T97499%2E99"
    assert mapper.subject_for(trade()) == f"{PREFIX}.trade.{token}"
    assert mapper.subject_for(ticker()) == f"{PREFIX}.ticker.{token}"
    assert mapper.subject_for(lifecycle()) == f"{PREFIX}.lifecycle.{token}"
    assert mapper.subject_for(snapshot()) == f"{PREFIX}.book_snapshot.{token}"
    assert mapper.subject_for(delta()) == f"{PREFIX}.book_delta.{token}"
    assert mapper.subject_for(status()) == f"{PREFIX}.status"
    assert mapper.all_subjects == f"{PREFIX}.>"
    assert mapper.kind_subject("trade") == f"{PREFIX}.trade.>"
    assert mapper.kind_subject("status") == f"{PREFIX}.status"


def test_subject_for_depends_on_market_and_kind_only() -> None:
    mapper = SubjectMapper(PREFIX)
    first = mapper.subject_for(trade())
    assert mapper.subject_for(trade(seq=8, trade_id="other")) == first
    assert mapper.subject_for(trade(market="KXA-1")) == f"{PREFIX}.trade.KXA-1"
    assert mapper.subject_for(status()) == mapper.subject_for(
        Status(market="x", receive_ts_ns=1, event=StatusEvent.STALE, connection_id="c")
    )


def test_event_scoped_lifecycle_goes_under_the_event_ticker() -> None:
    record = lifecycle(market="KXSIMBTC-26NOV21", scope=LifecycleScope.EVENT)
    assert SubjectMapper(PREFIX).subject_for(record) == f"{PREFIX}.lifecycle.KXSIMBTC-26NOV21"


def test_trade_msg_id_is_the_exchange_trade_id() -> None:
    assert msg_id_for(trade()) == "trade:d91bc706-ee49-470d-82d8-11418bda6fed"
    # The same trade received by another instance (other receive time, sid, seq): same key.
    assert msg_id_for(trade(receive_ts_ns=TS + 9, sid=9, seq=99)) == msg_id_for(trade())


def test_ticker_msg_id_is_the_exchange_fact() -> None:
    key = msg_id_for(ticker())
    assert key == f"ticker:{MARKET}:{TS}:4800:4700:4900:100:::5000:1200::"
    assert msg_id_for(ticker(receive_ts_ns=1, sid=8, seq=80)) == key
    assert msg_id_for(ticker(yes_bid_e4=4600)) != key
    assert msg_id_for(ticker(exchange_ts_ns=TS + 1)) != key
    assert msg_id_for(ticker(market="OTHER")) != key


def test_lifecycle_msg_id_hashes_the_exchange_content() -> None:
    key = msg_id_for(lifecycle())
    prefix = f"lifecycle:{MARKET}:created:"
    assert key.startswith(prefix)
    digest = key.removeprefix(prefix)
    assert len(digest) == 16
    int(digest, 16)
    # Receive-side fields do not change it; exchange content does.
    assert msg_id_for(lifecycle(receive_ts_ns=5, sid=None, seq=None)) == key
    assert msg_id_for(lifecycle(custom_strike={"a": [1, 2], "b": 1})) == key  # key order
    assert msg_id_for(lifecycle(title="Bitcoin price?")) != key
    assert msg_id_for(lifecycle(event_type="activated")).startswith(
        f"lifecycle:{MARKET}:activated:"
    )


def test_book_msg_ids_identify_one_received_frame() -> None:
    assert msg_id_for(snapshot()) == f"book_snapshot:{MARKET}:1:1:{TS + 5}"
    assert msg_id_for(delta()) == f"book_delta:{MARKET}:1:2:{TS + 6}"
    other_instance = msgspec.structs.replace(delta(), receive_ts_ns=TS + 7)
    assert msg_id_for(other_instance) != msg_id_for(delta())


def test_status_msg_id() -> None:
    assert msg_id_for(status()) == f"status:c1:gap:{TS + 7}"


# -- stream coverage ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream_subject", "ours", "covered"),
    [
        (">", "ssmd.env.kalshi.>", True),
        ("ssmd.>", "ssmd.env.kalshi.>", True),
        ("ssmd.env.kalshi.>", "ssmd.env.kalshi.>", True),
        ("ssmd.*.kalshi.>", "ssmd.env.kalshi.>", True),
        ("ssmd.env.kalshi.>", "ssmd.env.kalshi.trade.X", True),
        ("ssmd.env.kalshi.*", "ssmd.env.kalshi.status", True),
        ("ssmd.env.kalshi.*", "ssmd.env.kalshi.>", False),  # a.b.c.d.e matches ours only
        ("ssmd.env.kalshi.*.>", "ssmd.env.kalshi.>", False),  # .status is not covered
        ("ssmd.env.kalshi.trade.>", "ssmd.env.kalshi.>", False),
        ("ssmd.other.kalshi.>", "ssmd.env.kalshi.>", False),
        ("ssmd.env.kalshi", "ssmd.env.kalshi.>", False),
        ("ssmd.env.kalshi.>", "ssmd.env.kalshi", False),  # > needs one more token
        ("ssmd.env", "ssmd.env", True),
        ("ssmd.env", "ssmd.env.x", False),
        ("ssmd.env.x", "ssmd.env", False),
        ("ssmd.*", "ssmd.env", True),
        ("ssmd.env", "ssmd.*", False),
        ("ssmd.*", "ssmd.*", True),
        ("ssmd.>", "ssmd.*", True),
        ("ssmd.*", "ssmd.>", False),
        ("*.*", "ssmd.env", True),
        ("*", "ssmd.env", False),
    ],
)
def test_subject_covers_truth_table(stream_subject: str, ours: str, covered: bool) -> None:
    assert subject_covers(stream_subject, ours) is covered


def test_stream_covers_with_any_subject() -> None:
    ours = "ssmd.env.kalshi.>"
    assert stream_covers(["orders.>", "ssmd.env.>"], ours)
    assert not stream_covers(["orders.>", "ssmd.env.kalshi.trade.>"], ours)
    assert not stream_covers([], ours)


def test_stream_covers_with_a_union_of_subjects() -> None:
    ours = "ssmd.env.kalshi.>"
    # `*` covers one more token and `*.>` every longer subject: together, all of ours.
    assert stream_covers(["ssmd.env.kalshi.*", "ssmd.env.kalshi.*.>"], ours)
    assert stream_covers(["ssmd.env.kalshi.*", "ssmd.env.kalshi.*.*", "ssmd.*.*.*.*.>"], ours)
    assert not stream_covers(["ssmd.env.kalshi.*", "ssmd.env.kalshi.*.*"], ours)
    assert not stream_covers(["ssmd.env.kalshi.*", "ssmd.env.kalshi.trade.>"], ours)


_OPTIONAL_INT = st.none() | st.integers(min_value=-(2**63), max_value=2**63)


def _joined(*values: object) -> str:
    return ":".join("" if value is None else str(value) for value in values)


@given(
    sid=_OPTIONAL_INT,
    seq=_OPTIONAL_INT,
    exchange_ts_ns=_OPTIONAL_INT,
    values=st.lists(_OPTIONAL_INT, min_size=10, max_size=10),
    market=st.text(max_size=30),
)
def test_msg_ids_match_their_documented_formula(
    sid: int | None,
    seq: int | None,
    exchange_ts_ns: int | None,
    values: list[int | None],
    market: str,
) -> None:
    # Msg-Ids must never change between versions: a restarted instance re-publishing a record
    # has to hit the stream's dedupe window with the same key.
    book = {"market": market, "receive_ts_ns": TS, "sid": sid, "seq": seq}
    assert msg_id_for(BookDelta(**book, side=Side.YES, price_e4=1, delta_e2=1)) == (
        f"book_delta:{market}:{_joined(sid, seq)}:{TS}"
    )
    assert msg_id_for(BookSnapshot(**book)) == f"book_snapshot:{market}:{_joined(sid, seq)}:{TS}"
    names = (
        "last_price_e4", "yes_bid_e4", "yes_ask_e4", "yes_bid_size_e2", "yes_ask_size_e2",
        "last_trade_size_e2", "volume_e2", "open_interest_e2", "notional_volume_usd",
        "notional_open_interest_usd",
    )  # fmt: skip
    record = Ticker(**book, exchange_ts_ns=exchange_ts_ns, **dict(zip(names, values, strict=True)))
    assert msg_id_for(record) == f"ticker:{market}:{_joined(exchange_ts_ns, *values)}"
