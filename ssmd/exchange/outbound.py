"""One client connection's outbound side in the simulator: its outbox and backpressure policy,
the sender and heartbeat tasks, stalls, and the ledger of frames sent and dropped.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import dataclass
from typing import IO

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConcurrencyError, ConnectionClosed

from ssmd.exchange.faults import (
    FaultRecord,
    FrameFaults,
    SkipReason,
    StallMode,
    frame_sid_seq,
)
from ssmd.exchange.protocol import ErrorCode, ExchangeConnection

log = structlog.get_logger("ssmd.exchange")

_HEARTBEAT = b"heartbeat"  # §3: Kalshi's ping payload
# Frames a sender takes from its outbox at once and writes with one socket write.
_SEND_BATCH_FRAMES = 256


class BackpressurePolicy(enum.Enum):
    """What a full outbox does to the producer."""

    BLOCK = "block"  # wait for room (producing pauses): nothing is ever lost, for exact tests
    OVERFLOW = "overflow"  # Kalshi-like: full for too long → error 25, the sid is dropped (§3)


@dataclass(frozen=True)
class SentFrame:
    """One text frame the server actually sent (`ws.send` returned) on one connection."""

    connection_id: int
    data: bytes


@dataclass(frozen=True)
class SkippedFrame:
    """A frame built for a connection that never reached it; `sid`/`seq` None if it has none."""

    connection_id: int
    sid: int | None
    seq: int | None
    data: bytes
    reason: SkipReason


class Ledger:
    """Every frame sent or dropped, and every fault injected (kept only if `keep`), plus the
    optional `--log` file of sent frames."""

    def __init__(self, *, keep: bool, log_file: IO[bytes] | None = None) -> None:
        self.keep = keep
        self.log_file = log_file
        self.sent: list[SentFrame] = []
        self.skipped: list[SkippedFrame] = []
        self.faults: list[FaultRecord] = []

    def record_sent(self, connection_id: int, data: bytes, *, flush: bool) -> None:
        if self.keep:
            self.sent.append(SentFrame(connection_id, data))
        if self.log_file is not None:
            self.log_file.write(data + b"\n")
            if flush:
                self.log_file.flush()

    def record_skipped(self, connection_id: int, frames: list[bytes], reason: SkipReason) -> None:
        if self.keep:
            for data in frames:
                sid, seq = frame_sid_seq(data)
                self.skipped.append(SkippedFrame(connection_id, sid, seq, data, reason))

    def record_fault(self, record: FaultRecord) -> None:
        if self.keep:
            self.faults.append(record)


class Outbox:
    """FIFO of frames not yet sent, with a nominal capacity that OVERFLOW mode may exceed."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.closed = False
        self._frames: deque[bytes] = deque()
        self._has_frames = asyncio.Event()
        self._has_room = asyncio.Event()
        self._emptied = asyncio.Event()
        self._update()

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def over_capacity(self) -> bool:
        return len(self._frames) > self.capacity

    def put(self, frame: bytes) -> None:
        self._frames.append(frame)
        self._update()

    def pop_many(self, limit: int) -> list[bytes]:
        """Remove and return up to `limit` frames, oldest first."""
        frames = self._frames
        taken = [frames.popleft() for _ in range(min(limit, len(frames)))]
        self._update()
        return taken

    def take_overflow(self) -> list[bytes]:
        """Remove and return the frames queued beyond the capacity, oldest first."""
        overflow = [self._frames.pop() for _ in range(len(self._frames) - self.capacity)]
        overflow.reverse()
        self._update()
        return overflow

    def close(self) -> list[bytes]:
        """No more frames: return the unsent ones and release every waiter."""
        self.closed = True
        frames = list(self._frames)
        self._frames.clear()
        self._update()
        return frames

    async def wait_for_frames(self) -> None:
        await self._has_frames.wait()

    async def wait_for_room(self) -> None:
        await self._has_room.wait()

    async def wait_until_empty(self) -> None:
        await self._emptied.wait()

    def _update(self) -> None:
        size = len(self._frames)
        for event, state in (
            (self._has_frames, size > 0 or self.closed),
            (self._has_room, size < self.capacity or self.closed),
            (self._emptied, size == 0),
        ):
            if state:
                event.set()
            else:
                event.clear()


class ClientLink:
    """A connection's frames from the fan-out to the socket, and the faults that delay them."""

    def __init__(
        self,
        *,
        connection_id: int,
        ws: ServerConnection,
        protocol: ExchangeConnection,
        ledger: Ledger,
        outbox_frames: int,
        policy: BackpressurePolicy,
        overflow_after_s: float,
    ) -> None:
        self.connection_id = connection_id
        self.ws = ws
        self.protocol = protocol
        self.frame_faults = FrameFaults()
        self.outbox = Outbox(outbox_frames)
        self._ledger = ledger
        self._policy = policy
        self._overflow_after_s = overflow_after_s
        self._over_since_s: float | None = None
        self._sending = asyncio.Event()  # cleared while stalled
        self._pinging = asyncio.Event()  # cleared while silent
        self._sending.set()
        self._pinging.set()
        self._stall_end: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, ping_interval_s: float | None) -> None:
        self._tasks.append(asyncio.create_task(self._send_loop()))
        if ping_interval_s is not None:
            self._tasks.append(asyncio.create_task(self._heartbeat_loop(ping_interval_s)))

    def spawn(self, task: asyncio.Task[None]) -> None:
        """Tie a fault's task (e.g. a close handshake) to this connection's lifetime."""
        self._tasks.append(task)

    async def finish(self) -> None:
        """The connection is closed: account for unsent frames, end stalls, stop the tasks."""
        self.end_stall()
        self._drop(self.outbox.close(), SkipReason.CLOSED)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    # -- producing ------------------------------------------------------------------------------

    async def deliver(self, frames: list[bytes]) -> None:
        """Queue frames in order, applying the backpressure policy. Call with the fan-out lock
        held: every connection then gets the frames in seq order."""
        for index, frame in enumerate(frames):
            if self._policy is BackpressurePolicy.BLOCK:
                # Wait for this connection's sender to make room (producing pauses meanwhile).
                await self.outbox.wait_for_room()
            if self.outbox.closed:
                self._drop(frames[index:], SkipReason.CLOSED)
                return
            self.outbox.put(frame)
        if self._policy is BackpressurePolicy.OVERFLOW and self.outbox.over_capacity:
            now_s = asyncio.get_running_loop().time()
            if self._over_since_s is None:
                self._over_since_s = now_s
            elif now_s - self._over_since_s >= self._overflow_after_s:
                self._overflow()
                self._over_since_s = now_s

    def _overflow(self) -> None:
        """Full for too long: every active sid with frames beyond the capacity loses those
        frames, gets error 25 and is dropped (§3, §6.6); the other frames stay in order."""
        kept: list[bytes] = []
        dropped: list[bytes] = []
        sids: dict[int, None] = {}
        for frame in self.outbox.take_overflow():
            sid, _ = frame_sid_seq(frame)
            if sid is not None and self.protocol.subscription(sid) is not None:
                sids[sid] = None
                dropped.append(frame)
            else:
                kept.append(frame)  # command replies, frames of sids already gone
        self._drop(dropped, SkipReason.OVERFLOW)
        for frame in kept:
            self.outbox.put(frame)
        for sid in sids:
            for frame in self.protocol.terminate_subscription(sid, ErrorCode.BUFFER_OVERFLOW):
                self.outbox.put(frame)
        log.info(
            "exchange.overflow",
            connection_id=self.connection_id,
            sids=list(sids),
            dropped=len(dropped),
        )

    def _drop(self, frames: list[bytes], reason: SkipReason) -> None:
        if frames:
            self._ledger.record_skipped(self.connection_id, frames, reason)

    def abort(self) -> None:
        """Drop the TCP connection now, without a close frame (the client sees 1006). Queued
        frames are dropped (CLOSED); bytes the kernel already holds are still delivered."""
        self._drop(self.outbox.close(), SkipReason.CLOSED)
        self.ws.transport.abort()

    # -- stalls ---------------------------------------------------------------------------------

    def stall(self, duration_s: float, mode: StallMode) -> None:
        """Hold data frames (and with SILENT pings and reading too) for `duration_s`."""
        self.end_stall()
        self._sending.clear()
        if mode is StallMode.SILENT:
            self._pinging.clear()
            self.ws.transport.pause_reading()
            self._reading_paused = True
        self._stall_end = asyncio.get_running_loop().call_later(duration_s, self.end_stall)

    def end_stall(self) -> None:
        if self._stall_end is not None:
            self._stall_end.cancel()
            self._stall_end = None
        if self._reading_paused:
            self._reading_paused = False
            if not self.ws.transport.is_closing():
                self.ws.transport.resume_reading()
        self._sending.set()
        self._pinging.set()

    # -- tasks ----------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        outbox = self.outbox
        while True:
            await outbox.wait_for_frames()
            await self._sending.wait()
            if outbox.closed:
                return
            if not len(outbox):
                continue
            frames = outbox.pop_many(_SEND_BATCH_FRAMES)
            if not outbox.over_capacity:
                self._over_since_s = None
            if self.ws.transport.is_closing():  # aborted: a write would vanish silently
                self._drop(frames, SkipReason.CLOSED)
                continue
            try:
                await _send_texts(self.ws, frames)
            except ConnectionClosed:
                self._drop(frames, SkipReason.CLOSED)
                self._drop(outbox.close(), SkipReason.CLOSED)  # frees a blocked producer
                return
            except asyncio.CancelledError:
                self._drop(frames, SkipReason.CLOSED)  # the frames in hand are accounted for
                raise
            last = len(frames) - 1
            for index, frame in enumerate(frames):
                flush = index == last and not len(outbox)
                self._ledger.record_sent(self.connection_id, frame, flush=flush)

    async def _heartbeat_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self._pinging.wait()
            try:
                await self.ws.ping(_HEARTBEAT)
            except ConcurrencyError:
                continue  # the previous heartbeat is still unanswered; Kalshi's timeout is unknown
            except ConnectionClosed:
                return


async def _send_texts(ws: ServerConnection, frames: list[bytes]) -> None:
    """Send `frames` as text messages, in order, with one socket write.

    `ws.send()` writes each message on its own: a send() syscall per frame, 36 % of the
    simulator's CPU in blast mode. websockets' send_context() is its documented way to write
    from user code (asyncio/connection.py): it checks the connection is open, then applies
    flow control (drain) after our write.
    """
    async with ws.send_context():
        protocol = ws.protocol
        for frame in frames:
            protocol.send_text(frame)
        ws.transport.write(b"".join(protocol.data_to_send()))
