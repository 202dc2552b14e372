"""Several exchange connections in one process: markets spread by ssmd.placement (at most the
per-subscription cap on each, PROTOCOL.md §6.6 error 26), each connection supervised and
reconnecting on its own; connection 0 also carries the market_lifecycle_v2 channel."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable

import structlog

from ssmd.errors import SsmdError
from ssmd.messages import Channel
from ssmd.placement import DEFAULT_MARKETS_PER_CONNECTION, Moves, Placement
from ssmd.recording import FrameRecorder
from ssmd.records import Record
from ssmd.rest import KalshiRest
from ssmd.retry import RetryPolicy
from ssmd.session_events import RecentIds, SessionStats
from ssmd.supervisor import ConnectionPlan, ConnectionSupervisor


class ConnectionFleet:
    """Owns the supervisors; `add_markets`/`remove_markets` may be called at any time, before
    or during `run`. A fatal error of one connection (e.g. credentials refused) ends them all:
    it is the operator's to fix, and the process exits non-zero."""

    def __init__(
        self,
        plan: ConnectionPlan,
        *,
        sink: asyncio.Queue[Record | None],
        new_policy: Callable[[], RetryPolicy],
        rest: KalshiRest | None = None,
        markets_per_connection: int = DEFAULT_MARKETS_PER_CONNECTION,
        max_connections: int = 64,
        clock_ns: Callable[[], int] = time.time_ns,
        recorder: FrameRecorder | None = None,
    ) -> None:
        """`plan` is the template of every connection; its markets are the first placed."""
        self.plan = plan
        self.placement = Placement(markets_per_connection, max_connections)
        self.supervisors: list[ConnectionSupervisor] = []
        self._sink = sink
        self._new_policy = new_policy
        self._rest = rest
        self._clock_ns = clock_ns
        self._recorder = recorder
        self._recent_trades = RecentIds()
        self._stop: asyncio.Event | None = None
        self._group: asyncio.TaskGroup | None = None
        self._log = structlog.get_logger("ssmd.fleet").bind(connection=plan.name)
        self._ensure(0)
        self.add_markets(plan.markets)

    @property
    def primary(self) -> ConnectionSupervisor:
        """Connection 0: it always exists, and carries the lifecycle channel when configured."""
        return self.supervisors[0]

    @property
    def markets(self) -> int:
        return len(self.placement)

    def __contains__(self, market: object) -> bool:
        return market in self.placement

    def add_markets(self, markets: Iterable[str]) -> tuple[str, ...]:
        """Place new markets on connections (opening more when all are full); returns those
        that found no room (max_connections reached)."""
        moves = self.placement.place(markets)
        self._apply(moves)
        return moves.unplaced

    def remove_markets(self, markets: Iterable[str]) -> None:
        self._apply(self.placement.remove(markets))

    def total_stats(self) -> SessionStats:
        total = SessionStats()
        for supervisor in self.supervisors:
            total.add(supervisor.total_stats())
        return total

    @property
    def reconnects(self) -> int:
        return sum(supervisor.reconnects for supervisor in self.supervisors)

    @property
    def connections(self) -> int:
        return sum(supervisor.connections for supervisor in self.supervisors)

    @property
    def backfilled(self) -> int:
        return sum(supervisor.backfilled for supervisor in self.supervisors)

    @property
    def connected(self) -> bool:
        """Every connection is open (an idle one without markets included)."""
        return all(supervisor.connected for supervisor in self.supervisors)

    async def run(self, stop: asyncio.Event) -> None:
        """Run every connection until `stop`; connections opened meanwhile join the group."""
        self._stop = stop
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for supervisor in self.supervisors:
                    self._start(supervisor)
                await stop.wait()
        except* SsmdError as errors:
            # One connection's fatal verdict: re-raise it plainly, as a lone supervisor would.
            first = errors.exceptions[0]
            raise first from None
        finally:
            self._group = None

    def _apply(self, moves: Moves) -> None:
        for index, markets in moves.removed.items():
            self.supervisors[index].remove_markets(markets)
        for index, markets in moves.added.items():
            self._ensure(index).add_markets(markets)
        if moves.added or moves.removed:
            self._log.info(
                "fleet.markets_moved",
                added=sum(len(m) for m in moves.added.values()),
                removed=sum(len(m) for m in moves.removed.values()),
                markets=len(self.placement),
                load=self.placement.load(),
            )
        if moves.unplaced:
            self._log.error(
                "fleet.no_room",
                unplaced=len(moves.unplaced),
                max_connections=self.placement.max_connections,
                fix="raise subscription.max_connections, or narrow the selection",
            )

    def _ensure(self, index: int) -> ConnectionSupervisor:
        while len(self.supervisors) <= index:
            number = len(self.supervisors)
            channels = tuple(self.plan.channels)
            if number > 0:  # §7.5: lifecycle takes no market filter; one connection is enough
                channels = tuple(c for c in channels if c is not Channel.MARKET_LIFECYCLE_V2)
            plan = dataclasses.replace(
                self.plan, name=f"{self.plan.name}#{number}", channels=channels, markets=()
            )
            supervisor = ConnectionSupervisor(
                plan,
                sink=self._sink,
                policy=self._new_policy(),
                rest=self._rest,
                clock_ns=self._clock_ns,
                recent_trades=self._recent_trades,
                recorder=self._recorder,
            )
            supervisor.on_markets_rejected = self._rejected
            self.supervisors.append(supervisor)
            if self._group is not None:
                self._start(supervisor)
        return self.supervisors[index]

    def _start(self, supervisor: ConnectionSupervisor) -> None:
        assert self._group is not None
        assert self._stop is not None
        self._group.create_task(
            supervisor.run(self._stop), name=f"connection {supervisor.plan.name}"
        )

    async def _rejected(self, supervisor: ConnectionSupervisor, markets: tuple[str, ...]) -> None:
        index = self.supervisors.index(supervisor)
        moves = self.placement.refused(index, markets)
        self._log.warning(
            "fleet.markets_refused",
            connection=supervisor.plan.name,
            markets=len(markets),
            cap=self.placement.cap,
        )
        # The refusing connection already dropped them: only the additions remain to apply.
        self._apply(dataclasses.replace(moves, removed={}))
