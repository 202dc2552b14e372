"""Operations endpoints: /health and /ready verdicts (with the reason in the body) and the
activity they read. ssmd.ops_http serves them with Prometheus /metrics (imported only when
ops.address is set)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ssmd.session_events import SessionStats, SubscriptionState
from ssmd.transport.nats import NatsTransport
from ssmd.transport.nats_core import LinkState

if TYPE_CHECKING:
    from ssmd.runner import Connector


@dataclass(frozen=True)
class Verdict:
    """The answer of /health or /ready: `ok`, and why not (or what is fine) in `reason`."""

    ok: bool
    reason: str


@dataclass
class ActivityWatch:
    """When frames last arrived, from the frame total sampled now and then (pure, clocks are
    passed in). The start counts as activity, so a process is not stale before its window."""

    started_s: float
    started_wall_s: float
    frames: int = 0
    last_activity_s: float = field(init=False)
    last_activity_wall_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.last_activity_s = self.started_s
        self.last_activity_wall_s = self.started_wall_s

    def observe(self, frames_total: int, now_s: float, now_wall_s: float) -> None:
        if frames_total != self.frames:
            self.frames = frames_total
            self.last_activity_s = now_s
            self.last_activity_wall_s = now_wall_s

    def idle_s(self, now_s: float) -> float:
        return max(0.0, now_s - self.last_activity_s)


class OpsState:
    """What the endpoints report about one Connector, read from its components on demand."""

    def __init__(
        self,
        connector: Connector,
        *,
        stop: asyncio.Event,
        stale_after_s: float,
        ping_interval_s: float | None = None,
        monotonic_s: Callable[[], float] = time.monotonic,
        wall_s: Callable[[], float] = time.time,
    ) -> None:
        self.connector = connector
        self.stale_after_s = stale_after_s
        # Both clients ping every ping_interval_s and close when a pong is later than that, so
        # an open connection has had a pong within twice the interval (PROTOCOL.md §3).
        self.pong_within_s = 2 * ping_interval_s if ping_interval_s is not None else None
        self._stop = stop
        self._monotonic_s = monotonic_s
        self._wall_s = wall_s
        self.activity = ActivityWatch(monotonic_s(), wall_s())

    def sample(self) -> SessionStats:
        """The session counters summed over every connection; notes frame activity."""
        fleet = self.connector.fleet
        totals = fleet.total_stats() if fleet else SessionStats()
        self.activity.observe(totals.frames_received, self._monotonic_s(), self._wall_s())
        return totals

    def connected(self) -> bool:
        fleet = self.connector.fleet
        return fleet is not None and fleet.connected

    def health(self) -> Verdict:
        """Alive and not stale: a frame, or a pong, within `stale_after_s`. Pongs are not seen
        one by one: an open connection counts when its keepalive bound fits in the window (a
        quiet market still answers pings); otherwise only frames count."""
        self.sample()
        idle_s = self.activity.idle_s(self._monotonic_s())
        pong_within_s = self.pong_within_s
        if idle_s <= self.stale_after_s:
            return Verdict(True, f"ok: last frame {idle_s:.1f} s ago")
        if pong_within_s is not None and pong_within_s <= self.stale_after_s and self.connected():
            return Verdict(
                True,
                f"ok: quiet for {idle_s:.1f} s, connection open (pong within {pong_within_s:g} s)",
            )
        return Verdict(
            False,
            f"stale: no frame from the exchange for {idle_s:.1f} s"
            f" (limit {self.stale_after_s:g} s)",
        )

    def ready(self) -> Verdict:
        """Connected, every subscription active, and the transport accepting writes."""
        if self._stop.is_set():
            return Verdict(False, "stopping")
        transport_reason = self._transport_not_ready()
        if transport_reason is not None:
            return Verdict(False, transport_reason)
        fleet = self.connector.fleet
        if fleet is None:
            return Verdict(False, "not connected to the exchange")
        down = [s.plan.name for s in fleet.supervisors if not s.connected]
        if down:
            return Verdict(False, "not connected to the exchange: " + ", ".join(down))
        waiting: list[str] = []
        active = 0
        for supervisor in fleet.supervisors:
            session = supervisor.session
            assert session is not None  # a connected client has its session
            for channel, subscription in session.subscriptions.items():
                if subscription.state is SubscriptionState.ACTIVE:
                    active += 1
                else:
                    state = subscription.state.value
                    waiting.append(f"{supervisor.plan.name} {channel.value} ({state})")
        if waiting:
            return Verdict(False, "subscriptions not active: " + ", ".join(sorted(waiting)))
        connections = len(fleet.supervisors)
        return Verdict(True, f"ok: {active} subscriptions active on {connections} connection(s)")

    def _transport_not_ready(self) -> str | None:
        if not self.connector.transport_accepting:
            return "transport not started (or closing)"
        transport = self.connector.transport
        if isinstance(transport, NatsTransport) and transport.state is not LinkState.UP:
            return f"NATS link {transport.state.value}"
        return None


def parse_address(address: str) -> tuple[str, int]:
    """ "host:port" → (host, port); raises ValueError on anything else."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected host:port, got {address!r}")
    return host.strip("[]"), int(port_text)
