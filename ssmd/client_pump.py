"""The callback-driven frame pump both client drivers share: frames go to the session straight
from the WebSocket library's receive callback while nothing must be awaited; otherwise they queue
in order for one pump task, and reading pauses until it has caught up (backpressure via TCP)."""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

from ssmd.client_events import MAX_FRAME_BYTES, TICK_S, ClientBase
from ssmd.records import Record

# Frames parsed while the pump has work pending wait here; past this many, reading pauses (the
# frames of the read under way still arrive: one read is at most the socket's receive buffer).
BACKLOG_PAUSE_FRAMES = 64
CLOSE_TIMEOUT_S = 10.0  # our close frame sent → the exchange's close frame (as websockets)


class FrameLink(Protocol):
    """What the pump needs from a driver's connection (a sans-I/O protocol or picows)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def send_text(self, data: bytes) -> None:
        """Send one text frame; dropped once the connection is closing."""

    def start_close(self, reason: str) -> None:
        """Send close 1000 with `reason`, keep reading until the exchange's close frame, then
        close the transport (or abort it after CLOSE_TIMEOUT_S)."""

    def abort(self) -> None:
        """Drop the TCP connection now (the run was cancelled)."""


class FramePump:
    """Hands frames to the session in arrival order, from the receive callback (`receive`) or,
    whenever something must be awaited (a full sink, session events, commands to send), from
    the pump task, which owns the session until it has caught up with the backlog."""

    def __init__(self, client: ClientBase, link: FrameLink) -> None:
        self._client = client
        self._link = link
        self._session = client.session
        self._sink = client._sink
        # Frames are recorded as the session takes them (arrival order, receive times), so a
        # replay sees what the session saw; those dropped for a resync close are not.
        self._recorder = client.recorder
        self._connection_id = client.session.connection_id
        self._wake = asyncio.Event()
        self._backlog: collections.deque[tuple[bytes, int]] = collections.deque()
        self._held: Record | None = None  # the record the full sink did not take yet
        # The pump owns the session until it has caught up; it starts owning it, so that no
        # frame reaches the session before run() emitted CONNECTED.
        self._busy = True
        self._wake.set()
        self._paused = False
        self._discarding = False  # a resync close is under way: later frames are not wanted
        self._fragments: bytearray | None = None
        self._fragments_ts_ns = 0
        self.disconnected = False

    @property
    def paused(self) -> bool:
        """Reading is paused now (a full sink or a long backlog): the exchange is held back."""
        return self._paused and not self.disconnected

    # -- from the driver's receive callback (synchronous, on the event loop) --------------------

    def receive(self, data: bytes, receive_ts_ns: int) -> None:
        """One whole message (a text or binary frame with fin set, or reassembled)."""
        if self._busy:
            if not self._discarding:
                self._backlog.append((data, receive_ts_ns))
                if len(self._backlog) >= BACKLOG_PAUSE_FRAMES:
                    self._pause()
            return
        session = self._session
        if self._recorder is not None:
            self._recorder.write_frame(self._connection_id, data, receive_ts_ns)
        record = session.receive_frame(data, receive_ts_ns)
        if record is not None:
            try:
                self._sink.put_nowait(record)  # no await per record while the queue has room
            except asyncio.QueueFull:
                self._held = record
                self._busy = True
                self._pause()
        if session.has_events or session.has_commands:
            self._busy = True
        if self._busy:
            self._wake.set()

    def receive_fragment(self, data: bytes, receive_ts_ns: int, *, first: bool, fin: bool) -> bool:
        """One frame of a fragmented message (RFC 6455 §5.4), stamped when its first frame
        arrived. False when the message outgrew MAX_FRAME_BYTES: the driver fails the
        connection (1009). A continuation without a first frame is ignored."""
        if first:
            self._fragments = bytearray(data)
            self._fragments_ts_ns = receive_ts_ns
        elif self._fragments is not None:
            self._fragments += data
        else:
            return True
        if len(self._fragments) > MAX_FRAME_BYTES:
            self._fragments = None
            return False
        if fin:
            message, self._fragments = bytes(self._fragments), None
            self.receive(message, self._fragments_ts_ns)
        return True

    def connection_lost(self) -> None:
        """The transport is gone: the pump hands over what is queued, then returns."""
        self.disconnected = True
        self._wake.set()

    # -- the pump task and its helpers ----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Pump until the connection is gone and everything received has been handled; close
        it (1000) when `stop` is set. Cancelled: the transport is dropped."""
        closer = asyncio.create_task(self._close_on(stop), name="client-closer")
        ticker = asyncio.create_task(self._tick(), name="client-ticker")
        try:
            await self._pump()
        finally:
            closer.cancel()
            ticker.cancel()
            if not self.disconnected:  # cancelled or failed: no draining, just go
                self._link.abort()

    async def _pump(self) -> None:
        client = self._client
        session = self._session
        sink = self._sink
        backlog = self._backlog
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._held is not None:
                await sink.put(self._held)
                self._held = None
            await client._drain_session(self._send_command)
            while backlog and not self._discarding:
                data, receive_ts_ns = backlog.popleft()
                if self._recorder is not None:
                    self._recorder.write_frame(self._connection_id, data, receive_ts_ns)
                record = session.receive_frame(data, receive_ts_ns)
                if record is not None:
                    try:
                        sink.put_nowait(record)
                    except asyncio.QueueFull:
                        await sink.put(record)
                if session.has_events or session.has_commands:
                    await client._drain_session(self._send_command)
                self._check_reconnect()
            self._check_reconnect()
            if not self._discarding:
                self._busy = False
            if self._paused and not self.disconnected:
                self._paused = False
                self._link.resume_reading()
            if self.disconnected:
                return

    async def _send_command(self, command: bytes) -> None:
        self._link.send_text(command)

    async def _close_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._client._log.info("client.closing")
        # Our close frame goes out; frames the exchange sent before its own close frame are
        # still handed to the session, so nothing already sent to us is lost.
        self.close("")

    async def _tick(self) -> None:
        """Give the session the time when no frame does (repair deadlines, §4.3); what that
        produced is handled by the pump, in order with the frames."""
        session = self._session
        while True:
            await asyncio.sleep(TICK_S)
            self._client._poll()
            if session.has_events or session.has_commands or self._wants_reconnect():
                self._busy = True
                self._wake.set()

    def _wants_reconnect(self) -> bool:
        return self._client._events.reconnect_reason is not None and not self._discarding

    def _check_reconnect(self) -> None:
        """When the session asked for a reconnect: drop what is queued and close ("resync")."""
        if self._wants_reconnect():
            self._discarding = True
            self._busy = True
            self._backlog.clear()
            self.close("resync")

    def close(self, reason: str) -> None:
        """Start the closing handshake (1000, `reason`); reading resumes even with a full sink,
        since the exchange's close frame must be read."""
        self.resume_for_close()
        self._link.start_close(reason)

    def resume_for_close(self) -> None:
        """The connection is closing: read on whatever the sink says (frames still queue)."""
        if self._paused:
            self._paused = False
            if not self.disconnected:
                self._link.resume_reading()

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self._link.pause_reading()
