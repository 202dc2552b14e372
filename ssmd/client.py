"""Asyncio driver for one Kalshi WebSocket connection: signed connect, frames into the session.

All protocol decisions live in ssmd.session; this module only moves bytes, stamps receive
times, applies backpressure through a bounded queue and logs session events.
"""

from __future__ import annotations

import asyncio
from functools import partial

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ssmd.client_events import (
    MAX_FRAME_BYTES,
    TICK_S,
    ClientBase,
    report_connection_end,
)
from ssmd.errors import ExchangeUnavailable, HandshakeRejected
from ssmd.records import StatusEvent


class KalshiClient(ClientBase):
    """Runs one connection until `stop` is set (clean close) or the exchange goes away.

    Records go to `sink`; a full sink blocks reading, which pushes back on the exchange
    through TCP rather than dropping anything.
    """

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe and pump frames. Returns after a requested stop; raises otherwise."""
        ws = await self._connect()
        async with ws:
            self.connected.set()
            connected = self.session.status_record(StatusEvent.CONNECTED, self._clock_ns())
            await self._emit_marked(connected)
            self._log.info("client.connected")
            for command in self.session.commands_to_send():
                await ws.send(command, text=True)
            closer = asyncio.create_task(self._close_on(stop, ws), name="client-closer")
            ticker = asyncio.create_task(self._tick(ws), name="client-ticker")
            try:
                await self._pump(ws)
            finally:
                closer.cancel()
                ticker.cancel()
        reason = self._events.reconnect_reason or _close_reason(ws)
        await report_connection_end(
            session=self.session,
            log=self._log,
            emit=self._emit_marked,
            now_ns=self._clock_ns,
            url=self.url,
            stopped=stop.is_set(),
            reason=reason,
            keepalive_timed_out=_keepalive_timed_out(ws),
            ping_interval_s=self._ping_interval_s,
        )

    async def _connect(self) -> ClientConnection:
        # §2.3: sign fresh for every connect; the timestamp is inside the signature.
        headers = self._credentials.headers(self._clock_ns() // 1_000_000)
        try:
            return await connect(
                self.url,
                additional_headers=headers,
                # permessage-deflate triples receive cost; market data is not worth it here.
                compression=None,
                open_timeout=self._open_timeout_s,
                ping_interval=self._ping_interval_s,
                ping_timeout=self._ping_interval_s,
                max_size=MAX_FRAME_BYTES,
                close_timeout=10,
            )
        except InvalidStatus as exc:
            body = exc.response.body.decode("utf-8", "replace")[:200] if exc.response.body else ""
            raise HandshakeRejected(exc.response.status_code, self.url, body) from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise ExchangeUnavailable(self.url, f"cannot connect: {exc}") from exc

    async def _close_on(self, stop: asyncio.Event, ws: ClientConnection) -> None:
        await stop.wait()
        self._log.info("client.closing")
        # Our close frame goes out; frames the exchange sent before its own close frame are
        # still delivered to _pump, so nothing already sent to us is lost.
        await ws.close()

    async def _tick(self, ws: ClientConnection) -> None:
        """Give the session the time when no frame does (repair deadlines, §4.3)."""
        while True:
            await asyncio.sleep(TICK_S)
            self._poll()
            await self._after_frame(ws)
            if self._events.reconnect_reason is not None:
                await ws.close(code=1000, reason="resync")
                return

    async def _after_frame(self, ws: ClientConnection) -> None:
        """Handle what the session produced (ClientBase._drain_session)."""
        await self._drain_session(partial(ws.send, text=True))

    async def _pump(self, ws: ClientConnection) -> None:
        session = self.session
        sink = self._sink
        clock_ns = self._clock_ns
        recorder = self.recorder
        connection_id = session.connection_id
        while True:
            try:
                data = await ws.recv(decode=False)
            except ConnectionClosed:
                return
            receive_ts_ns = clock_ns()
            if recorder is not None:
                recorder.write_frame(connection_id, data, receive_ts_ns)
            record = session.receive_frame(data, receive_ts_ns)
            if record is not None:
                try:
                    sink.put_nowait(record)  # no await per record while the queue has room
                except asyncio.QueueFull:
                    await sink.put(record)
            if session.has_events or session.has_commands:
                await self._after_frame(ws)
            if self._events.reconnect_reason is not None:
                await ws.close(code=1000, reason="resync")
                return


def _keepalive_timed_out(ws: ClientConnection) -> bool:
    """websockets fails the connection with 1011 "keepalive ping timeout" when a pong is late."""
    sent = ws.protocol.close_sent
    return sent is not None and sent.code == 1011 and "keepalive" in sent.reason


def _close_reason(ws: ClientConnection) -> str:
    if ws.close_code is None:
        return "connection lost without a close frame"
    return f"close code {ws.close_code} {ws.close_reason!r}".strip()
