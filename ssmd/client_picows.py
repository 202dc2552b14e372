"""The optional picows driver for one Kalshi WebSocket connection (`exchange.client: picows`,
extra `ssmd[fast]`): the same public surface and guarantees as ssmd.client.KalshiClient; a thin
adapter from picows' frame callback to ssmd.client_pump's FramePump."""

from __future__ import annotations

import asyncio
import socket

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
    ClientBase,
    report_connection_end,
)
from ssmd.client_pump import CLOSE_TIMEOUT_S, FramePump
from ssmd.errors import ExchangeUnavailable, HandshakeRejected
from ssmd.records import StatusEvent

_KEEPALIVE_CLOSE = WSCloseCode.GOING_AWAY  # what picows sends when a pong is late
# picows doubles its read buffer whenever one read fills it past 90 %, and one read takes all
# the socket holds: under blast, Linux autotunes the receive buffer towards tcp_rmem's maximum
# (32 MiB here), so the read buffer and the frames parsed from one read grew with it (peak RSS
# 220 MB against 100 with websockets). A fixed receive buffer bounds both; 1 MiB still covers
# ~20 MB/s at a 50 ms round trip, far above a Kalshi connection's rate.
RECEIVE_BUFFER_BYTES = 1024 * 1024


class PicowsKalshiClient(ClientBase):
    """Runs one connection until `stop` is set (clean close) or the exchange goes away.

    Frames are decoded in picows' callback while the sink has room and the session wants
    nothing awaited; otherwise they queue in order for the pump task and, past a few, reading
    pauses: a full sink pushes back on the exchange through TCP rather than dropping anything.
    """

    library = "picows"
    _listener: _FrameListener | None = None

    @property
    def reading_paused(self) -> bool:
        """Reading is paused now: a full sink holds the exchange back through TCP."""
        return self._listener is not None and self._listener.pump.paused

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe and pump frames. Returns after a requested stop; raises otherwise."""
        transport, listener = await self._connect()
        self._listener = listener
        pump = listener.pump
        try:
            self.connected.set()
            connected = self.session.status_record(StatusEvent.CONNECTED, self._clock_ns())
            await self._emit_marked(connected)
            self._log.info("client.connected")
            for command in self.session.commands_to_send():
                transport.send(WSMsgType.TEXT, command)
            await pump.run(stop)
        finally:
            if not pump.disconnected:  # cancelled before the pump ran: just go
                transport.disconnect(graceful=False)
        try:
            await transport.wait_disconnected()  # done: raises what picows detected, if any
        except WSError as exc:  # a protocol violation: picows closed with an error
            listener.failure = str(exc)
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


class _FrameListener(WSListener):
    """picows' callbacks into the FramePump, and what the pump asks of picows (FrameLink)."""

    def __init__(self, client: PicowsKalshiClient) -> None:
        super().__init__()
        self._clock_ns = client._clock_ns
        self.transport: WSTransport
        self.pump = FramePump(client, self)
        self._receive = self.pump.receive
        self.failure: str | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    # -- picows callbacks (synchronous, on the event loop) ----------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        sock = transport.underlying_transport.get_extra_info("socket")
        if sock is not None:  # before the subscriptions: no data is flowing yet
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if (msg_type is WSMsgType.TEXT or msg_type is WSMsgType.BINARY) and frame.fin:
            self._receive(frame.get_payload_as_bytes(), self._clock_ns())
        elif msg_type is WSMsgType.CLOSE:
            self._receive_close(transport)
        elif msg_type is WSMsgType.TEXT or msg_type is WSMsgType.BINARY:
            self.pump.receive_fragment(
                frame.get_payload_as_bytes(), self._clock_ns(), first=True, fin=False
            )
        elif msg_type is WSMsgType.CONTINUATION:
            fits = self.pump.receive_fragment(
                frame.get_payload_as_bytes(), self._clock_ns(), first=False, fin=frame.fin
            )
            if not fits:
                self.failure = "message too big"
                transport.send_close(WSCloseCode.MESSAGE_TOO_BIG)
                transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        self.pump.connection_lost()

    def _receive_close(self, transport: WSTransport) -> None:
        if not transport.is_close_frame_sent:
            handshake = transport.close_handshake
            code = handshake.recv.code if handshake and handshake.recv else WSCloseCode.OK
            transport.send_close(code if isinstance(code, WSCloseCode) else WSCloseCode.OK)
        transport.disconnect()

    # -- FrameLink --------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        self.transport.underlying_transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.underlying_transport.resume_reading()

    def send_text(self, data: bytes) -> None:
        if not self.transport.is_close_frame_sent:  # closing: the next connection subscribes
            self.transport.send(WSMsgType.TEXT, data)

    def start_close(self, reason: str) -> None:
        """Send our close frame and keep reading until the exchange's (or a timeout)."""
        transport = self.transport
        if self.pump.disconnected or transport.is_close_frame_sent:
            return
        transport.send_close(WSCloseCode.OK, reason.encode())
        loop = asyncio.get_running_loop()
        self._close_timer = loop.call_later(CLOSE_TIMEOUT_S, transport.disconnect, False)

    def abort(self) -> None:
        self.transport.disconnect(graceful=False)


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
