"""The simulator's deliberate misbehaviour: every fault kind as a frozen value, plus the pure
application of frame-level faults (skip a seq, duplicate, malform) to one connection's frames.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec

from ssmd.errors import ConfigError
from ssmd.exchange.protocol import ErrorCode

_encode_numbers = msgspec.json.Encoder(decimal_format="number").encode
_decode = msgspec.json.Decoder().decode


class CloseCode(enum.IntEnum):
    """Close codes a faulty exchange sends (RFC 6455 §7.4.1); Kalshi documents none (§12 #13)."""

    GOING_AWAY = 1001
    INTERNAL_ERROR = 1011


class StallMode(enum.Enum):
    """What a stalled connection still does."""

    PINGS_ONLY = "pings_only"  # heartbeats continue (§3), no data frames, commands still read
    SILENT = "silent"  # no pings, no data, nothing read: client pings go unanswered


class MalformedKind(enum.Enum):
    INVALID_JSON = "invalid_json"  # the frame loses its last byte
    WRONG_FIELD_TYPE = "wrong_field_type"  # a `*_dollars`/`*_fp` string becomes a JSON number


class SkipReason(enum.Enum):
    """Why a frame built for a connection never reached it."""

    SKIP_SEQ = "skip_seq"  # a SkipSeq fault dropped it; its seq stays consumed (a real gap)
    OVERFLOW = "overflow"  # a slow consumer's overflow dropped it before error 25
    CLOSED = "closed"  # the connection closed (cleanly, aborted or at stop) before it was sent


TERMINAL_ERRORS = (ErrorCode.CHANNEL_ERROR, ErrorCode.BUFFER_OVERFLOW)  # §6.6: terminal


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(message, source="exchange fault", field=field)


# -- connection faults (applied by the server to one connection, or to all) ----------------------


@dataclass(frozen=True)
class CloseConnection:
    """Close the WebSocket cleanly with `code` now; queued frames are dropped (CLOSED)."""

    code: CloseCode = CloseCode.INTERNAL_ERROR


@dataclass(frozen=True)
class AbortConnection:
    """Drop the TCP connection (`transport.abort()`): no close frame, the client sees 1006."""


@dataclass(frozen=True)
class Stall:
    """Send no data frames for `duration_s` (frames queue up meanwhile), see StallMode."""

    duration_s: float
    mode: StallMode = StallMode.PINGS_ONLY

    def __post_init__(self) -> None:
        _require(self.duration_s > 0, "duration_s", f"must be > 0, got {self.duration_s}")


@dataclass(frozen=True)
class TerminateSubscription:
    """Send error 25 or 10 on `sid` (None: the lowest active sid) and drop it (§3, §6.6)."""

    code: ErrorCode = ErrorCode.BUFFER_OVERFLOW
    sid: int | None = None

    def __post_init__(self) -> None:
        _require(self.code in TERMINAL_ERRORS, "code", f"must be 10 or 25, got {self.code}")


@dataclass(frozen=True)
class UnsolicitedSnapshot:
    """A mid-stream `orderbook_snapshot` of `market` (None: the orderbook sid's first market)
    on the orderbook sid, with its next seq and no `id` (§4.2.8)."""

    market: str | None = None


@dataclass(frozen=True)
class SkipSeq:
    """Drop the next sequenced data frame (on `sid`, or any); its seq stays consumed."""

    sid: int | None = None


@dataclass(frozen=True)
class DuplicateFrame:
    """Send the next data frame (on `sid`, or any) twice."""

    sid: int | None = None


@dataclass(frozen=True)
class MalformedFrame:
    """Corrupt the next data frame it fits (on `sid`, or any), see MalformedKind."""

    kind: MalformedKind = MalformedKind.INVALID_JSON
    sid: int | None = None


# -- server faults -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RejectHandshakes:
    """Answer the next `count` WebSocket handshakes with HTTP 401, whatever their signature."""

    count: int = 1

    def __post_init__(self) -> None:
        _require(self.count >= 1, "count", f"must be >= 1, got {self.count}")


@dataclass(frozen=True)
class Burst:
    """Produce `events` market events at once, above the configured rate."""

    events: int

    def __post_init__(self) -> None:
        _require(self.events >= 1, "events", f"must be >= 1, got {self.events}")


FrameFault = SkipSeq | DuplicateFrame | MalformedFrame
ConnectionFault = (
    CloseConnection | AbortConnection | Stall | TerminateSubscription | UnsolicitedSnapshot
) | FrameFault
ServerFault = RejectHandshakes | Burst
Fault = ConnectionFault | ServerFault


@dataclass(frozen=True)
class FaultRecord:
    """One injected fault: when (`at_ns`, the simulator's clock) and on which connection
    (None for a server fault)."""

    at_ns: int
    connection_id: int | None
    fault: Fault


# -- frame faults (pure) -------------------------------------------------------------------------


class _Envelope(msgspec.Struct):
    type: str | None = None
    sid: int | None = None
    seq: int | None = None


def frame_sid_seq(data: bytes) -> tuple[int | None, int | None]:
    """The `sid` and `seq` of a frame, (None, None) when absent or the frame is malformed."""
    envelope = _peek(data)
    return (envelope.sid, envelope.seq) if envelope is not None else (None, None)


def _peek(data: bytes) -> _Envelope | None:
    try:
        return msgspec.json.decode(data, type=_Envelope)
    except msgspec.DecodeError:
        return None


@dataclass(frozen=True)
class FaultedFrames:
    """What is left to send after frame faults, and the frames they dropped (SKIP_SEQ)."""

    to_send: list[bytes]
    dropped: list[bytes]


class FrameFaults:
    """The pending frame faults of one connection, each applied once to the first data frame
    it fits (in injection order), then gone; a fault that fits nothing stays pending."""

    def __init__(self) -> None:
        self._pending: list[FrameFault] = []

    @property
    def pending(self) -> list[FrameFault]:
        return list(self._pending)

    def add(self, fault: FrameFault) -> None:
        self._pending.append(fault)

    def apply_to(self, frames: list[bytes]) -> FaultedFrames:
        if not self._pending or not frames:
            return FaultedFrames(frames, [])
        to_send = list(frames)
        dropped: list[bytes] = []
        self._pending = [
            fault for fault in self._pending if not _apply_one(fault, to_send, dropped)
        ]
        return FaultedFrames(to_send, dropped)


def _apply_one(fault: FrameFault, frames: list[bytes], dropped: list[bytes]) -> bool:
    """Apply `fault` in place to the first frame it fits; False when none fits."""
    for index, data in enumerate(frames):
        envelope = _peek(data)
        if envelope is None or envelope.sid is None:
            continue  # already corrupted, or not a subscription's frame
        if fault.sid is not None and envelope.sid != fault.sid:
            continue
        if isinstance(fault, SkipSeq):
            if envelope.seq is None:
                continue  # ticker frames carry no seq (§4.1): nothing to skip
            dropped.append(frames.pop(index))
            return True
        if isinstance(fault, DuplicateFrame):
            frames.insert(index, data)
            return True
        corrupted = _malformed(data, fault.kind)
        if corrupted is not None:
            frames[index] = corrupted
            return True
    return False


def _malformed(data: bytes, kind: MalformedKind) -> bytes | None:
    """The corrupted frame, or None when `data` has no field this kind can corrupt."""
    if kind is MalformedKind.INVALID_JSON:
        return data[:-1]
    frame: Any = _decode(data)
    msg = frame.get("msg")
    if not isinstance(msg, dict):
        return None
    for key, value in msg.items():
        if key.endswith(("_dollars", "_fp")) and isinstance(value, str):
            msg[key] = Decimal(value)  # "0.4800" -> 0.4800: the right digits, the wrong type
            return _encode_numbers(frame)
    return None
