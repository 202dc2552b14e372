"""The live status line: what it says at every width, and on a (simulated) terminal how log lines
step around it; off for JSON logs and when stderr is not a terminal."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import pytest
import structlog

from ssmd.logs import LOG_LEVEL_ENV, LogFormat, clear_context, configure_logging, get_logger
from ssmd.statusline import (
    CLEAR_TO_END,
    StatusLine,
    StatusSnapshot,
    format_rate,
    open_status_line,
    rates_per_s,
    render_status,
    terminal_width,
)

BUSY = StatusSnapshot(
    rates_per_s={
        "book_delta": 1_180.4,
        "trade": 42.0,
        "ticker": 12.5,
        "book_snapshot": 0.5,
        "status": 0.0,
    },
    markets=1_000,
    connections_up=1,
    connections=2,
    gaps=3,
    resyncs=2,
    reconnects=1,
    pending_acks=256,
    queued=17,
)
BUSY_LINE = (
    "1,235 rec/s (delta 1,180 trade 42 tick 12 snap 0.5) | 1,000 mkts | conn 1/2 | gaps 3"
    " | resyncs 2 | reconn 1 | acks 256 | queue 17"
)


@pytest.fixture(autouse=True)
def _reset_structlog(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    yield
    clear_context()
    structlog.reset_defaults()


class FakeTerminal(io.StringIO):
    """What a terminal is sent (a StringIO that says it is a TTY)."""

    def isatty(self) -> bool:
        return True


_SGR = re.compile(r"\x1b\[[0-9;]*m")  # colours of the console renderer


def screen(output: str) -> list[str]:
    """The lines a terminal shows for `output`: \\r returns to column 0, ESC[K erases to the end
    of the line, \\n starts a new line (enough of a terminal for the status line)."""
    lines, line, column = [], "", 0
    for token in re.split(r"(\r|\n|\x1b\[K)", _SGR.sub("", output)):
        if token == "\r":
            column = 0
        elif token == "\n":
            lines.append(line)
            line, column = "", 0
        elif token == CLEAR_TO_END:
            line = line[:column]
        else:
            line = line[:column] + token + line[column + len(token) :]
            column += len(token)
    return [*lines, line]


def test_everything_shows_on_a_wide_terminal() -> None:
    assert render_status(BUSY, 200) == BUSY_LINE


def test_narrower_lines_give_up_the_slowest_kinds_then_the_least_important_numbers() -> None:
    assert render_status(BUSY, len(BUSY_LINE) - 1) == BUSY_LINE.replace(" snap 0.5", "")
    assert render_status(BUSY, 100) == (
        "1,235 rec/s | 1,000 mkts | conn 1/2 | gaps 3 | resyncs 2 | reconn 1 | acks 256 | queue 17"
    )
    assert render_status(BUSY, 79) == (
        "1,235 rec/s | 1,000 mkts | conn 1/2 | gaps 3 | reconn 1 | acks 256 | queue 17"
    )
    assert render_status(BUSY, 60) == "1,235 rec/s | 1,000 mkts | conn 1/2 | gaps 3 | reconn 1"
    assert render_status(BUSY, 40) == "1,235 rec/s | 1,000 mkts | conn 1/2"
    assert render_status(BUSY, 25) == "1,235 rec/s | conn 1/2"
    assert render_status(BUSY, 11) == "1,235 rec/s"
    assert render_status(BUSY, 8) == "1,235 r…"
    assert render_status(BUSY, 0) == ""


def test_every_width_fits_and_keeps_the_total_rate_first() -> None:
    for width in range(1, len(BUSY_LINE) + 5):
        line = render_status(BUSY, width)
        assert len(line) <= width, width
        assert "\n" not in line
        assert line.startswith("1,235 rec/s"[: width - 1]), (width, line)


def test_an_idle_start_shows_zeros() -> None:
    assert render_status(StatusSnapshot(), 120) == (
        "0 rec/s | 0 mkts | conn 0/0 | gaps 0 | resyncs 0 | reconn 0 | acks 0 | queue 0"
    )


def test_rates_and_their_format() -> None:
    assert rates_per_s({"trade": 10}, {"trade": 30, "ticker": 5}, 2.0) == {
        "trade": 10.0,
        "ticker": 2.5,
    }
    assert rates_per_s({}, {"trade": 3}, 0.0) == {"trade": 0.0}
    assert [format_rate(r) for r in (12_345.6, 12.4, 9.96, 2.5, 2.0, 0.04, 0.0)] == [
        "12,346",
        "12",
        "10",
        "2.5",
        "2",
        "0",
        "0",
    ]


def test_terminal_width_comes_from_columns_then_the_tty_then_80(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "132")
    assert terminal_width(io.StringIO()) == 132
    monkeypatch.delenv("COLUMNS")
    assert terminal_width(io.StringIO()) == 80  # no file descriptor: the default


def test_log_lines_step_around_the_status_line_on_a_terminal() -> None:
    terminal = FakeTerminal()
    configure_logging("info", LogFormat.AUTO, terminal)  # a TTY: the console renderer
    status_line = open_status_line(width_cols=lambda: 100)
    assert status_line is not None
    log = get_logger("ssmd.test")
    log.info("connector.started", markets=1000)
    status_line.show(BUSY)
    assert status_line.text == render_status(BUSY, 99)  # one column spare
    log.warning("session.gap", sid=1)
    log.info("client.connected", url="ws://127.0.0.1:1")
    shown = screen(terminal.getvalue())
    assert len(shown) == 4
    assert "connector.started" in shown[0]
    assert "session.gap" in shown[1]
    assert "client.connected" in shown[2]
    assert shown[3] == status_line.text  # redrawn below the last log line
    # A new snapshot redraws in place: still one status line, the new text.
    status_line.show(StatusSnapshot(markets=5))
    assert screen(terminal.getvalue())[3:] == [render_status(StatusSnapshot(markets=5), 99)]
    status_line.close()
    log.info("connector.stopped")
    shown = screen(terminal.getvalue())
    assert "connector.stopped" in shown[3]
    assert shown[4] == ""  # the status line is gone and stays gone
    assert terminal.getvalue().endswith("\n")


def test_show_draws_in_place_with_carriage_return_and_clear_to_end() -> None:
    terminal = FakeTerminal()
    status_line = StatusLine(terminal, width_cols=lambda: 60)
    status_line.show(StatusSnapshot(markets=3))
    first = render_status(StatusSnapshot(markets=3), 59)
    assert terminal.getvalue() == f"\r{first}{CLEAR_TO_END}"
    status_line.clear()
    status_line.clear()  # already clear: nothing more
    assert terminal.getvalue() == f"\r{first}{CLEAR_TO_END}\r{CLEAR_TO_END}"


@pytest.mark.parametrize(
    ("fmt", "stream"),
    [
        (LogFormat.JSON, FakeTerminal()),  # JSON lines even on a terminal
        (LogFormat.AUTO, io.StringIO()),  # not a terminal: JSON lines
        (LogFormat.CONSOLE, io.StringIO()),  # readable lines, but not a terminal
    ],
)
def test_no_status_line_for_json_logs_or_off_a_terminal(
    fmt: LogFormat, stream: io.StringIO
) -> None:
    configure_logging("info", fmt, stream)
    assert open_status_line() is None
    get_logger("ssmd.test").warning("session.gap", sid=1)
    assert "\r" not in stream.getvalue()
    assert CLEAR_TO_END not in stream.getvalue()
