"""The sans-I/O client session: commands out, frames in, records and events out."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssmd.errors import FrameDecodeError
from ssmd.messages import UNSUPPORTED_TYPE, Channel, FrameDecoder
from ssmd.records import BookDelta, BookSnapshot, Level, Side, StatusEvent, Ticker, Trade
from ssmd.session import KalshiSession
from ssmd.session_events import (
    DuplicateFrame,
    ExchangeError,
    MalformedFrame,
    RepairMethod,
    RepairStarted,
    SequenceGap,
    SubscriptionConfirmed,
    SubscriptionState,
    UnsupportedFrame,
)

MARKETS = ("KXA-26NOV21-T1", "KXB-26NOV21-T2.5")
ALL_CHANNELS = (
    Channel.ORDERBOOK_DELTA,
    Channel.TICKER,
    Channel.TRADE,
    Channel.MARKET_LIFECYCLE_V2,
)


def frame(**fields: object) -> bytes:
    return msgspec.json.encode(fields)


def subscribed_session(use_yes_price: bool = False) -> KalshiSession:
    """A session whose four subscriptions were acknowledged as sids 1-4 (§5.1)."""
    session = KalshiSession(
        connection_id="test/1",
        channels=ALL_CHANNELS,
        markets=MARKETS,
        use_yes_price=use_yes_price,
    )
    session.commands_to_send()
    for command_id, channel in enumerate(ALL_CHANNELS, start=1):
        session.receive_frame(
            frame(
                type="subscribed", id=command_id, msg={"channel": channel.value, "sid": command_id}
            ),
            1,
        )
    session.events_to_handle()
    return session


def snapshot(seq: int, market: str = MARKETS[0], sid: int = 1) -> bytes:
    return frame(
        type="orderbook_snapshot",
        sid=sid,
        seq=seq,
        msg={
            "market_ticker": market,
            "market_id": "m-1",
            "yes_dollars_fp": [["0.4200", "10.00"]],
            "no_dollars_fp": [["0.4500", "3.50"]],
        },
    )


def delta(seq: int, market: str = MARKETS[0], sid: int = 1) -> bytes:
    return frame(
        type="orderbook_delta",
        sid=sid,
        seq=seq,
        msg={
            "market_ticker": market,
            "market_id": "m-1",
            "price_dollars": "0.4200",
            "delta_fp": "-2.00",
            "side": "yes",
            "ts_ms": 1_787_838_983_996,
        },
    )


def test_subscribe_commands_one_per_channel_with_explicit_use_yes_price() -> None:
    session = KalshiSession(
        connection_id="test/1", channels=ALL_CHANNELS, markets=MARKETS, use_yes_price=True
    )
    commands = [json.loads(c) for c in session.commands_to_send()]
    assert commands == [
        {
            "id": 1,
            "cmd": "subscribe",
            "params": {
                "channels": ["orderbook_delta"],
                "market_tickers": list(MARKETS),
                "use_yes_price": True,
            },
        },
        {
            "id": 2,
            "cmd": "subscribe",
            "params": {"channels": ["ticker"], "market_tickers": list(MARKETS)},
        },
        {
            "id": 3,
            "cmd": "subscribe",
            "params": {"channels": ["trade"], "market_tickers": list(MARKETS)},
        },
        {"id": 4, "cmd": "subscribe", "params": {"channels": ["market_lifecycle_v2"]}},
    ]
    assert session.commands_to_send() == []
    assert not session.all_subscribed


def test_subscribed_acks_activate_subscriptions_and_emit_status() -> None:
    session = KalshiSession(
        connection_id="test/1", channels=ALL_CHANNELS, markets=MARKETS, use_yes_price=False
    )
    session.commands_to_send()
    record = session.receive_frame(
        frame(type="subscribed", id=1, msg={"channel": "orderbook_delta", "sid": 7}), 99
    )
    assert record is None
    (event,) = session.events_to_handle()
    assert isinstance(event, SubscriptionConfirmed)
    assert (event.channel, event.sid) == (Channel.ORDERBOOK_DELTA, 7)
    assert event.status.event is StatusEvent.SUBSCRIBED
    assert event.status.sid == 7
    assert event.status.markets == MARKETS
    assert event.status.connection_id == "test/1"
    assert event.status.receive_ts_ns == 99
    assert session.subscriptions[Channel.ORDERBOOK_DELTA].state is SubscriptionState.ACTIVE
    assert not session.all_subscribed


def test_snapshot_then_deltas_across_markets_share_one_counter() -> None:
    session = subscribed_session()
    first = session.receive_frame(snapshot(1, MARKETS[0]), 10)
    second = session.receive_frame(snapshot(2, MARKETS[1]), 11)
    third = session.receive_frame(delta(3, MARKETS[0]), 12)
    assert isinstance(first, BookSnapshot)
    assert isinstance(second, BookSnapshot)
    assert isinstance(third, BookDelta)
    assert first.yes_bids == (Level(4200, 1000),)
    assert first.no_bids == (Level(4500, 350),)
    assert (third.side, third.price_e4, third.delta_e2, third.seq) == (Side.YES, 4200, -200, 3)
    assert not session.has_events
    assert session.stats.gaps == 0


def test_use_yes_price_sid_converts_no_levels_to_no_leg_price() -> None:
    session = subscribed_session(use_yes_price=True)
    record = session.receive_frame(snapshot(1), 10)
    assert isinstance(record, BookSnapshot)
    # §7.1.4: a NO level quoted at YES-leg 0.45 is a NO bid at 0.55.
    assert record.no_bids == (Level(5500, 350),)
    assert record.yes_bids == (Level(4200, 1000),)


def test_gap_on_orderbook_sid_is_an_event_with_a_status_record() -> None:
    session = subscribed_session()
    session.receive_frame(snapshot(1), 10)
    record = session.receive_frame(delta(4), 20)
    assert isinstance(record, BookDelta)
    gap, repair = session.events_to_handle()
    assert isinstance(gap, SequenceGap)
    assert (gap.sid, gap.expected_seq, gap.received_seq) == (1, 2, 4)
    assert gap.channel is Channel.ORDERBOOK_DELTA
    assert gap.markets == MARKETS
    assert gap.status.event is StatusEvent.GAP
    assert (gap.status.expected_seq, gap.status.received_seq) == (2, 4)
    assert session.stats.gaps == 1
    # §4.3: the gap invalidates every book on the sid and asks for their snapshots.
    assert isinstance(repair, RepairStarted)
    assert (repair.sid, repair.markets, repair.method) == (1, MARKETS, RepairMethod.GET_SNAPSHOT)
    assert [json.loads(c) for c in session.commands_to_send()] == [
        {
            "id": 5,
            "cmd": "update_subscription",
            "params": {"sids": [1], "market_tickers": list(MARKETS), "action": "get_snapshot"},
        }
    ]
    assert session.books.markets_needing_snapshot() == set(MARKETS)
    # The counter continues from the frame that arrived.
    assert session.receive_frame(delta(5), 21) is not None
    assert session.stats.gaps == 1


def test_duplicate_seq_is_dropped() -> None:
    session = subscribed_session()
    session.receive_frame(snapshot(1), 10)
    assert session.receive_frame(delta(2), 11) is not None
    assert session.receive_frame(delta(2), 12) is None
    (event,) = session.events_to_handle()
    assert event == DuplicateFrame(sid=1, seq=2, last_seq=2)


def test_control_frames_consume_sequence_numbers() -> None:
    """§4.1: ok, unsubscribed and sid-scoped errors take a seq; no gap follows them."""
    session = subscribed_session()
    session.receive_frame(snapshot(1), 10)
    ok = frame(type="ok", id=9, sid=1, seq=2, msg={"market_tickers": list(MARKETS)})
    assert session.receive_frame(ok, 11) is None
    assert session.receive_frame(delta(3), 12) is not None
    error = frame(type="error", sid=1, seq=4, msg={"code": 13, "msg": "Unsupported action"})
    assert session.receive_frame(error, 13) is None
    (event,) = session.events_to_handle()
    assert isinstance(event, ExchangeError)
    assert (event.code, event.sid, event.terminal) == (13, 1, False)
    assert event.status.reason == "code 13: Unsupported action"
    assert session.receive_frame(delta(5), 14) is not None
    assert session.stats.gaps == 0


def test_rejected_subscribe_and_terminal_error() -> None:
    session = KalshiSession(
        connection_id="t",
        channels=[Channel.TICKER, Channel.TRADE],
        markets=MARKETS[:1],
        use_yes_price=False,
    )
    session.commands_to_send()
    session.receive_frame(
        frame(type="error", id=1, msg={"code": 8, "msg": "Unknown channel name"}), 1
    )
    session.receive_frame(frame(type="subscribed", id=2, msg={"channel": "trade", "sid": 1}), 2)
    session.receive_frame(
        frame(type="error", sid=1, seq=1, msg={"code": 25, "msg": "Subscription buffer overflow"}),
        3,
    )
    events = session.events_to_handle()
    assert [type(e) for e in events] == [ExchangeError, SubscriptionConfirmed, ExchangeError]
    first, _, last = events
    assert isinstance(first, ExchangeError)
    assert isinstance(last, ExchangeError)
    assert (first.code, first.channel, first.terminal) == (8, Channel.TICKER, False)
    assert (last.code, last.channel, last.terminal) == (25, Channel.TRADE, True)
    # §6.6: 25 is terminal: the trade subscription is gone and is created again.
    assert [s.state for s in session.subscriptions.values()] == [
        SubscriptionState.REJECTED,
        SubscriptionState.REQUESTED,
    ]
    assert [json.loads(c) for c in session.commands_to_send()] == [
        {
            "id": 3,
            "cmd": "subscribe",
            "params": {"channels": ["trade"], "market_tickers": [MARKETS[0]]},
        }
    ]


def test_ticker_has_no_seq_and_trade_has_its_own() -> None:
    session = subscribed_session()
    ticker = frame(
        type="ticker",
        sid=2,
        msg={
            "market_ticker": MARKETS[0],
            "market_id": "m-1",
            "price_dollars": "0.4800",
            "yes_bid_dollars": "0.4500",
            "yes_ask_dollars": "0.5300",
            "ts_ms": 1_669_149_841_000,
        },
    )
    trade = frame(
        type="trade",
        sid=3,
        seq=1,
        msg={
            "trade_id": "d91bc706",
            "market_ticker": MARKETS[1],
            "yes_price_dollars": "0.3600",
            "no_price_dollars": "0.6400",
            "count_fp": "136.00",
            "taker_outcome_side": "no",
            "ts_ms": 1_669_149_841_000,
        },
    )
    t = session.receive_frame(ticker, 1)
    tr = session.receive_frame(trade, 2)
    assert isinstance(t, Ticker)
    assert (t.seq, t.yes_bid_e4, t.yes_ask_e4, t.last_price_e4) == (None, 4500, 5300, 4800)
    assert isinstance(tr, Trade)
    assert (tr.seq, tr.yes_price_e4, tr.size_e2, tr.taker_side) == (1, 3600, 13600, Side.NO)
    assert not session.has_events


def test_unsupported_type_counted_and_reported_once_per_type() -> None:
    session = subscribed_session()
    fill = frame(type="fill", sid=13, msg={"trade_id": "x"})
    assert session.receive_frame(fill, 1) is None
    assert session.receive_frame(fill, 2) is None
    events = session.events_to_handle()
    assert events == [
        UnsupportedFrame(type_name="fill", first_of_type=True),
        UnsupportedFrame(type_name="fill", first_of_type=False),
    ]
    assert session.stats.unsupported_by_type == {"fill": 2}


def test_malformed_frames_are_counted_with_context_and_the_stream_goes_on() -> None:
    session = subscribed_session()
    session.receive_frame(snapshot(1), 10)
    assert session.receive_frame(b'{"type": "orderbook_delta", "sid": 1,', 11) is None
    bad_price = frame(
        type="orderbook_delta",
        sid=1,
        seq=2,
        msg={
            "market_ticker": MARKETS[0],
            "price_dollars": "zero",
            "delta_fp": "1.00",
            "side": "yes",
        },
    )
    assert session.receive_frame(bad_price, 12) is None
    events = session.events_to_handle()
    assert [type(e) for e in events] == [MalformedFrame, MalformedFrame]
    assert isinstance(events[0], MalformedFrame)
    assert events[0].reason == "malformed_json"
    assert events[0].excerpt.startswith('{"type": "orderbook_delta"')
    assert isinstance(events[1], MalformedFrame)
    assert events[1].type_name == "orderbook_delta"
    # The malformed frame still consumed its seq: the next one is not a gap.
    assert session.receive_frame(delta(3), 13) is not None
    assert session.stats.gaps == 0
    assert sum(session.stats.malformed_by_reason.values()) == 2


BAD_FRAMES = (
    b'{"type": "orderbook_delta", "sid": 1,',  # malformed JSON
    b"[1, 2]",  # not an object
    b'{"sid": 1}',  # no type
    b'{"type": "fill", "sid": 13}',  # unsupported
    b'{"type": "orderbook_delta", "sid": "one", "msg": {}}',  # invalid fields
)


def test_undecodable_frames_are_reported_as_the_frame_decoder_raises_them() -> None:
    session = subscribed_session()
    for data in BAD_FRAMES:
        assert session.receive_frame(data, 5) is None
    events = session.events_to_handle()
    expected = []
    for data in BAD_FRAMES:
        with pytest.raises(FrameDecodeError) as caught:
            FrameDecoder().decode(data)
        expected.append((caught.value.reason, caught.value.type_name))
    got = [
        (e.reason, e.type_name) if isinstance(e, MalformedFrame) else (UNSUPPORTED_TYPE, "fill")
        for e in events
    ]
    assert got == expected
    details = [e.detail for e in events if isinstance(e, MalformedFrame)]
    assert all(details), details


def test_every_frame_is_counted_once_whatever_became_of_it() -> None:
    session = subscribed_session()  # four `subscribed` frames
    session.receive_frame(snapshot(1), 10)
    session.receive_frame(delta(2), 11)
    session.receive_frame(delta(2), 12)  # a duplicate: dropped
    for data in BAD_FRAMES:
        session.receive_frame(data, 13)
    stats = session.stats
    assert stats.frames_received == 4 + 3 + len(BAD_FRAMES)
    assert stats.frames_by_type == {
        "subscribed": 4,
        "orderbook_snapshot": 1,
        "orderbook_delta": 3,  # the duplicate, and the one with invalid fields
        "untyped": 3,  # malformed JSON, not an object, no type
        "fill": 1,
    }
    assert stats.records_out == 2
    total = type(stats)()
    total.add(stats)
    total.add(stats)
    assert total.frames_received == 2 * stats.frames_received


def test_get_snapshot_recovery_capture(captures_dir: Path) -> None:
    """Live demo frames (§4.2.4): snapshots 1-3, then (the source kept an excerpt) delta 30,
    get_snapshot replies 31-33 carrying the command id, deltas 34-35. Exactly one gap: 4 → 30."""
    markets = [f"KXMAXSHARDINGTEST-26AUG2818-T{strike}.99" for strike in (56399, 65399, 68399)]
    session = KalshiSession(
        connection_id="replay",
        channels=[Channel.ORDERBOOK_DELTA],
        markets=markets,
        use_yes_price=True,
    )
    session.commands_to_send()
    path = captures_dir / "ericsngyun__probability-arena__demo-2026-08-17-get-snapshot.jsonl"
    records = [session.receive_frame(line, 1) for line in path.read_bytes().splitlines() if line]
    kinds = [type(r).__name__ for r in records if r is not None]
    assert kinds == ["BookSnapshot"] * 3 + ["BookDelta"] + ["BookSnapshot"] * 3 + ["BookDelta"] * 2
    events = session.events_to_handle()
    gaps = [e for e in events if isinstance(e, SequenceGap)]
    assert [(g.sid, g.expected_seq, g.received_seq) for g in gaps] == [(1, 4, 30)]
    assert session.stats.duplicates == 0
    assert not session.stats.malformed_by_reason


@given(st.lists(st.integers(min_value=0, max_value=12), max_size=30))
def test_inline_seq_check_matches_the_section_4_3_model(seqs: list[int]) -> None:
    """The hot path's in-sequence shortcut and the full check agree with §4.3 on any stream."""
    session = subscribed_session()
    last, gaps, duplicates = 0, 0, 0  # a new sid starts after 0 (§4.2.2)
    for number, seq in enumerate(seqs):
        lifecycle = frame(
            type="market_lifecycle_v2",
            sid=4,
            seq=seq,
            msg={"market_ticker": MARKETS[0], "event_type": "activated"},
        )
        record = session.receive_frame(lifecycle, 100 + number)
        if seq <= last:
            duplicates += 1
            assert record is None
            continue
        gaps += seq != last + 1
        last = seq
        assert record is not None
        assert record.seq == seq
    assert (session.stats.gaps, session.stats.duplicates) == (gaps, duplicates)
