"""Thin asyncio driver of the local Kalshi exchange (PROTOCOL.md §10) on `websockets`.

It authenticates the upgrade (§2), pings every `ping_interval_s` (§3), runs one market
generator task and fans its frames out through a bounded queue and a sender task per connection.
"""

from __future__ import annotations

import asyncio
import http
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConcurrencyError, ConnectionClosed
from websockets.http11 import Request, Response

from ssmd.auth import HEADER_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP, WS_PATH, verify
from ssmd.errors import ConfigError
from ssmd.exchange.market import MarketEvent, MarketGenerator
from ssmd.exchange.protocol import ExchangeConnection, Fault

log = structlog.get_logger("ssmd.exchange")

_MAX_BATCH = 1_000  # events per pacing step when behind (then yield to the senders)
_UNPACED_BATCH = 100  # events between yields when rate_hz is 0/None
_CLOSE_TIMEOUT_S = 2.0
_HEARTBEAT = b"heartbeat"  # §3: Kalshi's ping payload


@dataclass(frozen=True)
class SentFrame:
    """One text frame the server actually sent (`ws.send` returned) on one connection."""

    connection_id: int
    data: bytes


@dataclass
class _Client:
    connection_id: int
    ws: ServerConnection
    protocol: ExchangeConnection
    outbox: asyncio.Queue[bytes]
    closed: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class ExchangeSimulator:
    """A Kalshi WS v2 server on 127.0.0.1 with simulated markets; see PROTOCOL.md §10."""

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
        log_path: Path | None = None,
        outbox_frames: int = 10_000,
        keep_sent: bool = True,
    ) -> None:
        """`keep_sent=False` leaves `sent` empty: long runs (`make run`) must not grow it."""
        if rate_hz is not None and rate_hz < 0:
            raise ConfigError(f"must be >= 0, got {rate_hz}", source="exchange", field="rate_hz")
        if outbox_frames < 1:
            raise ConfigError(
                f"must be >= 1, got {outbox_frames}", source="exchange", field="outbox_frames"
            )
        self._public_keys = dict(public_keys)
        self._generator = MarketGenerator(market_count, seed)
        self._rate_hz = rate_hz or None
        self._host = host
        self._requested_port = port
        self._ping_interval_s = ping_interval_s or None
        self._max_clock_skew_ns = int(max_clock_skew_s * 1_000_000_000)
        self._clock_ns = clock_ns
        self._log_path = log_path
        self._outbox_frames = outbox_frames
        self._keep_sent = keep_sent
        self._server: Server | None = None
        self._generator_task: asyncio.Task[None] | None = None
        self._log_file: IO[bytes] | None = None
        self._port = 0
        self._next_connection_id = 1
        self._clients: dict[int, _Client] = {}
        # Frames are computed and queued under this lock, so every connection's queue holds
        # them in seq order and a snapshot always reflects exactly the events queued before it.
        self._fanout_lock = asyncio.Lock()
        self.sent: list[SentFrame] = []

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            return
        if self._log_path is not None:
            self._log_file = self._open_log(self._log_path)
        self._server = await serve(
            self._handle,
            self._host,
            self._requested_port,
            process_request=self._authenticate,
            ping_interval=None,  # our own heartbeat task sends Kalshi's pings (§3)
            close_timeout=_CLOSE_TIMEOUT_S,
        )
        self._port = next(iter(self._server.sockets)).getsockname()[1]
        self._generator_task = asyncio.create_task(self._run_generator(), name="exchange-gen")
        log.info("exchange.listening", url=self.url, markets=len(self.markets))

    async def stop(self) -> None:
        """Stop producing, close every connection with 1000 (normal closure), release all."""
        if self._generator_task is not None:
            self._generator_task.cancel()
            await asyncio.wait([self._generator_task])
            self._generator_task = None
        if self._server is not None:
            self._server.close(code=1000, reason="exchange shutting down")
            await self._server.wait_closed()
            self._server = None
            log.info("exchange.stopped")
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

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

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self._port}{WS_PATH}"

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
    def generator(self) -> MarketGenerator:
        """The live market state (read-only use: tests compare books and tickers with it)."""
        return self._generator

    def stall_reading(self) -> None:
        """Stop reading from every open connection: client frames, its close frame included,
        go unanswered (a hung exchange, for shutdown and liveness tests)."""
        if self._server is not None:
            for connection in self._server.connections:
                connection.transport.pause_reading()

    def inject_fault(self, connection_id: int, fault: Fault) -> bool:
        """Queue `fault` on one connection (see protocol.Fault); False if it is not open."""
        client = self._clients.get(connection_id)
        if client is None:
            return False
        client.protocol.inject_fault(fault)
        return True

    # -- authentication (§2) ------------------------------------------------------------------

    def _authenticate(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] != WS_PATH:
            return _json_response(connection, http.HTTPStatus.NOT_FOUND, "not_found", "no route")
        key_id, timestamp, signature = (
            _single_header(request, name)
            for name in (HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE)
        )
        reason = self._auth_failure(key_id, timestamp, signature)
        if reason is None:
            return None
        log.info("exchange.auth.rejected", reason=reason, key_id=key_id)
        return _json_response(
            connection, http.HTTPStatus.UNAUTHORIZED, "authentication_error", reason
        )

    def _auth_failure(
        self, key_id: str | None, timestamp: str | None, signature: str | None
    ) -> str | None:
        """Why the three KALSHI-ACCESS-* headers do not authenticate, or None if they do."""
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
        if not verify(public_key, signature, timestamp_ms, "GET", WS_PATH):
            return "invalid signature"
        return None

    # -- connections --------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        client = _Client(
            connection_id=self._next_connection_id,
            ws=ws,
            protocol=ExchangeConnection(self._generator.markets, clock_ns=self._clock_ns),
            outbox=asyncio.Queue(maxsize=self._outbox_frames),
        )
        self._next_connection_id += 1
        self._clients[client.connection_id] = client
        log.info(
            "exchange.connection.opened",
            connection_id=client.connection_id,
            remote=str(ws.remote_address),
        )
        client.tasks.append(asyncio.create_task(self._send_loop(client)))
        if self._ping_interval_s is not None:
            heartbeat = self._heartbeat_loop(client, self._ping_interval_s)
            client.tasks.append(asyncio.create_task(heartbeat))
        try:
            await self._receive_loop(client)
        finally:
            del self._clients[client.connection_id]
            self._discard_outbox(client)
            for task in client.tasks:
                task.cancel()
            await asyncio.wait(client.tasks)
            log.info(
                "exchange.connection.closed",
                connection_id=client.connection_id,
                code=ws.close_code,
            )

    async def _receive_loop(self, client: _Client) -> None:
        try:
            async for message in client.ws:
                async with self._fanout_lock:
                    frames = client.protocol.receive_command(message)
                    await self._deliver(client, frames)
        except ConnectionClosed:
            return

    async def _send_loop(self, client: _Client) -> None:
        try:
            while True:
                frame = await client.outbox.get()
                await client.ws.send(frame, text=True)
                if self._keep_sent:
                    self.sent.append(SentFrame(client.connection_id, frame))
                if self._log_file is not None:
                    self._log_file.write(frame + b"\n")
                    if client.outbox.empty():
                        self._log_file.flush()
        except ConnectionClosed:
            self._discard_outbox(client)

    async def _heartbeat_loop(self, client: _Client, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await client.ws.ping(_HEARTBEAT)
            except ConcurrencyError:
                continue  # the previous heartbeat is still unanswered; Kalshi's timeout is unknown
            except ConnectionClosed:
                return

    async def _deliver(self, client: _Client, frames: list[bytes]) -> None:
        """Queue frames for one connection, in order. Call with `_fanout_lock` held."""
        for frame in frames:
            if client.closed:
                return
            try:
                client.outbox.put_nowait(frame)
            except asyncio.QueueFull:
                # Slow consumer. Kalshi answers error 25 "Subscription buffer overflow" and
                # drops the subscription (§3, §10.12); until that is simulated, wait for this
                # connection's sender to make room (producing pauses meanwhile).
                await client.outbox.put(frame)

    def _discard_outbox(self, client: _Client) -> None:
        """A closed connection's frames will never be sent; free any producer blocked on it."""
        client.closed = True
        while not client.outbox.empty():
            client.outbox.get_nowait()

    # -- market generator ---------------------------------------------------------------------

    async def _run_generator(self) -> None:
        if self._rate_hz is None:
            while True:
                for _ in range(_UNPACED_BATCH):
                    await self._publish_one()
                await asyncio.sleep(0)
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
            for _ in range(due):
                await self._publish_one()
            produced += due
            await asyncio.sleep(0)

    async def _publish_one(self) -> None:
        async with self._fanout_lock:
            now_ns = self._clock_ns()
            event: MarketEvent = self._generator.next_event(now_ns)
            for client in list(self._clients.values()):
                frames = client.protocol.frames_for_event(event, now_ns)
                if frames:
                    await self._deliver(client, frames)

    @staticmethod
    def _open_log(path: Path) -> IO[bytes]:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("ab")


def _single_header(request: Request, name: str) -> str | None:
    values = request.headers.get_all(name)
    return values[0] if len(values) == 1 else None


def _json_response(
    connection: ServerConnection, status: http.HTTPStatus, code: str, message: str
) -> Response:
    """A §9-style error body {"code", "message", "details"} instead of websockets' text/plain."""
    body = msgspec.json.encode({"code": code, "message": message, "details": ""}).decode()
    response = connection.respond(status, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response
