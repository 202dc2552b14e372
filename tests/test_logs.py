"""Logging: JSON lines with stable event names, level filtering and secret redaction."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from ssmd.errors import ConfigError
from ssmd.logs import (
    LOG_LEVEL_ENV,
    REDACTED,
    LogFormat,
    LogLevel,
    RepeatLimiter,
    bind_context,
    clear_context,
    configure_logging,
    get_logger,
)


@pytest.fixture(autouse=True)
def _reset_structlog(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    yield
    clear_context()
    structlog.reset_defaults()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_event_name_keys_level_logger_and_utc_time() -> None:
    stream = io.StringIO()
    assert configure_logging("info", LogFormat.JSON, stream) is LogLevel.INFO
    get_logger("ssmd.test").info("connector.started", environment="local", markets=20)
    (line,) = json_lines(stream)
    assert line["event"] == "connector.started"
    assert line["environment"] == "local"
    assert line["markets"] == 20
    assert line["level"] == "info"
    assert line["logger"] == "ssmd.test"
    assert line["timestamp"].endswith("Z")
    parsed = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert parsed.utcoffset() == UTC.utcoffset(None)


def test_auto_format_is_json_when_not_a_tty() -> None:
    stream = io.StringIO()
    configure_logging("info", LogFormat.AUTO, stream)
    get_logger("ssmd.test").warning("session.gap", expected_seq=5, received_seq=7)
    (line,) = json_lines(stream)
    assert line == {
        "event": "session.gap",
        "expected_seq": 5,
        "received_seq": 7,
        "level": "warning",
        "logger": "ssmd.test",
        "timestamp": line["timestamp"],
    }


def test_console_format_is_human_readable() -> None:
    stream = io.StringIO()
    configure_logging("info", LogFormat.CONSOLE, stream)
    get_logger("ssmd.test").info("connector.started", markets=20)
    text = stream.getvalue()
    assert "connector.started" in text
    assert "markets" in text
    assert "20" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_levels_below_the_threshold_are_dropped() -> None:
    stream = io.StringIO()
    configure_logging(LogLevel.WARNING, LogFormat.JSON, stream)
    log = get_logger("ssmd.test")
    log.debug("a.debug")
    log.info("a.info")
    log.warning("a.warning")
    log.error("a.error")
    assert [line["event"] for line in json_lines(stream)] == ["a.warning", "a.error"]


def test_env_var_overrides_the_configured_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOG_LEVEL_ENV, "DEBUG")
    stream = io.StringIO()
    assert configure_logging("error", LogFormat.JSON, stream) is LogLevel.DEBUG
    get_logger("ssmd.test").debug("a.debug")
    assert [line["event"] for line in json_lines(stream)] == ["a.debug"]


def test_bad_level_in_env_var_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOG_LEVEL_ENV, "chatty")
    with pytest.raises(ConfigError) as info:
        configure_logging("info", LogFormat.JSON, io.StringIO())
    assert LOG_LEVEL_ENV in info.value.source
    assert "debug|info|warning|error" in info.value.fix


def test_secret_looking_keys_are_redacted() -> None:
    stream = io.StringIO()
    configure_logging("info", LogFormat.JSON, stream)
    get_logger("ssmd.test").info(
        "auth.debugging",
        password="hunter2",
        api_token="tok-123",
        client_secret="s3cr3t",
        private_key="PEMDATA",
        signature="c2lnbmF0dXJl",
        seed=42,
        creds="user:pass",
        key_id="public-id",
        private_key_file="/etc/kalshi/key.pem",
        private_key_env="KALSHI_PRIVATE_KEY",
    )
    (line,) = json_lines(stream)
    for key in ("password", "api_token", "client_secret", "private_key", "signature", "seed"):
        assert line[key] == REDACTED, key
    assert line["creds"] == REDACTED
    # Keys naming *where* a secret lives, and plain identifiers, are kept.
    assert line["key_id"] == "public-id"
    assert line["private_key_file"] == "/etc/kalshi/key.pem"
    assert line["private_key_env"] == "KALSHI_PRIVATE_KEY"
    text = stream.getvalue()
    for secret in ("hunter2", "tok-123", "s3cr3t", "PEMDATA", "c2lnbmF0dXJl", "user:pass"):
        assert secret not in text


def test_nested_secrets_and_pem_strings_are_redacted() -> None:
    stream = io.StringIO()
    configure_logging("info", LogFormat.JSON, stream)
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
    get_logger("ssmd.test").info(
        "client.handshake",
        headers={"KALSHI-ACCESS-KEY": "kid", "KALSHI-ACCESS-SIGNATURE": "sig=="},
        attempts=[{"token": "t1"}, {"ok": True}],
        note=pem,
    )
    (line,) = json_lines(stream)
    assert line["headers"] == {"KALSHI-ACCESS-KEY": "kid", "KALSHI-ACCESS-SIGNATURE": REDACTED}
    assert line["attempts"] == [{"token": REDACTED}, {"ok": True}]
    assert line["note"] == REDACTED
    assert "MIIEpAIBAAKCAQEA" not in stream.getvalue()


def test_bound_context_appears_on_every_line() -> None:
    stream = io.StringIO()
    configure_logging("info", LogFormat.JSON, stream)
    bind_context(connection_id="local/1/1")
    log = get_logger("ssmd.test", component="client")
    log.info("client.connected")
    log.bind(sid=3).info("client.subscribed")
    lines = json_lines(stream)
    assert [line["connection_id"] for line in lines] == ["local/1/1", "local/1/1"]
    assert [line["component"] for line in lines] == ["client", "client"]
    assert lines[1]["sid"] == 3


def test_exceptions_are_rendered_into_the_json_line() -> None:
    stream = io.StringIO()
    configure_logging("info", LogFormat.JSON, stream)
    try:
        raise ValueError("bad frame")
    except ValueError:
        get_logger("ssmd.test").exception("client.failed")
    (line,) = json_lines(stream)
    assert line["event"] == "client.failed"
    assert line["level"] == "error"
    assert "ValueError: bad frame" in line["exception"]


def test_non_json_values_are_stringified() -> None:
    stream = io.StringIO()
    configure_logging("info", LogFormat.JSON, stream)
    get_logger("ssmd.test").info("x.y", level_enum=LogLevel.INFO, when=datetime(2026, 1, 1))
    (line,) = json_lines(stream)
    assert line["level_enum"] == "info"
    assert line["when"].startswith("2026-01-01")


# -- rate-limited repeats ----------------------------------------------------------------------


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1_000.0

    def __call__(self) -> float:
        return self.now_s


def test_identical_warnings_within_the_window_are_dropped_and_counted() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    configure_logging("info", LogFormat.JSON, stream, repeat_window_s=10.0, monotonic_s=clock)
    log = get_logger("ssmd.test")
    for attempt in range(5):  # numbers (attempt, seq) are not part of what makes a repeat
        log.warning("nats.reconnect_failed", error="connection refused", attempt=attempt)
        clock.now_s += 1.0
    log.warning("nats.reconnect_failed", error="no route to host", attempt=5)  # another error
    clock.now_s = 1_000.0 + 10.0  # the window of the first line has passed
    log.warning("nats.reconnect_failed", error="connection refused", attempt=6)
    log.warning("nats.reconnect_failed", error="connection refused", attempt=7)  # a new window
    clock.now_s += 10.0
    log.warning("nats.reconnect_failed", error="connection refused", attempt=8)
    lines = json_lines(stream)
    assert [(line["error"], line["attempt"], line.get("repeated")) for line in lines] == [
        ("connection refused", 0, None),
        ("no route to host", 5, None),
        ("connection refused", 6, 4),  # attempts 1-4 were dropped
        ("connection refused", 8, 1),  # attempt 7
    ]


def test_repeats_are_told_apart_by_logger_level_event_and_text_values() -> None:
    stream = io.StringIO()
    configure_logging("info", LogFormat.JSON, stream, monotonic_s=FakeClock())
    get_logger("ssmd.a").warning("x.failed", reason="timeout", sid=1)
    get_logger("ssmd.a").warning("x.failed", reason="timeout", sid=2)  # a number: a repeat
    get_logger("ssmd.b").warning("x.failed", reason="timeout")  # another logger
    get_logger("ssmd.a").error("x.failed", reason="timeout")  # another level
    get_logger("ssmd.a").warning("x.other", reason="timeout")  # another event
    get_logger("ssmd.a").warning("x.failed", reason="closed")  # another string value
    get_logger("ssmd.a").warning("x.failed", reason="timeout", retrying=True)  # another key
    get_logger("ssmd.a").warning("x.failed", reason="timeout", markets=["A"])
    get_logger("ssmd.a").warning("x.failed", reason="timeout", markets=["B"])  # by repr
    bind_context(connection_id="c/2")
    get_logger("ssmd.a").warning("x.failed", reason="timeout", sid=1)  # bound context counts
    lines = json_lines(stream)
    assert [(line["logger"], line["level"], line["event"]) for line in lines] == [
        ("ssmd.a", "warning", "x.failed"),
        ("ssmd.b", "warning", "x.failed"),
        ("ssmd.a", "error", "x.failed"),
        ("ssmd.a", "warning", "x.other"),
        ("ssmd.a", "warning", "x.failed"),
        ("ssmd.a", "warning", "x.failed"),
        ("ssmd.a", "warning", "x.failed"),
        ("ssmd.a", "warning", "x.failed"),
        ("ssmd.a", "warning", "x.failed"),
    ]
    assert lines[-1]["connection_id"] == "c/2"


def test_info_lines_are_never_rate_limited() -> None:
    stream = io.StringIO()
    configure_logging("info", LogFormat.JSON, stream, monotonic_s=FakeClock())
    for _ in range(3):
        get_logger("ssmd.test").info("client.connected", url="ws://127.0.0.1:1")
    assert [line.get("repeated") for line in json_lines(stream)] == [None, None, None]


def test_a_zero_window_turns_the_limiter_off() -> None:
    stream = io.StringIO()
    configure_logging("info", LogFormat.JSON, stream, repeat_window_s=0)
    for _ in range(3):
        get_logger("ssmd.test").error("x.failed", reason="same")
    assert len(json_lines(stream)) == 3


def test_repeats_are_judged_on_redacted_values_and_stay_redacted() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    configure_logging("info", LogFormat.JSON, stream, monotonic_s=clock)
    log = get_logger("ssmd.test")
    log.warning("auth.rejected", token="tok-1", key_id="k")
    log.warning("auth.rejected", token="tok-2", key_id="k")  # differs only in a secret: a repeat
    clock.now_s += 11.0
    log.warning("auth.rejected", token="tok-3", key_id="k")
    lines = json_lines(stream)
    assert [(line["token"], line.get("repeated")) for line in lines] == [
        (REDACTED, None),
        (REDACTED, 1),
    ]
    assert "tok-" not in stream.getvalue()


def test_the_limiter_forgets_the_stalest_lines_beyond_its_capacity() -> None:
    clock = FakeClock()
    limiter = RepeatLimiter(10.0, monotonic_s=clock, max_keys=2)

    def passes(event: str) -> bool:
        try:
            limiter(None, "warning", {"event": event, "level": "warning"})
        except structlog.DropEvent:
            return False
        return True

    assert [passes(event) for event in ("a", "b", "a", "c", "a", "b")] == [
        True,  # a
        True,  # b
        False,  # a again
        True,  # c: a (the stalest) is forgotten
        True,  # a: new again, b forgotten
        True,  # b
    ]
