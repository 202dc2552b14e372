"""Operations endpoints: Prometheus metrics read at scrape time from the counters the pipeline
already keeps (the NATS ack-latency histograms are the only per-record work, done by the
transport's ack window), and /health and /ready with the reason in the body."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from ssmd.logs import get_logger
from ssmd.session import KalshiSession
from ssmd.session_events import UNTYPED, SessionStats, SubscriptionState
from ssmd.transport.base import TransportStats
from ssmd.transport.nats import NatsTransport
from ssmd.transport.nats_core import HistogramSnapshot, LinkState

if TYPE_CHECKING:
    from ssmd.runner import Connector

log = get_logger("ssmd.ops")

SAMPLE_INTERVAL_MAX_S = 1.0  # how often activity and retired sessions are sampled (at most)
NS_PER_S = 1_000_000_000

# Connector.rest_stats() keys -> (metric name without ssmd_ and _total, help text).
REST_COUNTERS = {
    "calls": ("rest_calls", "REST requests sent to the exchange (PROTOCOL.md §9)"),
    "throttled": (
        "rest_throttled",
        "REST requests held back by the rate limit: our token bucket, or a 429 (§9.6)",
    ),
    "retried": ("rest_retries", "REST requests sent again after a 429 or a failure"),
}


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


def _markets_subscribed(session: KalshiSession | None) -> int:
    if session is None:
        return 0
    markets: set[str] = set()
    for subscription in session.subscriptions.values():
        if subscription.state is SubscriptionState.ACTIVE:
            markets.update(subscription.markets)
    return len(markets)


class ConnectorCollector(Collector):
    """Builds every `ssmd_*` metric at scrape time from OpsState (documented in the README)."""

    def __init__(self, state: OpsState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        connector = state.connector
        totals = state.sample()
        fleet = connector.fleet
        supervisors = fleet.supervisors if fleet else []

        yield _counter(
            "frames_received", "Frames received from the exchange", totals.frames_received
        )
        yield _labelled_counter(
            "frames_received_by_type",
            f"Frames received from the exchange by wire type ({UNTYPED}: no readable type)",
            "type",
            totals.frames_by_type,
        )
        yield _counter("gaps", "Sequence gaps detected (PROTOCOL.md §4.3)", totals.gaps)
        yield _counter("resyncs", "Books rebuilt after a gap (§4.3)", totals.resyncs)
        yield _counter("duplicate_frames", "Frames dropped as seq duplicates", totals.duplicates)
        yield _labelled_counter(
            "decode_errors",
            "Frames that could not be decoded or normalized, by reason",
            "reason",
            totals.malformed_by_reason,
        )
        yield _labelled_counter(
            "unsupported_frames",
            "Frames of a type ssmd does not handle, by type",
            "type",
            totals.unsupported_by_type,
        )
        reconnects = fleet.reconnects if fleet else 0
        yield _counter("reconnects", "Exchange reconnects", reconnects)
        connections = fleet.connections if fleet else 0
        yield _counter("connections", "Exchange connection attempts", connections)
        backfilled = fleet.backfilled if fleet else 0
        yield _counter("trades_backfilled", "Trades published from REST backfill", backfilled)

        up = GaugeMetricFamily(
            "ssmd_connection_up", "1 when the exchange connection is open", labels=["connection"]
        )
        markets = GaugeMetricFamily(
            "ssmd_markets_subscribed",
            "Markets in active subscriptions on the connection",
            labels=["connection"],
        )
        for supervisor in supervisors:
            up.add_metric([supervisor.plan.name], 1 if supervisor.connected else 0)
            markets.add_metric([supervisor.plan.name], _markets_subscribed(supervisor.session))
        yield up
        yield markets
        yield GaugeMetricFamily(
            "ssmd_markets_followed",
            "Markets this process carries (placed on a connection), all connections",
            value=fleet.markets if fleet else 0,
        )
        yield GaugeMetricFamily(
            "ssmd_queue_depth",
            "Records queued between the exchange client and the transport",
            value=connector.queue_depth,
        )
        yield GaugeMetricFamily(
            "ssmd_last_activity_timestamp_seconds",
            "Unix time of the last frame from the exchange (process start before any)",
            value=state.activity.last_activity_wall_s,
        )
        yield from rest_metrics(connector.rest_stats())
        yield from _transport_metrics(connector)


def _transport_metrics(connector: Connector) -> Iterator[Metric]:
    stats = connector.transport.stats() if connector.has_transport else TransportStats()
    published = CounterMetricFamily(
        "ssmd_records_published",
        "Records the transport has written (NATS: acknowledged by JetStream), by kind",
        labels=["kind"],
    )
    for kind, count in sorted(stats.records_by_kind.items()):
        published.add_metric([kind], count)
    yield published
    yield GaugeMetricFamily(
        "ssmd_pending_acks", "Records published, not yet acknowledged", value=stats.pending
    )
    yield _counter("resent", "Records sent again after a transport reconnect", stats.resent)
    yield _counter("dropped", "Records dropped (NATS window full, overflow: drop)", stats.dropped)
    yield _counter(
        "transport_duplicates", "Acks that said duplicate (Msg-Id stored)", stats.duplicates
    )
    yield _counter("transport_reconnects", "Transport reconnects", stats.reconnects)
    transport = connector.transport if connector.has_transport else None
    if isinstance(transport, NatsTransport):
        latency = transport.latency()
        yield latency_histogram(
            "frame_to_ack_latency",
            "From a frame's arrival (record receive_ts_ns) to the JetStream ack of its record",
            latency.frame_to_ack,
        )
        yield latency_histogram(
            "publish_latency",
            "From handing a record to the NATS transport to its JetStream ack (includes"
            " waiting for room in the window and outages)",
            latency.publish_to_ack,
        )
        yield GaugeMetricFamily(
            "ssmd_last_ack_timestamp_seconds",
            "Unix time of the last JetStream ack (0 before the first)",
            value=latency.last_ack_ns / NS_PER_S,
        )


def latency_histogram(name: str, documentation: str, snapshot: HistogramSnapshot) -> Metric:
    """`ssmd_{name}_seconds` from a nanosecond histogram: cumulative `le` buckets, +Inf last."""
    cumulative = snapshot.cumulative()
    buckets = [
        (repr(bound_ns / NS_PER_S), count)
        for bound_ns, count in zip(snapshot.bounds_ns, cumulative, strict=False)
    ]
    buckets.append(("+Inf", cumulative[-1]))
    return HistogramMetricFamily(
        f"ssmd_{name}_seconds",
        documentation,
        buckets=buckets,
        sum_value=snapshot.sum_ns / NS_PER_S,
    )


def rest_metrics(rest_stats: Mapping[str, int]) -> Iterator[Metric]:
    """The REST_COUNTERS from a `{calls, throttled, retried}` mapping (a missing key is 0)."""
    for key, (name, documentation) in REST_COUNTERS.items():
        yield _counter(name, documentation, rest_stats.get(key, 0))


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(f"ssmd_{name}", documentation, value=value)


def _labelled_counter(
    name: str, documentation: str, label: str, counts: Counter[str]
) -> CounterMetricFamily:
    family = CounterMetricFamily(f"ssmd_{name}", documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


class OpsServer:
    """Serves /metrics, /health and /ready on `host:port` (aiohttp) for one OpsState; a small
    task samples activity so staleness is measured even when nobody asks."""

    def __init__(self, state: OpsState, *, host: str, port: int) -> None:
        self.state = state
        self.host = host
        self._port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ConnectorCollector(state))
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        self._runner = web.AppRunner(app, access_log=None)
        self._site: web.TCPSite | None = None
        self._sampler: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when configured as 0)."""
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    async def start(self) -> None:
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self._port)
        await self._site.start()
        if self._port == 0:
            self._port = int(self._runner.addresses[0][1])
        interval_s = min(SAMPLE_INTERVAL_MAX_S, self.state.stale_after_s / 4)
        self._sampler = asyncio.create_task(self._sample(interval_s), name="ops-sampler")
        log.info("ops.started", url=self.url, stale_after_s=self.state.stale_after_s)

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        await self._runner.cleanup()

    async def _sample(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.state.sample()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        return _verdict_response(self.state.health())

    async def _ready(self, request: web.Request) -> web.Response:
        return _verdict_response(self.state.ready())


def _verdict_response(verdict: Verdict) -> web.Response:
    return web.Response(status=200 if verdict.ok else 503, text=verdict.reason + "\n")


def parse_address(address: str) -> tuple[str, int]:
    """ "host:port" → (host, port); raises ValueError on anything else."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected host:port, got {address!r}")
    return host.strip("[]"), int(port_text)
