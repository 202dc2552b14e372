"""The NATS JetStream transport: records published with Msg-Id dedupe, pipelined acks, its own
reconnection that re-sends every unacked record in order, and a bounded in-flight window.
With nats_client.py, the only place nats-py is used for publishing (`ssmd tail` reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence

import msgspec
from nats.aio.msg import Msg

from ssmd.config import NatsPayload, NatsTransportSettings, Overflow
from ssmd.errors import TransportError
from ssmd.logs import get_logger
from ssmd.records import Record
from ssmd.retry import RetryPolicy
from ssmd.subjects import SubjectMapper, msg_id_for
from ssmd.transport.base import TransportStats
from ssmd.transport.nats_client import NATS_ERRORS, AckClient, connect_nats, ensure_stream
from ssmd.transport.nats_core import (
    CONTENT_TYPES,
    HEADER_HEAD_LEN,
    HPUB_FORMAT,
    AckLatency,
    AckWatch,
    AckWindow,
    Entry,
    KindParts,
    LinkState,
    MarketParts,
    NatsConnectError,
    NatsTransportError,
    NoJetStream,
    PubAck,
    PubAcks,
    StreamMismatch,
    StreamMissing,
    drop_status,
    header_value,
    hpub_subject,
    kind_parts,
    market_parts,
    parse_pub_ack,
    stored_ack_head,
)

_CLOSE_TIMEOUT_S = 5.0
_CONNECTED = (LinkState.UP, LinkState.RESENDING)

log = get_logger("ssmd.transport.nats")


class NatsTransport:
    """Publishes records to a JetStream stream (implements ssmd.transport.base.Transport).

    A record is done when JetStream acked it (stored or duplicate). publish() sends at once
    with a reply subject `{inbox}.{n}` and does not wait for the ack; at most max_pending_acks
    records are in flight, then publish() waits (overflow: block) or drops (overflow: drop).
    On a disconnect, an ack timeout or an error ack, sending stops; the link task reconnects
    (capped exponential backoff, full jitter) and re-sends every unacked record from the
    oldest with its Msg-Id, so the stream holds each record once and in publish order.
    nats-py's own reconnect is off: it would replay its buffer ahead of lost in-flight records.
    `clock_ns` (the clock of record.receive_ts_ns) times each ack for latency().
    """

    def __init__(
        self,
        settings: NatsTransportSettings,
        *,
        servers: Sequence[str] | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
    ) -> None:
        if not (settings.subject_prefix and settings.stream.name and settings.connection_name):
            settings = settings.resolved("")  # built in code, not loaded: the "default" names
        self.settings = settings
        self.servers = list(servers or settings.servers)
        self.stream_name = settings.stream.name
        self.mapper = SubjectMapper(settings.subject_prefix)
        self._clock_ns = clock_ns
        rng = rng or random.Random()
        self._retry = RetryPolicy(settings.reconnect_min_s, settings.reconnect_max_s, rng=rng)
        msgpack = settings.payload is NatsPayload.MSGPACK
        self._encode_into = (msgspec.msgpack if msgpack else msgspec.json).Encoder().encode_into
        self._payload = bytearray()  # each record is encoded into it, then copied out
        self._content_type = CONTENT_TYPES[settings.payload]
        self._window = AckWindow(settings.max_pending_acks)
        self._stored_ack_head = stored_ack_head(self.stream_name)
        self._watch = AckWatch(settings.ack_timeout_s)
        self._drop = settings.overflow is Overflow.DROP
        self._state = LinkState.DOWN
        self._nc: AckClient | None = None
        self._server = ""
        self._generation = 0  # one per connection; callbacks of older ones are ignored
        self._inbox = ""
        self._inbox_len = 0
        self._reply_prefix = b""
        self._max_payload = 1 << 20  # the server's, once connected
        self._kind_parts: dict[type, KindParts] = {}
        self._market_parts: dict[str, MarketParts] = {}
        self._room = asyncio.Event()  # set when the window has room again
        self._idle = asyncio.Event()  # set when nothing is pending
        self._idle.set()
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._reconnects = 0
        self._accepting = False
        self._closed = False

    @property
    def server(self) -> str:
        """The URL of the server of the current (or last) connection."""
        return self._server

    @property
    def state(self) -> LinkState:
        return self._state

    # -- the Transport protocol ------------------------------------------------------------

    async def start(self) -> None:
        """Connect, create or validate the stream, subscribe to the ack inbox."""
        if self._accepting or self._closed:
            return
        await self._open()
        self._state = LinkState.UP
        self._accepting = True
        subjects = self.mapper.all_subjects
        log.info("nats.connected", server=self._server, stream=self.stream_name, subjects=subjects)
        self._tasks = [
            asyncio.create_task(self._maintain_link(), name="nats-link"),
            asyncio.create_task(self._watch_acks(), name="nats-ack-watchdog"),
        ]

    async def publish(self, record: Record) -> None:
        self._check_accepting()
        await self._publish_one(record, self._clock_ns())

    async def _publish_one(self, record: Record, published_ns: int) -> None:
        """publish() for a record handed over at `published_ns` (its ack-latency start)."""
        window = self._window
        if len(window.pending) >= window.capacity:
            if self._drop:
                if window.count_drop(record.market):
                    log.warning("nats.dropped", stream=self.stream_name, state=self._state.value)
                return
            await self._wait_for_room()
        elif window.unreported_drops and self._state is LinkState.UP:
            await self._publish_drop_status()
        await self._enqueue(record, published_ns)

    async def publish_many(self, records: Sequence[Record]) -> None:
        """publish() each record, in order, with one write (and one flusher wake-up) for the
        records that fit in the window; a full window or drops to report take publish()."""
        self._check_accepting()
        published_ns = self._clock_ns()  # one clock read per batch: the start of its latency
        window = self._window
        pending, capacity = window.pending, window.capacity
        commands: list[bytes] = []
        try:
            for record in records:
                if len(pending) >= capacity or window.unreported_drops:
                    if commands:
                        await self._send_commands(commands, window.next_n - 1)
                        commands = []
                    await self._publish_one(record, published_ns)
                    continue
                if not pending:
                    self._idle.clear()
                entry = self._entry(record, window.next_n, published_ns)
                window.add(entry)
                commands.append(entry[1])
        finally:  # also when a record is refused: the ones before it are in the window
            if commands:
                await self._send_commands(commands, window.next_n - 1)

    def _check_accepting(self) -> None:
        if not self._accepting:
            state = "closed" if self._closed else "not started"
            raise NatsTransportError(f"transport is {state}", stream=self.stream_name)

    async def flush(self) -> None:
        """Return once every record handed to publish() so far is acked (waits out outages)."""
        if self._window.unreported_drops:
            await self._publish_drop_status()
        while self._window.pending:
            await self._wait_or_fail(self._idle)

    async def close(self) -> None:
        """Flush (everything acked, in order), then close the connection. Idempotent."""
        if self._closed:
            return
        self._accepting = False
        try:
            if self._tasks:
                await self.flush()
        finally:
            self._closed = True
            self._state = LinkState.CLOSED
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._room.set()  # wake a publisher still waiting for room
            await self._close_connection()
            stats = self.stats()
            counts = {k: v for k, v in vars(stats).items() if k not in ("records_by_kind",)}
            log.info("nats.closed", stream=self.stream_name, **counts)

    def stats(self) -> TransportStats:
        return self._window.stats(reconnects=self._reconnects)

    def latency(self) -> AckLatency:
        """Ack-latency histograms (frame received -> ack, publish call -> ack), for /metrics."""
        return self._window.latency()

    # -- sending and acks --------------------------------------------------------------------

    def _entry(self, record: Record, n: int, published_ns: int) -> Entry:
        """Record `n` as a ready HPUB command (the per-record hot path), from the parts of its
        type and of its market (nats_core.KindParts, MarketParts): only the Msg-Id, the reply
        number and the sizes are rendered per record; the entry keeps receive_ts_ns and
        published_ns for the ack-latency histograms."""
        record_type = type(record)
        kind_parts_ = self._kind_parts.get(record_type)
        if kind_parts_ is None:
            subject = self.mapper.subject_for(record)
            kind_parts_ = kind_parts(record, subject, self.mapper.prefix)
            self._kind_parts[record_type] = kind_parts_
        kind, subject_head, with_token, middle, seq_id_head = kind_parts_
        market = record.market
        market_parts_ = self._market_parts.get(market)
        if market_parts_ is None:
            market_parts_ = self._market_parts[market] = market_parts(market, self._content_type)
        token, market_tail, id_market = market_parts_
        payload = self._payload
        self._encode_into(record, payload)  # no new bytes: the command is the only copy
        payload_len = len(payload)
        if payload_len > self._max_payload:  # can never succeed: fail loudly instead
            message = f"record refused by the client: MaxPayloadError, {payload_len} bytes"
            raise NatsTransportError(
                message,
                server=self._server,
                stream=self.stream_name,
                subject=self.mapper.subject_for(record),
            )
        sid, seq = record.sid, record.seq
        if (
            seq_id_head is not None
            and id_market is not None
            and sid is not None
            and seq is not None
        ):
            msg_id = b"%s%s:%d:%d:%d" % (seq_id_head, id_market, sid, seq, record.receive_ts_ns)
        else:
            msg_id = header_value(msg_id_for(record))
        header_len = HEADER_HEAD_LEN + len(msg_id) + len(middle) + len(market_tail)
        command = HPUB_FORMAT % (
            subject_head,
            token if with_token else b"",
            self._reply_prefix,
            n,
            header_len,
            header_len + payload_len,
            msg_id,
            middle,
            market_tail,
            payload,
        )
        return payload_len, command, kind, record.receive_ts_ns, published_ns

    async def _enqueue(self, record: Record, published_ns: int) -> None:
        """Add to the window; send now when the link is up (else the re-send will)."""
        window = self._window
        if not window.pending:
            self._idle.clear()
        n = window.next_n
        entry = self._entry(record, n, published_ns)
        window.add(entry)
        await self._send_commands([entry[1]], n)

    async def _send_commands(self, commands: list[bytes], last_n: int) -> bool:
        """Send the commands of pending records up to `last_n` (the newest) when the link is
        up; False when it is not (the link task re-sends them after reconnecting)."""
        if self._state is not LinkState.UP:
            return False
        return await self._write(b"".join(commands) if len(commands) > 1 else commands[0], last_n)

    async def _write(self, data: bytes, last_n: int) -> bool:
        """Write HPUB commands on the current connection; False when the link broke.

        The bytes go to the socket now, then drain() applies the transport's flow control, as
        nats-py's flusher task does with its pending buffer (nats/aio/client.py, _flusher). Going
        through that buffer and task instead (what nats-py's publish() does) delays the write to
        the flusher's turn, after the reads of the next loop iteration have been handled: at 20k
        frames/s that was p99 1.1-1.4 ms (p99.9 ~4 ms) between publish and socket, now ~3 µs,
        and frame -> JetStream p50 went from ~2.2 to ~1.2 ms (measured); no flusher wake-up.
        While nats-py has commands of its own pending (PONG, SUB), ours queue behind them in its
        buffer, so the connection's command order is kept.
        """
        nc = self._nc
        if nc is None:
            return False
        if not nc.is_connected:  # closed under us (we do not let nats-py reconnect)
            self._connection_lost(self._generation, "publish failed: connection closed")
            return False
        try:
            transport = nc._transport
            if nc._pending_data_size or transport is None:
                await nc._send_command(data)
                if nc._flush_queue is not None and nc._flush_queue.empty():
                    await nc._flush_pending()
            else:
                transport.write(data)
                await transport.drain()  # type: ignore[no-untyped-call]  # nats-py: untyped
        except NATS_ERRORS as exc:
            self._connection_lost(self._generation, f"publish failed: {exc or type(exc).__name__}")
            return False
        window = self._window
        if last_n >= window.sent_upto:
            window.sent_upto = last_n + 1
        return True

    async def _receive_ack(self, msg: Msg, generation: int) -> None:
        """An ack that came the usual nats-py way (a status reply: it has headers)."""
        n_text = msg.subject[self._inbox_len :].encode()
        self._apply_ack(n_text, parse_pub_ack(msg.data, msg.headers), generation)

    def _apply_acks(self, stored: list[int], others: PubAcks, generation: int) -> None:
        """The acks of one read (AckParser): the usual ones settled together (settle_stored,
        one clock read), any other through parse_pub_ack."""
        window = self._window
        settled = window.settle_stored(stored, self._clock_ns()) if stored else 0
        for n_text, data in others:
            self._apply_ack(n_text, parse_pub_ack(data, None), generation)
        if settled:
            if not window.pending:
                self._idle.set()
            if len(window.pending) < window.capacity:
                self._room.set()

    def _apply_ack(self, n_text: bytes, ack: PubAck | str, generation: int) -> None:
        """Settle (or, for a refusal, declare the link lost) record number `n_text`."""
        try:
            n = int(n_text)
        except ValueError:
            return
        window = self._window
        if isinstance(ack, str):
            if n in window.pending and self._connection_lost(generation, f"rejected: {ack}"):
                subject_text = hpub_subject(window.pending[n][1])
                log.warning("nats.publish.rejected", reason=ack, subject=subject_text)
            return
        if window.settle(n, duplicate=ack.duplicate, now_ns=self._clock_ns()):
            if not window.pending:
                self._idle.set()
            if len(window.pending) < window.capacity:
                self._room.set()

    async def _wait_for_room(self) -> None:
        while self._window.full and not self._closed:
            self._room.clear()
            await self._wait_or_fail(self._room)
        if self._closed:
            raise NatsTransportError("closed while publish() waited", stream=self.stream_name)

    async def _wait_or_fail(self, event: asyncio.Event) -> None:
        """Wait for `event`, raising instead if the link task died (a bug or a config error)."""
        self._raise_if_link_failed()
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait([waiter, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        self._raise_if_link_failed()

    def _raise_if_link_failed(self) -> None:
        for task in self._tasks:
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                message = f"the connection task failed: {error}"
                raise NatsTransportError(message, stream=self.stream_name) from error

    async def _publish_drop_status(self) -> None:
        """Enqueue (and send when up) the `dropped` status record for the drops so far."""
        count, markets = self._window.take_drops()
        window_size = self._window.capacity
        now_ns = self._clock_ns()
        status = drop_status(count, markets, window=window_size, receive_ts_ns=now_ns)
        log.warning("nats.dropped.reported", count=count, markets=len(markets))
        await self._enqueue(status, now_ns)

    # -- connection management ---------------------------------------------------------------

    def _connection_lost(self, generation: int, reason: str) -> bool:
        """Stop sending; the link task reconnects and re-sends. False when the link was down
        already or `generation` is an old connection's."""
        if generation != self._generation or self._state not in _CONNECTED:
            return False
        self._state = LinkState.DOWN
        self._lost_reason = reason
        self._lost.set()
        return True

    async def _open(self) -> None:
        """Connect to the first server that answers, check the stream, subscribe the inbox."""
        self._generation += 1
        generation = self._generation
        nc = await self._connect_any(generation)
        try:
            await ensure_stream(
                nc, self.settings, self.stream_name, self.mapper.all_subjects, self._server
            )
            # One inbox for the transport's life: a pending record's command, reply subject
            # included, is re-sent as it is on the next connection.
            inbox = self._inbox or nc.new_inbox()

            async def receive_ack(msg: Msg) -> None:
                await self._receive_ack(msg, generation)

            def receive_pub_acks(stored: list[int], others: PubAcks) -> None:
                self._apply_acks(stored, others, generation)

            subscription = await nc.subscribe(f"{inbox}.*", cb=receive_ack)
            nc.route_acks(inbox, subscription._id, self._stored_ack_head, receive_pub_acks)
        except BaseException:
            with contextlib.suppress(*NATS_ERRORS):
                await nc.close()
            raise
        self._nc, self._inbox, self._inbox_len = nc, inbox, len(inbox) + 1
        self._reply_prefix = f"{inbox}.".encode()  # once: one inbox
        self._max_payload = nc.max_payload

    async def _connect_any(self, generation: int) -> AckClient:
        async def on_error(exc: Exception) -> None:
            log.debug("nats.error", error=str(exc) or type(exc).__name__, server=self._server)

        async def on_disconnected() -> None:
            self._connection_lost(generation, "disconnected")

        last: NatsConnectError | None = None
        # Start at another server each time so one dead node does not always go first.
        offset = generation % len(self.servers) if self.servers else 0
        for url in self.servers[offset:] + self.servers[:offset]:
            try:
                nc = AckClient()
                await connect_nats(
                    self.settings,
                    servers=[url],
                    client=nc,
                    # We reconnect ourselves (class docstring). nats-py still retries a first
                    # connect internally: max_reconnect_attempts=1 is two quick tries per URL.
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0,
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                )
            except NatsConnectError as exc:
                last = exc
                continue
            self._server = url
            return nc
        message, fix = (last.message, last.fix) if last else ("no server URL", "set servers")
        raise NatsConnectError(message, server=", ".join(self.servers), fix=fix)

    async def _close_connection(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(*NATS_ERRORS):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):  # a half-open socket: do not hang
                    await nc.close()

    async def _maintain_link(self) -> None:
        """Runs while started: on each loss, reconnect with backoff and re-send the window."""
        while True:
            await self._lost.wait()
            self._lost.clear()
            pending = len(self._window.pending)
            reason = self._lost_reason
            log.warning("nats.disconnected", server=self._server, reason=reason, pending=pending)
            await self._close_connection()
            self._retry.attempt = 0
            while not await self._reconnect():
                pass

    async def _reconnect(self) -> bool:
        """One attempt after the backoff delay; True once connected (the re-send has run)."""
        delay_s = self._retry.backoff_s()
        self._retry.attempt += 1
        await asyncio.sleep(delay_s)
        try:
            await self._open()
        except TransportError as exc:  # a ConfigError (a secret file vanished) ends the task
            log.warning("nats.reconnect_failed", error=str(exc), attempt=self._retry.attempt)
            return False
        self._reconnects += 1
        log.info("nats.reconnected", server=self._server, pending=len(self._window.pending))
        await self._resend()
        return True

    async def _resend(self) -> None:
        """Re-send the whole window oldest first; then new records flow again (state UP)."""
        self._state = LinkState.RESENDING
        self._watch.reset()
        window, generation = self._window, self._generation
        boundary, cursor, resent = window.sent_upto, 0, 0
        while batch := window.unacked_from(cursor):  # records published meanwhile come last
            for n in batch:
                entry = window.pending.get(n)
                if entry is None:
                    continue
                if not await self._write(entry[1], n) or generation != self._generation:
                    return  # lost again: _lost is set, the link loop goes round once more
                resent += n < boundary
            cursor = batch[-1] + 1
        self._state = LinkState.UP
        window.resent += resent
        log.info("nats.resend", resent=resent, server=self._server)
        if window.unreported_drops:
            await self._publish_drop_status()
        self._room.set()

    async def _watch_acks(self) -> None:
        """Declare the link lost when the oldest pending record waited ack_timeout_s."""
        loop = asyncio.get_running_loop()
        timeout_s = self.settings.ack_timeout_s
        while True:
            await asyncio.sleep(timeout_s / 4)
            if self._state not in _CONNECTED:  # a stuck re-send counts too
                self._watch.reset()
            elif self._watch.overdue(self._window, loop.time()):
                self._connection_lost(self._generation, f"no ack within {timeout_s} s")


__all__ = ["LinkState", "NatsConnectError", "NatsTransport", "NatsTransportError"]
__all__ += ["NoJetStream", "StreamMismatch", "StreamMissing", "connect_nats"]
