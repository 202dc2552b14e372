"""The process owner: builds the pipeline from Settings, runs it under one TaskGroup, and on
SIGTERM/SIGINT stops intake, drains the queue, flushes and closes the transport, and exits 0.

A second signal exits at once with 128 + signal number. Start-up problems (bad key, refused
handshake) are logged with their fix and give exit code 1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from ssmd.auth import Credentials, generate_private_key
from ssmd.client import KalshiClient
from ssmd.config import Settings, resolve_credentials
from ssmd.errors import ConfigError, SsmdError
from ssmd.exchange.server import ExchangeSimulator
from ssmd.logs import get_logger
from ssmd.records import Record
from ssmd.session import KalshiSession
from ssmd.transport import build_transport
from ssmd.transport.base import Transport

EXIT_OK = 0
EXIT_FAILED = 1
LOCAL_KEY_ID = "local-simulator"

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
    )
    await simulator.start()
    markets = tuple(settings.subscription.markets) or tuple(simulator.markets)
    return Exchange(
        url=simulator.url, credentials=credentials, markets=markets, simulator=simulator
    )


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
        self.transport = transport or build_transport(settings.transport)
        self._clock_ns = clock_ns
        self._queue: asyncio.Queue[Record | None] = asyncio.Queue(
            maxsize=settings.runtime.queue_size
        )
        self.published = 0
        self.failure: SsmdError | None = None
        self.client: KalshiClient | None = None
        self._drained = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set or intake fails; always drain and close the transport."""
        exchange = await open_exchange(self.settings)
        try:
            await self.transport.start()
            session = KalshiSession(
                connection_id=f"{self.settings.name}/{os.getpid()}/1",
                channels=self.settings.subscription.channels,
                markets=exchange.markets,
                use_yes_price=self.settings.subscription.use_yes_price,
            )
            self.client = KalshiClient(
                url=exchange.url,
                credentials=exchange.credentials,
                session=session,
                sink=self._queue,
                open_timeout_s=self.settings.exchange.open_timeout_s,
                ping_interval_s=self.settings.exchange.ping_interval_s,
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
                tasks.create_task(self._intake(self.client, stop), name="intake")
                tasks.create_task(self._publish(), name="publish")
                summary = tasks.create_task(self._summarize(len(exchange.markets)), name="summary")
                await self._drained.wait()
                summary.cancel()
        finally:
            await self.transport.close()
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

    async def _intake(self, client: KalshiClient, stop: asyncio.Event) -> None:
        try:
            await client.run(stop)
        except SsmdError as exc:
            self.failure = exc
            log.error("connector.intake_failed", error=str(exc), error_type=type(exc).__name__)
        finally:
            # End of stream: the publisher drains everything queued before this marker.
            await self._queue.put(None)

    async def _publish(self) -> None:
        queue = self._queue
        publish = self.transport.publish
        try:
            while True:
                record = await queue.get()
                if record is None:
                    break
                await publish(record)
                self.published += 1
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
            session = self.client.session if self.client else None
            log.info(
                "connector.summary",
                per_s=rates,
                markets=market_count,
                published=self.published,
                queued=self._queue.qsize(),
                files_written=stats.files_written,
                gaps=session.stats.gaps if session else 0,
            )


async def run_connector(settings: Settings) -> int:
    """Run a Connector with SIGTERM/SIGINT handling; returns the process exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    deadline: list[asyncio.TimerHandle] = []

    def on_signal(signum: int) -> None:
        if stop.is_set():
            # Second signal: the operator wants out now.
            os._exit(128 + signum)
        log.info("connector.stopping", signal=signal.Signals(signum).name)
        stop.set()
        deadline.append(loop.call_later(settings.runtime.shutdown_timeout_s, on_shutdown_timeout))

    def on_shutdown_timeout() -> None:
        # Draining is stuck (e.g. the transport cannot write): say so and leave non-zero,
        # rather than hang until the supervisor's SIGKILL.
        log.error(
            "connector.shutdown_timeout", shutdown_timeout_s=settings.runtime.shutdown_timeout_s
        )
        os._exit(EXIT_FAILED)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await Connector(settings).run(stop)
    finally:
        for handle in deadline:
            handle.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
