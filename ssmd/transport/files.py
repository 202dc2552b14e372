"""The file transport: JSON lines, one file per record kind, rotated by size and age.

Layout: `{dir}/{kind}/{kind}-{UTC yyyymmddTHHMMSSZ}-{counter}.jsonl`, one record per line in
the order published. A file is written as `<name>.jsonl.part` and atomically renamed
(os.replace) to `<name>.jsonl` when it rotates or the transport closes, after flush + fsync of
the file and followed by fsync of its directory. A crash therefore leaves only `.part` files;
readers (read_records and any downstream tool) must ignore them: every `.jsonl` is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from ssmd.errors import TransportError
from ssmd.records import Record, record_kind
from ssmd.transport.base import TransportStats

COMPLETE_SUFFIX = ".jsonl"
PART_SUFFIX = ".jsonl.part"
_WRITE_BUFFER_BYTES = 256 * 1024
_DECODER = msgspec.json.Decoder(Record)


class FileTransportError(TransportError):
    """A file operation failed; `path` is the file or directory, `operation` what we tried."""

    def __init__(self, message: str, *, path: Path, operation: str) -> None:
        self.message = message
        self.path = path
        self.operation = operation
        super().__init__(f"{path}: {operation} failed: {message}")


def _os_error(exc: OSError, path: Path, operation: str) -> FileTransportError:
    return FileTransportError(exc.strerror or str(exc), path=path, operation=operation)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        raise _os_error(exc, directory, "open directory for fsync") from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        raise _os_error(exc, directory, "fsync directory") from exc
    finally:
        os.close(fd)


@dataclass
class _OpenFile:
    """The `.part` file currently receiving one kind's records."""

    part_path: Path
    final_path: Path
    handle: BinaryIO
    opened_at_s: float
    size_bytes: int = 0

    def finalize(self) -> None:
        """Flush, fsync, close, rename `.part` -> `.jsonl`, fsync the directory (blocking)."""
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
        except OSError as exc:
            with contextlib.suppress(OSError):  # already failing: just release the descriptor
                self.handle.close()
            raise _os_error(exc, self.part_path, "flush and fsync") from exc
        try:
            os.replace(self.part_path, self.final_path)
        except OSError as exc:
            raise _os_error(exc, self.part_path, "rename to .jsonl") from exc
        fsync_directory(self.final_path.parent)


def _finalize_all(files: list[_OpenFile]) -> None:
    """Finalize every file even if one fails; then raise the first failure."""
    first_error: TransportError | None = None
    for open_file in files:
        try:
            open_file.finalize()
        except TransportError as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


class FileTransport:
    """Writes records as JSON lines under `directory`; see the module docstring for the layout.

    Rotation: before a write that would push a non-empty file past `rotate_max_bytes`, and when
    a file is older than `rotate_interval_s` (checked on publish and on flush) by `clock_s`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        rotate_max_bytes: int,
        rotate_interval_s: float,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        if rotate_max_bytes < 1 or rotate_interval_s <= 0:
            raise ValueError("rotate_max_bytes must be >= 1 and rotate_interval_s > 0")
        self.directory = directory
        self._rotate_max_bytes = rotate_max_bytes
        self._rotate_interval_s = rotate_interval_s
        self._clock_s = clock_s
        self._encoder = msgspec.json.Encoder()
        self._line = bytearray()
        self._files: dict[str, _OpenFile] = {}
        self._counters: dict[str, int] = {}
        self._records_by_kind: dict[str, int] = {}
        self._files_written = 0
        self._bytes_written = 0
        self._started = False
        self._closed = False

    async def start(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, self.directory, "create directory") from exc
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise FileTransportError(
                "directory is not writable", path=self.directory, operation="start"
            )
        self._started = True

    async def publish(self, record: Record) -> None:
        if not self._started or self._closed:
            state = "closed" if self._closed else "not started"
            raise FileTransportError(
                f"transport is {state}", path=self.directory, operation="publish"
            )
        kind = record_kind(record)
        line = self._line
        self._encoder.encode_into(record, line)
        line.extend(b"\n")
        current = self._files.get(kind)
        if current is not None and self._rotation_due(current, len(line)):
            pending = bytes(line)  # the shared buffer may be reused while we await
            del self._files[kind]
            await self._finalize([current])
            line = bytearray(pending)
        current = self._files.get(kind)
        if current is None:
            current = self._files[kind] = self._open(kind)
        try:
            current.handle.write(line)
        except OSError as exc:
            raise _os_error(exc, current.part_path, "write") from exc
        current.size_bytes += len(line)
        self._bytes_written += len(line)
        self._records_by_kind[kind] = self._records_by_kind.get(kind, 0) + 1

    async def publish_many(self, records: Sequence[Record]) -> None:
        publish = self.publish
        for record in records:
            await publish(record)

    async def flush(self) -> None:
        """Write buffered lines to the OS, and rotate files that have grown too old."""
        due = [kind for kind, f in self._files.items() if self._rotation_due(f, 0)]
        if due:
            await self._finalize([self._files.pop(kind) for kind in due])
        for open_file in self._files.values():
            try:
                open_file.handle.flush()
            except OSError as exc:
                raise _os_error(exc, open_file.part_path, "flush") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        files = list(self._files.values())
        self._files.clear()
        await self._finalize(files)

    def stats(self) -> TransportStats:
        return TransportStats(
            records_by_kind=dict(self._records_by_kind),
            files_written=self._files_written,
            bytes_written=self._bytes_written,
        )

    def _rotation_due(self, open_file: _OpenFile, next_line_bytes: int) -> bool:
        if self._clock_s() - open_file.opened_at_s >= self._rotate_interval_s:
            return True
        grown = open_file.size_bytes + next_line_bytes
        return open_file.size_bytes > 0 and grown > self._rotate_max_bytes

    async def _finalize(self, files: list[_OpenFile]) -> None:
        if not files:
            return
        await asyncio.to_thread(_finalize_all, files)
        self._files_written += len(files)

    def _open(self, kind: str) -> _OpenFile:
        """Create the next `.part` file for `kind` (never reusing a name that exists)."""
        kind_dir = self.directory / kind
        if not kind_dir.is_dir():
            try:
                kind_dir.mkdir(exist_ok=True)
            except OSError as exc:
                raise _os_error(exc, kind_dir, "create directory") from exc
            fsync_directory(self.directory)
        opened_at_s = self._clock_s()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(opened_at_s))
        while True:
            counter = self._counters.get(kind, 0)
            self._counters[kind] = counter + 1
            stem = f"{kind}-{stamp}-{counter:06d}"
            final_path = kind_dir / f"{stem}{COMPLETE_SUFFIX}"
            part_path = kind_dir / f"{stem}{PART_SUFFIX}"
            if final_path.exists():
                continue
            try:
                handle = part_path.open("xb", buffering=_WRITE_BUFFER_BYTES)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _os_error(exc, part_path, "create") from exc
            return _OpenFile(part_path, final_path, handle, opened_at_s)


def completed_files(directory: Path) -> list[Path]:
    """Every completed `.jsonl` under `directory/<kind>/`, sorted by file name."""
    return sorted(directory.glob(f"*/*{COMPLETE_SUFFIX}"), key=lambda path: path.name)


def read_records(directory: Path) -> list[Record]:
    """Decode every completed file under `directory` (by file name, then line order).

    `.part` files (still open, or left by a crash) are ignored.
    """
    records: list[Record] = []
    for path in completed_files(directory):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _os_error(exc, path, "read") from exc
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(_DECODER.decode(line))
            except msgspec.DecodeError as exc:
                raise FileTransportError(
                    str(exc), path=path, operation=f"decode line {number}"
                ) from exc
    return records
