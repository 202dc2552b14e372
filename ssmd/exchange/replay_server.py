"""Exchange-native replay: a Kalshi-compatible WebSocket server (the simulator's signed-upgrade
check, §2) streaming a recording or capture to each subscription from its start, with this
connection's own sids and seqs (§4.1), at max or the recorded pace."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ssmd.auth import WS_PATH
from ssmd.errors import SsmdError
from ssmd.exchange.outbound import BackpressurePolicy, ClientLink, Ledger
from ssmd.exchange.protocol import ErrorCode, ExchangeChannel, ExchangeConnection, Subscription
from ssmd.exchange.server import ExchangeSimulator
from ssmd.fixedpoint import ONE_DOLLAR_E4, format_price, parse_price
from ssmd.recording import MarkKind, RecordedFrame, RecordedMark
from ssmd.replay import read_entries

log = structlog.get_logger("ssmd.exchange.replay")

_OB = ExchangeChannel.ORDERBOOK_DELTA
_LIFECYCLE = ExchangeChannel.MARKET_LIFECYCLE_V2
# §7.0 / §7.5: the frame types each channel carries; `ticker` has no seq (§4.1).
CHANNEL_OF_TYPE: Mapping[str, ExchangeChannel] = {
    "orderbook_snapshot": _OB,
    "orderbook_delta": _OB,
    "ticker": ExchangeChannel.TICKER,
    "trade": ExchangeChannel.TRADE,
    "market_lifecycle_v2": _LIFECYCLE,
    "event_lifecycle": _LIFECYCLE,
    "event_fee_update": _LIFECYCLE,
}
UNSEQUENCED_TYPES = frozenset({"ticker"})
_YIELD_EVERY = 100  # frames streamed between yields to the other connections
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class RecordedData:
    """One recorded data frame: where it is in the recording, when it came, what it is for.
    `yes_price`: the §7.1.4 convention it was recorded with (None when not known)."""

    index: int
    ts_ns: int
    channel: ExchangeChannel
    market: str | None
    type_name: str
    msg: msgspec.Raw  # as recorded, byte for byte
    yes_price: bool | None


class Timeline:
    """Every data frame of some recordings or captures, in order, split by channel. Control
    frames (subscribed, ok, error, unsubscribed) and private channels are left out."""

    def __init__(self, frames: Iterable[RecordedData]) -> None:
        self.by_channel: dict[ExchangeChannel, list[RecordedData]] = {
            c: [] for c in ExchangeChannel
        }
        self.first_ts_ns: int | None = None
        self.markets: dict[str, None] = {}
        for data in frames:
            self.by_channel[data.channel].append(data)
            if self.first_ts_ns is None:
                self.first_ts_ns = data.ts_ns
            if data.market is not None:
                self.markets[data.market] = None

    @classmethod
    def load(cls, paths: Sequence[Path]) -> Timeline:
        """Read the files in order (ssmd.recording.read_entries: recordings and captures)."""
        return cls(_data_frames(paths))

    def __len__(self) -> int:
        return sum(len(frames) for frames in self.by_channel.values())


def _data_frames(paths: Sequence[Path]) -> Iterable[RecordedData]:
    counter = itertools.count()
    yes_price: dict[str, bool] = {}  # by recorded connection, from its setup
    for path in paths:
        for entry in read_entries(path):
            if isinstance(entry, RecordedMark):
                if entry.kind in (MarkKind.CONNECTED, MarkKind.CONTINUED) and entry.setup:
                    yes_price[entry.connection_id] = entry.setup.use_yes_price
                continue
            data = _recorded_data(entry, next(counter), yes_price.get(entry.connection_id))
            if data is not None:
                yield data


class _Envelope(msgspec.Struct):
    type: str
    msg: msgspec.Raw = msgspec.Raw()


class _MsgHead(msgspec.Struct):
    market_ticker: str | None = None


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_decode_head = msgspec.json.Decoder(_MsgHead).decode


def _recorded_data(frame: RecordedFrame, index: int, yes_price: bool | None) -> RecordedData | None:
    """A data frame of a served channel, its `msg` kept as the exact recorded bytes."""
    try:
        envelope = _decode_envelope(frame.data)
        channel = CHANNEL_OF_TYPE.get(envelope.type)
        if channel is None or not envelope.msg:
            return None
        market = None if channel is _LIFECYCLE else _decode_head(envelope.msg).market_ticker
    except msgspec.DecodeError:
        return None
    if channel is not _LIFECYCLE and market is None:
        return None
    return RecordedData(index, frame.ts_ns, channel, market, envelope.type, envelope.msg, yes_price)


class ReplayConnection(ExchangeConnection):
    """One client connection: the simulator's command handling, sids and seqs (§4-§6), with no
    book of its own: subscribing sends no snapshot (the recorded ones come in the stream) and
    get_snapshot is refused (error 13 with the command id: a client resubscribes instead)."""

    def __init__(self, *, clock_ns: Callable[[], int]) -> None:
        super().__init__({}, clock_ns=clock_ns)

    def _initial_frames(
        self, sub: Subscription, markets: Iterable[str], send_initial_snapshot: bool
    ) -> list[bytes]:
        return []

    def _get_snapshot(
        self, cmd_id: int | None, sub: Subscription, params: dict[str, Any]
    ) -> list[bytes]:
        return [self._error(cmd_id, ErrorCode.UNSUPPORTED_ACTION)]

    def data_frame(self, sub: Subscription, data: RecordedData) -> bytes:
        """The recorded frame for `sub`: this sid, its next seq (none for tickers), no `id`,
        NO-side prices in the convention `sub` asked for when the recorded one is known."""
        frame: dict[str, Any] = {"type": data.type_name, "sid": sub.sid}
        if data.type_name not in UNSEQUENCED_TYPES:
            frame["seq"] = self._take_seq(sub)
        msg = data.msg
        recorded_yes_price = data.yes_price
        if data.channel is _OB and recorded_yes_price not in (None, sub.use_yes_price):
            msg = _flip_no_prices(data.type_name, msg)
        frame["msg"] = msg
        return _encode(frame)


def _flip_no_prices(type_name: str, msg: msgspec.Raw) -> msgspec.Raw:
    """§7.1.4: a NO-side level quoted in YES-leg price reads 1 - its NO-leg price, and back.
    A msg that is not the current shape (§7.1.1-§7.1.2) is served as it was recorded."""

    def flip(text: str) -> str:
        return format_price(ONE_DOLLAR_E4 - parse_price(text))

    try:
        fields = _decode(msg)
        if type_name == "orderbook_delta" and fields.get("side") == "no":
            fields["price_dollars"] = flip(fields["price_dollars"])
        elif type_name == "orderbook_snapshot" and "no_dollars_fp" in fields:
            levels = fields["no_dollars_fp"]
            fields["no_dollars_fp"] = [[flip(price), size] for price, size in levels]
        else:
            return msg
    except (msgspec.DecodeError, AttributeError, KeyError, TypeError, ValueError):
        return msg
    return msgspec.Raw(_encode(fields))


class _Stream:
    """Feeds one connection: every subscription's frames from the recording's start, merged in
    recorded order, paced from the connection's first subscribe."""

    def __init__(
        self,
        timeline: Timeline,
        protocol: ReplayConnection,
        link: ClientLink,
        lock: asyncio.Lock,
        speed: float | None,
    ) -> None:
        self._timeline = timeline
        self._protocol = protocol
        self._link = link
        self._lock = lock
        self._speed = speed
        self._cursors: dict[int, int] = {}  # sid → position in its channel's frames
        self.changed = asyncio.Event()  # the subscriptions changed
        self.sent = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        started_s: float | None = None
        first_ts_ns = self._timeline.first_ts_ns or 0
        while True:
            picked = self._next()
            if picked is None:
                self.changed.clear()
                await self.changed.wait()
                continue
            sub, data = picked
            if started_s is None:
                started_s = loop.time()
            if self._speed is not None:
                due_s = started_s + (data.ts_ns - first_ts_ns) / 1e9 / self._speed
                if due_s > loop.time():
                    await asyncio.sleep(due_s - loop.time())
            async with self._lock:  # seqs go out in the order they are taken
                if self._protocol.subscription(sub.sid) is not sub:
                    continue  # unsubscribed meanwhile
                self._cursors[sub.sid] += 1
                await self._link.deliver([self._protocol.data_frame(sub, data)])
            self.sent += 1
            if self.sent % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def _next(self) -> tuple[Subscription, RecordedData] | None:
        """The subscription whose next covered frame comes first in the recording."""
        best: tuple[Subscription, RecordedData] | None = None
        for sub in self._protocol.subscriptions:
            frames = self._timeline.by_channel[sub.channel]
            cursor = self._cursors.setdefault(sub.sid, 0)
            while cursor < len(frames) and not _covers(sub, frames[cursor]):
                cursor += 1
            self._cursors[sub.sid] = cursor
            if cursor < len(frames) and (best is None or frames[cursor].index < best[1].index):
                best = (sub, frames[cursor])
        return best


def _covers(sub: Subscription, data: RecordedData) -> bool:
    return data.market is None or sub.covers(data.market)


class ReplayExchange:
    """The replay server on HOST:PORT (`url`), serving `timeline` to every connection.

    The upgrade is authenticated by ExchangeSimulator's own check (§2: `public_keys`, the
    clock skew), run on an idle simulator; connections get Kalshi's `heartbeat` pings (§3).
    """

    def __init__(
        self,
        timeline: Timeline,
        *,
        public_keys: Mapping[str, RSAPublicKey],
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float | None = None,
        ping_interval_s: float | None = 10.0,
        max_clock_skew_s: float = 30.0,
        clock_ns: Callable[[], int] = time.time_ns,
        outbox_frames: int = 10_000,
    ) -> None:
        self.timeline = timeline
        self._gate = ExchangeSimulator(
            public_keys=public_keys,
            market_count=1,
            max_clock_skew_s=max_clock_skew_s,
            clock_ns=clock_ns,
            keep_sent=False,
        )
        self._host = host
        self._requested_port = port
        self._speed = speed
        self._ping_interval_s = ping_interval_s or None
        self._clock_ns = clock_ns
        self._outbox_frames = outbox_frames
        self._ledger = Ledger(keep=False)
        self._server: Server | None = None
        self._port = 0
        self._next_connection_id = 1
        self.streams: dict[int, _Stream] = {}  # open connections, by connection id

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await serve(
            self._handle,
            self._host,
            self._requested_port,
            process_request=self._gate._process_request,  # §2 auth, the simulator's own
            ping_interval=None,  # ClientLink sends Kalshi's pings (§3)
            close_timeout=2.0,
        )
        self._port = next(iter(self._server.sockets)).getsockname()[1]
        log.info("replay_exchange.listening", url=self.url, frames=len(self.timeline))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close(code=1000, reason="exchange shutting down")
            await self._server.wait_closed()
            self._server = None

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

    async def _handle(self, ws: ServerConnection) -> None:
        connection_id = self._next_connection_id
        self._next_connection_id += 1
        protocol = ReplayConnection(clock_ns=self._clock_ns)
        link = ClientLink(
            connection_id=connection_id,
            ws=ws,
            protocol=protocol,
            ledger=self._ledger,
            outbox_frames=self._outbox_frames,
            policy=BackpressurePolicy.BLOCK,
            overflow_after_s=1.0,
        )
        lock = asyncio.Lock()
        stream = self.streams[connection_id] = _Stream(
            self.timeline, protocol, link, lock, self._speed
        )
        link.start(self._ping_interval_s)
        streamer = asyncio.create_task(stream.run(), name=f"replay-stream-{connection_id}")
        log.info("replay_exchange.connection.opened", connection_id=connection_id)
        try:
            async for message in ws:
                async with lock:
                    await link.deliver(protocol.receive_command(message))
                stream.changed.set()
        except ConnectionClosed:
            pass
        finally:
            streamer.cancel()
            await asyncio.wait([streamer])
            del self.streams[connection_id]
            await link.finish()
            log.info(
                "replay_exchange.connection.closed", connection_id=connection_id, sent=stream.sent
            )


async def serve_recording(
    paths: Sequence[Path],
    *,
    public_keys: Mapping[str, RSAPublicKey],
    stop: asyncio.Event | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    speed: float | None = None,
    ping_interval_s: float | None = 10.0,
    on_listening: Callable[[ReplayExchange], None] | None = None,
) -> None:
    """Serve the recordings or captures `paths` until `stop` is set (None: until SIGINT or
    SIGTERM). `on_listening` is called once the port is open."""
    timeline = await asyncio.to_thread(Timeline.load, paths)
    exchange = ReplayExchange(
        timeline,
        public_keys=public_keys,
        host=host,
        port=port,
        speed=speed,
        ping_interval_s=ping_interval_s,
    )
    signals = (signal.SIGINT, signal.SIGTERM) if stop is None else ()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with exchange:
            if on_listening is not None:
                on_listening(exchange)
            await stop.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """`ssmd exchange --replay FILE [--replay FILE ...] [--replay-speed max|N]`: serve these
    instead of simulated markets (keys, host, port and --ping-interval stay the simulator's)."""
    from ssmd.replay import parse_speed

    group = parser.add_argument_group("replay (serve a recording instead of simulated markets)")
    group.add_argument(
        "--replay",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="a recording (.jsonl.zst) or capture (.jsonl) to serve; repeat for more, in order",
    )
    group.add_argument(
        "--replay-speed",
        type=parse_speed,
        default=None,
        metavar="max|N",
        help="max (default): as fast as the client reads; 1: the recorded pace; N: N times faster",
    )


def replay_exchange_main(args: argparse.Namespace, public_keys: Mapping[str, RSAPublicKey]) -> int:
    """Run `ssmd exchange --replay ...` with the keys exchange_main resolved: serve until a
    signal; exit 0, or 1 when a file cannot be read or the port is taken."""

    def listening(exchange: ReplayExchange) -> None:
        files = ", ".join(str(path) for path in args.replay)
        print(f"Replaying {files} ({len(exchange.timeline)} frames) on {exchange.url}", flush=True)

    try:
        asyncio.run(
            serve_recording(
                args.replay,
                public_keys=public_keys,
                host=args.host,
                port=args.port,
                speed=args.replay_speed,
                ping_interval_s=args.ping_interval,
                on_listening=listening,
            )
        )
    except SsmdError as exc:
        print(f"ssmd exchange: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ssmd exchange: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
