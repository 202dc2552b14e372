"""What every WebSocket client driver shares: the choice of driver (ClientKind), the handling
of session events (logs, status records, reconnect and slow-down requests, refused markets) and
the end of a connection (STALE/DISCONNECTED records, ExchangeUnavailable when not asked to stop)."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from structlog.typing import FilteringBoundLogger

from ssmd.auth import Credentials
from ssmd.errors import ExchangeUnavailable
from ssmd.records import Record, Status, StatusEvent
from ssmd.session import KalshiSession
from ssmd.session_events import (
    BookInvalid,
    DuplicateFrame,
    ExchangeError,
    MalformedFrame,
    MarketsChanged,
    MarketsRejected,
    ReconnectRequired,
    RepairStarted,
    Resynced,
    SequenceGap,
    SessionEvent,
    SlowDown,
    SubscriptionConfirmed,
    TopChanged,
    TradesMissing,
    UnsupportedFrame,
)

if TYPE_CHECKING:
    from ssmd.recording import FrameRecorder

# Malformed frames are logged with context; past this many per reason only every Nth is.
_MALFORMED_LOG_FIRST = 20
_MALFORMED_LOG_EVERY = 1000
_LOGGED_TICKERS = 20  # market lists in logs are cut to this many tickers (the count is whole)
MAX_FRAME_BYTES = 16 * 1024 * 1024
TICK_S = 0.5  # how often the session is given the time when no frame does (§4.3 deadlines)


class ClientKind(enum.Enum):
    """Which WebSocket library drives the connection (`exchange.client`)."""

    WEBSOCKETS = "websockets"  # the default: ssmd.client.KalshiClient
    PICOWS = "picows"  # optional extra `ssmd[fast]`: ssmd.client_picows.PicowsKalshiClient


class SessionEventHandler:
    """Turns the session's events into logs, status records and requests to the driver:
    `reconnect_reason` (close and reconnect) and `command_delay_s` (slow down, §3 code 25);
    trades to backfill and markets the exchange refused go to their callbacks."""

    def __init__(
        self,
        session: KalshiSession,
        log: FilteringBoundLogger,
        emit: Callable[[Record], Awaitable[None]],
        trades_missing: Callable[[TradesMissing], Awaitable[None]],
        markets_rejected: Callable[[MarketsRejected], Awaitable[None]] | None = None,
    ) -> None:
        self._session = session
        self._log = log
        self._emit = emit
        self._trades_missing = trades_missing
        self._markets_rejected = markets_rejected
        self.reconnect_reason: str | None = None
        self.command_delay_s = 0.0

    async def handle(self, event: SessionEvent) -> None:
        log = self._log
        if isinstance(event, TopChanged):  # the most frequent event when tops are on
            await self._emit(event.record)
        elif isinstance(event, SubscriptionConfirmed):
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
            self.reconnect_reason = event.reason
        elif isinstance(event, TradesMissing):
            log.warning(
                "session.trades_missing",
                markets=len(event.markets),
                since_ts_ns=event.since_ts_ns,
                until_ts_ns=event.until_ts_ns,
                reason=event.reason,
            )
            await self._trades_missing(event)
        elif isinstance(event, MarketsChanged):
            added = bool(event.added)
            markets = event.added if added else event.removed
            log.info(
                "session.markets_added" if added else "session.markets_removed",
                count=len(markets),
                markets=list(markets[:_LOGGED_TICKERS]),
            )
            await self._emit(event.status)
        elif isinstance(event, MarketsRejected):
            log.warning(
                "session.markets_rejected",
                channel=event.channel.value,
                code=event.code,
                message=event.message,
                command_id=event.command_id,
                count=len(event.markets),
                markets=list(event.markets[:_LOGGED_TICKERS]),
            )
            if self._markets_rejected is not None:
                await self._markets_rejected(event)
        elif isinstance(event, SlowDown):
            log.warning("session.slow_down", code=event.code)
            self.command_delay_s = min(max(self.command_delay_s * 2, 0.1), 5.0)
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
            count = self._session.stats.malformed_by_reason[event.reason]
            if count <= _MALFORMED_LOG_FIRST or count % _MALFORMED_LOG_EVERY == 0:
                log.warning(
                    "frame.malformed",
                    reason=event.reason,
                    detail=event.detail,
                    type=event.type_name,
                    excerpt=event.excerpt,
                    count=count,
                )


async def report_connection_end(
    *,
    session: KalshiSession,
    log: FilteringBoundLogger,
    emit: Callable[[Record], Awaitable[None]],
    now_ns: Callable[[], int],
    url: str,
    stopped: bool,
    reason: str,
    keepalive_timed_out: bool,
    ping_interval_s: float | None,
) -> None:
    """Emit STALE (pings unanswered) and DISCONNECTED; raise ExchangeUnavailable unless the
    connection ended because `stop` was set."""
    if stopped:
        reason = "shutdown"
    elif keepalive_timed_out:
        # Our pings went unanswered for ping_interval_s: the exchange is silent, not just
        # quiet (a quiet market still answers pings and sends its own, §3).
        reason = f"stale: no pong within {ping_interval_s} s"
        log.warning("client.stale", ping_interval_s=ping_interval_s)
        await emit(session.status_record(StatusEvent.STALE, now_ns(), reason=reason))
    await emit(session.status_record(StatusEvent.DISCONNECTED, now_ns(), reason=reason))
    log.info("client.disconnected", reason=reason, **session_stats(session))
    if not stopped:
        raise ExchangeUnavailable(url, f"connection closed: {reason}")


def session_stats(session: KalshiSession) -> dict[str, Any]:
    stats = session.stats
    return {
        "frames_received": stats.frames_received,
        "records_out": stats.records_out,
        "gaps": stats.gaps,
        "duplicates": stats.duplicates,
        "unsupported": dict(stats.unsupported_by_type),
        "malformed": dict(stats.malformed_by_reason),
    }


class ClientBase:
    """State and helpers both client drivers share: the session, the bounded sink (a full sink
    blocks, pushing back on the exchange), the clock, the event handler and the connected flag."""

    library = "websockets"  # logged with every line of this client

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
        self._log: FilteringBoundLogger = structlog.get_logger("ssmd.client").bind(
            connection_id=session.connection_id, url=url, client=self.library
        )
        self.connected = asyncio.Event()
        self.on_trades_missing: Callable[[TradesMissing], Awaitable[None]] | None = None
        # Raw frames and continuity marks go here too when set (ssmd.recording; set, like
        # on_trades_missing, after construction and before run()).
        self.recorder: FrameRecorder | None = None
        # Markets the exchange refused (error 26): the session forgot them; place them elsewhere.
        self.on_markets_rejected: Callable[[MarketsRejected], Awaitable[None]] | None = None
        self._events = SessionEventHandler(
            session, self._log, self._emit_marked, self._trades_missing, self._markets_rejected
        )

    async def _drain_session(self, send_command: Callable[[bytes], Awaitable[None]]) -> None:
        """Handle what the session produced: events first, then the commands it wants sent,
        spaced out while the exchange asks us to slow down (§6.6 code 27)."""
        session = self.session
        if session.has_events:
            for event in session.events_to_handle():
                await self._events.handle(event)
        if session.has_commands:
            for command in session.commands_to_send():
                if self._events.command_delay_s:
                    await asyncio.sleep(self._events.command_delay_s)
                await send_command(command)

    def _poll(self) -> None:
        """The driver's timer: give the session the time; if the time alone changed something
        (a repair deadline, a held top), mark it in the recording, so a replay does it too."""
        now_ns = self._clock_ns()
        session = self.session
        session.poll(now_ns)
        recorder = self.recorder
        if recorder is not None:
            if session.has_events:
                recorder.mark_deadline(session.connection_id, now_ns)
            recorder.poll(now_ns)

    async def _emit(self, record: Record) -> None:
        await self._sink.put(record)

    async def _emit_marked(self, record: Record) -> None:
        """Emit a status record; with a recorder, also mark it in the recording (connected,
        disconnected, stale, gap, resynced), so a replay knows where continuity changed."""
        if self.recorder is not None and type(record) is Status:
            self.recorder.mark_status(record, self.session)
        await self._sink.put(record)

    async def _trades_missing(self, event: TradesMissing) -> None:
        if self.on_trades_missing is not None:
            await self.on_trades_missing(event)

    async def _markets_rejected(self, event: MarketsRejected) -> None:
        if self.on_markets_rejected is not None:
            await self.on_markets_rejected(event)
