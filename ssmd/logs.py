"""Structured logging for ssmd: one structlog pipeline, JSON lines or a console renderer.

Event names are stable dotted strings (`connector.started`); context goes in keys, never in
the event text. A redaction processor is the last safety net against logging secrets; a repeat
limiter keeps a storm of identical warnings from flooding the log; on an interactive console,
log lines step around an overlay (the status line, ssmd.statusline).
"""

from __future__ import annotations

import enum
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Protocol, TextIO, cast

import msgspec
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from ssmd.errors import ConfigError

LOG_LEVEL_ENV = "SSMD_LOG_LEVEL"
REDACTED = "<redacted>"
REPEAT_WINDOW_S = 10.0  # an identical warning or error within this long of the last is dropped
REPEATED_KEY = "repeated"  # how many identical lines were dropped before this one

# Keys whose values look secret. Matched case-insensitively anywhere in the key name, except
# keys that name *where* a secret lives (`private_key_file`, `private_key_env`), not the secret.
_SECRET_KEY = re.compile(
    r"password|passwd|token|secret|private_key|signature|seed|creds|authorization|api_key",
    re.IGNORECASE,
)
_LOCATOR_SUFFIXES = ("_file", "_env", "_path")
_PEM_MARKER = "PRIVATE KEY-----"
_MAX_REDACT_DEPTH = 4


class LogFormat(enum.Enum):
    """How log lines are rendered."""

    AUTO = "auto"  # console renderer on a TTY, JSON lines otherwise
    JSON = "json"
    CONSOLE = "console"


class LogLevel(enum.Enum):
    """The levels an operator may choose (config `log.level`, env SSMD_LOG_LEVEL)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @classmethod
    def _missing_(cls, value: object) -> LogLevel | None:
        """Accept any case ("INFO", "Debug")."""
        if isinstance(value, str) and value.strip().lower() != value:
            return cls(value.strip().lower())
        return None

    @property
    def number(self) -> int:
        """The stdlib `logging` number, as structlog's level filter wants it."""
        return _LEVEL_NUMBERS[self]


_LEVEL_NUMBERS = {
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}


def _is_secret_key(key: str) -> bool:
    if key.lower().endswith(_LOCATOR_SUFFIXES):
        return False
    return _SECRET_KEY.search(key) is not None


def _redact_value(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return REDACTED if _PEM_MARKER in value else value
    if depth >= _MAX_REDACT_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {
            key: (
                REDACTED
                if isinstance(key, str) and _is_secret_key(key)
                else _redact_value(item, depth + 1)
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(item, depth + 1) for item in value]
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace values of secret-looking keys (and any string holding a PEM private key)."""
    for key, value in event_dict.items():
        if key != "event" and _is_secret_key(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str | Mapping | list | tuple):
            event_dict[key] = _redact_value(value, 0)
    return event_dict


_LEVEL_BY_NAME = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Never part of a line's identity: when it was written, and the count this limiter adds.
_NOT_IDENTITY = frozenset({"timestamp", REPEATED_KEY})


class RepeatLimiter:
    """A structlog processor that rate-limits identical warnings and errors.

    A line identical to one let through less than `window_s` ago is dropped and counted; the
    first identical one after the window passes with `repeated=N` (N lines were dropped) and
    starts a new window. Identical means: the same logger, level and event, and the same values
    for every other key except numbers (int or float, not bool: counters, seq, ids, durations,
    timestamps) and `timestamp`. Strings, enums, bools, None and containers (compared by repr)
    count, so `session.gap` on two sids is one storm, but a different error text is not.
    Lines below `min_level` pass untouched: info lines are lifecycle events an operator wants
    every one of, and debug is asked for. Drops of a storm that ends are never reported.
    Runs after redact_secrets, so it keeps no secret. The clock is injected.
    """

    def __init__(
        self,
        window_s: float = REPEAT_WINDOW_S,
        *,
        min_level: LogLevel = LogLevel.WARNING,
        monotonic_s: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        self.window_s = window_s
        self.min_level_number = min_level.number
        self.max_keys = max_keys
        self._monotonic_s = monotonic_s
        # Insertion order is window-start order: the first entries are the stalest (evicted
        # beyond max_keys, their drops unreported).
        self._seen: dict[Hashable, _RepeatWindow] = {}

    def __call__(self, _logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        level = _LEVEL_BY_NAME.get(str(event_dict.get("level", method)), logging.ERROR)
        if level < self.min_level_number or self.window_s <= 0:
            return event_dict
        identity = _identity(event_dict)
        now_s = self._monotonic_s()
        seen = self._seen.get(identity)
        if seen is not None:
            if now_s - seen.start_s < self.window_s:
                seen.dropped += 1
                raise structlog.DropEvent
            del self._seen[identity]
            if seen.dropped:
                event_dict[REPEATED_KEY] = seen.dropped
        while len(self._seen) >= self.max_keys:
            del self._seen[next(iter(self._seen))]
        self._seen[identity] = _RepeatWindow(now_s)
        return event_dict


class _RepeatWindow:
    __slots__ = ("dropped", "start_s")

    def __init__(self, start_s: float) -> None:
        self.start_s = start_s
        self.dropped = 0


def _identity(event_dict: EventDict) -> Hashable:
    return tuple(
        sorted(
            (key, value if isinstance(value, str) else repr(value))
            for key, value in event_dict.items()
            if key not in _NOT_IDENTITY
            and (isinstance(value, bool) or not isinstance(value, int | float))
        )
    )


class LineOverlay(Protocol):
    """A line drawn below the log (the status line): erased before each log line, drawn again
    after it."""

    def clear(self) -> None: ...

    def redraw(self) -> None: ...


class _OverlaidStream:
    """The console's stream as log lines see it: writing a line clears the overlay (if one is
    attached) first and redraws it after; the logger's flush then sends both."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.overlay: LineOverlay | None = None

    def write(self, text: str) -> int:
        overlay = self.overlay
        if overlay is None:
            return self.stream.write(text)
        overlay.clear()
        written = self.stream.write(text)
        if text.endswith("\n"):
            overlay.redraw()
        return written

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return _is_tty(self.stream)


_console: _OverlaidStream | None = None  # set while log lines go to an interactive console


def interactive_console() -> TextIO | None:
    """The terminal stream log lines are rendered on for a person (console renderer on a TTY),
    or None (JSON lines, or not a terminal): where a status line may be drawn."""
    return _console.stream if _console is not None else None


def attach_overlay(overlay: LineOverlay) -> bool:
    """Make log lines step around `overlay`; False when logs are not on an interactive console."""
    if _console is None:
        return False
    _console.overlay = overlay
    return True


def detach_overlay(overlay: LineOverlay) -> None:
    if _console is not None and _console.overlay is overlay:
        _console.overlay = None


class _NamedWriteLogger(structlog.WriteLogger):
    """A WriteLogger that remembers the name it was created with."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    """Like structlog.WriteLoggerFactory, but `get_logger("ssmd.x")` keeps the name."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(self._file, str(args[0]) if args else "")


def add_logger_name(logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", "")
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


def _json_serializer(obj: Any, **_kwargs: Any) -> str:
    # msgspec encodes enums, dataclasses and Structs natively; anything else becomes str().
    return msgspec.json.encode(obj, enc_hook=str).decode()


def parse_log_level(text: str, *, source: str) -> LogLevel:
    """`text` as a LogLevel (case-insensitive); ConfigError naming `source` otherwise."""
    try:
        return LogLevel(text)
    except ValueError as exc:
        allowed = "|".join(level.value for level in LogLevel)
        raise ConfigError(
            f"unknown log level {text!r}", source=source, fix=f"use one of {allowed}"
        ) from exc


def effective_log_level(level: LogLevel | str) -> LogLevel:
    """The configured level, unless the SSMD_LOG_LEVEL environment variable overrides it."""
    override = os.environ.get(LOG_LEVEL_ENV, "").strip()
    if override:
        return parse_log_level(override, source=f"environment variable {LOG_LEVEL_ENV}")
    if isinstance(level, LogLevel):
        return level
    return parse_log_level(level, source="log.level")


def configure_logging(
    level: LogLevel | str,
    fmt: LogFormat,
    stream: TextIO = sys.stderr,
    *,
    repeat_window_s: float = REPEAT_WINDOW_S,
    monotonic_s: Callable[[], float] = time.monotonic,
) -> LogLevel:
    """Install the process-wide structlog configuration; returns the effective level.

    Call it once, before the first log call: loggers cache their configuration on first use.
    `SSMD_LOG_LEVEL` overrides `level`. Timestamps are ISO-8601 UTC (`...Z`). Identical
    warnings and errors within `repeat_window_s` (0: off) are dropped (RepeatLimiter).
    """
    global _console
    chosen = effective_log_level(level)
    use_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not _is_tty(stream))
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_logger_name,
        redact_secrets,
        RepeatLimiter(repeat_window_s, monotonic_s=monotonic_s),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_json_serializer),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=_is_tty(stream)))
    _console = _OverlaidStream(stream) if not use_json and _is_tty(stream) else None
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(chosen.number),
        context_class=dict,
        logger_factory=_NamedWriteLoggerFactory(cast(TextIO, _console) if _console else stream),
        cache_logger_on_first_use=True,
    )
    return chosen


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False


def get_logger(name: str, **initial_values: Any) -> FilteringBoundLogger:
    """A logger whose lines carry `logger=name` (lazy: safe to create at import time)."""
    return cast(FilteringBoundLogger, structlog.get_logger(name, **initial_values))


def bind_context(**values: Any) -> None:
    """Bind keys (connection_id, environment...) to every log line of the current task."""
    structlog.contextvars.bind_contextvars(**values)


def clear_context() -> None:
    structlog.contextvars.clear_contextvars()


__all__ = [
    "LOG_LEVEL_ENV",
    "REDACTED",
    "REPEATED_KEY",
    "REPEAT_WINDOW_S",
    "LineOverlay",
    "LogFormat",
    "LogLevel",
    "RepeatLimiter",
    "add_logger_name",
    "attach_overlay",
    "bind_context",
    "clear_context",
    "configure_logging",
    "detach_overlay",
    "effective_log_level",
    "get_logger",
    "interactive_console",
    "parse_log_level",
    "redact_secrets",
]
