"""Asyncio driver for one Kalshi WebSocket connection: signed connect, frames into the session.

A thin driver over websockets' sans-I/O ClientProtocol (handshake, framing, close, ping/pong and
limits stay the library's); frames go to the session through ssmd.client_pump's FramePump.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import struct
import urllib.request
from typing import cast

from websockets.asyncio.client import connect_http_proxy
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidProxy, InvalidStatus, InvalidURI, ProxyError
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import USER_AGENT, Request, Response
from websockets.protocol import Event, State
from websockets.proxy import Proxy, get_proxy, parse_proxy
from websockets.uri import WebSocketURI, parse_uri

from ssmd.client_events import (
    MAX_FRAME_BYTES,
    ClientBase,
    report_connection_end,
)
from ssmd.client_pump import CLOSE_TIMEOUT_S, FramePump
from ssmd.errors import ConfigError, ExchangeUnavailable, HandshakeRejected
from ssmd.records import StatusEvent

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_KEEPALIVE_REASON = "keepalive ping timeout"  # websockets' own wording, kept for the logs


class KalshiClient(ClientBase):
    """Runs one connection until `stop` is set (clean close) or the exchange goes away.

    Records go to `sink`; a full sink pauses reading, which pushes back on the exchange
    through TCP rather than dropping anything.
    """

    _link: _Connection | None = None

    @property
    def reading_paused(self) -> bool:
        """Reading is paused now: a full sink holds the exchange back through TCP."""
        return self._link is not None and self._link.pump.paused

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe and pump frames. Returns after a requested stop; raises otherwise."""
        link = self._link = await self._connect()
        try:
            self.connected.set()
            connected = self.session.status_record(StatusEvent.CONNECTED, self._clock_ns())
            await self._emit_marked(connected)
            self._log.info("client.connected")
            for command in self.session.commands_to_send():
                link.send_text(command)
            link.start_keepalive(self._ping_interval_s)
            await link.pump.run(stop)
        finally:
            link.stop_keepalive()
            if not link.pump.disconnected:  # cancelled before the pump ran: just go
                link.abort()
        await report_connection_end(
            session=self.session,
            log=self._log,
            emit=self._emit_marked,
            now_ns=self._clock_ns,
            url=self.url,
            stopped=stop.is_set(),
            reason=self._events.reconnect_reason or link.close_reason(),
            keepalive_timed_out=link.keepalive_timed_out(),
            ping_interval_s=self._ping_interval_s,
        )

    async def _connect(self) -> _Connection:
        try:
            uri = parse_uri(self.url)
        except InvalidURI as exc:
            raise ExchangeUnavailable(self.url, f"cannot connect: {exc}") from exc
        # permessage-deflate triples receive cost; market data is not worth it: no extensions.
        protocol = ClientProtocol(uri, max_size=MAX_FRAME_BYTES)
        request = protocol.connect()
        # §2.3: sign fresh for every connect; the timestamp is inside the signature.
        request.headers.update(self._credentials.headers(self._clock_ns() // 1_000_000))
        request.headers.setdefault("User-Agent", USER_AGENT)
        proxy = self._proxy_for(uri)
        loop = asyncio.get_running_loop()
        connection: _Connection | None = None
        via = "" if proxy is None else f" through proxy {_proxy_address(proxy)}"
        try:
            async with asyncio.timeout(self._open_timeout_s):  # the proxy's CONNECT included
                if proxy is None:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self, protocol),
                        uri.host,
                        uri.port,
                        ssl=True if uri.secure else None,
                        server_hostname=uri.host if uri.secure else None,
                    )
                else:
                    user_agent = request.headers["User-Agent"]
                    connection = await _open_tunnel(self, protocol, proxy, uri, user_agent)
                await connection.send_request(request)
        except ProxyError as exc:  # refused (its status only: never the credentials) or garbled
            raise ExchangeUnavailable(self.url, f"cannot connect{via}: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            if connection is not None:
                connection.abort()
            detail = str(exc) or f"no answer within {self._open_timeout_s} s"  # TimeoutError
            raise ExchangeUnavailable(self.url, f"cannot connect{via}: {detail}") from exc
        except asyncio.CancelledError:
            if connection is not None:
                connection.abort()
            raise
        failure = protocol.handshake_exc
        if failure is not None:
            connection.abort()
            if isinstance(failure, InvalidStatus):
                response = failure.response
                body = response.body.decode("utf-8", "replace")[:200] if response.body else ""
                raise HandshakeRejected(response.status_code, self.url, body) from failure
            raise ExchangeUnavailable(self.url, f"cannot connect: {failure}") from failure
        return connection

    def _proxy_for(self, uri: WebSocketURI) -> Proxy | None:
        """The proxy the environment names for `uri`, as websockets' own connect() finds it
        (HTTPS_PROXY, HTTP_PROXY, NO_PROXY, ... through urllib's getproxies()), or None."""
        proxy_url = get_proxy(uri)
        if proxy_url is None:
            return None
        variable = _proxy_variable(uri)
        # A proxy setting that can never work is a configuration error (fatal at start, not
        # retried like an unreachable exchange).
        try:
            proxy = parse_proxy(proxy_url)
        except InvalidProxy as exc:
            # `from None`: the cause's text holds the whole URL, user:password included.
            raise ConfigError(
                f"not a valid proxy URL: {exc.msg}",
                source="environment",
                field=variable,
                fix=f"correct it, or put {uri.host} in NO_PROXY to connect directly",
            ) from None
        if proxy.scheme.startswith("socks"):
            raise ConfigError(
                f"names a SOCKS proxy ({_proxy_address(proxy)}), which ssmd does not support",
                source="environment",
                field=variable,
                fix=f"name an HTTP proxy there, or put {uri.host} in NO_PROXY to connect directly",
            )
        self._log.info("client.proxy", proxy=_proxy_address(proxy), variable=variable)
        return proxy


async def _open_tunnel(
    client: KalshiClient, protocol: ClientProtocol, proxy: Proxy, uri: WebSocketURI, user_agent: str
) -> _Connection:
    """A CONNECT tunnel through an HTTP(S) proxy to the exchange, TLS inside it for wss://;
    websockets' create_connection() does the same (asyncio/client.py open_tcp_connection)."""
    transport = await connect_http_proxy(
        proxy, uri, user_agent_header=user_agent, ssl=True if proxy.scheme == "https" else None
    )
    connection = _Connection(client, protocol)
    try:
        transport.set_protocol(connection)
        if uri.secure:
            context = ssl.create_default_context()
            loop = asyncio.get_running_loop()
            tls = await loop.start_tls(transport, connection, context, server_hostname=uri.host)
            if tls is None:  # only for a transport already closing
                raise ConnectionResetError("the proxy closed the tunnel")
            transport = tls
    except (OSError, asyncio.CancelledError):  # TLS refused, or the open timeout: no leak
        transport.abort()
        raise
    connection.connection_made(transport)
    return connection


def _proxy_address(proxy: Proxy) -> str:
    """scheme://host:port: never the user:password a proxy URL may carry."""
    return f"{proxy.scheme}://{proxy.host}:{proxy.port}"


def _proxy_variable(uri: WebSocketURI) -> str:
    """The environment variable get_proxy() took the proxy from, for messages."""
    proxies = urllib.request.getproxies()
    schemes = ("wss", "socks", "https") if uri.secure else ("ws", "socks", "https", "http")
    for scheme in schemes:  # get_proxy()'s order
        if scheme in proxies:
            name = f"{scheme}_proxy"
            return name if name in os.environ else name.upper()  # the lower-case name wins
    return "the system proxy settings"


class _Connection(asyncio.Protocol):
    """The asyncio protocol: bytes in → websockets' ClientProtocol → frames to the pump;
    what the protocol wants sent (pongs, close frames) goes out after every receive."""

    def __init__(self, client: KalshiClient, protocol: ClientProtocol) -> None:
        self._client = client
        self._protocol = protocol
        self._clock_ns = client._clock_ns
        self._transport: asyncio.Transport | None = None
        self._response: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pump = FramePump(client, self)
        self._receive = self.pump.receive
        self._close_timer: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._ping_payload: bytes | None = None
        self._pong: asyncio.Future[None] | None = None

    # -- asyncio.Protocol callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        protocol = self._protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        self._send_pending()
        if self._response.done():
            frames = cast("list[Frame]", events)
        else:
            frames = self._receive_response(events)
        receive = self._receive
        clock_ns = self._clock_ns
        for frame in frames:
            opcode = frame.opcode
            # A stamp per frame, not per read: consumers order records of different kinds
            # (files, subjects) by receive_ts_ns, so frames of one read must not share one.
            if (opcode is _TEXT or opcode is _BINARY) and frame.fin:
                receive(bytes(frame.data), clock_ns())  # the hot path: whole messages
            elif opcode is _TEXT or opcode is _BINARY or opcode is _CONT:
                self._receive_fragment(frame, clock_ns())
            elif opcode is Opcode.PONG:
                if self._pong is not None and frame.data == self._ping_payload:
                    self._pong.set_result(None)
                    self._pong = None
            elif opcode is Opcode.CLOSE:
                # Our close frame was sent (now, or before): the handshake is complete.
                self._close_transport()
        if protocol.state is not State.OPEN and protocol.close_expected():
            self._start_close_timer()

    def eof_received(self) -> None:
        self._protocol.receive_eof()
        self._send_pending()  # returns None: the transport closes (no writes after EOF)

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.receive_eof()  # idempotent; the protocol is CLOSED now
        if self._close_timer is not None:
            self._close_timer.cancel()
        self.stop_keepalive()
        if not self._response.done():
            self._response.set_result(None)  # handshake_exc says why
        self.pump.connection_lost()

    # -- the opening handshake --------------------------------------------------------------------

    async def send_request(self, request: Request) -> None:
        """Send the upgrade request; return once the response came (protocol.handshake_exc
        tells whether it failed) or the connection was lost."""
        self._protocol.send_request(request)
        self._send_pending()
        await self._response

    def _receive_response(self, events: list[Event]) -> list[Frame]:
        """The first event is the handshake response; frames may follow in the same read."""
        if not events:
            return []
        if not isinstance(events[0], Response):
            raise AssertionError("the first event of a client connection is its response")
        self._response.set_result(None)
        return cast("list[Frame]", events[1:])

    # -- frames -----------------------------------------------------------------------------------

    def _receive_fragment(self, frame: Frame, receive_ts_ns: int) -> None:
        # The protocol already enforces max_size over a fragmented message (1009); the pump's
        # own limit is for drivers whose library does not.
        if not self.pump.receive_fragment(
            bytes(frame.data), receive_ts_ns, first=frame.opcode is not _CONT, fin=frame.fin
        ):
            self._fail(CloseCode.MESSAGE_TOO_BIG, "message too big")

    # -- FrameLink: what the pump asks of the connection ------------------------------------------

    def pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def send_text(self, data: bytes) -> None:
        protocol = self._protocol
        if protocol.state is State.OPEN:  # closing: the next connection subscribes anew
            protocol.send_text(data)
            self._send_pending()

    def start_close(self, reason: str) -> None:
        protocol = self._protocol
        if protocol.state is State.OPEN:
            protocol.send_close(CloseCode.NORMAL_CLOSURE, reason)
            self._send_pending()
            self._start_close_timer()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- keepalive (§3: the exchange answers pings) -----------------------------------------------

    def start_keepalive(self, interval_s: float | None) -> None:
        if interval_s is not None:
            self._keepalive = asyncio.create_task(self._ping_every(interval_s), name="keepalive")

    def stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    async def _ping_every(self, interval_s: float) -> None:
        """A ping every interval; no pong within the interval → fail 1011, as websockets'."""
        loop = asyncio.get_running_loop()
        while self._protocol.state is State.OPEN:
            await asyncio.sleep(interval_s)
            if self._protocol.state is not State.OPEN:
                return
            self._ping_payload = struct.pack("!I", random.getrandbits(32))
            pong = self._pong = loop.create_future()
            self._protocol.send_ping(self._ping_payload)
            self._send_pending()
            try:
                async with asyncio.timeout(interval_s):
                    await pong
            except TimeoutError:
                self._fail(CloseCode.INTERNAL_ERROR, _KEEPALIVE_REASON)
                return

    def keepalive_timed_out(self) -> bool:
        sent = self._protocol.close_sent
        return (
            sent is not None
            and sent.code == CloseCode.INTERNAL_ERROR
            and (sent.reason == _KEEPALIVE_REASON)
        )

    # -- the end of the connection ----------------------------------------------------------------

    def close_reason(self) -> str:
        protocol = self._protocol
        received: Close | None = protocol.close_rcvd
        if received is not None:
            return f"close code {int(received.code)} {received.reason!r}".strip()
        failure = protocol.parser_exc  # a violation websockets detected (it sent the close)
        if failure is not None and not isinstance(failure, EOFError):
            return f"protocol error: {failure}"
        sent = protocol.close_sent
        if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG:
            return "protocol error: message too big"
        return "connection lost without a close frame"

    def _fail(self, code: CloseCode, reason: str) -> None:
        """Fail the connection (RFC 6455 §7.1.7): our close frame, then wait for the exchange
        to close TCP (reading on, whatever the sink says) or the close timeout."""
        self.pump.resume_for_close()
        if self._protocol.state is State.OPEN:
            self._protocol.fail(code, reason)
            self._send_pending()
            self._start_close_timer()

    def _send_pending(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for data in self._protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():  # the protocol's end of stream: half-close
                transport.write_eof()
            else:
                transport.close()

    def _start_close_timer(self) -> None:
        if self._close_timer is None:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(CLOSE_TIMEOUT_S, self.abort)

    def _close_transport(self) -> None:
        # Both close frames went: the closing handshake is done. RFC 6455 §7.1.1 lets the
        # client close TCP now rather than wait for the server to (websockets waits).
        if self._transport is not None:
            self._transport.close()
