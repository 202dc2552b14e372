"""Asyncio driver for one Kalshi WebSocket connection: signed connect, frames into the session.

All protocol decisions live in ssmd.session; this module only moves bytes, stamps receive
times, applies backpressure through a bounded queue and logs session events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ssmd.auth import Credentials
from ssmd.errors import ExchangeUnavailable, HandshakeRejected
from ssmd.records import Record, StatusEvent
from ssmd.session import KalshiSession
from ssmd.session_events import (
    BookInvalid,
    DuplicateFrame,
    ExchangeError,
    MalformedFrame,
    ReconnectRequired,
    RepairStarted,
    Resynced,
    SequenceGap,
    SessionEvent,
    SlowDown,
    SubscriptionConfirmed,
    TradesMissing,
    UnsupportedFrame,
)

# Malformed frames are logged with context; past this many per reason only every Nth is.
_MALFORMED_LOG_FIRST = 20
_MALFORMED_LOG_EVERY = 1000
_MAX_FRAME_BYTES = 16 * 1024 * 1024
_TICK_S = 0.5


class KalshiClient:
    """Runs one connection until `stop` is set (clean close) or the exchange goes away.

    Records go to `sink`; a full sink blocks reading, which pushes back on the exchange
    through TCP rather than dropping anything.
    """

    def __init__(
        self,
        *,
        url: str,
        credentials: Credentials,
        session: KalshiSession,
        sink: asyncio.Queue[Record | None],
        open_timeout_s: float = 10.0,
        ping_interval_s: float | None = 10.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.url = url
        self.session = session
        self._credentials = credentials
        self._sink = sink
        self._open_timeout_s = open_timeout_s
        self._ping_interval_s = ping_interval_s
        self._clock_ns = clock_ns
        self._log = structlog.get_logger("ssmd.client").bind(
            connection_id=session.connection_id, url=url
        )
        self.connected = asyncio.Event()
        self.on_trades_missing: Callable[[TradesMissing], Awaitable[None]] | None = None
        self._reconnect_reason: str | None = None
        self._command_delay_s = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe and pump frames. Returns after a requested stop; raises otherwise."""
        ws = await self._connect()
        async with ws:
            self.connected.set()
            await self._emit(self.session.status_record(StatusEvent.CONNECTED, self._clock_ns()))
            self._log.info("client.connected")
            for command in self.session.commands_to_send():
                await ws.send(command, text=True)
            closer = asyncio.create_task(self._close_on(stop, ws), name="client-closer")
            ticker = asyncio.create_task(self._tick(ws), name="client-ticker")
            try:
                await self._pump(ws)
            finally:
                closer.cancel()
                ticker.cancel()
        if stop.is_set():
            reason = "shutdown"
        elif self._reconnect_reason is not None:
            reason = self._reconnect_reason
        else:
            reason = _close_reason(ws)
        if _keepalive_timed_out(ws) and not stop.is_set():
            # Our pings went unanswered for ping_interval_s: the exchange is silent, not just
            # quiet (a quiet market still answers pings and sends its own, §3).
            reason = f"stale: no pong within {self._ping_interval_s} s"
            self._log.warning("client.stale", ping_interval_s=self._ping_interval_s)
            await self._emit(
                self.session.status_record(StatusEvent.STALE, self._clock_ns(), reason=reason)
            )
        await self._emit(
            self.session.status_record(StatusEvent.DISCONNECTED, self._clock_ns(), reason=reason)
        )
        self._log.info("client.disconnected", reason=reason, **_stats(self.session))
        if not stop.is_set():
            raise ExchangeUnavailable(self.url, f"connection closed: {reason}")

    async def _connect(self) -> ClientConnection:
        # §2.3: sign fresh for every connect; the timestamp is inside the signature.
        headers = self._credentials.headers(self._clock_ns() // 1_000_000)
        try:
            return await connect(
                self.url,
                additional_headers=headers,
                # permessage-deflate triples receive cost; market data is not worth it here.
                compression=None,
                open_timeout=self._open_timeout_s,
                ping_interval=self._ping_interval_s,
                ping_timeout=self._ping_interval_s,
                max_size=_MAX_FRAME_BYTES,
                close_timeout=10,
            )
        except InvalidStatus as exc:
            body = exc.response.body.decode("utf-8", "replace")[:200] if exc.response.body else ""
            raise HandshakeRejected(exc.response.status_code, self.url, body) from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise ExchangeUnavailable(self.url, f"cannot connect: {exc}") from exc

    async def _close_on(self, stop: asyncio.Event, ws: ClientConnection) -> None:
        await stop.wait()
        self._log.info("client.closing")
        # Our close frame goes out; frames the exchange sent before its own close frame are
        # still delivered to _pump, so nothing already sent to us is lost.
        await ws.close()

    async def _tick(self, ws: ClientConnection) -> None:
        """Give the session the time when no frame does (repair deadlines, §4.3)."""
        session = self.session
        while True:
            await asyncio.sleep(_TICK_S)
            session.poll(self._clock_ns())
            await self._after_frame(ws)
            if self._reconnect_reason is not None:
                await ws.close(code=1000, reason="resync")
                return

    async def _after_frame(self, ws: ClientConnection) -> None:
        """Handle what the session produced: events first, then the commands it wants sent."""
        session = self.session
        if session.has_events:
            for event in session.events_to_handle():
                await self._handle(event)
        if session.has_commands:
            for command in session.commands_to_send():
                if self._command_delay_s:
                    await asyncio.sleep(self._command_delay_s)
                await ws.send(command, text=True)

    async def _pump(self, ws: ClientConnection) -> None:
        session = self.session
        sink = self._sink
        clock_ns = self._clock_ns
        while True:
            try:
                data = await ws.recv(decode=False)
            except ConnectionClosed:
                return
            record = session.receive_frame(data, clock_ns())
            if record is not None:
                try:
                    sink.put_nowait(record)  # no await per record while the queue has room
                except asyncio.QueueFull:
                    await sink.put(record)
            if session.has_events or session.has_commands:
                await self._after_frame(ws)
            if self._reconnect_reason is not None:
                await ws.close(code=1000, reason="resync")
                return

    async def _emit(self, record: Record) -> None:
        await self._sink.put(record)

    async def _handle(self, event: SessionEvent) -> None:
        log = self._log
        if isinstance(event, SubscriptionConfirmed):
            log.info("session.subscribed", channel=event.channel.value, sid=event.sid)
            await self._emit(event.status)
        elif isinstance(event, SequenceGap):
            log.warning(
                "session.gap",
                sid=event.sid,
                channel=event.channel.value if event.channel else None,
                expected_seq=event.expected_seq,
                received_seq=event.received_seq,
            )
            await self._emit(event.status)
        elif isinstance(event, BookInvalid):
            log.warning(
                "session.book_invalid", sid=event.sid, market=event.market, reason=event.reason
            )
            await self._emit(event.status)
        elif isinstance(event, RepairStarted):
            log.info(
                "session.repair_started",
                sid=event.sid,
                method=event.method.value,
                markets=len(event.markets),
                reason=event.reason,
            )
        elif isinstance(event, Resynced):
            log.info(
                "session.resynced",
                sid=event.sid,
                markets=len(event.markets),
                snapshot_seq=event.snapshot_seq,
            )
            await self._emit(event.status)
        elif isinstance(event, ReconnectRequired):
            log.warning("session.reconnect_required", reason=event.reason)
            self._reconnect_reason = event.reason
        elif isinstance(event, TradesMissing):
            log.warning(
                "session.trades_missing",
                markets=len(event.markets),
                since_ts_ns=event.since_ts_ns,
                until_ts_ns=event.until_ts_ns,
                reason=event.reason,
            )
            if self.on_trades_missing is not None:
                await self.on_trades_missing(event)
        elif isinstance(event, SlowDown):
            log.warning("session.slow_down", code=event.code)
            self._command_delay_s = min(max(self._command_delay_s * 2, 0.1), 5.0)
        elif isinstance(event, ExchangeError):
            log.warning(
                "session.exchange_error",
                code=event.code,
                message=event.message,
                command_id=event.command_id,
                sid=event.sid,
                terminal=event.terminal,
            )
            await self._emit(event.status)
        elif isinstance(event, DuplicateFrame):
            log.warning("session.duplicate", sid=event.sid, seq=event.seq, last_seq=event.last_seq)
        elif isinstance(event, UnsupportedFrame):
            if event.first_of_type:
                log.warning("frame.unsupported_type", type=event.type_name)
        elif isinstance(event, MalformedFrame):
            count = self.session.stats.malformed_by_reason[event.reason]
            if count <= _MALFORMED_LOG_FIRST or count % _MALFORMED_LOG_EVERY == 0:
                log.warning(
                    "frame.malformed",
                    reason=event.reason,
                    detail=event.detail,
                    type=event.type_name,
                    excerpt=event.excerpt,
                    count=count,
                )


def _keepalive_timed_out(ws: ClientConnection) -> bool:
    """websockets fails the connection with 1011 "keepalive ping timeout" when a pong is late."""
    sent = ws.protocol.close_sent
    return sent is not None and sent.code == 1011 and "keepalive" in sent.reason


def _close_reason(ws: ClientConnection) -> str:
    if ws.close_code is None:
        return "connection lost without a close frame"
    return f"close code {ws.close_code} {ws.close_reason!r}".strip()


def _stats(session: KalshiSession) -> dict[str, Any]:
    stats = session.stats
    return {
        "frames_received": stats.frames_received,
        "records_out": stats.records_out,
        "gaps": stats.gaps,
        "duplicates": stats.duplicates,
        "unsupported": dict(stats.unsupported_by_type),
        "malformed": dict(stats.malformed_by_reason),
    }
