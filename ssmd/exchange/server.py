"""Thin asyncio driver of the local Kalshi exchange (PROTOCOL.md §10) on `websockets`.

It authenticates the upgrade (§2), serves REST (§9: catalog, trades; rest_catalog.py) from the
same port with an optional §9.6 rate limit, runs one market generator task fanning frames out to
every connection (outbound.ClientLink), optionally a market churn task (churn.py), and injects
faults (faults.py) on demand or from a seeded random schedule (schedule.py).
"""

from __future__ import annotations

import asyncio
import http
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ssmd.auth import HEADER_KEY, WS_PATH
from ssmd.errors import ConfigError
from ssmd.exchange.blast import Blaster
from ssmd.exchange.catalog import Catalog
from ssmd.exchange.catalog_spec import CatalogSpec, build_catalog
from ssmd.exchange.churn import Churn, ChurnSpec, apply_to_generator, register_catalog
from ssmd.exchange.faults import (
    AbortConnection,
    Burst,
    CloseConnection,
    ConnectionFault,
    DuplicateFrame,
    Fault,
    FaultRecord,
    MalformedFrame,
    RejectHandshakes,
    SkipReason,
    SkipSeq,
    Stall,
    TerminateSubscription,
    UnsolicitedSnapshot,
)
from ssmd.exchange.market import DEFAULT_MIX, EventMix, MarketEvent, MarketGenerator, Trade
from ssmd.exchange.outbound import (
    BackpressurePolicy,
    ClientLink,
    Ledger,
    SentFrame,
    SkippedFrame,
)
from ssmd.exchange.protocol import ExchangeConnection
from ssmd.exchange.rest import TradeLog
from ssmd.exchange.rest_catalog import (
    REST_ROOT,
    CatalogRest,
    RequestAuth,
    RestFront,
    json_error,
    single_header,
)
from ssmd.exchange.schedule import FaultSchedule, RandomFaults

__all__ = ["BackpressurePolicy", "ExchangeSimulator", "SentFrame", "SkipReason", "SkippedFrame"]

log = structlog.get_logger("ssmd.exchange")

_MAX_BATCH = 1_000  # events per pacing step when behind (then yield to the senders)
_UNPACED_BATCH = 100  # events between yields when rate_hz is 0/None or in a burst
# A paced generator produces at least this much time's worth of events per wake-up: at 20k
# frames/s one event per wake-up meant a socket write per frame and a whole core (0.95-1.0
# cores measured, 5 connections); 1 ms steps write ~4 frames per connection at once (0.63-0.82).
_PACE_STEP_S = 0.001
_CLOSE_TIMEOUT_S = 2.0
_CHURN_POLL_S = 0.25  # the churn task's longest sleep (the injected clock may jump)


class ExchangeSimulator:
    """A Kalshi WS v2 server on 127.0.0.1 with simulated markets; see PROTOCOL.md §10.

    Accounting (kept unless `keep_sent=False`): `sent` holds every frame a connection was sent,
    `skipped` every frame built for it that it never got (a SkipSeq fault, an overflow, a close),
    `faults` every fault injected. `generator` is the exchange's own books; `trades` every trade;
    `catalog` every listed series, event and market; `rest_requests`/`rest_throttled` count
    REST requests and the 429s among them.
    """

    def __init__(
        self,
        *,
        public_keys: Mapping[str, RSAPublicKey],
        market_count: int = 20,
        rate_hz: float | None = 200.0,
        seed: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        ping_interval_s: float | None = 10.0,
        max_clock_skew_s: float = 30.0,
        clock_ns: Callable[[], int] = time.time_ns,
        trade_id_salt: int | None = None,
        log_path: Path | None = None,
        outbox_frames: int = 10_000,
        keep_sent: bool = True,
        backpressure: BackpressurePolicy = BackpressurePolicy.BLOCK,
        overflow_after_s: float = 1.0,
        random_faults: RandomFaults | None = None,
        max_rest_trades: int | None = 250_000,
        catalog: CatalogSpec | None = None,
        churn: ChurnSpec | None = None,
        rest_rate: tuple[float, float] | None = None,
        max_markets_per_subscription: int | None = None,
        mix: EventMix = DEFAULT_MIX,
        blast_events: int | None = None,
    ) -> None:
        """`keep_sent=False` keeps no `sent`/`skipped`/`faults`: long runs must not grow them.
        With OVERFLOW, an outbox over `outbox_frames` for `overflow_after_s` gets error 25.
        `random_faults` injects a seeded random schedule of faults on every connection.
        `trade_id_salt` None draws a fresh salt: trade ids never repeat from run to run.
        `catalog` lists (and streams the active) generated markets besides the simulated ones;
        `churn` creates and retires markets on the clock; `rest_rate` is (tokens_per_s,
        capacity) of one REST bucket, 10 tokens a request (§9.6); past
        `max_markets_per_subscription` a subscribe or add_markets gets error 26 (§6.6). `mix`
        weighs the event kinds; `blast_events` N: blast mode (blast.py, flat out, rate_hz
        unused), every connection loops the frames of N events built once."""
        if rate_hz is not None and rate_hz < 0:
            raise ConfigError(f"must be >= 0, got {rate_hz}", source="exchange", field="rate_hz")
        if outbox_frames < 1:
            raise ConfigError(
                f"must be >= 1, got {outbox_frames}", source="exchange", field="outbox_frames"
            )
        self._auth = RequestAuth(public_keys, clock_ns, max_clock_skew_s=max_clock_skew_s)
        salt = secrets.randbits(128) if trade_id_salt is None else trade_id_salt
        self._generator = MarketGenerator(market_count, seed, mix=mix, trade_id_salt=salt)
        self._blaster = Blaster(self._generator, blast_events, clock_ns) if blast_events else None
        self._rate_hz = rate_hz or None
        self._host = host
        self._requested_port = port
        self._ping_interval_s = ping_interval_s or None
        self._clock_ns = clock_ns
        self._log_path = log_path
        self._outbox_frames = outbox_frames
        self._backpressure = backpressure
        self._overflow_after_s = overflow_after_s
        self._catalog = build_catalog(catalog, self._generator.markets.values(), now_ns=clock_ns())
        register_catalog(self._catalog, self._generator)
        self._churn = Churn(churn, self._catalog, start_ns=clock_ns()) if churn else None
        self._max_markets_per_subscription = max_markets_per_subscription
        self._schedule = (
            FaultSchedule(random_faults, self._generator.tickers) if random_faults else None
        )
        self._ledger = Ledger(keep=keep_sent)
        self._trades = TradeLog(max_trades=max_rest_trades)
        self._rest_front = RestFront(
            CatalogRest(self._catalog, self._generator.markets, self._trades),
            rest_rate=rest_rate,
            clock_ns=clock_ns,
        )
        self._server: Server | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}  # generator, churn, fault schedule
        self._port = 0
        self._next_connection_id = 1
        self._clients: dict[int, ClientLink] = {}
        self._handshakes_to_reject = 0
        # Frames are computed and queued under this lock, so every connection's queue holds
        # them in seq order and a snapshot always reflects exactly the events queued before it.
        self._fanout_lock = asyncio.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            return
        if self._log_path is not None:
            self._ledger.log_file = self._open_log(self._log_path)
        self._server = await serve(
            self._handle,
            self._host,
            self._requested_port,
            process_request=self._process_request,
            ping_interval=None,  # our own heartbeat task sends Kalshi's pings (§3)
            close_timeout=_CLOSE_TIMEOUT_S,
        )
        self._port = next(iter(self._server.sockets)).getsockname()[1]
        self.resume()
        log.info("exchange.listening", url=self.url, markets=len(self.markets))

    async def stop(self) -> None:
        """Stop producing, close every connection with 1000 (normal closure), release all."""
        await self._cancel_tasks(list(self._tasks))
        if self._server is not None:
            self._server.close(code=1000, reason="exchange shutting down")
            await self._server.wait_closed()
            self._server = None
            log.info("exchange.stopped")
        if self._ledger.log_file is not None:
            self._ledger.log_file.close()
            self._ledger.log_file = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def pause(self) -> None:
        """Stop producing market events (and churn and the fault schedule) and wait until every
        frame already produced has left (sent, or dropped by a fault): the exchange's books then
        match what the clients got. A stalled connection holds this until its stall ends."""
        await self._cancel_tasks(["generator", "churn", "schedule"])
        async with self._fanout_lock:  # no burst or fault is queueing frames
            for client in list(self._clients.values()):
                await client.outbox.wait_until_empty()

    def resume(self) -> None:
        """Produce market events (and run the fault schedule) again after `pause`."""
        if self._server is None:
            return
        if "generator" not in self._tasks:
            self._tasks["generator"] = asyncio.create_task(self._run_generator())
        if self._churn is not None and "churn" not in self._tasks:
            self._tasks["churn"] = asyncio.create_task(self._run_churn(self._churn))
        if self._schedule is not None and "schedule" not in self._tasks:
            self._tasks["schedule"] = asyncio.create_task(self._run_schedule(self._schedule))

    async def _cancel_tasks(self, names: list[str]) -> None:
        tasks = [task for name in names if (task := self._tasks.pop(name, None)) is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self._port}{WS_PATH}"

    @property
    def rest_url(self) -> str:
        """The REST base, e.g. `http://127.0.0.1:PORT/trade-api/v2` (§1)."""
        return f"http://{self._host}:{self._port}/trade-api/v2"

    @property
    def port(self) -> int:
        return self._port

    @property
    def markets(self) -> list[str]:
        return self._generator.tickers

    @property
    def connections(self) -> int:
        return len(self._clients)

    @property
    def accepted_connections(self) -> int:
        """Every connection ever accepted (ids 1..n), including those that never got a frame."""
        return self._next_connection_id - 1

    @property
    def connection_ids(self) -> list[int]:
        return list(self._clients)

    @property
    def generator(self) -> MarketGenerator:
        """The live market state (read-only use: tests compare books and tickers with it)."""
        return self._generator

    @property
    def rest_requests(self) -> int:
        return self._rest_front.requests

    @property
    def rest_throttled(self) -> int:
        """REST requests answered 429 (§9.6)."""
        return self._rest_front.throttled

    @property
    def catalog(self) -> Catalog:
        """Every listed series, event and market (what GET /markets, /events, /series serve)."""
        return self._catalog

    @property
    def trades(self) -> TradeLog:
        """Every trade made (what GET /markets/trades serves), whatever reached the clients."""
        return self._trades

    @property
    def sent(self) -> list[SentFrame]:
        return self._ledger.sent

    @property
    def skipped(self) -> list[SkippedFrame]:
        return self._ledger.skipped

    @property
    def faults(self) -> list[FaultRecord]:
        return self._ledger.faults

    # -- faults -------------------------------------------------------------------------------

    def stall_reading(self) -> None:
        """Stop reading from every open connection: client frames, its close frame included,
        go unanswered (a hung exchange, for shutdown and liveness tests)."""
        if self._server is not None:
            for connection in self._server.connections:
                connection.transport.pause_reading()

    async def inject_fault(self, fault: Fault, *, connection_id: int | None = None) -> bool:
        """Apply `fault` to one connection, or to every open one when `connection_id` is None
        (server faults ignore it). Returns once applied (a Burst: produced; a frame fault:
        armed for the next frame it fits). False when no target connection is open."""
        if isinstance(fault, RejectHandshakes | Burst):
            self._record_fault(None, fault)
            if isinstance(fault, RejectHandshakes):
                self._handshakes_to_reject += fault.count
            else:
                await self._produce(fault.events, batch=_UNPACED_BATCH)
            return True
        targets = list(self._clients.values())
        if connection_id is not None:
            targets = [c for c in targets if c.connection_id == connection_id]
        for client in targets:
            self._record_fault(client.connection_id, fault)
            await self._apply_connection_fault(client, fault)
        return bool(targets)

    def end_stall(self, connection_id: int | None = None) -> None:
        """End a Stall early on one connection (None: on all)."""
        for client in list(self._clients.values()):
            if connection_id in (None, client.connection_id):
                client.end_stall()

    def _record_fault(self, connection_id: int | None, fault: Fault) -> None:
        self._ledger.record_fault(FaultRecord(self._clock_ns(), connection_id, fault))
        log.info("exchange.fault", connection_id=connection_id, fault=repr(fault))

    async def _apply_connection_fault(self, client: ClientLink, fault: ConnectionFault) -> None:
        if isinstance(fault, SkipSeq | DuplicateFrame | MalformedFrame):
            client.frame_faults.add(fault)
        elif isinstance(fault, TerminateSubscription | UnsolicitedSnapshot):
            async with self._fanout_lock:
                if isinstance(fault, TerminateSubscription):
                    frames = client.protocol.terminate_subscription(fault.sid, fault.code)
                else:
                    frames = client.protocol.unsolicited_snapshot(fault.market)
                await client.deliver(frames)
        elif isinstance(fault, Stall):
            client.stall(fault.duration_s, fault.mode)
        elif isinstance(fault, CloseConnection):
            reason = f"injected fault: close {fault.code.value}"
            client.spawn(asyncio.create_task(client.ws.close(fault.code.value, reason)))
        elif isinstance(fault, AbortConnection):
            client.abort()

    async def _run_schedule(self, schedule: FaultSchedule) -> None:
        while True:
            scheduled = schedule.next_fault()
            await asyncio.sleep(scheduled.delay_s)
            await self.inject_fault(scheduled.fault)

    # -- HTTP: authentication (§2) and REST (§9) ----------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path.startswith(REST_ROOT + "/"):  # public GETs (§9): signed ones must verify
            reason = self._auth.failure(request, path, required=False)
            return self._rest_front.respond(connection, path, query, auth_failure=reason)
        if path != WS_PATH:
            return json_error(connection, http.HTTPStatus.NOT_FOUND, "not_found", "no route")
        reason = self._auth.failure(request, WS_PATH, required=True)
        if reason is None and self._handshakes_to_reject > 0:
            self._handshakes_to_reject -= 1
            reason = "injected fault: handshake rejected"
        if reason is None:
            return None
        log.info("exchange.auth.rejected", reason=reason, key_id=single_header(request, HEADER_KEY))
        return json_error(connection, http.HTTPStatus.UNAUTHORIZED, "authentication_error", reason)

    # -- connections --------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        client = ClientLink(
            connection_id=self._next_connection_id,
            ws=ws,
            protocol=ExchangeConnection(
                self._generator.markets,
                clock_ns=self._clock_ns,
                max_markets_per_subscription=self._max_markets_per_subscription,
            ),
            ledger=self._ledger,
            outbox_frames=self._outbox_frames,
            policy=self._backpressure,
            overflow_after_s=self._overflow_after_s,
        )
        self._next_connection_id += 1
        self._clients[client.connection_id] = client
        log.info(
            "exchange.connection.opened",
            connection_id=client.connection_id,
            remote=str(ws.remote_address),
        )
        client.start(self._ping_interval_s)
        try:
            await self._receive_loop(client)
        finally:
            del self._clients[client.connection_id]
            await client.finish()
            log.info(
                "exchange.connection.closed",
                connection_id=client.connection_id,
                code=ws.close_code,
            )

    async def _receive_loop(self, client: ClientLink) -> None:
        try:
            async for message in client.ws:
                if self._blaster is not None:
                    self._blaster.note_command(client.connection_id)
                async with self._fanout_lock:
                    frames = client.protocol.receive_command(message)
                    await client.deliver(frames)
        except ConnectionClosed:
            return

    # -- market generator ---------------------------------------------------------------------

    async def _run_generator(self) -> None:
        if self._blaster is not None:  # runs until cancelled (pause, stop)
            return await self._blaster.run(self._clients.values, self._fanout_lock)
        if self._rate_hz is None:
            while True:
                await self._produce(_UNPACED_BATCH, batch=_UNPACED_BATCH)
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        produced = 0
        step = max(1, int(self._rate_hz * _PACE_STEP_S))  # events per wake-up, at least
        while True:
            due = int((loop.time() - started_s) * self._rate_hz) - produced
            if due < step:
                await asyncio.sleep((produced + step) / self._rate_hz - (loop.time() - started_s))
                continue
            if due > _MAX_BATCH:
                # Far behind (a blocked consumer paused production): forget the backlog.
                produced += due - _MAX_BATCH
                due = _MAX_BATCH
            # Catching up, the senders write every _UNPACED_BATCH events rather than one lump.
            await self._produce(due, batch=min(due, _UNPACED_BATCH))
            produced += due

    async def _produce(self, events: int, *, batch: int) -> None:
        """`events` market events, yielding to the senders after every `batch`."""
        for index in range(events):
            await self._publish_one()
            if index % batch == batch - 1:
                await asyncio.sleep(0)

    async def _publish_one(self) -> None:
        async with self._fanout_lock:
            now_ns = self._clock_ns()
            event: MarketEvent = self._generator.next_event(now_ns)
            if isinstance(event, Trade):
                self._trades.record(event, now_ns)
            await self._fan_out(event, now_ns)

    async def _fan_out(self, event: MarketEvent, now_ns: int) -> None:
        """Queue `event`'s frames on every connection (the fan-out lock is held)."""
        for client in list(self._clients.values()):
            frames = client.protocol.frames_for_event(event, now_ns)
            if frames:
                faulted = client.frame_faults.apply_to(frames)
                if faulted.dropped:
                    self._ledger.record_skipped(
                        client.connection_id, faulted.dropped, SkipReason.SKIP_SEQ
                    )
                await client.deliver(faulted.to_send)

    # -- market churn -------------------------------------------------------------------------

    async def _run_churn(self, churn: Churn) -> None:
        """Apply churn as the injected clock reaches each change (§7.5 frames to lifecycle
        subscribers; markets that open start streaming, closed ones stop)."""
        while True:
            async with self._fanout_lock:
                now_ns = self._clock_ns()
                for change in churn.advance(now_ns):
                    for event in apply_to_generator(change, self._catalog, self._generator):
                        await self._fan_out(event, now_ns)
            due_ns = churn.next_due_ns()
            if due_ns is None:
                return
            await asyncio.sleep(min(_CHURN_POLL_S, max(0.0, (due_ns - self._clock_ns()) / 1e9)))

    @staticmethod
    def _open_log(path: Path) -> IO[bytes]:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("ab")
