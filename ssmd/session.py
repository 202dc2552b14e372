"""The client side of one Kalshi WebSocket connection, sans I/O (PROTOCOL.md §4-§6).

Commands go out as bytes, frames come in as bytes, and normalized records plus session events
come out. Subscriptions, per-sid sequence state, the local order books, their repair and the
changing market set live here; no asyncio, no socket, no clock: every frame brings its time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ssmd.book import ApplyResult, BookSet
from ssmd.book_repair import BookRepairs
from ssmd.errors import FrameDecodeError
from ssmd.messages import (
    FRAME_DECODE_FAILURE,
    UNSUPPORTED_TYPE,
    Channel,
    ErrorFrame,
    Frame,
    Ok,
    Subscribe,
    Subscribed,
    SubscribeParams,
    Unsubscribed,
    decode_frame,
    encode_command,
    frame_decode_error,
)
from ssmd.normalize import NORMALIZER_BY_FRAME_TYPE
from ssmd.records import BookDelta, BookSnapshot, Record, Status, StatusEvent, Trade
from ssmd.session_events import (
    UNTYPED,
    DuplicateFrame,
    ExchangeError,
    MalformedFrame,
    RecentIds,
    RepairMethod,
    SequenceGap,
    SessionEvent,
    SessionStats,
    SlowDown,
    Subscription,
    SubscriptionConfirmed,
    SubscriptionState,
    TopChanged,
    TradeResume,
    TradesMissing,
    UnsupportedFrame,
)
from ssmd.session_markets import MARKET_CHANNELS, MarketChanges
from ssmd.top import TopTracker

if TYPE_CHECKING:  # the config package imports this module (through client_events)
    from ssmd.config.top import TopSettings

# §6.6: codes after which the subscription no longer exists (10 and 25 terminal; 17 listed
# terminal in the 2026-08 spec, §12 #9).
TERMINAL_ERROR_CODES = frozenset({10, 17, 25})
TOO_MANY_REQUESTS = 27
_EXCERPT_CHARS = 200
_NS_PER_S = 1_000_000_000
_NORMALIZER_BY_FRAME_TYPE_GET = NORMALIZER_BY_FRAME_TYPE.get
_APPLIED = ApplyResult.APPLIED  # a module global: enum member lookups cost ~50 ns (3.11)


class KalshiSession:
    """Protocol state of one connection: subscriptions, sids, sequence numbers and books.

    Call `commands_to_send()` after construction and whenever `has_commands`,
    `receive_frame()` for every text frame, and `events_to_handle()` when `has_events`.
    `trades_since_ts_ns` (a reconnect) asks for a REST backfill of trades from that time
    once the trade subscription is confirmed; `recent_trades` carries trade ids across
    connections so a trade is published once. `add_markets`/`remove_markets` change the
    market set while it runs; with no markets, market-scoped channels are not subscribed.
    """

    def __init__(
        self,
        *,
        connection_id: str,
        channels: Iterable[Channel],
        markets: Iterable[str],
        use_yes_price: bool,
        repair_timeout_s: float = 10.0,
        trades_since_ts_ns: int | None = None,
        recent_trades: RecentIds | None = None,
        top: TopSettings | None = None,
    ) -> None:
        self.connection_id = connection_id
        # Derived top-of-book records (ssmd.top), when `top.enabled`: published as TopChanged.
        self._top = TopTracker(top) if top is not None and top.enabled else None
        self.use_yes_price = use_yes_price
        self.stats = SessionStats()
        self.books = BookSet()
        self.recent_trades = recent_trades if recent_trades is not None else RecentIds()
        self.last_trade_ts_ns: int | None = trades_since_ts_ns
        self._book_for = self.books.book_for
        self._next_command_id = 1
        self._commands: list[bytes] = []
        self._events: list[SessionEvent] = []
        self._by_command: dict[int, Subscription] = {}
        self._by_sid: dict[int, Subscription] = {}
        self.subscriptions: dict[Channel, Subscription] = {}
        # §4.2.1: seq is per sid, shared by every market on that sid. 0 = fresh sid.
        self._last_seq: dict[int, int] = {}
        # sids whose NO-side levels are quoted in YES-leg price (§7.1.4).
        self._yes_price_sids: set[int] = set()
        self._repairs = BookRepairs(self, timeout_ns=int(repair_timeout_s * _NS_PER_S))
        self._trade_resume: TradeResume | None = None
        if trades_since_ts_ns is not None:
            self._trade_resume = TradeResume(trades_since_ts_ns, "reconnected")
        channels = tuple(channels)
        self.channels = channels  # what it subscribes once it has markets (lifecycle: at once)
        self._market_changes = MarketChanges(self, markets, channels)
        for channel in channels:
            if channel not in MARKET_CHANNELS or self._market_changes.wanted:
                self.subscribe(channel)

    # -- the market set (§5.3) ----------------------------------------------------------------

    @property
    def markets(self) -> tuple[str, ...]:
        """The markets this connection wants now, changes not yet confirmed included: what a
        reconnect subscribes."""
        return tuple(self._market_changes.wanted)

    def add_markets(self, markets: Iterable[str]) -> None:
        """Carry these markets too (add_markets on each sid); known ones are ignored."""
        self._market_changes.add(markets)

    def remove_markets(self, markets: Iterable[str]) -> None:
        """Stop carrying these markets (delete_markets); unknown ones are ignored."""
        self._market_changes.remove(markets)

    # -- commands -----------------------------------------------------------------------------

    # -- the RepairHost side: what BookRepairs may do through this session ------------------

    def next_command_id(self) -> int:
        command_id = self._next_command_id
        self._next_command_id += 1
        return command_id

    def send(self, command: bytes) -> None:
        self._commands.append(command)

    def emit(self, event: SessionEvent) -> None:
        self._events.append(event)

    def subscription_for_sid(self, sid: int) -> Subscription | None:
        return self._by_sid.get(sid)

    def subscribe(self, channel: Channel) -> Subscription:
        """Send a subscribe for `channel` with this session's markets (a new sid follows)."""
        # §7.0: lifecycle takes no market filter; the others are never sent without one (none
        # would mean "all markets"): with no market wanted, nothing is sent.
        markets = self.markets if channel in MARKET_CHANNELS else ()
        if channel in MARKET_CHANNELS and not markets:
            self.subscriptions.pop(channel, None)
            return Subscription(channel, 0, (), SubscriptionState.ENDED)
        command_id = self.next_command_id()
        params = SubscribeParams(
            channels=[channel.value],
            market_tickers=list(markets) if markets else None,
            # §7.1.4: always send the flag explicitly on orderbook subscriptions.
            use_yes_price=self.use_yes_price if channel is Channel.ORDERBOOK_DELTA else None,
        )
        subscription = Subscription(channel=channel, command_id=command_id, markets=markets)
        self.subscriptions[channel] = subscription
        self._by_command[command_id] = subscription
        self._commands.append(encode_command(Subscribe(id=command_id, params=params)))
        if channel in MARKET_CHANNELS:
            self._market_changes.on_subscribe(subscription)
        return subscription

    def restart_channel(self, channel: Channel, reason: str) -> Subscription:
        """Subscribe `channel` again (its sid is gone); trades meanwhile are backfilled."""
        if channel is Channel.TRADE:
            self._trade_resume = TradeResume(self.last_trade_ts_ns, reason)
        return self.subscribe(channel)

    def commands_to_send(self) -> list[bytes]:
        """Encoded commands the driver must send now, in order."""
        commands, self._commands = self._commands, []
        return commands

    @property
    def has_commands(self) -> bool:
        return bool(self._commands)

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def events_to_handle(self) -> list[SessionEvent]:
        events, self._events = self._events, []
        return events

    @property
    def all_subscribed(self) -> bool:
        return all(s.state is SubscriptionState.ACTIVE for s in self.subscriptions.values())

    @property
    def repairing(self) -> bool:
        return self._repairs.active

    def status_record(
        self,
        event: StatusEvent,
        ts_ns: int,
        *,
        reason: str = "",
        channel: Channel | None = None,
        sid: int | None = None,
        seq: int | None = None,
        markets: tuple[str, ...] = (),
        expected_seq: int | None = None,
        received_seq: int | None = None,
    ) -> Status:
        """A connector-level status record for this connection."""
        return Status(
            market="",
            receive_ts_ns=ts_ns,
            sid=sid,
            seq=seq,
            event=event,
            connection_id=self.connection_id,
            channel=channel.value if channel else None,
            expected_seq=expected_seq,
            received_seq=received_seq,
            markets=markets,
            reason=reason,
        )

    # -- frames -------------------------------------------------------------------------------

    def poll(self, now_ns: int) -> None:
        """Let time pass without a frame: repairs past their deadline escalate. The driver calls
        this on a timer, so an exchange that ignores a repair and goes quiet is still caught."""
        deadline_ns = self._repairs.next_deadline_ns
        if deadline_ns is not None and now_ns > deadline_ns:
            self._repairs.escalate_overdue(now_ns)
        top = self._top
        if top is not None and (due_ns := top.next_due_ns()) is not None and now_ns >= due_ns:
            self._events.extend(TopChanged(record) for record in top.flush_due(now_ns))

    def receive_frame(self, data: bytes | str, receive_ts_ns: int) -> Record | None:
        """Process one text frame; return its normalized record, if it is a data frame."""
        # The hot path: no allocation besides the frame and its record, no event, no union
        # isinstance (`A | B` builds a UnionType per call), in-sequence seq handled inline,
        # msgspec's decoder and a book record's book reached without a Python frame of ours.
        deadline_ns = self._repairs.next_deadline_ns
        if deadline_ns is not None and receive_ts_ns > deadline_ns:
            self._repairs.escalate_overdue(receive_ts_ns)
        stats = self.stats
        stats.frames_received += 1
        try:
            frame = decode_frame(data)
        except FRAME_DECODE_FAILURE as exc:
            error = frame_decode_error(data, exc)
            stats.frames_by_name[error.type_name or UNTYPED] += 1
            self._reject(error, data)
            return None
        frame_type = type(frame)
        stats.frames_by_class[frame_type] += 1  # every frame class is a key (SessionStats)
        sid = frame.sid
        seq = frame.seq
        if sid is not None and seq is not None:
            last_seq = self._last_seq
            if seq == last_seq.get(sid, -1) + 1:
                last_seq[sid] = seq
            elif not self._accept_seq(sid, seq, receive_ts_ns):
                return None
        normalizer = _NORMALIZER_BY_FRAME_TYPE_GET(frame_type)
        if normalizer is None:
            self._receive_control(frame, receive_ts_ns)
            return None
        try:
            # Only orderbook sids are ever in _yes_price_sids (§7.1.4).
            record = normalizer(frame, receive_ts_ns, sid in self._yes_price_sids)
        except FrameDecodeError as exc:
            self._reject(exc, data)
            return None
        if type(record) is BookDelta:
            book = self._book_for(record.market)
            if book is not None:
                result = book.apply_delta(record)
            else:
                result = self.books.apply_delta(record)
            if result is not _APPLIED:
                record = self._repairs.on_book_record(record, result, sid, receive_ts_ns)
            if self._top is not None:
                self._book_changed(record)
        elif type(record) is Trade:
            if not self.recent_trades.add(record.trade_id):
                stats.duplicates += 1
                return None
            if record.exchange_ts_ns is not None:
                self.last_trade_ts_ns = record.exchange_ts_ns
        elif type(record) is BookSnapshot:
            book = self._book_for(record.market)
            result = book.apply_snapshot(record) if book is not None else self.books.apply(record)
            record = self._repairs.on_book_record(record, result, sid, receive_ts_ns)
            if self._top is not None:
                self._book_changed(record)
        stats.records_out += 1
        return record

    def discard_books(self, markets: tuple[str, ...], ts_ns: int) -> None:
        """These markets left the orderbook subscription: forget their books, their tops and
        their place in any repair under way (a repair waits for nothing gone)."""
        for market in markets:
            self.books.discard(market)
            if self._top is not None:
                self._top.forget(market)
        self._repairs.forget_markets(markets, ts_ns)

    def _book_changed(self, record: BookDelta | BookSnapshot) -> None:
        """A book record was applied: its market's top may have to be published."""
        assert self._top is not None
        book = self.books.get(record.market)
        if book is None:
            self._top.forget(record.market)
        elif (top := self._top.receive_book(book, record)) is not None:
            self._events.append(TopChanged(top))

    def _accept_seq(self, sid: int, seq: int, receive_ts_ns: int) -> bool:
        """§4.3: expect last + 1 on every sid; a jump is a gap, a repeat is dropped."""
        last = self._last_seq.get(sid)
        if last is None or seq == last + 1:
            self._last_seq[sid] = seq
            return True
        if seq <= last:
            self.stats.duplicates += 1
            self._events.append(DuplicateFrame(sid=sid, seq=seq, last_seq=last))
            return False
        self._last_seq[sid] = seq
        self.stats.gaps += 1
        subscription = self._by_sid.get(sid)
        channel = subscription.channel if subscription else None
        markets = subscription.markets if subscription else ()
        reason = f"{seq - last - 1} frame(s) missing on sid {sid}"
        status = self.status_record(
            StatusEvent.GAP,
            receive_ts_ns,
            reason=reason,
            channel=channel,
            sid=sid,
            seq=seq,
            markets=markets,
            expected_seq=last + 1,
            received_seq=seq,
        )
        self._events.append(
            SequenceGap(
                sid=sid,
                channel=channel,
                expected_seq=last + 1,
                received_seq=seq,
                markets=markets,
                status=status,
            )
        )
        if channel is Channel.ORDERBOOK_DELTA:
            # §4.3: a gap invalidates every book on the sid: the lost frame could be any market's.
            self._repairs.start(sid, markets, RepairMethod.GET_SNAPSHOT, reason, receive_ts_ns)
        elif channel is Channel.TRADE:
            self._events.append(
                TradesMissing(
                    markets=markets,
                    since_ts_ns=self.last_trade_ts_ns,
                    until_ts_ns=receive_ts_ns,
                    reason=reason,
                )
            )
        return True

    # -- books and their repair ---------------------------------------------------------------

    # -- control frames -----------------------------------------------------------------------

    def _receive_control(self, frame: Frame, receive_ts_ns: int) -> None:
        """A frame with no normalizer: subscribed, ok, unsubscribed or error (§6)."""
        if isinstance(frame, Subscribed):
            self._receive_subscribed(frame, receive_ts_ns)
        elif isinstance(frame, ErrorFrame):
            self._receive_error(frame, receive_ts_ns)
        elif isinstance(frame, Ok):
            self._market_changes.on_ok(frame, receive_ts_ns)
        elif isinstance(frame, Unsubscribed) and frame.sid is not None:
            self._end_sid(frame.sid)
            self._market_changes.on_unsubscribed(frame.sid, receive_ts_ns)

    def _end_sid(self, sid: int) -> None:
        ended = self._by_sid.pop(sid, None)
        if ended is not None:
            ended.state = SubscriptionState.ENDED
        self._last_seq.pop(sid, None)
        self._yes_price_sids.discard(sid)
        self._repairs.on_unsubscribed(sid)

    def _receive_subscribed(self, frame: Subscribed, receive_ts_ns: int) -> None:
        if frame.msg is None:
            return
        sid = frame.msg.sid
        subscription = self._by_command.get(frame.id or 0)
        if subscription is None or subscription.channel.value != frame.msg.channel:
            return
        subscription.sid = sid
        subscription.state = SubscriptionState.ACTIVE
        self._by_sid[sid] = subscription
        # §4.2.2: a new sid starts at seq 1, whatever came before on this connection.
        self._last_seq[sid] = 0
        if subscription.channel is Channel.ORDERBOOK_DELTA and self.use_yes_price:
            self._yes_price_sids.add(sid)
        self._repairs.on_subscribed(subscription.command_id, sid)
        status = self.status_record(
            StatusEvent.SUBSCRIBED,
            receive_ts_ns,
            channel=subscription.channel,
            sid=sid,
            markets=subscription.markets,
        )
        self._events.append(
            SubscriptionConfirmed(channel=subscription.channel, sid=sid, status=status)
        )
        if subscription.channel is Channel.TRADE and self._trade_resume is not None:
            resume, self._trade_resume = self._trade_resume, None
            self._events.append(
                TradesMissing(
                    markets=subscription.markets,
                    since_ts_ns=resume.since_ts_ns,
                    until_ts_ns=receive_ts_ns,
                    reason=resume.reason,
                )
            )
        self._market_changes.on_subscribed(subscription, receive_ts_ns)

    def _receive_error(self, frame: ErrorFrame, receive_ts_ns: int) -> None:
        code = frame.msg.code if frame.msg else 0
        message = frame.msg.msg if frame.msg else ""
        subscription: Subscription | None = None
        if frame.sid is not None:
            subscription = self._by_sid.get(frame.sid)
        elif frame.id is not None:
            subscription = self._by_command.get(frame.id)
            if subscription is not None and subscription.sid is None:
                subscription.state = SubscriptionState.REJECTED
        terminal = code in TERMINAL_ERROR_CODES
        channel = subscription.channel if subscription else None
        status = self.status_record(
            StatusEvent.EXCHANGE_ERROR,
            receive_ts_ns,
            reason=f"code {code}: {message}",
            channel=channel,
            sid=frame.sid,
            seq=frame.seq,
        )
        self._events.append(
            ExchangeError(
                code=code,
                message=message,
                command_id=frame.id,
                sid=frame.sid,
                channel=channel,
                terminal=terminal,
                status=status,
            )
        )
        if code == TOO_MANY_REQUESTS:
            self._events.append(SlowDown(code=code))
        # An error naming one of our repair commands (e.g. 13 on a non-orderbook sid) escalates.
        if frame.id is not None and self._repairs.on_refused(frame.id, code, receive_ts_ns):
            return
        if not terminal or frame.sid is None:  # an add/remove refused: retried, or forgotten
            self._market_changes.on_error(frame.id, frame.sid, code, message, receive_ts_ns)
        if terminal and subscription is not None and frame.sid is not None:
            self._recreate(subscription, frame.sid, code, receive_ts_ns)

    def _recreate(self, subscription: Subscription, sid: int, code: int, ts_ns: int) -> None:
        """§6.6: after error 10/25 the subscription is gone: subscribe again (a new sid)."""
        self._end_sid(sid)
        reason = f"subscription ended by error {code}"
        if subscription.channel is Channel.ORDERBOOK_DELTA:
            self._repairs.recreate(subscription.markets, sid, reason, ts_ns)
            return
        self.restart_channel(subscription.channel, reason)

    def _reject(self, exc: FrameDecodeError, data: bytes | str) -> None:
        if exc.reason == UNSUPPORTED_TYPE and exc.type_name is not None:
            first = exc.type_name not in self.stats.unsupported_by_type
            self.stats.unsupported_by_type[exc.type_name] += 1
            self._events.append(UnsupportedFrame(type_name=exc.type_name, first_of_type=first))
            return
        self.stats.malformed_by_reason[exc.reason] += 1
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        self._events.append(
            MalformedFrame(
                reason=exc.reason,
                detail=exc.detail,
                type_name=exc.type_name,
                excerpt=text[:_EXCERPT_CHARS],
            )
        )
