"""The two reference pipelines the bench compares ssmd with, each run as its own process:
the ceiling loop (websockets → one msgspec Decoder of a minimal struct → hand-pipelined
JetStream publish, no normalization) and the naive pipeline (json.loads → pydantic models →
one awaited `js.publish` per record). For comparison only: nothing in ssmd uses them.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import msgspec
import nats
import pydantic
from nats.aio.client import Client
from nats.aio.msg import Msg
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ssmd.auth import Credentials, load_private_key_file

# The header the ceiling loop carries its receive time in (it publishes the raw frame).
HEADER_RECEIVE_TS_NS = "Bench-Receive-Ts-Ns"
DEFAULT_WINDOW = 4096  # = ssmd's transport.max_pending_acks
_CHANNELS = ("orderbook_delta", "ticker", "trade", "market_lifecycle_v2")
_FILE_BUFFER_BYTES = 1 << 20


class Reference(enum.Enum):
    CEILING = "ceiling"
    NAIVE = "naive"


def subscribe_commands(markets: list[str]) -> list[str]:
    """The subscribes ssmd sends (one per channel, PROTOCOL §5.1, §7.0): lifecycle takes no
    market filter; orderbook subscriptions say use_yes_price explicitly (§7.1.4)."""
    commands = []
    for command_id, channel in enumerate(_CHANNELS, start=1):
        params: dict[str, Any] = {"channels": [channel]}
        if channel != "market_lifecycle_v2":
            params["market_tickers"] = markets
        if channel == "orderbook_delta":
            params["use_yes_price"] = True
        commands.append(json.dumps({"id": command_id, "cmd": "subscribe", "params": params}))
    return commands


async def open_exchange(url: str, credentials: Credentials, markets: list[str]) -> ClientConnection:
    """A signed connect (§2.3), the subscribes sent, no compression (as ssmd)."""
    headers = credentials.headers(time.time_ns() // 1_000_000)
    ws = await connect(url, additional_headers=headers, compression=None, max_size=1 << 24)
    for command in subscribe_commands(markets):
        await ws.send(command)
    return ws


# -- the ceiling loop -------------------------------------------------------------------------


class MinimalFrame(msgspec.Struct, gc=False):
    """Just enough of a frame to route it: the rest stays raw bytes."""

    type: str
    sid: int | None = None
    seq: int | None = None


class PipelinedPublisher:
    """JetStream publish with one reply inbox and at most `window` acks outstanding; acks for
    one stream from one connection come back in order, so counting them is enough."""

    def __init__(self, nc: Client, window: int) -> None:
        self._nc = nc
        self._window = window
        self._in_flight = 0
        self._room = asyncio.Event()
        self.errors = 0
        self._inbox = nc.new_inbox()

    async def start(self) -> None:
        await self._nc.subscribe(self._inbox, cb=self._receive_ack)

    async def _receive_ack(self, msg: Msg) -> None:
        if b'"error"' in msg.data:
            self.errors += 1
        self._in_flight -= 1
        self._room.set()

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        while self._in_flight >= self._window:
            self._room.clear()
            await self._room.wait()
        self._in_flight += 1
        await self._nc.publish(subject, payload, reply=self._inbox, headers=headers)


async def run_ceiling(
    ws: ClientConnection, prefix: str, emit: Callable[[str, bytes, int], Awaitable[None]]
) -> None:
    decode = msgspec.json.Decoder(MinimalFrame).decode
    subjects: dict[str, str] = {}
    while True:
        raw = await ws.recv(decode=False)
        receive_ts_ns = time.time_ns()
        frame = decode(raw)
        subject = subjects.get(frame.type)
        if subject is None:
            subject = subjects[frame.type] = f"{prefix}.{frame.type}"
        await emit(subject, raw, receive_ts_ns)


# -- the naive pipeline -------------------------------------------------------------------------


class NaiveRecord(pydantic.BaseModel):
    """A normalized record of the kind the seed plans sketch: Decimal prices, dict payloads."""

    kind: str
    market: str
    receive_ts_ns: int
    sid: int | None = None
    seq: int | None = None
    price: Decimal | None = None
    size: Decimal | None = None
    side: str | None = None
    data: dict[str, Any] = {}


class NaiveDelta(pydantic.BaseModel):
    market_ticker: str
    price_dollars: Decimal
    delta_fp: Decimal
    side: str


class NaiveTrade(pydantic.BaseModel):
    market_ticker: str
    trade_id: str
    yes_price_dollars: Decimal
    count_fp: Decimal
    taker_side: str


def naive_record(frame: dict[str, Any], receive_ts_ns: int) -> NaiveRecord | None:
    """One frame (a dict from json.loads) to a pydantic record; control frames give None."""
    kind = frame.get("type")
    msg = frame.get("msg") or {}
    common = {"receive_ts_ns": receive_ts_ns, "sid": frame.get("sid"), "seq": frame.get("seq")}
    if kind == "orderbook_delta":
        delta = NaiveDelta(**msg)
        return NaiveRecord(
            kind="book_delta",
            market=delta.market_ticker,
            price=delta.price_dollars,
            size=delta.delta_fp,
            side=delta.side,
            **common,
        )
    if kind == "trade":
        trade = NaiveTrade(**msg)
        return NaiveRecord(
            kind="trade",
            market=trade.market_ticker,
            price=trade.yes_price_dollars,
            size=trade.count_fp,
            side=trade.taker_side,
            data={"trade_id": trade.trade_id},
            **common,
        )
    if kind in {"ticker", "orderbook_snapshot", "market_lifecycle_v2", "event_lifecycle"}:
        market = msg.get("market_ticker") or msg.get("event_ticker") or ""
        return NaiveRecord(kind=str(kind), market=market, data=msg, **common)
    return None


async def run_naive(
    ws: ClientConnection, prefix: str, emit: Callable[[str, bytes, int], Awaitable[None]]
) -> None:
    while True:
        text = await ws.recv()
        receive_ts_ns = time.time_ns()
        record = naive_record(json.loads(text), receive_ts_ns)
        if record is None:
            continue
        subject = f"{prefix}.{record.kind}.{record.market.replace('.', '_') or 'none'}"
        await emit(subject, record.model_dump_json().encode(), receive_ts_ns)


# -- the process ------------------------------------------------------------------------------


async def run_reference(
    args: argparse.Namespace, credentials: Credentials, markets: list[str], out: IO[bytes] | None
) -> None:
    """Connect, subscribe, and move frames to the sink until killed or the exchange closes;
    `out` is the open file for the file sink (None: JetStream)."""
    reference = Reference(args.reference)
    nc: Client | None = None
    if out is not None:
        file_out = out

        async def emit(subject: str, payload: bytes, receive_ts_ns: int) -> None:
            file_out.write(payload)
            file_out.write(b"\n")
    else:
        nc = await nats.connect(args.nats, name=f"bench-{reference.value}")
        if reference is Reference.CEILING:
            publisher = PipelinedPublisher(nc, args.window)
            await publisher.start()

            async def emit(subject: str, payload: bytes, receive_ts_ns: int) -> None:
                headers = {HEADER_RECEIVE_TS_NS: str(receive_ts_ns)}
                await publisher.publish(subject, payload, headers)
        else:
            js = nc.jetstream()

            async def emit(subject: str, payload: bytes, receive_ts_ns: int) -> None:
                await js.publish(subject, payload)

    # No graceful stop: the bench measures while this runs and then SIGTERMs it (the default
    # action, exit at once); a drain here would only make every run longer.
    ws = await open_exchange(args.url, credentials, markets)
    runner = run_ceiling if reference is Reference.CEILING else run_naive
    try:
        await runner(ws, args.prefix, emit)
    except ConnectionClosed:
        pass  # the exchange went away: the run is over
    finally:
        if nc is not None:
            await nc.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ssmd.bench.references")
    parser.add_argument("reference", choices=[r.value for r in Reference])
    parser.add_argument("--url", required=True, help="the exchange WebSocket URL")
    parser.add_argument("--key-id", required=True)
    parser.add_argument("--key-file", type=Path, required=True, help="RSA private key PEM")
    parser.add_argument("--markets-file", type=Path, required=True, help="one ticker a line")
    parser.add_argument("--sink", choices=["jetstream", "file"], default="jetstream")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--prefix", default="bench", help="subject prefix")
    parser.add_argument("--dir", type=Path, default=Path("var/bench/records"))
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="acks in flight")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    credentials = Credentials(args.key_id, load_private_key_file(args.key_file))
    markets = [line for line in args.markets_file.read_text().splitlines() if line]
    out: IO[bytes] | None = None
    if args.sink == "file":
        args.dir.mkdir(parents=True, exist_ok=True)
        path = args.dir / f"{args.reference}.part"
        out = open(path, "ab", buffering=_FILE_BUFFER_BYTES)  # noqa: SIM115 (closed below)
    try:
        try:
            import uvloop  # the same loop ssmd runs on (ssmd.cli)
        except ImportError:
            asyncio.run(run_reference(args, credentials, markets, out))
        else:
            uvloop.run(run_reference(args, credentials, markets, out))
    finally:
        if out is not None:
            out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
