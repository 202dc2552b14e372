"""Keeps one exchange connection alive: connect, stream, and on loss reconnect under the retry
policy with a fresh signature and every subscription restored; trades lost meanwhile are
backfilled over REST (PROTOCOL.md §3 reconnect, §4.3, §9.5) and published once. Its market set
can change while it runs (update_subscription, §5.3); a reconnect subscribes the current set."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from ssmd.auth import Credentials
from ssmd.client import KalshiClient
from ssmd.client_events import ClientKind
from ssmd.config.top import TopSettings
from ssmd.errors import ExchangeUnavailable, HandshakeRejected, ProtocolError
from ssmd.messages import Channel
from ssmd.recording import FrameRecorder, MarkKind
from ssmd.records import Record, StatusEvent
from ssmd.rest import KalshiRest
from ssmd.retry import RetryPolicy, Verdict
from ssmd.session import KalshiSession
from ssmd.session_events import MarketsRejected, RecentIds, SessionStats, TradesMissing

if TYPE_CHECKING:
    from ssmd.client_picows import PicowsKalshiClient


@dataclass(frozen=True)
class ConnectionPlan:
    """What one supervised connection subscribes to, and how it talks to the exchange."""

    name: str
    url: str
    credentials: Credentials
    channels: Sequence[Channel]
    markets: Sequence[str]
    use_yes_price: bool
    open_timeout_s: float = 10.0
    ping_interval_s: float | None = 10.0
    repair_timeout_s: float = 10.0
    client: ClientKind = ClientKind.WEBSOCKETS  # which WebSocket library drives it
    top: TopSettings | None = None  # derived top-of-book records (when enabled)


def client_class(kind: ClientKind) -> type[KalshiClient] | type[PicowsKalshiClient]:
    """The driver for `kind`; picows is imported only when chosen (an optional extra)."""
    if kind is ClientKind.PICOWS:
        from ssmd.client_picows import PicowsKalshiClient

        return PicowsKalshiClient
    return KalshiClient


class ConnectionSupervisor:
    """Runs connection after connection until `stop`; raises only on a fatal verdict."""

    def __init__(
        self,
        plan: ConnectionPlan,
        *,
        sink: asyncio.Queue[Record | None],
        policy: RetryPolicy,
        rest: KalshiRest | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic_s: Callable[[], float] = time.monotonic,
        recent_trades: RecentIds | None = None,
        recorder: FrameRecorder | None = None,
    ) -> None:
        """`recent_trades` is shared by every connection of a process, so a trade seen on one
        (or backfilled for one) is published once even when its market moved connections."""
        self.plan = plan
        self.recorder = recorder  # raw frames and continuity marks (ssmd.recording), if on
        self._sink = sink
        self._policy = policy
        self._rest = rest
        self._clock_ns = clock_ns
        self._monotonic_s = monotonic_s
        self._recent_trades = recent_trades if recent_trades is not None else RecentIds()
        # The markets this connection should carry now (ordered); the plan's are the first.
        self.markets: dict[str, None] = dict.fromkeys(plan.markets)
        # Called with markets the exchange refused (error 26): the fleet places them elsewhere.
        self.on_markets_rejected: Callable[[ConnectionSupervisor, tuple[str, ...]], Awaitable[None]]
        self.on_markets_rejected = _ignore_rejected
        self._log = structlog.get_logger("ssmd.supervisor").bind(connection=plan.name)
        self.client: KalshiClient | PicowsKalshiClient | None = None
        self.connections = 0
        self.reconnects = 0
        self.backfilled = 0
        # Counters of finished connections; a session's own start at zero on each reconnect.
        self.retired_stats = SessionStats()
        self._live: KalshiSession | None = None

    @property
    def session(self) -> KalshiSession | None:
        return self.client.session if self.client else None

    @property
    def connected(self) -> bool:
        """A connection is open now: its handshake succeeded and its run has not ended."""
        return self._live is not None and self.client is not None and self.client.connected.is_set()

    def add_markets(self, markets: Iterable[str]) -> None:
        """Carry these markets too: at once on a live connection (add_markets, §5.3), and on
        every later reconnect."""
        new = [market for market in markets if market not in self.markets]
        if not new:
            return
        self.markets.update(dict.fromkeys(new))
        if self._live is not None:
            self._mark(self._live, MarkKind.MARKETS_ADDED, new)
            self._live.add_markets(new)

    def remove_markets(self, markets: Iterable[str]) -> None:
        """Stop carrying these markets (delete_markets, §5.3); unknown ones are ignored."""
        gone = [market for market in markets if market in self.markets]
        if not gone:
            return
        for market in gone:
            del self.markets[market]
        if self._live is not None:
            self._mark(self._live, MarkKind.MARKETS_REMOVED, gone)
            self._live.remove_markets(gone)

    def _mark(self, session: KalshiSession, kind: MarkKind, markets: list[str]) -> None:
        """A replay must change its session's markets where the live run did."""
        if self.recorder is not None:
            self.recorder.mark(
                session.connection_id, kind, self._clock_ns(), markets=tuple(markets)
            )

    def total_stats(self) -> SessionStats:
        """Every connection's session counters summed, exactly (for metrics)."""
        total = SessionStats()
        total.add(self.retired_stats)
        if self._live is not None:
            total.add(self._live.stats)
        return total

    async def run(self, stop: asyncio.Event) -> None:
        # Backfills run beside the connections and are awaited before returning. A fatal
        # error is raised only after the group closes, so it is not wrapped in a group.
        async with asyncio.TaskGroup() as backfills:
            fatal = await self._connections(stop, backfills)
        if fatal is not None:
            raise fatal

    async def _connections(
        self, stop: asyncio.Event, backfills: asyncio.TaskGroup
    ) -> ExchangeUnavailable | HandshakeRejected | None:
        trades_since_ns: int | None = None
        while not stop.is_set():
            self.connections += 1
            session = KalshiSession(
                connection_id=f"{self.plan.name}/{self.connections}",
                channels=self.plan.channels,
                markets=tuple(self.markets),
                use_yes_price=self.plan.use_yes_price,
                repair_timeout_s=self.plan.repair_timeout_s,
                trades_since_ts_ns=trades_since_ns,
                recent_trades=self._recent_trades,
                top=self.plan.top,
            )
            client = client_class(self.plan.client)(
                url=self.plan.url,
                credentials=self.plan.credentials,
                session=session,
                sink=self._sink,
                open_timeout_s=self.plan.open_timeout_s,
                ping_interval_s=self.plan.ping_interval_s,
                clock_ns=self._clock_ns,
            )

            async def on_missing(event: TradesMissing, session: KalshiSession = session) -> None:
                backfills.create_task(self._backfill(event, session), name="trade-backfill")

            client.on_trades_missing = on_missing
            client.on_markets_rejected = self._rejected
            client.recorder = self.recorder
            self.client = client
            self._live = session
            started_s = self._monotonic_s()
            connected_ns = self._clock_ns()
            error: ExchangeUnavailable | HandshakeRejected | None = None
            try:
                await client.run(stop)
            except (ExchangeUnavailable, HandshakeRejected) as exc:
                error = exc
            finally:
                self.retired_stats.add(session.stats)
                self._live = None
            if stop.is_set():
                return None
            lived_s = self._monotonic_s() - started_s if client.connected.is_set() else 0.0
            if client.connected.is_set():
                # Trades may be lost from here: the last one seen, or this connection's start.
                trades_since_ns = session.last_trade_ts_ns or trades_since_ns or connected_ns
            decision = self._policy.connection_ended(error, lived_s=lived_s)
            if decision.verdict is Verdict.FATAL:
                self._log.error("supervisor.giving_up", reason=decision.reason)
                return error or ExchangeUnavailable(self.plan.url, decision.reason)
            self.reconnects += 1
            self._log.warning(
                "supervisor.reconnecting",
                delay_s=round(decision.delay_s, 3),
                attempt=self._policy.attempt,
                reason=decision.reason,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), decision.delay_s)
        return None

    async def _rejected(self, event: MarketsRejected) -> None:
        """The exchange refused markets (error 26): the session forgot them; so do we, and the
        owner of this connection decides where they go."""
        for market in event.markets:
            self.markets.pop(market, None)
        self._log.warning(
            "supervisor.markets_rejected",
            markets=len(event.markets),
            code=event.code,
            message=event.message,
        )
        await self.on_markets_rejected(self, event.markets)

    async def _backfill(self, event: TradesMissing, session: KalshiSession) -> None:
        """Fetch the window's trades over REST and publish those not seen on the WebSocket."""
        if self._rest is None:
            return
        since_ns = event.since_ts_ns if event.since_ts_ns is not None else event.until_ts_ns
        try:
            records = await self._rest.trade_records(event.markets, since_ns, event.until_ts_ns)
        except (ExchangeUnavailable, ProtocolError) as exc:
            self._log.error("supervisor.backfill_failed", error=str(exc), reason=event.reason)
            await self._sink.put(
                session.status_record(
                    StatusEvent.GAP,
                    self._clock_ns(),
                    channel=Channel.TRADE,
                    markets=event.markets,
                    reason=f"trade backfill failed, trades may be missing: {exc}",
                )
            )
            return
        published = 0
        for record in records:
            if self._recent_trades.add(record.trade_id):
                await self._sink.put(record)
                published += 1
        self.backfilled += published
        self._log.info(
            "supervisor.backfilled",
            fetched=len(records),
            published=published,
            reason=event.reason,
        )


async def _ignore_rejected(supervisor: ConnectionSupervisor, markets: tuple[str, ...]) -> None:
    """A lone supervisor has nowhere else to put refused markets: they stay unsubscribed."""
