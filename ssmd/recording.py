"""Raw exchange frames as received, for replay: FrameRecorder writes each frame with its receive
time and connection, plus marks where continuity broke, to zstd-compressed JSON-lines files that
appear under their final name only once complete (ssmd.replay.read_entries reads them back)."""

from __future__ import annotations

import base64
import contextlib
import enum
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import msgspec
import structlog
import zstandard

from ssmd.errors import TransportError
from ssmd.messages import Channel
from ssmd.records import Status, StatusEvent
from ssmd.session import KalshiSession
from ssmd.transport.files import FileTransportError, fsync_directory

if TYPE_CHECKING:
    from ssmd.config.recording import RecordingSettings

COMPLETE_SUFFIX = ".jsonl.zst"
PARTIAL_SUFFIX = ".jsonl.zst.partial"
CHUNK_BYTES = 256 * 1024  # JSON lines collected before one compress call
FLUSH_INTERVAL_NS = 1_000_000_000  # poll() pushes what is buffered to disk this often

log = structlog.get_logger("ssmd.recording")


class MarkKind(enum.Enum):
    """Where a connection's continuity changed, as the driver saw it."""

    CONNECTED = "connected"  # carries the session setup
    DISCONNECTED = "disconnected"  # reason: why (the DISCONNECTED status record's)
    STALE = "stale"  # pings went unanswered before the disconnect
    GAP = "gap"  # the session found frames missing (informational: a replay re-detects it)
    RESYNCED = "resynced"  # a repaired book is whole again (informational, like gap)
    DEADLINE = "deadline"  # the session was given the time with no frame and acted on it
    MARKETS_ADDED = "markets_added"  # session.add_markets(markets) was called
    MARKETS_REMOVED = "markets_removed"  # session.remove_markets(markets) was called
    CONTINUED = "continued"  # first in a new file: this connection was already open


_MARK_FOR_STATUS = {
    StatusEvent.CONNECTED: MarkKind.CONNECTED,
    StatusEvent.DISCONNECTED: MarkKind.DISCONNECTED,
    StatusEvent.STALE: MarkKind.STALE,
    StatusEvent.GAP: MarkKind.GAP,
    StatusEvent.RESYNCED: MarkKind.RESYNCED,
}


class SessionSetup(msgspec.Struct, frozen=True):
    """What a KalshiSession was built with: enough to build the same one in a replay."""

    channels: tuple[Channel, ...]
    markets: tuple[str, ...]
    use_yes_price: bool


def session_setup(session: KalshiSession) -> SessionSetup:
    """The setup `session` subscribes with (its channels in subscription order)."""
    return SessionSetup(
        channels=session.channels,
        markets=session.markets,
        use_yes_price=session.use_yes_price,
    )


class RecordedFrame(msgspec.Struct, frozen=True):
    """One frame as received: its bytes (str when they were UTF-8 text) and receive time."""

    ts_ns: int
    connection_id: str
    data: str | bytes


class RecordedMark(msgspec.Struct, frozen=True):
    ts_ns: int
    connection_id: str
    kind: MarkKind
    reason: str = ""
    setup: SessionSetup | None = None
    markets: tuple[str, ...] = ()  # MARKETS_ADDED / MARKETS_REMOVED


Entry = RecordedFrame | RecordedMark


class Line(msgspec.Struct, omit_defaults=True):
    """One line of a recording file, as written."""

    t: int
    c: str
    f: str | None = None
    b: str | None = None
    mark: MarkKind | None = None
    reason: str = ""
    session: SessionSetup | None = None
    markets: tuple[str, ...] = ()


class RecordingError(TransportError):
    """A recording file could not be written or read; `path` and `operation` say which."""

    def __init__(self, message: str, *, path: Path, operation: str) -> None:
        self.message = message
        self.path = path
        self.operation = operation
        super().__init__(f"{path}: {operation} failed: {message}")


class _OpenFile:
    """The `.partial` file receiving entries, and its compressor."""

    def __init__(self, part_path: Path, final_path: Path, handle: BinaryIO, level: int) -> None:
        self.part_path = part_path
        self.final_path = final_path
        self.handle = handle
        self.compressor = zstandard.ZstdCompressor(level=level).compressobj()
        self.bytes_in = 0  # JSON line bytes handed to the compressor
        self.bytes_out = 0

    def write(self, lines: bytes | bytearray) -> None:
        compressed = self.compressor.compress(lines)
        self.bytes_in += len(lines)
        if compressed:
            self.handle.write(compressed)
            self.bytes_out += len(compressed)

    def flush_block(self) -> None:
        tail = self.compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        self.handle.write(tail)
        self.bytes_out += len(tail)
        self.handle.flush()

    def finish(self) -> None:
        """End the zstd frame, fsync, close, and rename to the final name (blocking)."""
        tail = self.compressor.flush()
        self.handle.write(tail)
        self.bytes_out += len(tail)
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.part_path, self.final_path)


class FrameRecorder:
    """Appends the frames and marks of every connection of one process to rotating files.

    Lines: a frame `{"t": receive_ts_ns, "c": connection_id, "f": "<frame text>"}` (`"b":
    "<base64>"` instead of `f` when the bytes are not UTF-8; sid and seq are in the frame), or a
    mark `{"t": ts_ns, "c": connection_id, "mark": "connected", "reason": "...", "session":
    {...}}`. A `connected` mark, and a `continued` one first in each later file, carries the
    session's setup (channels, markets, use_yes_price: the convention, PROTOCOL.md §7.1.4).

    `write_frame` is the hot path: a few appends to a buffer, compressed every `chunk_bytes`.
    The entries' own times drive hourly rotation (no clock call per frame); the drivers' timer
    calls `poll` to complete a file when no frame comes, and to flush. File I/O is inline. A
    write error is logged once and stops the recording (`error`): market data goes on.
    """

    def __init__(
        self,
        directory: Path,
        *,
        name: str = "frames",
        rotate_interval_s: float = 3600.0,
        rotate_max_bytes: int = 512 * 1024 * 1024,
        zstd_level: int = 3,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        if rotate_interval_s <= 0 or rotate_max_bytes < 1 or chunk_bytes < 1:
            raise ValueError("need rotate_interval_s > 0, rotate_max_bytes >= 1, chunk_bytes >= 1")
        self.directory = directory
        self.name = name
        self._interval_ns = int(rotate_interval_s * 1_000_000_000)
        self._max_bytes = rotate_max_bytes
        self._level = zstd_level
        self._chunk_bytes = chunk_bytes
        self._buffer = bytearray()
        self._buffer_limit = 0  # past this many buffered bytes: compress, or rotate by size
        self._rotate_at_ns = -1  # an entry at or after this time opens a new file
        self._flushed_at_ns = 0
        self._file: _OpenFile | None = None
        self._counter = 0
        self._prefixes: dict[str, bytes] = {}
        self._open_connections: dict[str, SessionSetup | None] = {}
        encoder = msgspec.json.Encoder()
        self._encode_into = encoder.encode_into
        self._encode = encoder.encode
        self.completed: list[Path] = []  # files renamed to their final name, in order
        self.frames_written = 0
        self.bytes_in = 0  # JSON line bytes of completed files
        self.bytes_out = 0  # compressed bytes of completed files
        self.error: RecordingError | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings: RecordingSettings, *, name: str) -> FrameRecorder:
        """A recorder for the environment's `recording` section; `name` starts file names."""
        return cls(
            settings.dir,
            name=name,
            rotate_interval_s=settings.rotate_interval_s,
            rotate_max_bytes=settings.rotate_max_bytes,
            zstd_level=settings.zstd_level,
        )

    @property
    def current_path(self) -> Path | None:
        """The `.partial` file being written, if any."""
        return self._file.part_path if self._file is not None else None

    # -- writing ------------------------------------------------------------------------------

    def write_frame(self, connection_id: str, data: bytes | str, receive_ts_ns: int) -> None:
        """Record one frame exactly as received (the driver calls this before the session)."""
        if receive_ts_ns >= self._rotate_at_ns:
            if self._closed or self.error is not None:
                return
            self._start_file(receive_ts_ns)
        buffer = self._buffer
        start = len(buffer)
        prefix = self._prefixes.get(connection_id)
        if prefix is None:
            prefix = self._prefix(connection_id)
        text: str | bytes | None = data
        if type(data) is bytes:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                text = None
        if text is not None:
            buffer += b'{"t":%d%s"f":' % (receive_ts_ns, prefix)
            self._encode_into(text, buffer, -1)
            buffer += b"}\n"
        else:
            raw = data if isinstance(data, bytes) else data.encode()
            buffer += b'{"t":%d%s"b":"%s"}\n' % (receive_ts_ns, prefix, base64.b64encode(raw))
        self.frames_written += 1
        if len(buffer) > self._buffer_limit:
            self._drain(start, receive_ts_ns)

    def mark(
        self,
        connection_id: str,
        kind: MarkKind,
        ts_ns: int,
        *,
        reason: str = "",
        setup: SessionSetup | None = None,
        markets: tuple[str, ...] = (),
    ) -> None:
        """Record where continuity or the session's market set changed (see MarkKind)."""
        if ts_ns >= self._rotate_at_ns and not self._closed and self.error is None:
            self._start_file(ts_ns)  # `continued` for the connections open before this mark
        if kind is MarkKind.CONNECTED:
            self._open_connections[connection_id] = setup
        elif kind is MarkKind.DISCONNECTED:
            self._open_connections.pop(connection_id, None)
        if self._closed or self.error is not None:
            return
        start = len(self._buffer)
        line = Line(ts_ns, connection_id, mark=kind, reason=reason, session=setup, markets=markets)
        self._encode_into(line, self._buffer, -1)
        self._buffer += b"\n"
        if len(self._buffer) > self._buffer_limit:
            self._drain(start, ts_ns)

    def mark_deadline(self, connection_id: str, ts_ns: int) -> None:
        """The time alone changed the session (a repair deadline, a held top): a replay polls
        its session at this time too."""
        self.mark(connection_id, MarkKind.DEADLINE, ts_ns)

    def mark_status(self, status: Status, session: KalshiSession) -> None:
        """Mark what a connection-level status record says (`connected` carries the session's
        setup); status events that are not about continuity are not marked."""
        kind = _MARK_FOR_STATUS.get(status.event)
        if kind is None:
            return
        setup = session_setup(session) if kind is MarkKind.CONNECTED else None
        self.mark(
            status.connection_id, kind, status.receive_ts_ns, reason=status.reason, setup=setup
        )

    def poll(self, now_ns: int) -> None:
        """The drivers' timer: complete the file once it is older than the rotation interval
        (a quiet exchange still gets its hourly files), else flush at most every
        FLUSH_INTERVAL_NS, so a crash loses about that much."""
        if self._file is None:
            return
        if now_ns >= self._rotate_at_ns:
            self._finish_file()
        elif now_ns >= self._flushed_at_ns + FLUSH_INTERVAL_NS:
            self._flushed_at_ns = now_ns
            self.flush()

    def flush(self) -> None:
        """Compress what is buffered, end the zstd block and hand it all to the OS: the
        `.partial` file then decodes up to here (what a crash leaves is readable)."""
        file = self._file
        if file is None:
            return
        self._compress_buffer()
        try:
            file.flush_block()
        except (OSError, zstandard.ZstdError) as exc:
            self._fail(str(exc), file.part_path, "flush")

    def close(self) -> None:
        """Complete the current file. Idempotent; later writes are ignored."""
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._finish_file()
        self._rotate_at_ns = -1

    # -- files --------------------------------------------------------------------------------

    def _prefix(self, connection_id: str) -> bytes:
        prefix = b',"c":%s,' % self._encode(connection_id)
        self._prefixes[connection_id] = prefix
        return prefix

    def _drain(self, start: int, ts_ns: int) -> None:
        """The buffer passed its limit: rotate by size, moving the newest entry (from `start`)
        to the next file unless it is the file's only one; else compress a chunk."""
        file = self._file
        if file is None:
            return
        if file.bytes_in + len(self._buffer) <= self._max_bytes or file.bytes_in + start == 0:
            self._compress_buffer()
            return
        newest = bytes(self._buffer[start:])
        del self._buffer[start:]
        self._start_file(ts_ns)
        if self.error is not None:
            return
        start = len(self._buffer)  # after the `continued` marks
        self._buffer += newest
        if len(self._buffer) > self._buffer_limit:
            self._drain(start, ts_ns)

    def _compress_buffer(self) -> None:
        file = self._file
        if file is None:
            return
        try:
            file.write(self._buffer)
        except (OSError, zstandard.ZstdError) as exc:
            self._fail(str(exc), file.part_path, "write")
            return
        self._buffer.clear()
        self._buffer_limit = min(self._chunk_bytes, self._max_bytes - file.bytes_in)

    def _start_file(self, ts_ns: int) -> None:
        """Complete the current file (if any) and open the next, named after `ts_ns`; every
        connection still open gets a `continued` mark at its top."""
        if self._file is not None:
            self._finish_file()
            if self.error is not None:
                return
        try:
            file = self._open(ts_ns)
        except OSError as exc:
            self._fail(exc.strerror or str(exc), self.directory, "create file")
            return
        self._file = file
        self._rotate_at_ns = ts_ns + self._interval_ns
        self._buffer_limit = min(self._chunk_bytes, self._max_bytes)
        for connection_id, setup in self._open_connections.items():
            line = Line(t=ts_ns, c=connection_id, mark=MarkKind.CONTINUED, session=setup)
            self._encode_into(line, self._buffer, -1)
            self._buffer += b"\n"

    def _open(self, ts_ns: int) -> _OpenFile:
        """Create the next `.partial` file (never reusing a name that exists)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ts_ns // 1_000_000_000))
        while True:
            self._counter += 1
            stem = f"{self.name}-{stamp}-{self._counter:06d}"
            final_path = self.directory / f"{stem}{COMPLETE_SUFFIX}"
            part_path = self.directory / f"{stem}{PARTIAL_SUFFIX}"
            if final_path.exists():
                continue
            try:
                handle = part_path.open("xb")
            except FileExistsError:
                continue
            return _OpenFile(part_path, final_path, handle, self._level)

    def _finish_file(self) -> None:
        """Compress what is buffered, end the stream and rename the file to its final name."""
        file, self._file = self._file, None
        self._rotate_at_ns = -1
        if file is None:
            return
        try:
            file.write(self._buffer)
            self._buffer.clear()
            file.finish()
        except (OSError, zstandard.ZstdError) as exc:
            self._fail(str(exc), file.part_path, "complete", file)
            return
        try:
            fsync_directory(file.final_path.parent)
        except FileTransportError as exc:
            self._fail(exc.message, file.final_path.parent, "fsync directory")
        self.completed.append(file.final_path)
        self.bytes_in += file.bytes_in
        self.bytes_out += file.bytes_out

    def _fail(
        self, message: str, path: Path, operation: str, file: _OpenFile | None = None
    ) -> None:
        """Stop recording: keep the error, log it once, release the file."""
        self.error = RecordingError(message, path=path, operation=operation)
        log.error("recording.failed", path=str(path), operation=operation, error=message)
        for open_file in (file, self._file):
            if open_file is not None:
                with contextlib.suppress(OSError):
                    open_file.handle.close()
        self._file = None
        self._buffer.clear()
        self._rotate_at_ns = -1
