"""Thin asyncio driver of the local Kalshi exchange (PROTOCOL.md §10) on `websockets`.

It authenticates the upgrade (§2), serves the REST trade history (§9.5) from the same port, runs
one market generator task fanning frames out to every connection (outbound.ClientLink), and
injects faults (faults.py) on demand or from a seeded random schedule (schedule.py).
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

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ssmd.auth import HEADER_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP, WS_PATH, verify
from ssmd.errors import ConfigError
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
from ssmd.exchange.market import MarketEvent, MarketGenerator, Trade
from ssmd.exchange.outbound import (
    BackpressurePolicy,
    ClientLink,
    Ledger,
    SentFrame,
    SkippedFrame,
)
from ssmd.exchange.protocol import ExchangeConnection
from ssmd.exchange.rest import TRADES_PATH, BadQuery, TradeLog, parse_trade_query
from ssmd.exchange.schedule import FaultSchedule, RandomFaults

__all__ = ["BackpressurePolicy", "ExchangeSimulator", "SentFrame", "SkipReason", "SkippedFrame"]

log = structlog.get_logger("ssmd.exchange")

_MAX_BATCH = 1_000  # events per pacing step when behind (then yield to the senders)
_UNPACED_BATCH = 100  # events between yields when rate_hz is 0/None or in a burst
_CLOSE_TIMEOUT_S = 2.0


class ExchangeSimulator:
    """A Kalshi WS v2 server on 127.0.0.1 with simulated markets; see PROTOCOL.md §10.

    Accounting (kept unless `keep_sent=False`): `sent` holds every frame a connection was sent,
    `skipped` every frame built for it that it never got (a SkipSeq fault, an overflow, a close),
    `faults` every fault injected. `generator` is the exchange's own books; `trades` every trade.
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
    ) -> None:
        """`keep_sent=False` keeps no `sent`/`skipped`/`faults`: long runs must not grow them.
        With OVERFLOW, an outbox over `outbox_frames` for `overflow_after_s` gets error 25.
        `random_faults` injects a seeded random schedule of faults on every connection.
        `trade_id_salt` None draws a fresh salt: trade ids never repeat from run to run."""
        if rate_hz is not None and rate_hz < 0:
            raise ConfigError(f"must be >= 0, got {rate_hz}", source="exchange", field="rate_hz")
        if outbox_frames < 1:
            raise ConfigError(
                f"must be >= 1, got {outbox_frames}", source="exchange", field="outbox_frames"
            )
        self._public_keys = dict(public_keys)
        salt = secrets.randbits(128) if trade_id_salt is None else trade_id_salt
        self._generator = MarketGenerator(market_count, seed, trade_id_salt=salt)
        self._rate_hz = rate_hz or None
        self._host = host
        self._requested_port = port
        self._ping_interval_s = ping_interval_s or None
        self._max_clock_skew_ns = int(max_clock_skew_s * 1_000_000_000)
        self._clock_ns = clock_ns
        self._log_path = log_path
        self._outbox_frames = outbox_frames
        self._backpressure = backpressure
        self._overflow_after_s = overflow_after_s
        self._schedule = (
            FaultSchedule(random_faults, self._generator.tickers) if random_faults else None
        )
        self._ledger = Ledger(keep=keep_sent)
        self._trades = TradeLog(max_trades=max_rest_trades)
        self._server: Server | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}  # generator, fault schedule
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
        """Stop producing market events (and the fault schedule) and wait until every frame
        already produced has left (sent, or dropped by a fault): the exchange's books then
        match what the clients got. A stalled connection holds this until its stall ends."""
        await self._cancel_tasks(["generator", "schedule"])
        async with self._fanout_lock:  # no burst or fault is queueing frames
            for client in list(self._clients.values()):
                await client.outbox.wait_until_empty()

    def resume(self) -> None:
        """Produce market events (and run the fault schedule) again after `pause`."""
        if self._server is None:
            return
        if "generator" not in self._tasks:
            self._tasks["generator"] = asyncio.create_task(self._run_generator())
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

    # -- HTTP: authentication (§2) and REST (§9.5) --------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path == TRADES_PATH:
            return self._serve_trades(connection, request, query)
        if path != WS_PATH:
            return _json_response(connection, http.HTTPStatus.NOT_FOUND, "not_found", "no route")
        reason = self._auth_failure(request, WS_PATH, required=True)
        if reason is None and self._handshakes_to_reject > 0:
            self._handshakes_to_reject -= 1
            reason = "injected fault: handshake rejected"
        if reason is None:
            return None
        log.info(
            "exchange.auth.rejected", reason=reason, key_id=_single_header(request, HEADER_KEY)
        )
        return _json_response(
            connection, http.HTTPStatus.UNAUTHORIZED, "authentication_error", reason
        )

    def _serve_trades(self, connection: ServerConnection, request: Request, query: str) -> Response:
        """Public GET (§9): unsigned requests are served; signed ones must verify (§2.2)."""
        reason = self._auth_failure(request, TRADES_PATH, required=False)
        if reason is not None:
            status, code = http.HTTPStatus.UNAUTHORIZED, "authentication_error"
            return _json_response(connection, status, code, reason)
        parsed = parse_trade_query(query)
        if isinstance(parsed, BadQuery):
            status, code = http.HTTPStatus.BAD_REQUEST, "bad_request"
            return _json_response(connection, status, code, parsed.message)
        return _with_json_body(connection, http.HTTPStatus.OK, self._trades.page(parsed).to_json())

    def _auth_failure(self, request: Request, path: str, *, required: bool) -> str | None:
        """Why the KALSHI-ACCESS-* headers do not authenticate GET `path`, or None if they do
        (or, when not `required`, if none is sent at all)."""
        key_id, timestamp, signature = (
            _single_header(request, name)
            for name in (HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE)
        )
        if not required and not any(request.headers.get_all(name) for name in _AUTH_HEADERS):
            return None
        if not key_id or not timestamp or not signature:
            return f"missing {HEADER_KEY}, {HEADER_TIMESTAMP} or {HEADER_SIGNATURE} header"
        if not (timestamp.isascii() and timestamp.isdigit()):
            return f"{HEADER_TIMESTAMP} must be integer milliseconds"
        timestamp_ms = int(timestamp)
        if abs(timestamp_ms * 1_000_000 - self._clock_ns()) > self._max_clock_skew_ns:
            return f"{HEADER_TIMESTAMP} is outside the allowed clock skew (milliseconds?)"
        public_key = self._public_keys.get(key_id)
        if public_key is None:
            return "unknown API key id"
        if not verify(public_key, signature, timestamp_ms, "GET", path):
            return "invalid signature"
        return None

    # -- connections --------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        client = ClientLink(
            connection_id=self._next_connection_id,
            ws=ws,
            protocol=ExchangeConnection(self._generator.markets, clock_ns=self._clock_ns),
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
                async with self._fanout_lock:
                    frames = client.protocol.receive_command(message)
                    await client.deliver(frames)
        except ConnectionClosed:
            return

    # -- market generator ---------------------------------------------------------------------

    async def _run_generator(self) -> None:
        if self._rate_hz is None:
            while True:
                await self._produce(_UNPACED_BATCH, batch=_UNPACED_BATCH)
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        produced = 0
        while True:
            due = int((loop.time() - started_s) * self._rate_hz) - produced
            if due <= 0:
                await asyncio.sleep((produced + 1) / self._rate_hz - (loop.time() - started_s))
                continue
            if due > _MAX_BATCH:
                # Far behind (a blocked consumer paused production): forget the backlog.
                produced += due - _MAX_BATCH
                due = _MAX_BATCH
            await self._produce(due, batch=due)
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
            for client in list(self._clients.values()):
                frames = client.protocol.frames_for_event(event, now_ns)
                if frames:
                    faulted = client.frame_faults.apply_to(frames)
                    if faulted.dropped:
                        self._ledger.record_skipped(
                            client.connection_id, faulted.dropped, SkipReason.SKIP_SEQ
                        )
                    await client.deliver(faulted.to_send)

    @staticmethod
    def _open_log(path: Path) -> IO[bytes]:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("ab")


_AUTH_HEADERS = (HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE)


def _single_header(request: Request, name: str) -> str | None:
    values = request.headers.get_all(name)
    return values[0] if len(values) == 1 else None


def _json_response(
    connection: ServerConnection, status: http.HTTPStatus, code: str, message: str
) -> Response:
    """A §9-style error body {"code", "message", "details"} instead of websockets' text/plain."""
    body = msgspec.json.encode({"code": code, "message": message, "details": ""})
    return _with_json_body(connection, status, body)


def _with_json_body(connection: ServerConnection, status: http.HTTPStatus, body: bytes) -> Response:
    response = connection.respond(status, "")
    del response.headers["Content-Length"]
    del response.headers["Content-Type"]
    response.headers["Content-Length"] = str(len(body))
    response.headers["Content-Type"] = "application/json"
    response.body = body
    return response
