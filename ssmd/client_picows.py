"""The optional picows driver for one Kalshi WebSocket connection (`exchange.client: picows`,
extra `ssmd[fast]`): the same public surface and guarantees as ssmd.client.KalshiClient,
with frames handed to the session from picows' frame callback instead of an awaited recv()."""

from __future__ import annotations

import asyncio
import collections

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSError,
    WSFrame,
    WSHandshakeError,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from ssmd.client_events import (
    MAX_FRAME_BYTES,
    TICK_S,
    ClientBase,
    report_connection_end,
)
from ssmd.errors import ExchangeUnavailable, HandshakeRejected
from ssmd.records import Record, StatusEvent

# Frames parsed while the pump has work pending wait here; past this many, reading pauses.
_BACKLOG_PAUSE_FRAMES = 64
_CLOSE_TIMEOUT_S = 10.0  # our close frame sent → the exchange's close frame (as websockets)
_KEEPALIVE_CLOSE = WSCloseCode.GOING_AWAY  # what picows sends when a pong is late


class PicowsKalshiClient(ClientBase):
    """Runs one connection until `stop` is set (clean close) or the exchange goes away.

    Frames are decoded in picows' callback while the sink has room and the session wants
    nothing awaited; otherwise they queue in order for the pump task and, past a few, reading
    pauses: a full sink pushes back on the exchange through TCP rather than dropping anything.
    """

    library = "picows"

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe and pump frames. Returns after a requested stop; raises otherwise."""
        transport, listener = await self._connect()
        self.connected.set()
        await self._emit_marked(self.session.status_record(StatusEvent.CONNECTED, self._clock_ns()))
        self._log.info("client.connected")
        for command in self.session.commands_to_send():
            transport.send(WSMsgType.TEXT, command)
        pump = asyncio.create_task(listener.pump(), name="client-pump")
        closer = asyncio.create_task(self._close_on(stop, listener), name="client-closer")
        ticker = asyncio.create_task(self._tick(listener), name="client-ticker")
        try:
            await transport.wait_disconnected()
        except WSError as exc:  # a protocol violation picows detected: it closed with an error
            listener.failure = str(exc)
        finally:
            closer.cancel()
            ticker.cancel()
            if not listener.disconnected:  # cancelled: no draining, just go
                transport.disconnect(graceful=False)
                pump.cancel()
        listener.wake.set()
        await pump  # every frame received before the disconnect still reaches the sink
        reason = self._events.reconnect_reason or _close_reason(transport, listener)
        await report_connection_end(
            session=self.session,
            log=self._log,
            emit=self._emit_marked,
            now_ns=self._clock_ns,
            url=self.url,
            stopped=stop.is_set(),
            reason=reason,
            keepalive_timed_out=_keepalive_timed_out(transport),
            ping_interval_s=self._ping_interval_s,
        )

    async def _connect(self) -> tuple[WSTransport, _FrameListener]:
        # §2.3: sign fresh for every connect; the timestamp is inside the signature.
        headers = self._credentials.headers(self._clock_ns() // 1_000_000)
        ping_s = self._ping_interval_s
        try:
            async with asyncio.timeout(self._open_timeout_s):
                transport, listener = await ws_connect(
                    lambda: _FrameListener(self),
                    self.url,
                    extra_headers=headers,
                    websocket_handshake_timeout=self._open_timeout_s,
                    # Ping every interval whatever arrives; no pong within it → close (stale).
                    enable_auto_ping=ping_s is not None,
                    auto_ping_idle_timeout=ping_s or 10.0,
                    auto_ping_reply_timeout=ping_s or 10.0,
                    auto_ping_strategy=WSAutoPingStrategy.PING_PERIODICALLY,
                    max_frame_size=MAX_FRAME_BYTES,
                    max_redirects=0,
                )
        except WSHandshakeError as exc:
            response = exc.response
            if response is not None and int(response.status) != 101:
                raw = exc.raw_body or b""
                body = raw.decode("utf-8", "replace")[:200]
                raise HandshakeRejected(int(response.status), self.url, body) from exc
            raise ExchangeUnavailable(self.url, f"cannot connect: {exc}") from exc
        except (OSError, TimeoutError, WSError) as exc:
            raise ExchangeUnavailable(self.url, f"cannot connect: {exc}") from exc
        assert isinstance(listener, _FrameListener)
        return transport, listener

    async def _close_on(self, stop: asyncio.Event, listener: _FrameListener) -> None:
        await stop.wait()
        self._log.info("client.closing")
        # Our close frame goes out; frames the exchange sent before its own close frame are
        # still delivered to the session, so nothing already sent to us is lost.
        listener.close(WSCloseCode.OK, "")

    async def _tick(self, listener: _FrameListener) -> None:
        """Give the session the time when no frame does (repair deadlines, §4.3)."""
        while True:
            await asyncio.sleep(TICK_S)
            self._poll()
            await self.after_frame(listener.transport)
            if listener.check_reconnect():
                return

    async def after_frame(self, transport: WSTransport) -> None:
        """Handle what the session produced (ClientBase._drain_session)."""

        async def send_command(command: bytes) -> None:
            transport.send(WSMsgType.TEXT, command)

        await self._drain_session(send_command)

    @property
    def reconnect_reason(self) -> str | None:
        return self._events.reconnect_reason


class _FrameListener(WSListener):
    """picows' callbacks: the hot path (decode and queue in the callback) and the pump task
    that takes over, in order, whenever something must be awaited."""

    def __init__(self, client: PicowsKalshiClient) -> None:
        super().__init__()
        self._client = client
        self._session = client.session
        self._sink = client._sink
        self._clock_ns = client._clock_ns
        # Frames are recorded as the session takes them (arrival order, receive times), so a
        # replay sees what the session saw; those dropped for a resync close are not.
        self._recorder = client.recorder
        self._connection_id = client.session.connection_id
        self.transport: WSTransport
        self.wake = asyncio.Event()
        self.failure: str | None = None
        self._backlog: collections.deque[tuple[bytes, int]] = collections.deque()
        self._held: Record | None = None  # the record the full sink did not take yet
        self._busy = False  # the pump owns the session until it has caught up
        self._paused = False
        self._fragments: bytearray | None = None
        self._fragments_ts_ns = 0
        self.disconnected = False
        self._discarding = False  # a resync close is under way: later frames are not wanted
        self._close_timer: asyncio.TimerHandle | None = None

    # -- picows callbacks (synchronous, on the event loop) ----------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if (msg_type is WSMsgType.TEXT or msg_type is WSMsgType.BINARY) and frame.fin:
            self._receive(frame.get_payload_as_bytes(), self._clock_ns())
        elif msg_type is WSMsgType.CLOSE:
            self._receive_close(transport)
        elif msg_type is WSMsgType.TEXT or msg_type is WSMsgType.BINARY:
            # A fragmented message (RFC 6455 §5.4): stamped when its first frame arrived.
            self._fragments = bytearray(frame.get_payload_as_bytes())
            self._fragments_ts_ns = self._clock_ns()
        elif msg_type is WSMsgType.CONTINUATION and self._fragments is not None:
            self._fragments += frame.get_payload_as_bytes()
            if len(self._fragments) > MAX_FRAME_BYTES:
                self.failure = "message too big"
                transport.send_close(WSCloseCode.MESSAGE_TOO_BIG)
                transport.disconnect()
            elif frame.fin:
                data, self._fragments = bytes(self._fragments), None
                self._receive(data, self._fragments_ts_ns)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        self.wake.set()

    # -- frames into the session ------------------------------------------------------------------

    def _receive(self, data: bytes, receive_ts_ns: int) -> None:
        if self._discarding:
            return
        if self._busy:
            self._backlog.append((data, receive_ts_ns))
            if len(self._backlog) >= _BACKLOG_PAUSE_FRAMES:
                self._pause()
            return
        session = self._session
        if self._recorder is not None:
            self._recorder.write_frame(self._connection_id, data, receive_ts_ns)
        record = session.receive_frame(data, receive_ts_ns)
        if record is not None:
            try:
                self._sink.put_nowait(record)
            except asyncio.QueueFull:
                self._held = record
                self._busy = True
                self._pause()
        if session.has_events or session.has_commands:
            self._busy = True
        if self._busy:
            self.wake.set()

    async def pump(self) -> None:
        """Whatever the callback could not finish without awaiting, in arrival order; returns
        once the connection is gone and everything received has been handled."""
        client = self._client
        session = self._session
        sink = self._sink
        backlog = self._backlog
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self._held is not None:
                await sink.put(self._held)
                self._held = None
            await client.after_frame(self.transport)
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
                    await client.after_frame(self.transport)
                self.check_reconnect()
            self.check_reconnect()
            self._busy = False
            if self._paused and not self.disconnected:
                self._paused = False
                self.transport.underlying_transport.resume_reading()
            if self.disconnected:
                return

    def check_reconnect(self) -> bool:
        """When the session asked for a reconnect: drop what is queued and close ("resync")."""
        if self._client.reconnect_reason is None:
            return False
        if not self._discarding:
            self._discarding = True
            self._backlog.clear()
            self.close(WSCloseCode.OK, "resync")
        return True

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self.transport.underlying_transport.pause_reading()

    # -- the closing handshake --------------------------------------------------------------------

    def close(self, code: WSCloseCode, reason: str) -> None:
        """Send our close frame and keep reading until the exchange's (or a timeout)."""
        transport = self.transport
        if self.disconnected or transport.is_close_frame_sent:
            return
        transport.send_close(code, reason.encode())
        if self._paused:  # the exchange's close frame must be read even with a full sink
            self._paused = False
            transport.underlying_transport.resume_reading()
        loop = asyncio.get_running_loop()
        self._close_timer = loop.call_later(_CLOSE_TIMEOUT_S, transport.disconnect, False)

    def _receive_close(self, transport: WSTransport) -> None:
        if not transport.is_close_frame_sent:
            handshake = transport.close_handshake
            code = handshake.recv.code if handshake and handshake.recv else WSCloseCode.OK
            transport.send_close(code if isinstance(code, WSCloseCode) else WSCloseCode.OK)
        transport.disconnect()


def _keepalive_timed_out(transport: WSTransport) -> bool:
    """picows closes with 1001 "... not replied to ping ..." when a pong is late."""
    handshake = transport.close_handshake
    sent = handshake.sent if handshake is not None else None
    return sent is not None and sent.code == _KEEPALIVE_CLOSE and "ping" in sent.reason


def _close_reason(transport: WSTransport, listener: _FrameListener) -> str:
    if listener.failure is not None:
        return f"protocol error: {listener.failure}"
    handshake = transport.close_handshake
    received = handshake.recv if handshake is not None else None
    if received is None:
        return "connection lost without a close frame"
    code = received.code.value if isinstance(received.code, WSCloseCode) else int(received.code)
    return f"close code {code} {received.reason!r}".strip()
