"""What a KalshiSession tells its driver: events, each with the status record downstream
subscribers must see (if any); the counters and trade ids the session keeps; its subscription
records."""

from __future__ import annotations

import enum
from collections import Counter, deque
from dataclasses import dataclass, field

from ssmd.messages import CONTROL_FRAME_TYPES, DATA_FRAME_TYPES, Channel, frame_type_name
from ssmd.records import Status, Top


class RepairMethod(enum.Enum):
    """How a broken book sid is repaired, in escalation order (PROTOCOL.md §4.3)."""

    GET_SNAPSHOT = "get_snapshot"
    RESUBSCRIBE = "resubscribe"
    RECONNECT = "reconnect"


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
class TopChanged:
    """A market's best levels changed: its `top` record, to publish after the book record."""

    record: Top


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
class BookInvalid:
    """A market's book cannot be trusted without a seq gap: a delta drove a level negative or
    arrived before any snapshot (§4.3). Downstream sees it as a `gap` status record."""

    sid: int
    market: str
    reason: str
    status: Status


@dataclass(frozen=True)
class RepairStarted:
    """Books on `sid` are being rebuilt for `markets` with `method` (after a gap, an
    impossible delta, a terminal error, or a failed earlier method)."""

    sid: int
    markets: tuple[str, ...]
    method: RepairMethod
    reason: str


@dataclass(frozen=True)
class Resynced:
    """Every market of a repair has a fresh snapshot: downstream books are whole again."""

    sid: int
    markets: tuple[str, ...]
    snapshot_seq: int | None
    status: Status


@dataclass(frozen=True)
class ReconnectRequired:
    """The session cannot repair itself on this connection: the driver must reconnect."""

    reason: str


@dataclass(frozen=True)
class TradesMissing:
    """Trades between these exchange times may have been lost (a gap or a dead trade
    subscription); the WebSocket cannot replay them, REST can (§9.5)."""

    markets: tuple[str, ...]
    since_ts_ns: int | None
    until_ts_ns: int
    reason: str


@dataclass(frozen=True)
class MarketsChanged:
    """An add_markets/remove_markets call was confirmed by the exchange on every channel it
    went to (§6.3), once per call: these markets' streams start (`added`; the first channel's
    data, e.g. the book snapshots, may come before this) or have ended (`removed`)."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    status: Status


@dataclass(frozen=True)
class MarketsRejected:
    """The exchange refused to add `markets` on `channel` (e.g. error 26, §6.6). The session
    forgot them on every channel; the driver may place them on another connection."""

    channel: Channel
    markets: tuple[str, ...]
    code: int
    message: str
    command_id: int | None


@dataclass(frozen=True)
class SlowDown:
    """The exchange said too many requests (error 27): space out commands."""

    code: int


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
    | BookInvalid
    | RepairStarted
    | Resynced
    | ReconnectRequired
    | TradesMissing
    | MarketsChanged
    | MarketsRejected
    | SlowDown
    | DuplicateFrame
    | UnsupportedFrame
    | MalformedFrame
    | TopChanged
)


UNTYPED = "untyped"  # frames_by_type key of a frame whose `type` could not be read


def _frames_by_class() -> dict[type, int]:
    return dict.fromkeys((*CONTROL_FRAME_TYPES, *DATA_FRAME_TYPES), 0)


@dataclass
class SessionStats:
    """A session's counters. Frames by wire type: decoded frames are counted by their class
    (`frames_by_class`, every frame class present: one increment on the hot path, no name
    lookup), the others by name (`frames_by_name`: unsupported types, undecodable frames by
    the type they named or UNTYPED); `frames_by_type` reads both by name."""

    frames_received: int = 0
    records_out: int = 0
    gaps: int = 0
    duplicates: int = 0
    repairs: int = 0
    resyncs: int = 0
    unsupported_by_type: Counter[str] = field(default_factory=Counter)
    malformed_by_reason: Counter[str] = field(default_factory=Counter)
    frames_by_class: dict[type, int] = field(default_factory=_frames_by_class)
    frames_by_name: Counter[str] = field(default_factory=Counter)

    @property
    def frames_by_type(self) -> Counter[str]:
        """Frames received by wire `type` (they sum to frames_received); types never seen are
        left out."""
        counts = Counter(self.frames_by_name)
        for frame_class, count in self.frames_by_class.items():
            if count:
                counts[frame_type_name(frame_class)] += count
        return counts

    def add(self, other: SessionStats) -> None:
        """Fold another session's counters into these (totals across reconnects)."""
        self.frames_received += other.frames_received
        self.records_out += other.records_out
        self.gaps += other.gaps
        self.duplicates += other.duplicates
        self.repairs += other.repairs
        self.resyncs += other.resyncs
        self.unsupported_by_type.update(other.unsupported_by_type)
        self.malformed_by_reason.update(other.malformed_by_reason)
        for frame_class, count in other.frames_by_class.items():
            self.frames_by_class[frame_class] = self.frames_by_class.get(frame_class, 0) + count
        self.frames_by_name.update(other.frames_by_name)


# Trade ids remembered to publish each trade once across reconnects and REST backfills: ~170 B
# each, so 50k is ~9 MB, minutes of trading on a busy exchange (a backfill window is a
# reconnect's length; JetStream's own Msg-Id window covers 2 minutes on top).
RECENT_TRADE_IDS = 50_000


class RecentIds:
    """A bounded set of recently seen ids (trade ids), oldest forgotten first.

    A set and a deque rather than an OrderedDict: 2.5 MB instead of 4.6 MB for 50,000 ids
    (tracemalloc, the id strings not counted)."""

    def __init__(self, capacity: int = RECENT_TRADE_IDS) -> None:
        self.capacity = capacity
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def add(self, key: str) -> bool:
        """Remember `key`; False if it was already known."""
        ids = self._ids
        if key in ids:
            return False
        ids.add(key)
        order = self._order
        order.append(key)
        if len(order) > self.capacity:
            ids.discard(order.popleft())
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._ids


@dataclass
class TradeResume:
    """A trade subscription is (re)starting: trades since `since_ts_ns` must be backfilled."""

    since_ts_ns: int | None
    reason: str
