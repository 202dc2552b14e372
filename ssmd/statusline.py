"""The live status line of an interactive run: `render_status` (pure: numbers in, one line that
fits the terminal out) and `StatusLine`, which redraws it in place on the terminal's last line
while log lines step around it (ssmd.logs overlay). Off for JSON logs or when not a terminal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO

from ssmd.logs import attach_overlay, detach_overlay, interactive_console

CLEAR_TO_END = "\x1b[K"  # ANSI "erase in line": from the cursor to the end of the line
SEPARATOR = " | "
ELLIPSIS = "…"
DEFAULT_WIDTH_COLS = 80

# Short names for the per-kind rates; other kinds keep their name.
KIND_LABELS = {
    "book_delta": "delta",
    "book_snapshot": "snap",
    "ticker": "tick",
    "lifecycle": "life",
}


@dataclass(frozen=True)
class StatusSnapshot:
    """What the status line shows, as plain numbers (the runner fills it from its counters)."""

    rates_per_s: Mapping[str, float] = field(default_factory=dict)  # records/s by kind
    markets: int = 0
    connections_up: int = 0  # exchange connections open
    connections: int = 0  # exchange connections wanted
    gaps: int = 0
    resyncs: int = 0
    reconnects: int = 0
    pending_acks: int = 0  # published to NATS, not yet acked
    queued: int = 0  # records between the exchange client and the transport


def rates_per_s(
    before: Mapping[str, int], after: Mapping[str, int], elapsed_s: float
) -> dict[str, float]:
    """Records per second by kind between two `records_by_kind` counts `elapsed_s` apart."""
    if elapsed_s <= 0:
        return dict.fromkeys(after, 0.0)
    return {kind: (count - before.get(kind, 0)) / elapsed_s for kind, count in after.items()}


def format_rate(per_s: float) -> str:
    """1234.5 -> "1,234"; 12.3 -> "12"; 2.5 -> "2.5"; 2.0 -> "2"; 0 -> "0"."""
    if per_s >= 10:
        return f"{per_s:,.0f}"
    return f"{per_s:.1f}".removesuffix(".0")


def _kind_rates(rates: Mapping[str, float]) -> list[str]:
    """ "delta 1,100", "trade 80"...: busiest first, kinds at 0/s left out."""
    ordered = sorted(rates.items(), key=lambda item: (-item[1], item[0]))
    return [
        f"{KIND_LABELS.get(kind, kind)} {format_rate(per_s)}"
        for kind, per_s in ordered
        if per_s > 0
    ]


def _segments(snapshot: StatusSnapshot) -> list[tuple[int, str]]:
    """(priority, text) in display order; the lowest priority goes first when space is short."""
    connections = f"conn {snapshot.connections_up}/{snapshot.connections}"
    return [
        (9, f"{format_rate(sum(snapshot.rates_per_s.values()))} rec/s"),
        (7, f"{snapshot.markets:,} mkts"),
        (8, connections),
        (6, f"gaps {snapshot.gaps:,}"),
        (2, f"resyncs {snapshot.resyncs:,}"),
        (5, f"reconn {snapshot.reconnects:,}"),
        (4, f"acks {snapshot.pending_acks:,}"),
        (3, f"queue {snapshot.queued:,}"),
    ]


def render_status(snapshot: StatusSnapshot, width: int) -> str:
    """One line of at most `width` characters, no newline. Space is given up in this order:
    per-kind rates (the slowest kinds first), then resyncs, queue, pending acks, reconnects,
    gaps, markets, connections; the total rate is cut last, with an ellipsis."""
    if width <= 0:
        return ""
    segments = _segments(snapshot)
    kinds = _kind_rates(snapshot.rates_per_s)
    for shown in range(len(kinds), -1, -1):
        line = _join(segments, kinds[:shown])
        if len(line) <= width:
            return line
    for priority in sorted(priority for priority, _ in segments)[:-1]:
        segments = [segment for segment in segments if segment[0] != priority]
        line = _join(segments, [])
        if len(line) <= width:
            return line
    return line[: width - 1] + ELLIPSIS


def _join(segments: list[tuple[int, str]], kinds: list[str]) -> str:
    texts = [text for _, text in segments]
    if kinds:
        texts[0] += f" ({' '.join(kinds)})"
    return SEPARATOR.join(texts)


class StatusLine:
    """The status line on a terminal: `show()` draws it in place (carriage return, text, clear
    to the end of the line); as a ssmd.logs overlay it is erased before each log line and drawn
    again after it. `width_cols` gives the terminal's width at each draw."""

    def __init__(self, stream: TextIO, *, width_cols: Callable[[], int] | None = None) -> None:
        self._stream = stream
        self._width_cols = width_cols or (lambda: terminal_width(stream))
        self._text = ""
        self._drawn = False

    @property
    def text(self) -> str:
        """The line last shown ("" before the first)."""
        return self._text

    def show(self, snapshot: StatusSnapshot) -> None:
        # One column spare: text in the last column leaves some terminals about to wrap.
        self._text = render_status(snapshot, self._width_cols() - 1)
        self._drawn = False
        self.redraw()
        self._stream.flush()

    def clear(self) -> None:
        if self._drawn:
            self._stream.write("\r" + CLEAR_TO_END)
            self._drawn = False

    def redraw(self) -> None:
        if self._text and not self._drawn:
            self._stream.write("\r" + self._text + CLEAR_TO_END)
            self._drawn = True

    def close(self) -> None:
        """Erase the line and stop stepping around log lines (before the last log lines)."""
        detach_overlay(self)
        self.clear()
        self._text = ""
        self._stream.flush()


def terminal_width(stream: TextIO) -> int:
    """The width of the terminal `stream` writes to (COLUMNS, then the tty, then 80)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return DEFAULT_WIDTH_COLS


def open_status_line(*, width_cols: Callable[[], int] | None = None) -> StatusLine | None:
    """A StatusLine on the console log lines go to, attached so they step around it; None when
    logs are JSON or not on a terminal (configure_logging decided)."""
    stream = interactive_console()
    if stream is None:
        return None
    status_line = StatusLine(stream, width_cols=width_cols)
    attach_overlay(status_line)
    return status_line


__all__ = [
    "StatusLine",
    "StatusSnapshot",
    "format_rate",
    "open_status_line",
    "rates_per_s",
    "render_status",
    "terminal_width",
]
