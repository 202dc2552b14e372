"""Wire decoding (PROTOCOL.md §4-§7) over every captured line, failure classes, and commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ssmd.errors import FrameDecodeError
from ssmd.messages import (
    CONTROL_FRAME_TYPES,
    DATA_FRAME_TYPES,
    INVALID_FIELDS,
    MALFORMED_JSON,
    NO_TYPE,
    UNSUPPORTED_TYPE,
    ErrorFrame,
    EventFeeUpdate,
    EventLifecycle,
    FrameDecoder,
    ListSubscriptions,
    MarketLifecycleV2,
    MultivariateMarketLifecycle,
    Ok,
    OrderbookDelta,
    OrderbookSnapshot,
    Subscribe,
    Subscribed,
    SubscribeParams,
    SubscriptionInfo,
    TickerFrame,
    TradeFrame,
    Unsubscribe,
    Unsubscribed,
    UnsubscribeParams,
    UpdateAction,
    UpdateSubscription,
    UpdateSubscriptionParams,
    decode_command,
    encode_command,
)
from ssmd.records import BookSide, Side

CAPTURES = Path(__file__).resolve().parents[2] / "shared/kalshi/captures"

EXPECTED_STRUCT: dict[str, type[msgspec.Struct]] = {
    "subscribed": Subscribed,
    "ok": Ok,
    "unsubscribed": Unsubscribed,
    "error": ErrorFrame,
    "orderbook_snapshot": OrderbookSnapshot,
    "orderbook_delta": OrderbookDelta,
    "ticker": TickerFrame,
    "trade": TradeFrame,
    "market_lifecycle_v2": MarketLifecycleV2,
    "multivariate_market_lifecycle": MultivariateMarketLifecycle,
    "event_lifecycle": EventLifecycle,
    "event_fee_update": EventFeeUpdate,
}
# Types a market-data connector deliberately does not decode (§7.0, §7.3, §7.6).
PRIVATE_CHANNEL_TYPES = frozenset({"fill", "user_order", "market_position", "order_group_updates"})
COMMUNICATIONS_TYPES = frozenset(
    {"rfq_created", "rfq_deleted", "quote_created", "quote_accepted", "quote_executed"}
)
INDEX_FEED_TYPES = frozenset(
    {
        "cfbenchmarks_value",
        "cfbenchmarks_value_indexlist",
        "cfbenchmarks_value_5hz",
        "cfbenchmarks_value_5hz_indexlist",
        "pyth_value",
        "pyth_value_underlying_list",
    }
)
REMOVED_CHANNEL_TYPES = frozenset({"ticker_v2", "multivariate_lookup"})
UNSUPPORTED_TYPES = (
    PRIVATE_CHANNEL_TYPES | COMMUNICATIONS_TYPES | INDEX_FEED_TYPES | REMOVED_CHANNEL_TYPES
)

DECODER = FrameDecoder()


def capture_lines() -> list[Any]:
    params = []
    for path in sorted(CAPTURES.glob("*.jsonl")):
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            if line.strip():
                params.append(pytest.param(line, id=f"{path.name}:{number}"))
    return params


CAPTURE_LINES = capture_lines()


def test_the_captures_are_there() -> None:
    assert len(list(CAPTURES.glob("*.jsonl"))) >= 20, f"captures not found at {CAPTURES}"
    assert len(CAPTURE_LINES) >= 200


def test_the_struct_map_covers_exactly_the_decoded_types() -> None:
    assert set(EXPECTED_STRUCT.values()) == {*CONTROL_FRAME_TYPES, *DATA_FRAME_TYPES}


@pytest.mark.parametrize("line", CAPTURE_LINES)
def test_every_captured_line_decodes_or_is_classified(line: bytes) -> None:
    as_json = json.loads(line)  # the oracle: a plain JSON parse says what the line is
    type_name = as_json.get("type")
    if type_name is None:
        assert "cmd" in as_json, "a line with no `type` must be a client command"
        with pytest.raises(FrameDecodeError) as caught:
            DECODER.decode(line)
        assert caught.value.reason == NO_TYPE
    elif type_name in UNSUPPORTED_TYPES:
        with pytest.raises(FrameDecodeError) as caught:
            DECODER.decode(line)
        assert caught.value.reason == UNSUPPORTED_TYPE
        assert caught.value.type_name == type_name
    else:
        assert type_name in EXPECTED_STRUCT, f"unclassified type {type_name!r}"
        frame = DECODER.decode(line)
        assert type(frame) is EXPECTED_STRUCT[type_name]
        assert frame.id == as_json.get("id")
        assert frame.sid == as_json.get("sid")
        assert frame.seq == as_json.get("seq")


@pytest.mark.parametrize("line", CAPTURE_LINES)
def test_decoded_frames_reencode_to_the_same_json(line: bytes) -> None:
    """Absent keys stay absent (omit_defaults), strikes keep their number text, unknown keys
    are the only loss: the simulator can send these structs. (Every captured key is known.)"""
    try:
        frame = DECODER.decode(line)
    except FrameDecodeError:
        return
    assert without_nulls(json.loads(msgspec.json.encode(frame))) == without_nulls(json.loads(line))


def without_nulls(value: Any) -> Any:
    """A JSON null and an absent key mean the same to the decoder (None is "absent")."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


# --- content of specific frames ----------------------------------------------------------


def decode(text: str) -> Any:
    return DECODER.decode(text.encode())


def test_ok_every_era() -> None:
    current = decode(
        '{"id":123,"sid":456,"seq":222,"type":"ok","msg":{"market_tickers":["A","B"]}}'
    )
    assert isinstance(current, Ok)
    assert current.acked_market_tickers == ("A", "B")
    assert current.listed_subscriptions is None
    jan_2026 = decode('{"id":123,"sid":456,"seq":222,"type":"ok","market_tickers":["A","B"]}')
    assert jan_2026.acked_market_tickers == ("A", "B")
    listing = decode('{"id":3,"type":"ok","msg":[{"channel":"ticker","sid":2}]}')
    assert listing.listed_subscriptions == (SubscriptionInfo(channel="ticker", sid=2),)
    assert listing.acked_market_tickers is None
    jan_listing = decode('{"id":3,"type":"ok","subscriptions":[{"channel":"fill","sid":3}]}')
    assert jan_listing.listed_subscriptions == (SubscriptionInfo(channel="fill", sid=3),)
    bare = decode('{"id":4,"sid":1,"seq":9,"type":"ok"}')
    assert bare.acked_market_tickers is None
    assert bare.listed_subscriptions is None


def test_subscribed_with_and_without_msg() -> None:
    frame = decode('{"type":"subscribed","id":1,"msg":{"channel":"orderbook_delta","sid":1}}')
    assert frame == Subscribed(id=1, msg=SubscriptionInfo(channel="orderbook_delta", sid=1))
    assert decode('{"type":"subscribed","id":1}') == Subscribed(id=1)


def test_unsubscribed_old_and_new() -> None:
    assert decode('{"sid":2,"type":"unsubscribed"}') == Unsubscribed(sid=2)
    assert decode('{"id":102,"sid":2,"seq":7,"type":"unsubscribed"}') == Unsubscribed(
        id=102, sid=2, seq=7
    )


def test_error_frames() -> None:
    scoped = decode('{"msg":{"code":13,"msg":"Unsupported action"},"seq":2,"sid":3,"type":"error"}')
    assert isinstance(scoped, ErrorFrame)
    assert (scoped.id, scoped.sid, scoped.seq) == (None, 3, 2)
    assert (scoped.msg.code, scoped.msg.msg) == (13, "Unsupported action")
    named = decode(
        '{"id":127,"type":"error","msg":{"code":16,"msg":"Market not found",'
        '"market_ticker":"INVALID-MARKET"}}'
    )
    assert named.msg.market_ticker == "INVALID-MARKET"
    many = decode('{"type":"error","msg":{"code":26,"msg":"x","market_tickers":["A","B"]}}')
    assert many.msg.market_tickers == ("A", "B")


def test_snapshot_every_representation_is_kept_as_sent() -> None:
    frame = decode(
        '{"type":"orderbook_snapshot","sid":2,"seq":2,"msg":{"market_ticker":"FED-23DEC-T3.00",'
        '"market_id":"9b0f","yes":[[8,300]],"yes_dollars":[["0.080",300]],'
        '"yes_dollars_fp":[["0.0800","300.00"]],"no":[[54,20]],"no_dollars":[["0.540",20]],'
        '"no_dollars_fp":[["0.5400","20.00"]]}}'
    )
    assert isinstance(frame, OrderbookSnapshot)
    msg = frame.msg
    assert msg.yes == ((8, 300),)
    assert msg.yes_dollars == (("0.080", 300),)
    assert msg.yes_dollars_fp == (("0.0800", "300.00"),)
    assert msg.no == ((54, 20),)
    assert msg.no_dollars == (("0.540", 20),)
    assert msg.no_dollars_fp == (("0.5400", "20.00"),)
    empty = decode('{"type":"orderbook_snapshot","sid":1,"seq":1,"msg":{"market_ticker":"K"}}')
    assert empty.msg.market_id is None
    assert empty.msg.yes_dollars_fp is None


def test_delta_fields() -> None:
    frame = decode(
        '{"type":"orderbook_delta","sid":1,"seq":3,"msg":{"market_ticker":"M","market_id":"i",'
        '"price":51,"price_dollars":"0.5100","delta":-1,"delta_fp":"-1.00","side":"no",'
        '"ts":"2025-08-12T21:00:32.539836022Z","ts_ms":1755032432539,"client_order_id":"c1",'
        '"subaccount":3}}'
    )
    assert isinstance(frame, OrderbookDelta)
    msg = frame.msg
    assert msg.side is Side.NO
    assert (msg.price, msg.price_dollars, msg.delta, msg.delta_fp) == (51, "0.5100", -1, "-1.00")
    assert (msg.ts, msg.ts_ms) == ("2025-08-12T21:00:32.539836022Z", 1755032432539)
    assert (msg.client_order_id, msg.subaccount) == ("c1", 3)


def test_ticker_legacy_clock_and_empty_price() -> None:
    line = (CAPTURES / "aaronwald__ssmd__connector-messages-rs.jsonl").read_bytes().splitlines()[1]
    frame = DECODER.decode(line)
    assert isinstance(frame, TickerFrame)
    assert frame.msg.clock == 6598272643
    assert frame.msg.price == 0
    assert frame.msg.price_dollars == ""
    assert frame.seq is None


def test_trade_sides() -> None:
    line = (CAPTURES / "kalshi-docs__trade.jsonl").read_bytes()
    frame = DECODER.decode(line)
    assert isinstance(frame, TradeFrame)
    assert frame.msg.taker_side is Side.NO
    assert frame.msg.taker_outcome_side is Side.NO
    assert frame.msg.taker_book_side is BookSide.ASK
    assert frame.msg.is_block_trade is False


def test_lifecycle_numbers_keep_their_exact_text() -> None:
    frame = decode(
        '{"type":"market_lifecycle_v2","sid":13,"seq":5,"msg":{"event_type":"metadata_updated",'
        '"market_ticker":"K","strike_type":"between","floor_strike":95000.10,'
        '"cap_strike":1234567890123456789.0000000001}}'
    )
    assert isinstance(frame, MarketLifecycleV2)
    assert bytes(frame.msg.floor_strike) == b"95000.10"
    assert bytes(frame.msg.cap_strike) == b"1234567890123456789.0000000001"
    created = DECODER.decode(
        (CAPTURES / "kalshi-docs__market_lifecycle_v2.jsonl").read_bytes().splitlines()[0]
    )
    assert isinstance(created, MarketLifecycleV2)
    assert created.msg.additional_metadata is not None
    assert bytes(created.msg.additional_metadata.floor_strike) == b"4487"
    assert bytes(created.msg.floor_strike) == b""  # absent
    fee = decode(
        '{"type":"event_fee_update","sid":5,"seq":9,"msg":{"event_ticker":"E",'
        '"fee_type_override":"quadratic","fee_multiplier_override":0.70}}'
    )
    assert isinstance(fee, EventFeeUpdate)
    assert bytes(fee.msg.fee_multiplier_override) == b"0.70"
    null_fee = decode(
        '{"type":"event_fee_update","msg":{"event_ticker":"E","fee_multiplier_override":null}}'
    )
    assert bytes(null_fee.msg.fee_multiplier_override) == b"null"


def test_event_lifecycle_both_subtitle_keys() -> None:
    new = decode('{"type":"event_lifecycle","sid":5,"msg":{"event_ticker":"E","subtitle":"s"}}')
    old = decode('{"type":"event_lifecycle","sid":5,"msg":{"event_ticker":"E","sub_title":"o"}}')
    assert isinstance(new, EventLifecycle)
    assert isinstance(old, EventLifecycle)
    assert (new.msg.subtitle, new.msg.sub_title) == ("s", None)
    assert (old.msg.subtitle, old.msg.sub_title) == (None, "o")


def test_str_input_is_accepted() -> None:
    text = '{"type":"subscribed","id":1,"msg":{"channel":"ticker","sid":2}}'
    assert DECODER.decode(text) == DECODER.decode(text.encode())


def test_unknown_fields_are_ignored_everywhere() -> None:
    plain = (
        '{"type":"trade","sid":3,"seq":1,"msg":{"market_ticker":"M","trade_id":"t",'
        '"yes_price_dollars":"0.1000","no_price_dollars":"0.9000","count_fp":"1.00"}}'
    )
    noisy = (
        '{"type":"trade","sid":3,"seq":1,"_rx_ms":1,"extra":{"nested":[1,2,{"a":null}]},'
        '"msg":{"market_ticker":"M","trade_id":"t","future_field":[1.5,"x"],'
        '"yes_price_dollars":"0.1000","no_price_dollars":"0.9000","count_fp":"1.00"}}'
    )
    assert decode(noisy) == decode(plain)


# --- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"type":"ticker",',
        b'{"type":"fill","msg":{',  # unknown type first, then truncated: still malformed
        b'{"type":"orderbook_delta","sid":1} trailing',
        b"\xff\xfe{}",
        b"",
    ],
)
def test_malformed_json(data: bytes) -> None:
    with pytest.raises(FrameDecodeError) as caught:
        DECODER.decode(data)
    assert caught.value.reason == MALFORMED_JSON
    assert caught.value.detail
    assert isinstance(caught.value.__cause__, msgspec.DecodeError)


@pytest.mark.parametrize(
    "data",
    [
        b'{"id":1,"cmd":"subscribe","params":{"channels":["ticker"]}}',
        b'{"msg":{"code":1}}',
        b'{"type":5,"msg":{}}',
        b'{"type":null}',
        b"[1, 2]",
        b'"ok"',
        b"42",
    ],
)
def test_no_type(data: bytes) -> None:
    with pytest.raises(FrameDecodeError) as caught:
        DECODER.decode(data)
    assert caught.value.reason == NO_TYPE
    assert caught.value.type_name is None


@pytest.mark.parametrize(
    ("data", "type_name", "path"),
    [
        (
            b'{"type":"orderbook_delta","sid":1,"msg":{"market_ticker":"M","side":"yes",'
            b'"price_dollars":0.5}}',
            "orderbook_delta",
            "$.msg.price_dollars",
        ),
        (
            b'{"type":"orderbook_delta","msg":{"market_ticker":"M","side":"maybe"}}',
            "orderbook_delta",
            "$.msg.side",
        ),
        (b'{"type":"ticker","sid":"1","msg":{"market_ticker":"M"}}', "ticker", "$.sid"),
        (b'{"type":"trade","msg":{"trade_id":"t"}}', "trade", "market_ticker"),
        (b'{"type":"error","msg":{"code":"seven"}}', "error", "$.msg.code"),
        (
            b'{"type":"orderbook_snapshot","msg":{"market_ticker":"M","yes_dollars_fp":[["0.1"]]}}',
            "orderbook_snapshot",
            "$.msg.yes_dollars_fp[0]",
        ),
        (b'{"type":"subscribed","msg":"nope"}', "subscribed", "$.msg"),
    ],
)
def test_invalid_fields_name_the_path(data: bytes, type_name: str, path: str) -> None:
    with pytest.raises(FrameDecodeError) as caught:
        DECODER.decode(data)
    assert caught.value.reason == INVALID_FIELDS
    assert caught.value.type_name == type_name
    assert path in caught.value.detail


def test_unsupported_type_names_the_type() -> None:
    with pytest.raises(FrameDecodeError) as caught:
        DECODER.decode(b'{"type":"user_order","sid":22,"msg":{"order_id":"o"}}')
    assert (caught.value.reason, caught.value.type_name) == (UNSUPPORTED_TYPE, "user_order")


# --- commands (§5) -----------------------------------------------------------------------


def command_lines(name: str) -> list[bytes]:
    return (CAPTURES / name).read_bytes().splitlines()


def test_subscribe_matches_the_spec_examples() -> None:
    docs = command_lines("kalshi-docs__commands.jsonl")
    single = Subscribe(
        id=1, params=SubscribeParams(channels=["orderbook_delta"], market_ticker="CPI-22DEC-TN0.1")
    )
    assert json.loads(encode_command(single)) == json.loads(docs[0])
    many = Subscribe(
        id=2,
        params=SubscribeParams(
            channels=["orderbook_delta", "ticker"],
            market_tickers=["FED-23DEC-T3.00", "CORIVER-2024-T1030"],
        ),
    )
    assert json.loads(encode_command(many)) == json.loads(docs[1])
    snapshot = Subscribe(
        id=7,
        params=SubscribeParams(
            channels=["ticker"], market_tickers=["FED-23DEC-T3.00"], send_initial_snapshot=True
        ),
    )
    assert json.loads(encode_command(snapshot)) == json.loads(docs[8])


def test_absent_options_are_not_sent() -> None:
    data = encode_command(Subscribe(id=3, params=SubscribeParams(channels=["ticker"])))
    assert json.loads(data) == {"id": 3, "cmd": "subscribe", "params": {"channels": ["ticker"]}}
    for option in (b"market_ticker", b"use_yes_price", b"send_initial_snapshot", b"null"):
        assert option not in data
    explicit_false = encode_command(
        Subscribe(id=4, params=SubscribeParams(channels=["orderbook_delta"], use_yes_price=False))
    )
    assert json.loads(explicit_false)["params"]["use_yes_price"] is False


def test_live_subscribe_with_use_yes_price() -> None:
    sent = command_lines("ericsngyun__probability-arena__commands-sent.jsonl")
    expected = json.loads(sent[2])
    cmd = Subscribe(
        id=1,
        params=SubscribeParams(
            channels=["orderbook_delta", "ticker", "trade"],
            market_tickers=expected["params"]["market_tickers"],
            use_yes_price=True,
        ),
    )
    assert json.loads(encode_command(cmd)) == expected


def test_unsubscribe_update_and_list_match_the_spec_examples() -> None:
    docs = command_lines("kalshi-docs__commands.jsonl")
    assert json.loads(
        encode_command(Unsubscribe(id=124, params=UnsubscribeParams(sids=[1, 2])))
    ) == json.loads(docs[12])
    assert json.loads(encode_command(ListSubscriptions(id=3))) == json.loads(docs[13])
    for index, (cmd_id, tickers, action) in {
        14: (124, ["NEW-MARKET-1", "NEW-MARKET-2"], UpdateAction.ADD_MARKETS),
        15: (125, ["MARKET-TO-REMOVE-1", "MARKET-TO-REMOVE-2"], UpdateAction.DELETE_MARKETS),
        16: (127, ["MARKET-1", "MARKET-2"], UpdateAction.GET_SNAPSHOT),
    }.items():
        cmd = UpdateSubscription(
            id=cmd_id,
            params=UpdateSubscriptionParams(sids=[456], market_tickers=tickers, action=action),
        )
        assert json.loads(encode_command(cmd)) == json.loads(docs[index])


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("kalshi-docs__commands.jsonl", 0),
        ("kalshi-docs__commands.jsonl", 1),
        ("kalshi-docs__commands.jsonl", 8),
        ("kalshi-docs__commands.jsonl", 12),
        ("kalshi-docs__commands.jsonl", 13),
        ("kalshi-docs__commands.jsonl", 16),
        ("ericsngyun__probability-arena__commands-sent.jsonl", 0),
        ("ericsngyun__probability-arena__commands-sent.jsonl", 3),
    ],
)
def test_decode_command_round_trips(name: str, index: int) -> None:
    line = command_lines(name)[index]
    assert json.loads(encode_command(decode_command(line))) == json.loads(line)


def test_decode_command_values() -> None:
    cmd = decode_command(
        b'{"id":2,"cmd":"update_subscription","params":{"sids":[1],'
        b'"market_tickers":["A"],"action":"get_snapshot"}}'
    )
    assert cmd == UpdateSubscription(
        id=2,
        params=UpdateSubscriptionParams(
            sids=[1], market_tickers=["A"], action=UpdateAction.GET_SNAPSHOT
        ),
    )


@pytest.mark.parametrize(
    ("data", "reason", "type_name"),
    [
        (b"{", MALFORMED_JSON, None),
        (b'{"id":1,"params":{}}', NO_TYPE, None),
        (b'{"type":"ok","id":1}', NO_TYPE, None),
        (b'{"id":1,"cmd":"ping"}', UNSUPPORTED_TYPE, "ping"),
        (b'{"id":1,"cmd":"subscribe","params":{}}', INVALID_FIELDS, "subscribe"),
        (b'{"id":1,"cmd":"subscribe"}', INVALID_FIELDS, "subscribe"),
        (
            b'{"id":2,"cmd":"update_subscription","params":{"sid":1,"action":"indexlist"}}',
            INVALID_FIELDS,
            "update_subscription",
        ),
    ],
)
def test_decode_command_failures(data: bytes, reason: str, type_name: str | None) -> None:
    with pytest.raises(FrameDecodeError) as caught:
        decode_command(data)
    assert (caught.value.reason, caught.value.type_name) == (reason, type_name)
