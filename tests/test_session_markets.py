"""The session follows a changing market set (PROTOCOL.md §5.1-§5.3, §6.3, §6.6): add/remove
become update_subscription (or subscribe/unsubscribe) per market channel, confirmed once by
the exchange's `ok`, refused markets are forgotten everywhere and handed to the driver."""

from __future__ import annotations

import json
from typing import Any

import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from ssmd.client_events import SessionEventHandler
from ssmd.exchange.market import MarketGenerator
from ssmd.exchange.protocol import ExchangeConnection
from ssmd.messages import Channel
from ssmd.records import BookSnapshot, Flag, Lifecycle, Record, Status, StatusEvent
from ssmd.session import KalshiSession
from ssmd.session_events import (
    BookInvalid,
    ExchangeError,
    MarketsChanged,
    MarketsRejected,
    Resynced,
    SequenceGap,
    SessionEvent,
    SlowDown,
    SubscriptionConfirmed,
    TradesMissing,
)

from .test_session import ALL_CHANNELS, MARKETS, delta, frame, snapshot, subscribed_session

NEW = ("KXC-26NOV21-T3", "KXD-26NOV21-T4")
ORDERBOOK, TICKER, TRADE, LIFECYCLE = ALL_CHANNELS
LIMIT_TEXT = "Subscription market limit exceeded"


def commands(session: KalshiSession) -> list[dict[str, Any]]:
    return [json.loads(c) for c in session.commands_to_send()]


def update(command_id: int, sid: int, markets: tuple[str, ...], action: str) -> dict[str, Any]:
    """The exact update_subscription command of §5.3 (one sid, list form)."""
    return {
        "id": command_id,
        "cmd": "update_subscription",
        "params": {"sids": [sid], "market_tickers": list(markets), "action": action},
    }


def ok(command_id: int, sid: int, seq: int | None, markets: tuple[str, ...]) -> bytes:
    """§6.3 current form: the full list after the change under `msg`; ticker sids have no seq."""
    fields: dict[str, Any] = {"type": "ok", "id": command_id, "sid": sid}
    if seq is not None:
        fields["seq"] = seq
    return frame(**fields, msg={"market_tickers": list(markets)})


def subscribed(command_id: int, channel: Channel, sid: int) -> bytes:
    return frame(type="subscribed", id=command_id, msg={"channel": channel.value, "sid": sid})


def error(code: int, text: str, **envelope: int) -> bytes:
    return frame(type="error", **envelope, msg={"code": code, "msg": text})


def empty_session(channels: tuple[Channel, ...] = ALL_CHANNELS) -> KalshiSession:
    return KalshiSession(connection_id="t/1", channels=channels, markets=(), use_yes_price=True)


def changes(events: list[SessionEvent]) -> list[MarketsChanged]:
    return [e for e in events if isinstance(e, MarketsChanged)]


def test_add_on_active_subscriptions_sends_one_update_per_market_channel() -> None:
    session = subscribed_session()
    session.add_markets([NEW[0], MARKETS[0], NEW[1], NEW[0]])
    assert session.markets == (*MARKETS, *NEW)
    # Never market_lifecycle_v2 (sid 4): it takes no market filter (§7.0).
    assert commands(session) == [
        update(5, 1, NEW, "add_markets"),
        update(6, 2, NEW, "add_markets"),
        update(7, 3, NEW, "add_markets"),
    ]
    session.add_markets(NEW)  # already wanted: nothing to do
    assert not session.has_commands
    session.receive_frame(ok(5, 1, 1, (*MARKETS, *NEW)), 10)
    session.receive_frame(ok(6, 2, None, (*MARKETS, *NEW)), 11)
    assert not session.has_events  # trade has not confirmed yet
    session.receive_frame(ok(7, 3, 1, (*MARKETS, *NEW)), 12)
    (changed,) = session.events_to_handle()
    assert isinstance(changed, MarketsChanged)
    assert (changed.added, changed.removed) == (NEW, ())
    status = changed.status
    assert status.event is StatusEvent.MARKETS_ADDED
    assert (status.markets, status.receive_ts_ns, status.connection_id) == (NEW, 12, "test/1")
    assert (status.market, status.channel, status.sid) == ("", None, None)
    assert all(session.subscriptions[c].markets == (*MARKETS, *NEW) for c in ALL_CHANNELS[:3])
    # §4.2.7: the added markets' snapshots follow on the same sid and are ordinary.
    record = session.receive_frame(snapshot(2, NEW[0]), 13)
    assert isinstance(record, BookSnapshot)
    assert Flag.AFTER_RESYNC not in record.flags
    assert not session.has_events


def test_remove_accepts_both_ok_forms_and_drops_the_books() -> None:
    session = subscribed_session()
    session.receive_frame(snapshot(1, MARKETS[0]), 1)
    session.receive_frame(snapshot(2, MARKETS[1]), 2)
    session.remove_markets([MARKETS[0], "KXNOT-SUBSCRIBED"])
    session.remove_markets(["KXNOT-SUBSCRIBED"])
    assert session.markets == (MARKETS[1],)
    assert commands(session) == [
        update(5, 1, (MARKETS[0],), "delete_markets"),
        update(6, 2, (MARKETS[0],), "delete_markets"),
        update(7, 3, (MARKETS[0],), "delete_markets"),
    ]
    session.receive_frame(ok(5, 1, 3, (MARKETS[1],)), 10)
    assert MARKETS[0] not in session.books
    assert MARKETS[1] in session.books
    # The Jan-2026 form (§6.3, §12 #3): the list at top level. The exchange's list wins.
    top_level = frame(type="ok", id=6, sid=2, market_tickers=[MARKETS[1], "KXEXTRA"])
    session.receive_frame(top_level, 11)
    assert session.subscriptions[TICKER].markets == (MARKETS[1], "KXEXTRA")
    # No list at all (skip_ticker_ack): the change itself is applied.
    session.receive_frame(frame(type="ok", id=7, sid=3, seq=1, msg={}), 12)
    assert session.subscriptions[TRADE].markets == (MARKETS[1],)
    (changed,) = session.events_to_handle()
    assert isinstance(changed, MarketsChanged)
    assert (changed.added, changed.removed) == ((), (MARKETS[0],))
    assert changed.status.event is StatusEvent.MARKETS_REMOVED
    assert changed.status.markets == (MARKETS[0],)
    # The ok consumed seq 3 on the orderbook sid: seq 4 is no gap.
    session.receive_frame(snapshot(4, MARKETS[1]), 13)
    assert session.stats.gaps == 0


def test_changes_wait_while_the_subscribe_is_not_acknowledged() -> None:
    session = KalshiSession(
        connection_id="t/1", channels=ALL_CHANNELS, markets=MARKETS, use_yes_price=False
    )
    commands(session)  # the four subscribes, not yet acknowledged
    session.add_markets([NEW[0]])
    session.remove_markets([MARKETS[0]])
    assert session.markets == (MARKETS[1], NEW[0])
    assert not session.has_commands
    session.receive_frame(subscribed(1, ORDERBOOK, 1), 1)
    assert commands(session) == [
        update(5, 1, (NEW[0],), "add_markets"),
        update(6, 1, (MARKETS[0],), "delete_markets"),
    ]
    session.receive_frame(subscribed(2, TICKER, 2), 2)
    session.receive_frame(subscribed(3, TRADE, 3), 3)
    session.receive_frame(subscribed(4, LIFECYCLE, 4), 4)
    assert [c["id"] for c in commands(session)] == [7, 8, 9, 10]
    now = (MARKETS[1], NEW[0])
    for command_id, sid, seq in ((5, 1, 1), (7, 2, None), (9, 3, 1)):
        session.receive_frame(ok(command_id, sid, seq, (*MARKETS, NEW[0])), 5)
    for command_id, sid, seq in ((6, 1, 2), (8, 2, None), (10, 3, 2)):
        session.receive_frame(ok(command_id, sid, seq, now), 6)
    added, removed = changes(session.events_to_handle())
    assert (added.added, removed.removed) == ((NEW[0],), (MARKETS[0],))


def test_a_session_without_markets_subscribes_market_channels_on_the_first_add() -> None:
    session = empty_session()
    # No markets: no ticker/trade for "all markets", no orderbook without a filter (§5.1).
    assert commands(session) == [
        {"id": 1, "cmd": "subscribe", "params": {"channels": ["market_lifecycle_v2"]}}
    ]
    assert list(session.subscriptions) == [LIFECYCLE]
    session.add_markets(NEW)
    assert commands(session) == [
        {
            "id": 2,
            "cmd": "subscribe",
            "params": {
                "channels": ["orderbook_delta"],
                "market_tickers": list(NEW),
                "use_yes_price": True,
            },
        },
        {"id": 3, "cmd": "subscribe", "params": {"channels": ["ticker"], "market_tickers": [*NEW]}},
        {"id": 4, "cmd": "subscribe", "params": {"channels": ["trade"], "market_tickers": [*NEW]}},
    ]
    session.receive_frame(subscribed(2, ORDERBOOK, 2), 10)
    session.receive_frame(subscribed(3, TICKER, 3), 11)
    assert not changes(session.events_to_handle())
    session.receive_frame(subscribed(4, TRADE, 4), 12)
    confirmed, changed = session.events_to_handle()
    assert isinstance(confirmed, SubscriptionConfirmed)
    assert confirmed.status.markets == NEW
    assert isinstance(changed, MarketsChanged)
    assert (changed.added, changed.status.receive_ts_ns) == (NEW, 12)


def test_changes_made_while_a_first_subscribe_is_in_flight_follow_it() -> None:
    session = empty_session((ORDERBOOK,))
    assert commands(session) == []
    session.add_markets([NEW[0]])
    session.add_markets([NEW[1]])
    session.remove_markets([NEW[0]])
    assert session.markets == (NEW[1],)
    (subscribe,) = commands(session)
    assert subscribe["params"]["market_tickers"] == [NEW[0]]
    session.receive_frame(subscribed(1, ORDERBOOK, 1), 1)
    (first,) = changes(session.events_to_handle())
    assert first.added == (NEW[0],)
    assert commands(session) == [
        update(2, 1, (NEW[1],), "add_markets"),
        update(3, 1, (NEW[0],), "delete_markets"),
    ]
    session.receive_frame(ok(2, 1, 1, NEW), 2)
    session.receive_frame(ok(3, 1, 2, (NEW[1],)), 3)
    added, removed = changes(session.events_to_handle())
    assert (added.added, removed.removed) == ((NEW[1],), (NEW[0],))


def test_removing_every_market_unsubscribes_instead_of_an_empty_list() -> None:
    session = subscribed_session()
    session.receive_frame(snapshot(1, MARKETS[0]), 1)
    session.receive_frame(snapshot(2, MARKETS[1]), 2)
    session.remove_markets(MARKETS)
    assert session.markets == ()
    assert commands(session) == [
        {"id": 5, "cmd": "unsubscribe", "params": {"sids": [1]}},
        {"id": 6, "cmd": "unsubscribe", "params": {"sids": [2]}},
        {"id": 7, "cmd": "unsubscribe", "params": {"sids": [3]}},
    ]
    session.add_markets([NEW[0]])  # waits until the sids are gone
    assert not session.has_commands
    session.receive_frame(frame(type="unsubscribed", id=5, sid=1, seq=3), 10)
    session.receive_frame(frame(type="unsubscribed", id=6, sid=2), 11)
    assert len(session.books) == 0
    # Then the channel is subscribed afresh with what is wanted now.
    assert commands(session) == [
        {
            "id": 8,
            "cmd": "subscribe",
            "params": {
                "channels": ["orderbook_delta"],
                "market_tickers": [NEW[0]],
                "use_yes_price": False,
            },
        },
        {
            "id": 9,
            "cmd": "subscribe",
            "params": {"channels": ["ticker"], "market_tickers": [NEW[0]]},
        },
    ]
    session.receive_frame(frame(type="unsubscribed", id=7, sid=3, seq=1), 12)
    assert [c["params"]["channels"] for c in commands(session)] == [["trade"]]
    (removed,) = changes(session.events_to_handle())
    assert (removed.removed, removed.status.receive_ts_ns) == (MARKETS, 12)
    assert list(session.subscriptions) == [LIFECYCLE, ORDERBOOK, TICKER, TRADE]


def test_error_26_forgets_the_markets_on_every_channel() -> None:
    session = subscribed_session()
    session.add_markets(NEW)
    commands(session)
    session.receive_frame(ok(6, 2, None, (*MARKETS, *NEW)), 10)  # ticker took them
    session.receive_frame(error(26, LIMIT_TEXT, id=5), 11)  # orderbook refused
    exchange_error, rejected = session.events_to_handle()
    assert isinstance(exchange_error, ExchangeError)
    assert (exchange_error.code, exchange_error.command_id) == (26, 5)
    assert rejected == MarketsRejected(
        channel=ORDERBOOK, markets=NEW, code=26, message=LIMIT_TEXT, command_id=5
    )
    assert session.markets == MARKETS
    # Channels stay consistent: the others drop them again (trade's add is still in flight;
    # its delete follows it on the same sid).
    assert commands(session) == [
        update(8, 2, NEW, "delete_markets"),
        update(9, 3, NEW, "delete_markets"),
    ]
    session.receive_frame(ok(7, 3, 1, (*MARKETS, *NEW)), 12)
    session.receive_frame(ok(8, 2, None, MARKETS), 13)
    session.receive_frame(ok(9, 3, 2, MARKETS), 14)
    assert not session.has_events  # the add never happened: no markets_added, no removed
    assert all(session.subscriptions[c].markets == MARKETS for c in ALL_CHANNELS[:3])


def test_a_refused_first_subscribe_unsubscribes_the_channels_that_took_the_markets() -> None:
    session = empty_session()
    commands(session)
    session.add_markets(NEW)
    assert [c["id"] for c in commands(session)] == [2, 3, 4]
    session.receive_frame(subscribed(3, TICKER, 2), 1)
    session.receive_frame(error(26, LIMIT_TEXT, id=2), 2)
    events = session.events_to_handle()
    assert MarketsRejected(ORDERBOOK, NEW, 26, LIMIT_TEXT, 2) in events
    assert not changes(events)
    assert session.markets == ()
    assert ORDERBOOK not in session.subscriptions
    assert commands(session) == [{"id": 5, "cmd": "unsubscribe", "params": {"sids": [2]}}]
    session.receive_frame(subscribed(4, TRADE, 3), 3)  # trade's removal waited for its sid
    assert commands(session) == [{"id": 6, "cmd": "unsubscribe", "params": {"sids": [3]}}]
    session.receive_frame(frame(type="unsubscribed", id=5, sid=2), 4)
    session.receive_frame(frame(type="unsubscribed", id=6, sid=3, seq=1), 5)
    assert not changes(session.events_to_handle())
    assert list(session.subscriptions) == [LIFECYCLE]


def test_error_26_on_the_first_subscribe_of_the_session_is_a_rejection_too() -> None:
    session = KalshiSession(
        connection_id="t/1", channels=(ORDERBOOK, TICKER), markets=MARKETS, use_yes_price=False
    )
    commands(session)
    session.receive_frame(subscribed(2, TICKER, 1), 1)
    session.receive_frame(error(26, LIMIT_TEXT, id=1), 2)
    assert MarketsRejected(ORDERBOOK, MARKETS, 26, LIMIT_TEXT, 1) in session.events_to_handle()
    assert session.markets == ()
    assert commands(session) == [{"id": 3, "cmd": "unsubscribe", "params": {"sids": [1]}}]


def test_error_27_is_retried_three_times_then_the_markets_are_rejected() -> None:
    session = subscribed_session()
    session.add_markets([NEW[0]])
    commands(session)
    retried = []
    for command_id in (5, 8, 9, 10):
        session.receive_frame(error(27, "Too many requests", id=command_id), 1)
        assert SlowDown(code=27) in session.events_to_handle()
        retried.append(commands(session))
    # The same command again under a new id (the driver spaces it after SlowDown) ...
    assert retried[:3] == [[update(n, 1, (NEW[0],), "add_markets")] for n in (8, 9, 10)]
    # ... and after the third retry the change counts as refused.
    assert retried[3] == [
        update(11, 2, (NEW[0],), "delete_markets"),
        update(12, 3, (NEW[0],), "delete_markets"),
    ]
    assert session.markets == MARKETS


def test_an_add_refused_as_unsupported_falls_back_to_an_idempotent_subscribe() -> None:
    """§12 #26: `trade` may not take add_markets; §4.2.5: subscribing again adds markets."""
    session = subscribed_session()
    session.add_markets([NEW[0]])
    commands(session)
    session.receive_frame(ok(5, 1, 1, (*MARKETS, NEW[0])), 1)
    session.receive_frame(ok(6, 2, None, (*MARKETS, NEW[0])), 2)
    # The live shape (§6.5): sid-scoped, no id; it answers the update in flight on sid 3.
    session.receive_frame(error(13, "Unsupported action", sid=3, seq=1), 3)
    assert commands(session) == [
        {"id": 8, "cmd": "subscribe", "params": {"channels": ["trade"], "market_tickers": [NEW[0]]}}
    ]
    session.receive_frame(ok(8, 3, 2, (*MARKETS, NEW[0])), 4)
    (changed,) = changes(session.events_to_handle())
    assert changed.added == (NEW[0],)
    assert session.subscriptions[TRADE].markets == (*MARKETS, NEW[0])


def test_a_refused_delete_rebuilds_the_subscription_without_those_markets() -> None:
    session = subscribed_session()
    trade = frame(
        type="trade",
        sid=3,
        seq=1,
        msg={
            "trade_id": "t-1",
            "market_ticker": MARKETS[0],
            "yes_price_dollars": "0.3600",
            "no_price_dollars": "0.6400",
            "count_fp": "1.00",
            "taker_outcome_side": "yes",
            "ts_ms": 5_000,
        },
    )
    session.receive_frame(trade, 1)
    session.remove_markets([MARKETS[0]])
    commands(session)
    session.receive_frame(ok(5, 1, 1, (MARKETS[1],)), 2)
    session.receive_frame(ok(6, 2, None, (MARKETS[1],)), 3)
    session.receive_frame(error(13, "Unsupported action", id=7), 4)
    assert commands(session) == [{"id": 8, "cmd": "unsubscribe", "params": {"sids": [3]}}]
    session.receive_frame(frame(type="unsubscribed", id=8, sid=3, seq=2), 5)
    assert commands(session) == [
        {
            "id": 9,
            "cmd": "subscribe",
            "params": {"channels": ["trade"], "market_tickers": [MARKETS[1]]},
        }
    ]
    session.receive_frame(subscribed(9, TRADE, 5), 6)
    events = session.events_to_handle()
    (missing,) = [e for e in events if isinstance(e, TradesMissing)]
    assert (missing.since_ts_ns, missing.until_ts_ns) == (5_000 * 1_000_000, 6)
    (changed,) = changes(events)
    assert changed.removed == (MARKETS[0],)
    assert not [e for e in events if isinstance(e, MarketsRejected)]


def test_the_market_set_for_a_reconnect_includes_unconfirmed_changes() -> None:
    session = subscribed_session()
    session.add_markets([NEW[0]])
    session.remove_markets([MARKETS[0]])
    assert session.markets == (MARKETS[1], NEW[0])
    again = KalshiSession(
        connection_id="t/2", channels=ALL_CHANNELS, markets=session.markets, use_yes_price=False
    )
    assert [c["params"].get("market_tickers") for c in commands(again)] == [
        [MARKETS[1], NEW[0]],
        [MARKETS[1], NEW[0]],
        [MARKETS[1], NEW[0]],
        None,
    ]


async def test_the_event_handler_logs_emits_and_hands_rejections_to_the_driver() -> None:
    session = subscribed_session()
    emitted: list[Record] = []
    refused: list[MarketsRejected] = []

    async def emit(record: Record) -> None:
        emitted.append(record)

    async def missing(event: TradesMissing) -> None:
        raise AssertionError(f"unexpected {event}")

    async def rejected(event: MarketsRejected) -> None:
        refused.append(event)

    session.add_markets([NEW[0]])
    session.remove_markets([MARKETS[0]])
    commands(session)
    session.receive_frame(error(26, LIMIT_TEXT, id=5), 1)  # orderbook refuses NEW[0]
    for command_id, sid, seq in ((6, 2, None), (7, 3, 1), (8, 1, 1), (9, 2, None), (10, 3, 2)):
        session.receive_frame(ok(command_id, sid, seq, (MARKETS[1],)), 2)
    with capture_logs() as logs:
        handler = SessionEventHandler(
            session, structlog.get_logger("ssmd.client"), emit, missing, rejected
        )
        for event in session.events_to_handle():
            await handler.handle(event)
    assert refused == [MarketsRejected(ORDERBOOK, (NEW[0],), 26, LIMIT_TEXT, 5)]
    statuses = [r for r in emitted if isinstance(r, Status)]
    assert [s.event for s in statuses] == [StatusEvent.EXCHANGE_ERROR, StatusEvent.MARKETS_REMOVED]
    assert statuses[1].markets == (MARKETS[0],)
    by_name = {line["event"]: line for line in logs}
    assert by_name["session.markets_rejected"]["markets"] == [NEW[0]]
    assert by_name["session.markets_rejected"]["code"] == 26
    assert by_name["session.markets_rejected"]["channel"] == "orderbook_delta"
    assert by_name["session.markets_removed"]["markets"] == [MARKETS[0]]
    assert by_name["session.markets_removed"]["count"] == 1


def test_a_terminal_error_carries_the_update_in_flight_to_the_new_subscription() -> None:
    session = subscribed_session()
    session.add_markets([NEW[0]])
    commands(session)
    session.receive_frame(ok(5, 1, 1, (*MARKETS, NEW[0])), 1)
    session.receive_frame(ok(6, 2, None, (*MARKETS, NEW[0])), 2)
    # §6.6: 25 ends the trade sid before it answered the update: subscribe again, whole set.
    session.receive_frame(error(25, "Subscription buffer overflow", sid=3, seq=1), 3)
    assert commands(session) == [
        {
            "id": 8,
            "cmd": "subscribe",
            "params": {"channels": ["trade"], "market_tickers": [*MARKETS, NEW[0]]},
        }
    ]
    assert not changes(session.events_to_handle())
    session.receive_frame(subscribed(8, TRADE, 5), 4)
    (changed,) = changes(session.events_to_handle())
    assert (changed.added, changed.status.receive_ts_ns) == ((NEW[0],), 4)
    session.receive_frame(ok(7, 3, 2, (*MARKETS, NEW[0])), 5)  # late, for the old sid
    assert not session.has_events


def test_a_first_subscribe_refused_with_27_is_sent_again() -> None:
    session = empty_session()
    commands(session)
    session.add_markets(NEW)
    commands(session)
    session.receive_frame(error(27, "Too many requests", id=2), 1)
    assert commands(session) == [
        {
            "id": 5,
            "cmd": "subscribe",
            "params": {
                "channels": ["orderbook_delta"],
                "market_tickers": list(NEW),
                "use_yes_price": True,
            },
        }
    ]
    acks = ((1, LIFECYCLE, 1), (5, ORDERBOOK, 2), (3, TICKER, 3), (4, TRADE, 4))
    for command_id, channel, sid in acks:
        session.receive_frame(subscribed(command_id, channel, sid), 2)
    (changed,) = changes(session.events_to_handle())
    assert changed.added == NEW
    assert session.all_subscribed


def test_an_unsubscribe_answered_unknown_sid_counts_as_done() -> None:
    session = subscribed_session()
    session.remove_markets(MARKETS)
    commands(session)
    session.receive_frame(error(7, "Unknown subscription ID", id=5), 1)
    assert ORDERBOOK not in session.subscriptions
    session.receive_frame(frame(type="unsubscribed", id=6, sid=2), 2)
    session.receive_frame(frame(type="unsubscribed", id=7, sid=3, seq=1), 3)
    (changed,) = changes(session.events_to_handle())
    assert changed.removed == MARKETS
    assert list(session.subscriptions) == [LIFECYCLE]


class Wire:
    """A KalshiSession wired to the simulator's pure protocol core, with both directions held
    back until pumped, so commands and replies can cross in any order."""

    def __init__(
        self, markets: tuple[str, ...], generator: MarketGenerator, cap: int | None
    ) -> None:
        self.generator = generator
        self.exchange = ExchangeConnection(
            generator.markets, clock_ns=lambda: 1, max_markets_per_subscription=cap
        )
        self.session = KalshiSession(
            connection_id="t/1", channels=ALL_CHANNELS, markets=markets, use_yes_price=True
        )
        self.inbound: list[bytes] = []
        self.events: list[SessionEvent] = []
        self.records: list[Record] = []
        self.now_ns = 1

    def send_commands(self) -> None:
        for command in self.session.commands_to_send():
            self.inbound.extend(self.exchange.receive_command(command))

    def deliver(self) -> None:
        for data in self.inbound:
            self.now_ns += 1
            record = self.session.receive_frame(data, self.now_ns)
            if record is not None:
                self.records.append(record)
        self.inbound.clear()
        self.events.extend(self.session.events_to_handle())

    def market_event(self) -> None:
        self.now_ns += 1
        event = self.generator.next_event(self.now_ns)
        self.inbound.extend(self.exchange.frames_for_event(event, self.now_ns))


@settings(max_examples=300, deadline=None)
@given(
    cap=st.sampled_from([None, None, 2, 4]),
    initial=st.sets(st.integers(0, 5), max_size=3),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["add", "remove", "send", "deliver", "event"]),
            st.sets(st.integers(0, 5), min_size=1, max_size=3),
        ),
        max_size=25,
    ),
)
def test_any_interleaving_ends_with_the_exchange_carrying_exactly_the_wanted_set(
    cap: int | None, initial: set[int], steps: list[tuple[str, set[int]]]
) -> None:
    """With a per-subscription cap (error 26) too: refused markets leave every channel."""
    generator = MarketGenerator(6, 3)
    tickers = generator.tickers
    wire = Wire(tuple(tickers[i] for i in sorted(initial)), generator, cap)
    calls: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    for step, indexes in steps:
        chosen = [tickers[i] for i in sorted(indexes)]
        if step == "add":
            new = tuple(m for m in chosen if m not in wire.session.markets)
            wire.session.add_markets(chosen)
            calls += [(new, ())] if new else []
        elif step == "remove":
            gone = tuple(m for m in chosen if m in wire.session.markets)
            wire.session.remove_markets(chosen)
            calls += [((), gone)] if gone else []
        elif step == "send":
            wire.send_commands()
        elif step == "deliver":
            wire.deliver()
        else:
            wire.market_event()
    while wire.session.has_commands or wire.inbound:
        wire.send_commands()
        wire.deliver()
    wanted = set(wire.session.markets)
    carried = {s.channel.value: s for s in wire.exchange.subscriptions}
    for channel in ALL_CHANNELS[:3]:
        if wanted:
            assert set(carried[channel.value].markets or ()) == wanted
            assert set(wire.session.subscriptions[channel].markets) == wanted
        else:
            assert channel.value not in carried
            assert channel not in wire.session.subscriptions
    assert set(wire.session.books) == wanted
    assert not wire.session.books.markets_needing_snapshot()
    assert cap is None or len(wanted) <= cap
    rejected = [e for e in wire.events if isinstance(e, MarketsRejected)]
    assert {e.code for e in rejected} <= {26}
    errors = [e for e in wire.events if isinstance(e, ExchangeError)]
    assert {e.code for e in errors} <= {26}
    if not errors:
        # One markets_added/markets_removed per call that changed the set, in call order.
        assert [(c.added, c.removed) for c in changes(wire.events)] == calls
    assert not [e for e in wire.events if isinstance(e, SequenceGap | BookInvalid)]
    # From now on, market data comes for the wanted markets only.
    wire.records.clear()
    for _ in range(30):
        wire.market_event()
    wire.deliver()
    assert {r.market for r in wire.records if not isinstance(r, Status | Lifecycle)} <= wanted


def test_a_repair_stops_waiting_for_markets_removed_meanwhile() -> None:
    session = subscribed_session()
    session.receive_frame(snapshot(1, MARKETS[0]), 1)
    session.receive_frame(snapshot(2, MARKETS[1]), 2)
    session.receive_frame(delta(4, MARKETS[0]), 3)  # seq 3 lost: both books distrusted
    assert session.repairing
    session.events_to_handle()
    session.commands_to_send()  # the get_snapshot (§4.3)
    session.remove_markets([MARKETS[1]])
    (first, *_) = commands(session)
    session.receive_frame(ok(first["id"], 1, 5, (MARKETS[0],)), 4)
    assert session.repairing  # MARKETS[0] still awaits its snapshot
    resync = frame(
        type="orderbook_snapshot",
        sid=1,
        seq=6,
        msg={"market_ticker": MARKETS[0], "yes_dollars_fp": [["0.4100", "1.00"]]},
    )
    record = session.receive_frame(resync, 5)
    assert isinstance(record, BookSnapshot)
    assert Flag.AFTER_RESYNC in record.flags
    assert not session.repairing
    resynced = [e for e in session.events_to_handle() if isinstance(e, Resynced)]
    assert [e.status.markets for e in resynced] == [(MARKETS[0],)]


def test_a_repair_of_only_removed_markets_ends_without_escalating() -> None:
    session = subscribed_session()
    session.receive_frame(snapshot(1, MARKETS[0]), 1)
    session.receive_frame(delta(3, MARKETS[0]), 2)  # gap: both markets' books distrusted
    assert session.repairing
    session.events_to_handle()
    session.commands_to_send()
    session.remove_markets(MARKETS)  # every market: the channels are unsubscribed
    for command in commands(session):
        if command["cmd"] == "unsubscribe":
            for sid in command["params"]["sids"]:
                session.receive_frame(frame(type="unsubscribed", id=command["id"], sid=sid), 3)
    assert not session.repairing
    session.events_to_handle()
    session.poll(10**15)  # long past every repair deadline
    assert not session.events_to_handle()  # no resubscribe, no reconnect
