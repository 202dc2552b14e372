"""The client side of one Kalshi WebSocket connection, sans I/O (PROTOCOL.md §4-§6).

Commands go out as bytes, frames come in as bytes, and normalized records plus session events
come out. Subscription and per-sid sequence state live here; there is no asyncio, no socket and
no clock: the driver passes each frame's receive time.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ssmd.errors import FrameDecodeError
from ssmd.messages import (
    UNSUPPORTED_TYPE,
    Channel,
    ErrorFrame,
    FrameDecoder,
    Ok,
    OrderbookDelta,
    OrderbookSnapshot,
    Subscribe,
    Subscribed,
    SubscribeParams,
    Unsubscribed,
    encode_command,
)
from ssmd.normalize import normalize
from ssmd.records import Record, Status, StatusEvent

# §6.6: codes after which the subscription no longer exists (10 and 25 terminal; 17 listed
# terminal in the 2026-08 spec, §12 #9).
TERMINAL_ERROR_CODES = frozenset({10, 17, 25})
_EXCERPT_CHARS = 200


class SubscriptionState(enum.Enum):
    REQUESTED = "requested"
    ACTIVE = "active"
    REJECTED = "rejected"
    ENDED = "ended"


@dataclass
class Subscription:
    """One channel subscription on this connection; `sid` is known once acknowledged."""

    channel: Channel
    command_id: int
    markets: tuple[str, ...]
    state: SubscriptionState = SubscriptionState.REQUESTED
    sid: int | None = None


@dataclass(frozen=True)
class SubscriptionConfirmed:
    """The exchange acknowledged a subscription (§6.1)."""

    channel: Channel
    sid: int
    status: Status


@dataclass(frozen=True)
class ExchangeError:
    """An `error` frame (§6.5). `terminal` when the subscription it names is gone (§6.6)."""

    code: int
    message: str
    command_id: int | None
    sid: int | None
    channel: Channel | None
    terminal: bool
    status: Status


@dataclass(frozen=True)
class SequenceGap:
    """Frames were lost on a sid (§4.3): `expected_seq` came as `received_seq`."""

    sid: int
    channel: Channel | None
    expected_seq: int
    received_seq: int
    markets: tuple[str, ...]
    status: Status


@dataclass(frozen=True)
class DuplicateFrame:
    """A frame whose seq was already seen on its sid; it was dropped."""

    sid: int
    seq: int
    last_seq: int


@dataclass(frozen=True)
class UnsupportedFrame:
    """A frame of a `type` ssmd does not handle; counted, never fatal."""

    type_name: str
    first_of_type: bool


@dataclass(frozen=True)
class MalformedFrame:
    """A frame that could not be decoded or normalized; counted, the stream goes on."""

    reason: str
    detail: str
    type_name: str | None
    excerpt: str


SessionEvent = (
    SubscriptionConfirmed
    | ExchangeError
    | SequenceGap
    | DuplicateFrame
    | UnsupportedFrame
    | MalformedFrame
)


@dataclass
class SessionStats:
    frames_received: int = 0
    records_out: int = 0
    gaps: int = 0
    duplicates: int = 0
    unsupported_by_type: Counter[str] = field(default_factory=Counter)
    malformed_by_reason: Counter[str] = field(default_factory=Counter)


class KalshiSession:
    """Protocol state of one connection: subscriptions, sids and per-sid sequence numbers.

    Call `commands_to_send()` after construction and after anything that changes subscriptions,
    `receive_frame()` for every text frame, and `events_to_handle()` when `has_events` is true.
    """

    def __init__(
        self,
        *,
        connection_id: str,
        channels: Iterable[Channel],
        markets: Iterable[str],
        use_yes_price: bool,
    ) -> None:
        self.connection_id = connection_id
        self.use_yes_price = use_yes_price
        self.stats = SessionStats()
        self._decoder = FrameDecoder()
        self._markets = tuple(markets)
        self._next_command_id = 1
        self._commands: list[bytes] = []
        self._events: list[SessionEvent] = []
        self._by_command: dict[int, list[Subscription]] = {}
        self._by_sid: dict[int, Subscription] = {}
        # §4.2.1: seq is per sid, shared by every market on that sid. 0 = fresh sid.
        self._last_seq: dict[int, int] = {}
        # sids whose NO-side levels are quoted in YES-leg price (§7.1.4).
        self._yes_price_sids: set[int] = set()
        self.subscriptions: list[Subscription] = []
        for channel in channels:
            self._subscribe(channel)

    # -- commands -----------------------------------------------------------------------------

    def _subscribe(self, channel: Channel) -> None:
        command_id = self._next_command_id
        self._next_command_id += 1
        # §7.0: lifecycle takes no market filter; ticker/trade without markets mean "all".
        markets = () if channel is Channel.MARKET_LIFECYCLE_V2 else self._markets
        params = SubscribeParams(
            channels=[channel.value],
            market_tickers=list(markets) if markets else None,
            # §7.1.4: always send the flag explicitly on orderbook subscriptions.
            use_yes_price=self.use_yes_price if channel is Channel.ORDERBOOK_DELTA else None,
        )
        subscription = Subscription(channel=channel, command_id=command_id, markets=markets)
        self.subscriptions.append(subscription)
        self._by_command[command_id] = [subscription]
        self._commands.append(encode_command(Subscribe(id=command_id, params=params)))

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
        return all(s.state is SubscriptionState.ACTIVE for s in self.subscriptions)

    def status_record(
        self, event: StatusEvent, ts_ns: int, *, reason: str = "", channel: Channel | None = None
    ) -> Status:
        """A connector-level status record for this connection."""
        return Status(
            market="",
            receive_ts_ns=ts_ns,
            event=event,
            connection_id=self.connection_id,
            channel=channel.value if channel else None,
            reason=reason,
        )

    # -- frames -------------------------------------------------------------------------------

    def receive_frame(self, data: bytes | str, receive_ts_ns: int) -> Record | None:
        """Process one text frame; return its normalized record, if it is a data frame."""
        self.stats.frames_received += 1
        try:
            frame = self._decoder.decode(data)
        except FrameDecodeError as exc:
            self._reject(exc, data)
            return None
        sid = frame.sid
        seq = frame.seq
        if sid is not None and seq is not None and not self._accept_seq(sid, seq, receive_ts_ns):
            return None
        if isinstance(frame, Subscribed | Ok | Unsubscribed | ErrorFrame):
            self._receive_control(frame, receive_ts_ns)
            return None
        try:
            record = normalize(
                frame,
                receive_ts_ns,
                no_side_in_yes_price=sid in self._yes_price_sids
                and isinstance(frame, OrderbookSnapshot | OrderbookDelta),
            )
        except FrameDecodeError as exc:
            self._reject(exc, data)
            return None
        self.stats.records_out += 1
        return record

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
        status = Status(
            market="",
            receive_ts_ns=receive_ts_ns,
            sid=sid,
            seq=seq,
            event=StatusEvent.GAP,
            connection_id=self.connection_id,
            channel=channel.value if channel else None,
            expected_seq=last + 1,
            received_seq=seq,
            markets=markets,
            reason=f"{seq - last - 1} frame(s) missing on sid {sid}",
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
        return True

    def _receive_control(
        self, frame: Subscribed | Ok | Unsubscribed | ErrorFrame, receive_ts_ns: int
    ) -> None:
        if isinstance(frame, Subscribed):
            self._receive_subscribed(frame, receive_ts_ns)
        elif isinstance(frame, ErrorFrame):
            self._receive_error(frame, receive_ts_ns)
        elif isinstance(frame, Unsubscribed) and frame.sid is not None:
            ended = self._by_sid.pop(frame.sid, None)
            if ended is not None:
                ended.state = SubscriptionState.ENDED
            self._last_seq.pop(frame.sid, None)
            self._yes_price_sids.discard(frame.sid)
        # `ok` (§6.3) only consumed its seq, which _accept_seq already did.

    def _receive_subscribed(self, frame: Subscribed, receive_ts_ns: int) -> None:
        if frame.msg is None:
            return
        sid = frame.msg.sid
        channel_name = frame.msg.channel
        pending = self._by_command.get(frame.id or 0, [])
        subscription = next(
            (s for s in pending if s.channel.value == channel_name and s.sid is None), None
        )
        if subscription is None:
            return
        subscription.sid = sid
        subscription.state = SubscriptionState.ACTIVE
        self._by_sid[sid] = subscription
        # §4.2.2: a new sid starts at seq 1, whatever came before on this connection.
        self._last_seq[sid] = 0
        if subscription.channel is Channel.ORDERBOOK_DELTA and self.use_yes_price:
            self._yes_price_sids.add(sid)
        status = Status(
            market="",
            receive_ts_ns=receive_ts_ns,
            sid=sid,
            event=StatusEvent.SUBSCRIBED,
            connection_id=self.connection_id,
            channel=channel_name,
            markets=subscription.markets,
        )
        self._events.append(
            SubscriptionConfirmed(channel=subscription.channel, sid=sid, status=status)
        )

    def _receive_error(self, frame: ErrorFrame, receive_ts_ns: int) -> None:
        code = frame.msg.code if frame.msg else 0
        message = frame.msg.msg if frame.msg else ""
        subscription: Subscription | None = None
        if frame.sid is not None:
            subscription = self._by_sid.get(frame.sid)
        elif frame.id is not None:
            pending = self._by_command.get(frame.id, [])
            subscription = next((s for s in pending if s.sid is None), None)
            if subscription is not None:
                subscription.state = SubscriptionState.REJECTED
        terminal = code in TERMINAL_ERROR_CODES
        if terminal and subscription is not None and subscription.sid is not None:
            subscription.state = SubscriptionState.ENDED
            self._by_sid.pop(subscription.sid, None)
        channel = subscription.channel if subscription else None
        status = Status(
            market="",
            receive_ts_ns=receive_ts_ns,
            sid=frame.sid,
            seq=frame.seq,
            event=StatusEvent.EXCHANGE_ERROR,
            connection_id=self.connection_id,
            channel=channel.value if channel else None,
            reason=f"code {code}: {message}",
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
