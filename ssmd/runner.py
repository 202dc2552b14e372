"""The process owner: builds the pipeline from Settings (starting the managed nats-server
first when the environment has one), runs it under one TaskGroup, and on SIGTERM/SIGINT stops
intake, drains the queue, flushes and closes the transport, stops that server, and exits 0.

A second signal exits at once with 128 + signal number. Start-up problems (bad key, refused
handshake) are logged with their fix and give exit code 1.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from ssmd.auth import Credentials, generate_private_key
from ssmd.config import NatsTransportSettings, Settings, resolve_credentials
from ssmd.errors import ConfigError, SsmdError
from ssmd.exchange.server import ExchangeSimulator
from ssmd.logs import get_logger
from ssmd.natsserver import NatsServer, NatsServerError
from ssmd.ops import OpsServer, OpsState, parse_address
from ssmd.records import Record
from ssmd.rest import KalshiRest, rest_base_url
from ssmd.retry import RetryPolicy
from ssmd.supervisor import ConnectionPlan, ConnectionSupervisor
from ssmd.transport import build_transport
from ssmd.transport.base import Transport

STALE_PINGS = 3  # ops.stale_after_s defaults to this many exchange ping intervals
EXIT_OK = 0
EXIT_FAILED = 1
LOCAL_KEY_ID = "local-simulator"
PUBLISH_BATCH_MAX = 512  # records per publish_many(): bounds the time between two awaits

log = get_logger("ssmd.runner")


@dataclass
class Exchange:
    """Where to connect and as whom; `simulator` is set when ssmd runs the exchange itself."""

    url: str
    credentials: Credentials
    markets: tuple[str, ...]
    simulator: ExchangeSimulator | None = None


async def open_exchange(settings: Settings) -> Exchange:
    """Resolve the exchange endpoint; start the in-process simulator when configured."""
    sim_config = settings.exchange.simulator
    if sim_config is None:
        credentials = resolve_credentials(settings)
        if credentials is None or settings.exchange.ws_url is None:
            raise ConfigError(
                "a real exchange needs credentials and exchange.ws_url",
                source=settings.name,
                field="credentials",
            )
        return Exchange(
            url=settings.exchange.ws_url,
            credentials=credentials,
            markets=tuple(settings.subscription.markets),
        )
    # The local stack signs with a throwaway key that only this process's simulator trusts:
    # the real signing path runs, and no credentials are needed.
    credentials = resolve_credentials(settings) or Credentials(LOCAL_KEY_ID, generate_private_key())
    simulator = ExchangeSimulator(
        public_keys={credentials.key_id: credentials.private_key.public_key()},
        market_count=sim_config.markets,
        rate_hz=sim_config.rate_hz,
        seed=sim_config.seed,
        # The in-process simulator serves a long-running stack: keep no send log.
        keep_sent=False,
        backpressure=sim_config.backpressure,
        random_faults=sim_config.faults,
    )
    await simulator.start()
    markets = tuple(settings.subscription.markets) or tuple(simulator.markets)
    return Exchange(
        url=simulator.url, credentials=credentials, markets=markets, simulator=simulator
    )


def retry_policy(settings: Settings) -> RetryPolicy:
    """The exchange reconnect policy of `exchange.reconnect`, with its own RNG for the jitter."""
    reconnect = settings.exchange.reconnect
    return RetryPolicy(
        base_s=reconnect.base_s,
        cap_s=reconnect.cap_s,
        healthy_after_s=reconnect.healthy_after_s,
        max_auth_retries=reconnect.max_auth_retries,
        rng=random.Random(),
    )


_PORT_IN_USE = "address already in use"


async def start_managed_nats(settings: Settings) -> NatsServer | None:
    """Start the nats-server the environment manages (`transport.managed_server`), if any.

    A taken port is a ConfigError naming `transport.managed_server.port` and the two fixes;
    any other start failure is the NatsServerError (a TransportError) with the server's log.
    """
    transport = settings.transport
    if not isinstance(transport, NatsTransportSettings) or transport.managed_server is None:
        return None
    managed = transport.managed_server
    server = NatsServer(managed.store_dir, port=managed.port)
    try:
        await server.start()
    except NatsServerError as exc:
        if _PORT_IN_USE not in str(exc).lower():
            raise
        raise ConfigError(
            f"cannot start the managed nats-server: port {managed.port} on 127.0.0.1 is already"
            " in use (another nats-server, or another `make run`, is listening there)",
            source=settings.source,
            field="transport.managed_server.port",
            fix="set transport.managed_server.port: 0 to take any free port, or stop the other"
            f" server on port {managed.port}",
        ) from exc
    log.info("nats_server.started", url=server.url, store_dir=str(managed.store_dir))
    return server


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
        self.supervisor: ConnectionSupervisor | None = None
        self.nats_server: NatsServer | None = None
        self.exchange: Exchange | None = None
        self.ops: OpsServer | None = None
        self.transport_accepting = False  # started and not yet closing (for /ready)
        self._drained = asyncio.Event()

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
        try:
            await self.transport.start()
            self.transport_accepting = True
            plan = ConnectionPlan(
                name=f"{self.settings.name}/{os.getpid()}",
                url=exchange.url,
                credentials=exchange.credentials,
                channels=self.settings.subscription.channels,
                markets=exchange.markets,
                use_yes_price=self.settings.subscription.use_yes_price,
                open_timeout_s=self.settings.exchange.open_timeout_s,
                ping_interval_s=self.settings.exchange.ping_interval_s,
                client=self.settings.exchange.client,
                repair_timeout_s=self.settings.exchange.repair_timeout_s,
            )
            rest_url = self.settings.exchange.rest_url or rest_base_url(exchange.url)
            rest = KalshiRest(rest_url, exchange.credentials)
            self.supervisor = ConnectionSupervisor(
                plan,
                sink=self._queue,
                policy=retry_policy(self.settings),
                rest=rest,
                clock_ns=self._clock_ns,
            )
            log.info(
                "connector.started",
                environment=self.settings.name,
                url=exchange.url,
                markets=len(exchange.markets),
                channels=[c.value for c in self.settings.subscription.channels],
                simulator=exchange.simulator is not None,
            )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._intake(self.supervisor, stop), name="intake")
                tasks.create_task(self._publish(), name="publish")
                summary = tasks.create_task(self._summarize(len(exchange.markets)), name="summary")
                await self._drained.wait()
                summary.cancel()
        finally:
            self.transport_accepting = False
            await self.transport.close()
            if rest is not None:
                await rest.close()
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

    async def _intake(self, supervisor: ConnectionSupervisor, stop: asyncio.Event) -> None:
        try:
            await supervisor.run(stop)
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
                await publish_many(batch)
                self.published += len(batch)
            await self.transport.flush()
        finally:
            self._drained.set()

    async def _summarize(self, market_count: int) -> None:
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
            supervisor = self.supervisor
            session = supervisor.session if supervisor else None
            # What the sink has: completed files for the file transport, unacked records for NATS.
            sink = (
                {"files_written": stats.files_written}
                if stats.files_written
                else {"pending_acks": stats.pending}
            )
            log.info(
                "connector.summary",
                per_s=rates,
                markets=market_count,
                published=self.published,
                queued=self._queue.qsize(),
                gaps=session.stats.gaps if session else 0,
                resyncs=session.stats.resyncs if session else 0,
                reconnects=supervisor.reconnects if supervisor else 0,
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
