"""Pure measurement arithmetic for the bench: /proc parsing, rates, CPU per frame, percentiles.

No clocks or processes here: the harness samples, these functions turn samples into figures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
NS_PER_US = 1_000
US_PER_S = 1_000_000


class ProcReadError(ValueError):
    """A /proc file did not have the expected shape (or the process is gone)."""


def parse_proc_stat_cpu_ticks(text: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/PID/stat.

    The command name (field 2) is in parentheses and may hold spaces, so fields are counted
    from the last `)`: after it come state (3), ..., utime (14), stime (15).
    """
    close = text.rfind(")")
    if close < 0:
        raise ProcReadError(f"no ')' in /proc stat text: {text[:80]!r}")
    fields = text[close + 1 :].split()
    try:
        return int(fields[11]) + int(fields[12])
    except (IndexError, ValueError) as exc:
        raise ProcReadError(f"bad /proc stat text: {text[:80]!r}") from exc


def parse_proc_status_kb(text: str, key: str) -> int:
    """A `Key:   123 kB` value (e.g. VmHWM, VmRSS) from the text of /proc/PID/status, in kB."""
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name == key:
            number = value.split()
            try:
                return int(number[0])
            except (IndexError, ValueError) as exc:
                raise ProcReadError(f"bad {key} line: {line!r}") from exc
    raise ProcReadError(f"no {key} in /proc status")


def read_cpu_ticks(pid: int) -> int:
    try:
        return parse_proc_stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text())
    except OSError as exc:
        raise ProcReadError(f"cannot read /proc/{pid}/stat: {exc}") from exc


def read_peak_rss_kb(pid: int) -> int:
    """VmHWM: the process's peak resident set size so far."""
    try:
        return parse_proc_status_kb(Path(f"/proc/{pid}/status").read_text(), "VmHWM")
    except OSError as exc:
        raise ProcReadError(f"cannot read /proc/{pid}/status: {exc}") from exc


@dataclass(frozen=True)
class Sample:
    """One instant of a run: monotonic time, frames counted at the sink, process CPU ticks."""

    time_s: float
    frames: int
    cpu_ticks: int


@dataclass(frozen=True)
class WindowFigures:
    """What a measured window between two samples says."""

    window_s: float
    frames: int
    frames_per_s: float
    cpu_s: float
    cpu_us_per_frame: float | None  # None: no frame in the window
    cpu_utilisation: float  # CPU seconds per wall second (1.0 = one full core)


def window_figures(
    start: Sample, end: Sample, *, ticks_per_s: int = CLOCK_TICKS_PER_S
) -> WindowFigures:
    """Sustained rate and CPU cost per frame over [start, end]."""
    window_s = end.time_s - start.time_s
    if window_s <= 0:
        raise ValueError(f"empty window: {start.time_s} .. {end.time_s}")
    frames = end.frames - start.frames
    cpu_s = (end.cpu_ticks - start.cpu_ticks) / ticks_per_s
    return WindowFigures(
        window_s=window_s,
        frames=frames,
        frames_per_s=frames / window_s,
        cpu_s=cpu_s,
        cpu_us_per_frame=cpu_s * US_PER_S / frames if frames > 0 else None,
        cpu_utilisation=cpu_s / window_s,
    )


def percentile(sorted_values: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile (fraction in [0, 1]) of an ascending, non-empty sequence."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class LatencyFigures:
    """Frame receive → seen by a stream consumer, microseconds."""

    samples: int
    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float


def latency_figures(latencies_ns: Sequence[int]) -> LatencyFigures | None:
    """p50/p99/p99.9/max of latency samples in ns (None when there are none)."""
    if not latencies_ns:
        return None
    ordered = sorted(latencies_ns)
    return LatencyFigures(
        samples=len(ordered),
        p50_us=percentile(ordered, 0.50) / NS_PER_US,
        p99_us=percentile(ordered, 0.99) / NS_PER_US,
        p999_us=percentile(ordered, 0.999) / NS_PER_US,
        max_us=ordered[-1] / NS_PER_US,
    )


class LineCounter:
    """Counts newline-terminated lines written under a directory so far, incrementally:
    each file is read from where the last call stopped. Files must not be renamed while
    counting (the bench sets the file transport's rotation far beyond one run)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._offsets: dict[Path, int] = {}
        self._lines = 0

    def count(self) -> int:
        if not self.directory.exists():
            return self._lines
        for path in sorted(self.directory.rglob("*")):
            if not path.is_file() or path.suffix not in {".part", ".jsonl"}:
                continue
            offset = self._offsets.get(path, 0)
            try:
                with path.open("rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except FileNotFoundError:
                continue  # renamed between the listing and the open
            # Only whole lines: a partial trailing line is counted on the next call.
            whole = data.rfind(b"\n") + 1
            self._lines += data.count(b"\n", 0, whole)
            self._offsets[path] = offset + whole
        return self._lines


@dataclass(frozen=True)
class StageFigures:
    """CPU µs per frame of one in-process stage: the best and the median repetition."""

    best_us: float
    median_us: float


@dataclass(frozen=True)
class TypeFigures:
    """One wire type of the micro-bench's frames (median repetitions, CPU µs per frame).
    `session_us` is receive_frame as a whole (decode, normalize, seq, books, dedupe), timed per
    call with the timer's own cost subtracted; decode and normalize are timed in batches."""

    type_name: str
    frames: int
    share: float
    decode_us: float
    normalize_us: float
    session_us: float


@dataclass(frozen=True)
class MicroFigures:
    """The in-process micro-bench: decode alone, decode + normalize, and the session's
    receive_frame (decode + normalize + seq check + books + trade dedupe) on the same frames."""

    frames: int
    repetitions: int
    mean_frame_bytes: float
    decode: StageFigures
    decode_normalize: StageFigures
    session: StageFigures
    by_type: tuple[TypeFigures, ...]
