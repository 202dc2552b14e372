"""`ssmd replay`: recordings and captures back through decode → normalize → publish, one
KalshiSession per recorded connection with the live client's event handling and the recorded
receive times: the live run's records, so JetStream dedupes a second replay (Msg-Id)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import msgspec
import structlog
import zstandard

from ssmd.assembly import start_managed_nats
from ssmd.client_events import SessionEventHandler
from ssmd.config import (
    ExchangeSettings,
    FileTransportSettings,
    ManagedNatsServerSettings,
    NatsTransportSettings,
    Settings,
    TransportSettings,
    load_environment,
)
from ssmd.config.top import TopSettings
from ssmd.errors import ConfigError, SsmdError
from ssmd.messages import Channel
from ssmd.natsserver import NatsServer
from ssmd.recording import (
    COMPLETE_SUFFIX,
    PARTIAL_SUFFIX,
    Entry,
    Line,
    MarkKind,
    RecordedFrame,
    RecordedMark,
    RecordingError,
    SessionSetup,
)
from ssmd.records import Record, StatusEvent, record_kind
from ssmd.session import KalshiSession
from ssmd.session_events import RecentIds, TradesMissing
from ssmd.transport import build_transport
from ssmd.transport.base import Transport

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
PUBLISH_BATCH_MAX = 512  # records per publish_many(), as the connector's publisher
# A connection met without a `connected` mark (a capture, a file cut from a longer recording
# without its `continued` mark): every channel, no market filter, default prices (§7.1.4).
DEFAULT_SETUP = SessionSetup(channels=tuple(Channel), markets=(), use_yes_price=False)
READ_BYTES = 1024 * 1024  # compressed bytes read at a time
# Capture files (frames without receive times) get these, one per line, from the epoch:
# deterministic, so replaying a capture twice gives the same records (and Msg-Ids).
CAPTURE_STEP_NS = 1_000_000
CAPTURE_CONNECTION_PREFIX = "capture:"

log = structlog.get_logger("ssmd.replay")


# -- reading recordings and captures ---------------------------------------------------------------

_LINE_DECODER = msgspec.json.Decoder(Line)
_ANY_DECODER = msgspec.json.Decoder()


def is_recording_path(path: Path) -> bool:
    return path.name.endswith((COMPLETE_SUFFIX, PARTIAL_SUFFIX))


def read_entries(path: Path) -> Iterator[Entry]:
    """The entries of one file, in order: a recording (`.jsonl.zst`, or `.jsonl.zst.partial`
    left by a crash: read up to its last whole line) or a plain JSON-lines file, which is
    either an uncompressed recording or a capture of bare frames (one per line, like
    /work/shared/kalshi/captures). A capture's frames get deterministic receive times,
    CAPTURE_STEP_NS apart from the epoch, on one connection `capture:<file name>`."""
    partial = path.name.endswith(PARTIAL_SUFFIX)
    try:
        handle: BinaryIO = path.open("rb")
    except OSError as exc:
        raise RecordingError(exc.strerror or str(exc), path=path, operation="open") from exc
    with handle:
        lines: Iterator[bytes] = handle
        if is_recording_path(path):
            lines = _split_lines(_decompressed(handle))
        yield from _entries(path, lines, partial=partial)


def _decompressed(handle: BinaryIO) -> Iterator[bytes]:
    """The decompressed bytes of every zstd frame in `handle`, as far as they go (a
    `.partial` file ends without its frame's end)."""
    context = zstandard.ZstdDecompressor()
    decompressor = context.decompressobj()
    while chunk := handle.read(READ_BYTES):
        while chunk:
            data = decompressor.decompress(chunk)
            if data:
                yield data
            chunk = b""
            if decompressor.eof:  # another frame may follow (files concatenated)
                chunk = decompressor.unused_data
                decompressor = context.decompressobj()


def _split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Lines with their newline; a last line without one is yielded as it is."""
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest


def _entries(path: Path, lines: Iterator[bytes], *, partial: bool) -> Iterator[Entry]:
    capture: bool | None = None
    capture_id = f"{CAPTURE_CONNECTION_PREFIX}{path.name}"
    frames = 0
    try:
        for number, raw_line in enumerate(lines, start=1):
            line = raw_line.rstrip(b"\r\n")
            if not line.strip():
                continue
            if capture is None:
                capture = not _looks_recorded(line)
            if capture:
                frames += 1
                yield RecordedFrame(frames * CAPTURE_STEP_NS, capture_id, _text(line))
                continue
            try:
                decoded = _LINE_DECODER.decode(line)
            except msgspec.DecodeError as exc:
                if partial and not raw_line.endswith(b"\n"):
                    return  # the crash cut the last line short
                raise RecordingError(
                    str(exc), path=path, operation=f"decode line {number}"
                ) from exc
            yield _entry(decoded, path, number)
    except zstandard.ZstdError as exc:
        if partial:
            return
        raise RecordingError(str(exc), path=path, operation="decompress") from exc


def _looks_recorded(line: bytes) -> bool:
    """A recording line has receive time and connection; a capture line is a bare frame."""
    try:
        value = _ANY_DECODER.decode(line)
    except msgspec.DecodeError:
        return False
    return isinstance(value, dict) and "t" in value and "c" in value and "type" not in value


def _text(line: bytes) -> str | bytes:
    try:
        return line.decode()
    except UnicodeDecodeError:
        return line


def _entry(line: Line, path: Path, number: int) -> Entry:
    if line.mark is not None:
        return RecordedMark(line.t, line.c, line.mark, line.reason, line.session, line.markets)
    if line.f is not None:
        return RecordedFrame(line.t, line.c, line.f)
    if line.b is not None:
        try:
            return RecordedFrame(line.t, line.c, base64.b64decode(line.b, validate=True))
        except binascii.Error as exc:
            raise RecordingError(str(exc), path=path, operation=f"decode line {number}") from exc
    raise RecordingError("neither a frame nor a mark", path=path, operation=f"decode line {number}")


@dataclass
class ReplayStats:
    """What a replay read and produced."""

    files: int = 0
    frames: int = 0
    marks: int = 0
    connections: int = 0
    frames_skipped: int = 0  # after the session asked for a reconnect, as the live client
    records_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(self.records_by_kind.values())


class _Connection:
    """One recorded connection's session and event handling, as the live client has them."""

    def __init__(self, connection_id: str, setup: SessionSetup, replayer: Replayer) -> None:
        self.session = KalshiSession(
            connection_id=connection_id,
            channels=setup.channels,
            markets=setup.markets,
            use_yes_price=setup.use_yes_price,
            repair_timeout_s=replayer.repair_timeout_s,
            recent_trades=replayer.recent_trades,
            top=replayer.top,
        )
        self.session.commands_to_send()  # sent by the live client; their answers are recorded
        bound = log.bind(connection_id=connection_id)
        self.events = SessionEventHandler(self.session, bound, replayer.emit, _no_backfill)
        self.discarding = False  # the session asked for a reconnect: later frames are not read


async def _no_backfill(event: TradesMissing) -> None:
    """A replay has no REST: trades the live run backfilled are not in the recording."""


class Replayer:
    """Entries in, records out: the live client's pipeline without a socket or a clock."""

    def __init__(self, *, repair_timeout_s: float = 10.0, top: TopSettings | None = None) -> None:
        self.repair_timeout_s = repair_timeout_s
        self.top = top  # the environment's `top`: tops are derived again, as live
        self.recent_trades = RecentIds()  # shared by every connection, as the supervisor does
        self.stats = ReplayStats()
        self._connections: dict[str, _Connection] = {}
        self._records: list[Record] = []

    async def emit(self, record: Record) -> None:
        self._records.append(record)

    def records_to_publish(self) -> list[Record]:
        """The records made since the last call, in order."""
        records, self._records = self._records, []
        counts = self.stats.records_by_kind
        for record in records:
            kind = record_kind(record)
            counts[kind] = counts.get(kind, 0) + 1
        return records

    @property
    def pending(self) -> int:
        return len(self._records)

    async def receive(self, entry: Entry) -> None:
        if isinstance(entry, RecordedFrame):
            await self._receive_frame(entry)
        else:
            await self._receive_mark(entry)

    async def _receive_frame(self, frame: RecordedFrame) -> None:
        self.stats.frames += 1
        connection = self._connections.get(frame.connection_id)
        if connection is None:
            connection = self._open(frame.connection_id, DEFAULT_SETUP)
        if connection.discarding:
            self.stats.frames_skipped += 1
            return
        record = connection.session.receive_frame(frame.data, frame.ts_ns)
        if record is not None:
            self._records.append(record)
        await self._after(connection)

    async def _receive_mark(self, mark: RecordedMark) -> None:
        self.stats.marks += 1
        kind = mark.kind
        connection = self._connections.get(mark.connection_id)
        if kind is MarkKind.CONNECTED:
            connection = self._open(mark.connection_id, mark.setup or DEFAULT_SETUP)
            self._records.append(
                connection.session.status_record(StatusEvent.CONNECTED, mark.ts_ns)
            )
        elif kind is MarkKind.CONTINUED:
            if connection is None:  # this file is where the replay starts
                self._open(mark.connection_id, mark.setup or DEFAULT_SETUP)
        elif connection is None:
            return
        elif kind is MarkKind.STALE or kind is MarkKind.DISCONNECTED:
            event = StatusEvent.STALE if kind is MarkKind.STALE else StatusEvent.DISCONNECTED
            status = connection.session.status_record(event, mark.ts_ns, reason=mark.reason)
            self._records.append(status)
            if kind is MarkKind.DISCONNECTED:
                del self._connections[mark.connection_id]
        elif kind is MarkKind.DEADLINE:
            connection.session.poll(mark.ts_ns)
            await self._after(connection)
        elif kind is MarkKind.MARKETS_ADDED or kind is MarkKind.MARKETS_REMOVED:
            if kind is MarkKind.MARKETS_ADDED:
                connection.session.add_markets(mark.markets)
            else:
                connection.session.remove_markets(mark.markets)
            await self._after(connection)
        # GAP and RESYNCED only say what the session finds again in the frames.

    def _open(self, connection_id: str, setup: SessionSetup) -> _Connection:
        connection = self._connections[connection_id] = _Connection(connection_id, setup, self)
        self.stats.connections += 1
        return connection

    async def _after(self, connection: _Connection) -> None:
        """What the live driver does after a frame: handle events; commands are not sent."""
        session = connection.session
        if session.has_events:
            for event in session.events_to_handle():
                await connection.events.handle(event)
        if session.has_commands:
            session.commands_to_send()
        if connection.events.reconnect_reason is not None:
            connection.discarding = True


async def replay_files(
    paths: Sequence[Path],
    transport: Transport,
    *,
    speed: float | None = None,
    repair_timeout_s: float = 10.0,
    top: TopSettings | None = None,
    monotonic_s: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ReplayStats:
    """Replay `paths` in order into a started `transport`, then flush it.

    `speed` None: as fast as possible; 1: at the recorded pace; N: N times faster.
    """
    replayer = Replayer(repair_timeout_s=repair_timeout_s, top=top)
    first_ts_ns: int | None = None
    started_s = monotonic_s()
    for path in paths:
        replayer.stats.files += 1
        for entry in read_entries(path):
            if speed is not None:
                if first_ts_ns is None:
                    first_ts_ns = entry.ts_ns
                wait_s = (entry.ts_ns - first_ts_ns) / 1e9 / speed - (monotonic_s() - started_s)
                if wait_s > 0:
                    await _publish(replayer, transport)  # what is due goes out before waiting
                    await sleep(wait_s)
            await replayer.receive(entry)
            if replayer.pending >= PUBLISH_BATCH_MAX:
                await _publish(replayer, transport)
    await _publish(replayer, transport)
    await transport.flush()
    return replayer.stats


async def _publish(replayer: Replayer, transport: Transport) -> None:
    records = replayer.records_to_publish()
    for start in range(0, len(records), PUBLISH_BATCH_MAX):
        await transport.publish_many(records[start : start + PUBLISH_BATCH_MAX])


# -- the command line -------------------------------------------------------------------------


def parse_speed(text: str) -> float | None:
    """`max` → None (as fast as possible); a positive number → that many times real time."""
    if text.strip().lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not max or a number") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def add_replay_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `ssmd replay` on the toolbox's subcommands."""
    replay = commands.add_parser(
        "replay",
        help="publish recorded exchange frames again, as the live connector did",
        description=(
            "Push recordings (.jsonl.zst, from recording.dir) or captures (bare frames, one JSON"
            " per line) through the connector's decode, normalize and publish pipeline, with the"
            " recorded receive times: the records are those of the live run, so JetStream"
            " stores nothing new when they are already there (Msg-Id dedupe, within the stream's"
            " duplicate window). Files are read in the order given."
        ),
    )
    replay.add_argument("files", nargs="+", type=Path, metavar="FILE")
    target = replay.add_mutually_exclusive_group()
    target.add_argument(
        "--env",
        help="publish with this environment's transport and repair timeout"
        " (default $SSMD_ENV, else local)",
    )
    target.add_argument(
        "--transport", choices=["file"], help="write JSON-lines files instead (with --dir)"
    )
    replay.add_argument("--dir", type=Path, help="the file transport's directory")
    replay.add_argument(
        "--speed",
        type=parse_speed,
        default=None,
        metavar="max|N",
        help="max (default): as fast as possible; 1: the recorded pace; N: N times faster",
    )
    replay.set_defaults(handler=replay_command)


def replay_command(args: argparse.Namespace) -> int:
    """`ssmd replay`: exit 0 when everything was published, 1 on a failure, 2 for bad options."""
    if (args.transport == "file") != (args.dir is not None):
        print("ssmd replay: --transport file and --dir go together", file=sys.stderr)
        return EXIT_USAGE
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        print(f"ssmd replay: no such file: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    settings: Settings | None = None
    transport_settings: TransportSettings = FileTransportSettings(
        dir=(args.dir or Path()).absolute()
    )
    repair_timeout_s = ExchangeSettings.model_fields["repair_timeout_s"].default
    if args.transport is None:
        try:
            settings = load_environment(args.env or os.environ.get("SSMD_ENV") or "local")
        except ConfigError as exc:
            print(f"ssmd replay: configuration error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        transport_settings = settings.transport
        repair_timeout_s = settings.exchange.repair_timeout_s
    main = _replay_main(args.files, transport_settings, settings, args.speed, repair_timeout_s)
    try:
        stats = asyncio.run(main)
    except ConfigError as exc:
        print(f"ssmd replay: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SsmdError as exc:
        print(f"ssmd replay: {exc}", file=sys.stderr)
        return EXIT_FAILED
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(stats.records_by_kind.items()))
    print(
        f"ssmd replay: {stats.frames} frames from {stats.files} file(s),"
        f" {stats.connections} connection(s): {stats.records} records ({kinds or 'none'})",
        file=sys.stderr,
    )
    return EXIT_OK


async def _replay_main(
    paths: Sequence[Path],
    transport_settings: TransportSettings,
    settings: Settings | None,
    speed: float | None,
    repair_timeout_s: float,
) -> ReplayStats:
    # The environment's managed nats-server: started for the replay, unless one is running on
    # its port already (the connector's): that one is used as it is.
    nats_server: NatsServer | None = None
    servers: list[str] | None = None
    if settings is not None:
        try:
            nats_server = await start_managed_nats(settings)
        except ConfigError as exc:
            managed = _managed_server(settings)
            if managed is None or exc.field != "transport.managed_server.port":
                raise
            servers = [f"nats://127.0.0.1:{managed.port}"]
    if nats_server is not None:
        servers = [nats_server.url]
    try:
        transport = build_transport(transport_settings, nats_servers=servers)
        await transport.start()
        try:
            return await replay_files(
                paths,
                transport,
                speed=speed,
                repair_timeout_s=repair_timeout_s,
                top=settings.top if settings is not None else None,
            )
        finally:
            await transport.close()
    finally:
        if nats_server is not None:
            await nats_server.stop()


def _managed_server(settings: Settings) -> ManagedNatsServerSettings | None:
    transport = settings.transport
    return transport.managed_server if isinstance(transport, NatsTransportSettings) else None
