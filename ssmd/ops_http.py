"""The HTTP side of the operations endpoints (ssmd.ops): the aiohttp server and the Prometheus
metrics, read at scrape time from the counters the pipeline already keeps (the NATS ack-latency
histograms are the only per-record work, done by the transport's ack window)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping
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
from ssmd.ops import OpsState, Verdict
from ssmd.session import KalshiSession
from ssmd.session_events import UNTYPED, SubscriptionState
from ssmd.transport.base import TransportStats
from ssmd.transport.nats import NatsTransport
from ssmd.transport.nats_core import HistogramSnapshot

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
    """The ops HTTP server: /metrics, /health, /ready; a small task samples
    activity so staleness is measured even when nobody asks."""

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
