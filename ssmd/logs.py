"""Structured logging for ssmd: one structlog pipeline, JSON lines or a console renderer.

Event names are stable dotted strings (`connector.started`); context goes in keys, never in
the event text. A redaction processor is the last safety net against logging secrets.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO, cast

import msgspec
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from ssmd.errors import ConfigError

LOG_LEVEL_ENV = "SSMD_LOG_LEVEL"
REDACTED = "<redacted>"

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
    level: LogLevel | str, fmt: LogFormat, stream: TextIO = sys.stderr
) -> LogLevel:
    """Install the process-wide structlog configuration; returns the effective level.

    Call it once, before the first log call: loggers cache their configuration on first use.
    `SSMD_LOG_LEVEL` overrides `level`. Timestamps are ISO-8601 UTC (`...Z`).
    """
    chosen = effective_log_level(level)
    use_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not _is_tty(stream))
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    if use_json:
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_json_serializer),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=_is_tty(stream)))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(chosen.number),
        context_class=dict,
        logger_factory=_NamedWriteLoggerFactory(stream),
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
    "LogFormat",
    "LogLevel",
    "add_logger_name",
    "bind_context",
    "clear_context",
    "configure_logging",
    "effective_log_level",
    "get_logger",
    "parse_log_level",
    "redact_secrets",
]
