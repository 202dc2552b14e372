"""The session repairs what it cannot trust (PROTOCOL.md §4.3, §6.6): get_snapshot, then
unsubscribe/subscribe, then reconnect; terminal errors re-create subscriptions; lost trades
are handed to the driver for a REST backfill."""

from __future__ import annotations

import json
from typing import Any

from ssmd.book import BookState
from ssmd.records import BookSnapshot, Flag, StatusEvent, Trade
from ssmd.session import KalshiSession
from ssmd.session_events import (
    BookInvalid,
    RecentIds,
    ReconnectRequired,
    RepairMethod,
    RepairStarted,
    Resynced,
    SequenceGap,
    SessionEvent,
    SlowDown,
    TradesMissing,
)

from .test_session import ALL_CHANNELS, MARKETS, delta, frame, snapshot, subscribed_session

S = 1_000_000_000  # ns


def commands(session: KalshiSession) -> list[dict[str, Any]]:
    return [json.loads(c) for c in session.commands_to_send()]


def of_type(events: list[SessionEvent], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def trade(seq: int, trade_id: str, ts_ms: int, sid: int = 3) -> bytes:
    return frame(
        type="trade",
        sid=sid,
        seq=seq,
        msg={
            "trade_id": trade_id,
            "market_ticker": MARKETS[0],
            "yes_price_dollars": "0.3600",
            "no_price_dollars": "0.6400",
            "count_fp": "1.00",
            "taker_outcome_side": "yes",
            "ts_ms": ts_ms,
        },
    )


def broken_book_session() -> KalshiSession:
    """Both books live, then a gap on the orderbook sid (seq 3 lost)."""
    session = subscribed_session()
    session.receive_frame(snapshot(1, MARKETS[0]), 1 * S)
    session.receive_frame(snapshot(2, MARKETS[1]), 1 * S)
    session.receive_frame(delta(4, MARKETS[0]), 2 * S)
    return session


def test_gap_repaired_with_get_snapshot_then_resynced_with_flagged_snapshots() -> None:
    session = broken_book_session()
    assert of_type(session.events_to_handle(), RepairStarted)
    (command,) = commands(session)
    assert command["params"]["action"] == "get_snapshot"
    # §4.2.4: the replies carry the command id and the next seqs of the same sid.
    first = session.receive_frame(snapshot(5, MARKETS[0])[:-1] + b',"id":5}', 3 * S)
    assert isinstance(first, BookSnapshot)
    assert Flag.AFTER_RESYNC in first.flags
    assert not of_type(session.events_to_handle(), Resynced)
    second = session.receive_frame(snapshot(6, MARKETS[1]), 3 * S)
    assert isinstance(second, BookSnapshot)
    assert Flag.AFTER_RESYNC in second.flags
    (resynced,) = of_type(session.events_to_handle(), Resynced)
    assert (resynced.sid, resynced.markets, resynced.snapshot_seq) == (1, MARKETS, 6)
    assert resynced.status.event is StatusEvent.RESYNCED
    assert resynced.status.markets == MARKETS
    assert resynced.status.seq == 6
    assert all(session.books[m].state is BookState.LIVE for m in MARKETS)
    assert not session.repairing
    # Later snapshots are ordinary again.
    later = session.receive_frame(snapshot(7, MARKETS[0]), 4 * S)
    assert isinstance(later, BookSnapshot)
    assert Flag.AFTER_RESYNC not in later.flags


def test_refused_get_snapshot_escalates_to_unsubscribe_then_subscribe() -> None:
    session = broken_book_session()
    session.events_to_handle()
    (get_snapshot,) = commands(session)
    refusal = frame(
        type="error", id=get_snapshot["id"], msg={"code": 13, "msg": "Unsupported action"}
    )
    session.receive_frame(refusal, 3 * S)
    (started,) = of_type(session.events_to_handle(), RepairStarted)
    assert started.method is RepairMethod.RESUBSCRIBE
    (unsubscribe,) = commands(session)
    assert unsubscribe["cmd"] == "unsubscribe"
    assert unsubscribe["params"] == {"sids": [1]}
    # Only once the exchange confirms the unsubscribe is the channel subscribed again (§4.2.6).
    session.receive_frame(frame(type="unsubscribed", id=unsubscribe["id"], sid=1, seq=5), 3 * S)
    (subscribe,) = commands(session)
    assert subscribe["cmd"] == "subscribe"
    assert subscribe["params"]["channels"] == ["orderbook_delta"]
    assert subscribe["params"]["market_tickers"] == list(MARKETS)
    session.receive_frame(
        frame(type="subscribed", id=subscribe["id"], msg={"channel": "orderbook_delta", "sid": 5}),
        4 * S,
    )
    session.receive_frame(snapshot(1, MARKETS[0], sid=5), 4 * S)
    session.receive_frame(snapshot(2, MARKETS[1], sid=5), 4 * S)
    (resynced,) = of_type(session.events_to_handle(), Resynced)
    assert (resynced.sid, resynced.snapshot_seq) == (5, 2)
    assert session.receive_frame(delta(3, MARKETS[0], sid=5), 5 * S) is not None
    assert session.stats.gaps == 1


def test_unanswered_repairs_escalate_on_their_deadline_up_to_reconnect() -> None:
    session = KalshiSession(
        connection_id="t",
        channels=ALL_CHANNELS,
        markets=MARKETS,
        use_yes_price=False,
        repair_timeout_s=5.0,
    )
    session.commands_to_send()
    for command_id, channel in enumerate(ALL_CHANNELS, start=1):
        session.receive_frame(
            frame(
                type="subscribed", id=command_id, msg={"channel": channel.value, "sid": command_id}
            ),
            0,
        )
    session.receive_frame(snapshot(1), 1 * S)
    session.receive_frame(delta(3), 2 * S)
    session.events_to_handle()
    commands(session)
    # No snapshot within 5 s: a frame at 8 s finds the deadline passed.
    session.receive_frame(frame(type="ticker", sid=2, msg={"market_ticker": MARKETS[0]}), 8 * S)
    (started,) = of_type(session.events_to_handle(), RepairStarted)
    assert started.method is RepairMethod.RESUBSCRIBE
    assert commands(session)[0]["cmd"] == "unsubscribe"
    # The unsubscribe is never confirmed either: at 14 s the connection must go.
    session.receive_frame(frame(type="ticker", sid=2, msg={"market_ticker": MARKETS[0]}), 14 * S)
    events = session.events_to_handle()
    (started,) = of_type(events, RepairStarted)
    assert started.method is RepairMethod.RECONNECT
    (reconnect,) = of_type(events, ReconnectRequired)
    assert "timed out" in reconnect.reason


def test_negative_level_invalidates_one_book_and_requests_its_snapshot() -> None:
    session = subscribed_session()
    session.receive_frame(snapshot(1, MARKETS[0]), 1 * S)
    session.receive_frame(snapshot(2, MARKETS[1]), 1 * S)
    # YES 0.42 rests 10.00: a delta of -12.00 would leave -2.00.
    too_big = delta(3, MARKETS[0]).replace(b'"-2.00"', b'"-12.00"')
    assert session.receive_frame(too_big, 2 * S) is not None
    events = session.events_to_handle()
    (invalid,) = of_type(events, BookInvalid)
    assert invalid.market == MARKETS[0]
    assert invalid.status.event is StatusEvent.GAP
    assert invalid.status.markets == (MARKETS[0],)
    assert "negative_level" in invalid.reason
    (command,) = commands(session)
    assert command["params"]["market_tickers"] == [MARKETS[0]]
    assert session.books[MARKETS[0]].state is BookState.INVALID
    assert session.books[MARKETS[1]].state is BookState.LIVE
    # Further deltas of that market do not start a second repair.
    session.receive_frame(delta(4, MARKETS[0]), 2 * S)
    assert not of_type(session.events_to_handle(), RepairStarted)


def test_terminal_error_on_the_orderbook_sid_recreates_it_and_resyncs() -> None:
    session = subscribed_session()
    session.receive_frame(snapshot(1, MARKETS[0]), 1 * S)
    session.receive_frame(snapshot(2, MARKETS[1]), 1 * S)
    overflow = frame(
        type="error", sid=1, seq=3, msg={"code": 25, "msg": "Subscription buffer overflow"}
    )
    session.receive_frame(overflow, 2 * S)
    (started,) = of_type(session.events_to_handle(), RepairStarted)
    assert started.method is RepairMethod.RESUBSCRIBE
    (subscribe,) = commands(session)
    assert subscribe["params"]["channels"] == ["orderbook_delta"]
    session.receive_frame(
        frame(type="subscribed", id=subscribe["id"], msg={"channel": "orderbook_delta", "sid": 9}),
        3 * S,
    )
    session.receive_frame(snapshot(1, MARKETS[0], sid=9), 3 * S)
    session.receive_frame(snapshot(2, MARKETS[1], sid=9), 3 * S)
    (resynced,) = of_type(session.events_to_handle(), Resynced)
    assert resynced.sid == 9
    assert resynced.markets == MARKETS


def test_gap_on_the_trade_sid_asks_for_a_backfill_window() -> None:
    session = subscribed_session()
    session.receive_frame(trade(1, "t-1", 1_000), 10 * S)
    session.receive_frame(trade(3, "t-3", 3_000), 11 * S)
    events = session.events_to_handle()
    assert of_type(events, SequenceGap)
    (missing,) = of_type(events, TradesMissing)
    assert missing.since_ts_ns == 1_000 * 1_000_000
    assert missing.until_ts_ns == 11 * S
    assert missing.markets == MARKETS


def test_reconnected_session_backfills_since_the_last_trade_and_dedupes_ids() -> None:
    recent = RecentIds()
    first = subscribed_session()
    first.recent_trades = recent
    record = first.receive_frame(trade(1, "t-1", 5_000), 1 * S)
    assert isinstance(record, Trade)
    second = KalshiSession(
        connection_id="t/2",
        channels=ALL_CHANNELS,
        markets=MARKETS,
        use_yes_price=False,
        trades_since_ts_ns=first.last_trade_ts_ns,
        recent_trades=recent,
    )
    second.commands_to_send()
    second.receive_frame(frame(type="subscribed", id=3, msg={"channel": "trade", "sid": 1}), 9 * S)
    (missing,) = of_type(second.events_to_handle(), TradesMissing)
    assert (missing.since_ts_ns, missing.until_ts_ns) == (5_000 * 1_000_000, 9 * S)
    # The same trade seen again (e.g. already published by the backfill) is not repeated.
    assert second.receive_frame(trade(1, "t-1", 5_000, sid=1), 10 * S) is None
    assert isinstance(second.receive_frame(trade(2, "t-2", 6_000, sid=1), 10 * S), Trade)


def test_too_many_requests_asks_the_driver_to_slow_down() -> None:
    session = subscribed_session()
    session.receive_frame(
        frame(type="error", id=9, msg={"code": 27, "msg": "Too many requests"}), 1
    )
    assert of_type(session.events_to_handle(), SlowDown) == [SlowDown(code=27)]


def test_recent_ids_forget_the_oldest_beyond_capacity() -> None:
    recent = RecentIds(capacity=2)
    assert [recent.add(k) for k in ("a", "b", "a", "c")] == [True, True, False, True]
    assert "a" not in recent
    assert "b" in recent
    assert "c" in recent


def test_poll_escalates_an_ignored_repair_when_no_frame_arrives() -> None:
    session = broken_book_session()
    session.events_to_handle()
    commands(session)
    session.poll(5 * S)  # within the 10 s deadline: nothing happens
    assert not session.has_events
    session.poll(13 * S)
    (started,) = of_type(session.events_to_handle(), RepairStarted)
    assert started.method is RepairMethod.RESUBSCRIBE
    assert commands(session)[0]["cmd"] == "unsubscribe"
