"""The process owner: builds the pipeline from Settings (starting the managed nats-server
first when the environment has one), runs it under one TaskGroup, and on SIGTERM/SIGINT stops
intake, drains the queue, flushes and closes the transport, stops that server, and exits 0.

A second signal exits at once with 128 + signal number. Start-up problems (bad key, refused
handshake) are logged with their fix and give exit code 1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ssmd.assembly import (
    Exchange,
    market_selection,
    open_exchange,
    retry_policy,
    start_managed_nats,
)
from ssmd.config import Settings
from ssmd.discovery import CatalogClient
from ssmd.errors import ConfigError, SsmdError
from ssmd.fleet import ConnectionFleet
from ssmd.follow import FollowState, MarketFollower
from ssmd.logs import get_logger
from ssmd.natsserver import NatsServer
from ssmd.ops import OpsState, parse_address
from ssmd.recording import FrameRecorder
from ssmd.records import Lifecycle, Record
from ssmd.rest import KalshiRest, rest_base_url
from ssmd.secmaster import Secmaster
from ssmd.selection import Selection
from ssmd.statusline import StatusSnapshot, open_status_line, rates_per_s
from ssmd.supervisor import ConnectionPlan, ConnectionSupervisor
from ssmd.transport import build_transport
from ssmd.transport.base import Transport

if TYPE_CHECKING:
    from ssmd.ops_http import OpsServer

STALE_PINGS = 3  # ops.stale_after_s defaults to this many exchange ping intervals
EXIT_OK = 0
EXIT_FAILED = 1
STATUS_INTERVAL_S = 1.0  # how often the live status line is redrawn (interactive runs)
PUBLISH_BATCH_MAX = 512  # records per publish_many(): bounds the time between two awaits

log = get_logger("ssmd.runner")


class Connector:
    """One connector process: exchange → session → bounded queue → transport."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: Transport | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        # Built in run() when not given: a managed nats-server's URL is known only once started.
        self._transport = transport
        self._clock_ns = clock_ns
        self._queue: asyncio.Queue[Record | None] = asyncio.Queue(
            maxsize=settings.runtime.queue_size
        )
        self.published = 0
        self.failure: SsmdError | None = None
        self.fleet: ConnectionFleet | None = None
        self.follower: MarketFollower | None = None
        self._catalog: CatalogClient | None = None
        self.nats_server: NatsServer | None = None
        self.exchange: Exchange | None = None
        self.ops: OpsServer | None = None
        self.transport_accepting = False  # started and not yet closing (for /ready)
        self._drained = asyncio.Event()

    @property
    def supervisor(self) -> ConnectionSupervisor | None:
        """The first connection (it carries the lifecycle channel), once running."""
        return self.fleet.primary if self.fleet is not None else None

    @property
    def has_transport(self) -> bool:
        return self._transport is not None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("the transport is built when Connector.run() starts")
        return self._transport

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set or intake fails; always drain and close the transport,
        then stop the managed nats-server (if the environment has one). The ops server
        (`ops.address`) runs from start to end, so /ready says why while starting."""
        self.ops = await self._start_ops(stop)
        try:
            return await self._run_managed(stop)
        finally:
            if self.ops is not None:
                await self.ops.stop()

    async def _start_ops(self, stop: asyncio.Event) -> OpsServer | None:
        ops = self.settings.ops
        if ops.address is None:
            return None
        host, port = parse_address(ops.address)
        # aiohttp.web and prometheus_client add ~3 MB of RSS to a connector (measured): only a
        # connector with ops.address set imports them.
        from ssmd.ops_http import OpsServer

        stale_after_s = ops.stale_after_s or STALE_PINGS * self.settings.exchange.ping_interval_s
        server = OpsServer(
            OpsState(
                self,
                stop=stop,
                stale_after_s=stale_after_s,
                ping_interval_s=self.settings.exchange.ping_interval_s,
            ),
            host=host,
            port=port,
        )
        try:
            await server.start()
        except OSError as exc:
            await server.stop()
            raise ConfigError(
                f"cannot serve ops endpoints on {ops.address}: {exc.strerror or exc}",
                source=self.settings.source,
                field="ops.address",
                fix="choose a free port (0 takes any), or set ops.address: null to turn it off",
            ) from exc
        return server

    async def _run_managed(self, stop: asyncio.Event) -> int:
        nats_server = self.nats_server = await start_managed_nats(self.settings)
        try:
            if self._transport is None:
                nats_servers = [nats_server.url] if nats_server is not None else None
                self._transport = build_transport(
                    self.settings.transport, nats_servers=nats_servers
                )
            return await self._run_pipeline(stop)
        finally:
            if nats_server is not None:
                await nats_server.stop()
                log.info("nats_server.stopped", url=nats_server.url)

    async def _run_pipeline(self, stop: asyncio.Event) -> int:
        exchange = self.exchange = await open_exchange(self.settings)
        rest: KalshiRest | None = None
        catalog: CatalogClient | None = None
        recording = self.settings.recording
        recorder = (
            FrameRecorder.from_settings(recording, name=f"{self.settings.name}-{os.getpid()}")
            if recording is not None
            else None
        )
        try:
            await self.transport.start()
            self.transport_accepting = True
            selection = market_selection(self.settings, exchange)
            plan = ConnectionPlan(
                name=f"{self.settings.name}/{os.getpid()}",
                url=exchange.url,
                credentials=exchange.credentials,
                channels=self.settings.subscription.channels,
                # With discovery, the follower places every market, listed ones included.
                markets=exchange.markets if selection is None else (),
                use_yes_price=self.settings.subscription.use_yes_price,
                open_timeout_s=self.settings.exchange.open_timeout_s,
                ping_interval_s=self.settings.exchange.ping_interval_s,
                client=self.settings.exchange.client,
                repair_timeout_s=self.settings.exchange.repair_timeout_s,
                top=self.settings.top,
            )
            rest_url = self.settings.exchange.rest_url or rest_base_url(exchange.url)
            rest = KalshiRest(rest_url, exchange.credentials)
            if selection is not None:
                catalog = self._catalog = CatalogClient.from_settings(
                    rest_url, exchange.credentials, self.settings.exchange.rest_rate
                )
            subscription = self.settings.subscription
            fleet = self.fleet = ConnectionFleet(
                plan,
                sink=self._queue,
                new_policy=lambda: retry_policy(self.settings),
                rest=rest,
                markets_per_connection=subscription.markets_per_connection,
                max_connections=subscription.max_connections,
                clock_ns=self._clock_ns,
                recorder=recorder,
            )
            self.follower = self._follower(fleet, selection, catalog, exchange.markets)
            log.info(
                "connector.started",
                environment=self.settings.name,
                url=exchange.url,
                markets=len(exchange.markets),
                discovery=selection is not None,
                channels=[c.value for c in self.settings.subscription.channels],
                simulator=exchange.simulator is not None,
            )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._intake(fleet, stop), name="intake")
                tasks.create_task(self._publish(), name="publish")
                if self.follower is not None:
                    tasks.create_task(self.follower.run(stop), name="follow")
                summary = tasks.create_task(self._summarize(), name="summary")
                status = tasks.create_task(self._show_status(), name="status")
                await self._drained.wait()
                summary.cancel()
                status.cancel()
        finally:
            self.transport_accepting = False
            await self.transport.close()
            if rest is not None:
                await rest.close()
            if catalog is not None:
                await catalog.close()
            if recorder is not None:
                recorder.close()  # the last file is completed (renamed) only now
            if exchange.simulator is not None:
                await exchange.simulator.stop()
        stats = self.transport.stats()
        log.info(
            "connector.stopped",
            published=self.published,
            records_by_kind=dict(stats.records_by_kind),
            files_written=stats.files_written,
            failed=self.failure is not None,
        )
        return EXIT_FAILED if self.failure is not None else EXIT_OK

    def _follower(
        self,
        fleet: ConnectionFleet,
        selection: Selection | None,
        catalog: CatalogClient | None,
        explicit: tuple[str, ...],
    ) -> MarketFollower | None:
        if selection is None or catalog is None:
            return None
        select = self.settings.subscription.select
        secmaster = Secmaster(selection, catalog)
        shard = selection.shard
        return MarketFollower(
            # Listed tickers are always followed, but only by the shard that owns them.
            FollowState(m for m in explicit if shard is None or shard.owns(m)),
            fleet,
            discover=secmaster.discover,
            look_up=secmaster.look_up,
            refresh_interval_s=select.refresh_interval_s if select else 300.0,
            clock_ns=self._clock_ns,
        )

    async def _intake(self, fleet: ConnectionFleet, stop: asyncio.Event) -> None:
        try:
            await fleet.run(stop)
        except SsmdError as exc:
            self.failure = exc
            log.error("connector.intake_failed", error=str(exc), error_type=type(exc).__name__)
        finally:
            # End of stream: the publisher drains everything queued before this marker.
            await self._queue.put(None)

    async def _publish(self) -> None:
        """Move records from the queue to the transport in batches: whatever is queued (up to
        PUBLISH_BATCH_MAX) goes in one publish_many(), so a busy stream costs one await per
        batch rather than per record, and a quiet one still sends each record at once."""
        queue = self._queue
        publish_many = self.transport.publish_many
        # Lifecycle records also tell the follower which markets opened or ended (§7.5).
        observe = self.follower.observe if self.follower is not None else None
        try:
            ended = False
            while not ended:
                first = await queue.get()
                if first is None:
                    break
                batch = [first]
                for _ in range(min(queue.qsize(), PUBLISH_BATCH_MAX - 1)):
                    record = queue.get_nowait()
                    if record is None:
                        ended = True
                        break
                    batch.append(record)
                if observe is not None:
                    for record in batch:  # only with a follower: not in the plain-ticker setup
                        if type(record) is Lifecycle:
                            observe(record)
                await publish_many(batch)
                self.published += len(batch)
            await self.transport.flush()
        finally:
            self._drained.set()

    def rest_stats(self) -> dict[str, int]:
        """Discovery's REST counters (ssmd_rest_* metrics); empty without discovery."""
        catalog = self._catalog
        if catalog is None:
            return {}
        stats = catalog.stats
        return {
            "calls": stats.calls,
            "throttled": stats.throttled,
            "retried": stats.retried,
            "failed": stats.failed,
        }

    async def _show_status(self) -> None:
        """Redraw the live status line every STATUS_INTERVAL_S (interactive runs only)."""
        status_line = open_status_line()
        if status_line is None:
            return
        last, last_s = dict(self.transport.stats().records_by_kind), time.monotonic()
        try:
            while True:
                await asyncio.sleep(STATUS_INTERVAL_S)
                stats, now_s = self.transport.stats(), time.monotonic()
                fleet = self.fleet
                totals = fleet.total_stats() if fleet else None
                status_line.show(
                    StatusSnapshot(
                        rates_per_s=rates_per_s(last, stats.records_by_kind, now_s - last_s),
                        markets=fleet.markets if fleet else 0,
                        connections_up=sum(s.connected for s in fleet.supervisors) if fleet else 0,
                        connections=len(fleet.supervisors) if fleet else 0,
                        gaps=totals.gaps if totals else 0,
                        resyncs=totals.resyncs if totals else 0,
                        reconnects=fleet.reconnects if fleet else 0,
                        pending_acks=stats.pending,
                        queued=self._queue.qsize(),
                    )
                )
                last, last_s = dict(stats.records_by_kind), now_s
        finally:
            status_line.close()

    async def _summarize(self) -> None:
        interval_s = self.settings.runtime.summary_interval_s
        if interval_s <= 0:
            return
        last = dict(self.transport.stats().records_by_kind)
        while True:
            await asyncio.sleep(interval_s)
            stats = self.transport.stats()
            now = dict(stats.records_by_kind)
            rates = {
                kind: round((count - last.get(kind, 0)) / interval_s, 1)
                for kind, count in sorted(now.items())
            }
            last = now
            fleet = self.fleet
            totals = fleet.total_stats() if fleet else None
            # What the sink has: completed files for the file transport, unacked records for NATS.
            sink = (
                {"files_written": stats.files_written}
                if stats.files_written
                else {"pending_acks": stats.pending}
            )
            log.info(
                "connector.summary",
                per_s=rates,
                markets=fleet.markets if fleet else 0,
                connections=len(fleet.supervisors) if fleet else 0,
                published=self.published,
                queued=self._queue.qsize(),
                gaps=totals.gaps if totals else 0,
                resyncs=totals.resyncs if totals else 0,
                reconnects=fleet.reconnects if fleet else 0,
                **sink,
            )


async def run_connector(settings: Settings) -> int:
    """Run a Connector with SIGTERM/SIGINT handling; returns the process exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    deadline: list[asyncio.TimerHandle] = []
    connector = Connector(settings)

    def exit_now(code: int) -> None:
        # No awaiting here: stop the managed nats-server (its own session, so the terminal's
        # signal did not reach it) and leave.
        if connector.nats_server is not None:
            connector.nats_server.terminate_now()
        os._exit(code)

    def on_signal(signum: int) -> None:
        if stop.is_set():
            # Second signal: the operator wants out now.
            exit_now(128 + signum)
        log.info("connector.stopping", signal=signal.Signals(signum).name)
        stop.set()
        deadline.append(loop.call_later(settings.runtime.shutdown_timeout_s, on_shutdown_timeout))

    def on_shutdown_timeout() -> None:
        # Draining is stuck (e.g. the transport cannot write): say so and leave non-zero,
        # rather than hang until the supervisor's SIGKILL.
        log.error(
            "connector.shutdown_timeout", shutdown_timeout_s=settings.runtime.shutdown_timeout_s
        )
        exit_now(EXIT_FAILED)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await connector.run(stop)
    finally:
        for handle in deadline:
            handle.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
