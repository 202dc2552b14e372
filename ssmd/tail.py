"""`ssmd tail`: a downstream NATS subscriber that prints the records it receives, the first
check that data flows. Pure parts (start positions, subjects, payload decoding, line formats)
and one thin asyncio driver, `run_tail`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.api import DeliverPolicy

from ssmd.config import NatsTransportSettings, Settings
from ssmd.errors import ConfigError, TransportError
from ssmd.records import (
    RECORD_TYPES,
)
from ssmd.subjects import encode_token, stream_covers
from ssmd.tail_format import (
    OutputFormat,
    render_message,
)
from ssmd.transport.nats import connect_nats

EXIT_OK = 0
EXIT_NO_RECORDS = 1
EXIT_USAGE = 2
STATUS_KIND = "status"
DEFAULT_PREFIX = "ssmd.local.kalshi"  # the `local` environment's subject prefix
TAIL_CONNECTION_NAME = "ssmd-tail"
RECONNECT_WAIT_S = 1.0
RECORD_KINDS: tuple[str, ...] = tuple(
    str(record_type.__struct_config__.tag) for record_type in RECORD_TYPES
)


@dataclass(frozen=True)
class StartPosition:
    """Where a JetStream tail starts (`--from`): a deliver policy and its argument."""

    policy: DeliverPolicy = DeliverPolicy.NEW
    stream_seq: int | None = None  # DeliverPolicy.BY_START_SEQUENCE
    start_time: dt.datetime | None = None  # DeliverPolicy.BY_START_TIME, timezone-aware

    def consumer_config(self) -> js_api.ConsumerConfig:
        return js_api.ConsumerConfig(
            deliver_policy=self.policy,
            opt_start_seq=self.stream_seq,
            opt_start_time=self.start_time,
        )


def parse_start(text: str) -> StartPosition:
    """`new`, `all`, `last`, `seq:N` (N >= 1) or `time:RFC3339` (with a UTC offset or Z).

    Raises ValueError naming the accepted forms.
    """
    word, _, value = text.partition(":")
    forms = "new, all, last, seq:N or time:RFC3339 (e.g. time:2026-01-31T14:00:00Z)"
    if word in ("new", "all", "last") and not value:
        return StartPosition(DeliverPolicy(word))
    if word == "seq" and value.isdigit() and value.isascii() and int(value) >= 1:
        return StartPosition(DeliverPolicy.BY_START_SEQUENCE, stream_seq=int(value))
    if word == "time" and value:
        try:
            start_time = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"{text!r}: not an RFC 3339 time; use {forms}") from exc
        if start_time.tzinfo is None:
            raise ValueError(f"{text!r}: the time needs a UTC offset, e.g. Z or +00:00")
        return StartPosition(DeliverPolicy.BY_START_TIME, start_time=start_time.astimezone(dt.UTC))
    raise ValueError(f"{text!r}: use {forms}")


def subject_to_tail(
    prefix: str, *, subject: str | None = None, kind: str | None = None, market: str | None = None
) -> str:
    """The subject to subscribe to: `subject` as given, else built from the prefix and an
    optional record kind and exchange ticker (encoded to one subject token)."""
    if subject is not None:
        if kind is not None or market is not None:
            raise ValueError("give either SUBJECT or --kind/--market, not both")
        return subject
    if kind is not None and kind not in RECORD_KINDS:
        raise ValueError(f"unknown record kind {kind!r} (one of {', '.join(RECORD_KINDS)})")
    if kind == STATUS_KIND:
        if market is not None:
            raise ValueError("status records are connector-wide: --kind status takes no --market")
        return f"{prefix}.{STATUS_KIND}"
    if market is None:
        return f"{prefix}.{kind}.>" if kind else f"{prefix}.>"
    return f"{prefix}.{kind or '*'}.{encode_token(market)}"


@dataclass(frozen=True)
class TailOptions:
    """Everything `ssmd tail` was asked for (cli.py builds it from the command line)."""

    env: str | None = None
    servers: tuple[str, ...] = ()
    subject: str | None = None
    kind: str | None = None
    market: str | None = None
    prefix: str | None = None
    core: bool = False
    start: StartPosition | None = None  # None: `new`, and core when no stream covers it
    output: OutputFormat = OutputFormat.READABLE
    count: int | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class TailTarget:
    """Where to connect and what to follow, resolved from the options and the environment."""

    settings: NatsTransportSettings
    servers: tuple[str, ...]
    subject: str
    stream_name: str | None  # the environment's stream, tried first


def resolve_target(options: TailOptions, load: Callable[[str], Settings]) -> TailTarget:
    """Servers, credentials, prefix and stream from `--env` and `--server`.

    `--server` alone uses no credentials and the `local` prefix unless `--prefix` is given.
    Raises ConfigError (the environment cannot be tailed) or ValueError (bad subject options).
    """
    settings: NatsTransportSettings | None = None
    stream_name: str | None = None
    servers = options.servers
    if options.env is not None:
        environment = load(options.env)
        transport = environment.transport
        if not isinstance(transport, NatsTransportSettings):
            raise ConfigError(
                f"publishes to transport.kind {transport.kind!r}, not to NATS",
                source=environment.source,
                field="transport.kind",
                fix="tail a NATS environment (e.g. --env local) or give --server URL",
            )
        settings = transport
        stream_name = transport.stream.name
        if not servers:
            servers = _environment_servers(environment, transport)
    if settings is None:
        settings = NatsTransportSettings.model_validate({"kind": "nats", "servers": list(servers)})
    prefix = options.prefix or (settings.subject_prefix if options.env else DEFAULT_PREFIX)
    subject = subject_to_tail(
        prefix, subject=options.subject, kind=options.kind, market=options.market
    )
    return TailTarget(settings, tuple(servers), subject, stream_name)


def _environment_servers(
    environment: Settings, transport: NatsTransportSettings
) -> tuple[str, ...]:
    managed = transport.managed_server
    if managed is None:
        return tuple(transport.servers)
    if managed.port == 0:
        raise ConfigError(
            "the managed nats-server takes a random port (0)",
            source=environment.source,
            field="transport.managed_server.port",
            fix="give --server with the URL of the connector's `nats_server.started` log line",
        )
    return (f"nats://127.0.0.1:{managed.port}",)


class _ConnectionNotices:
    """nats-py connection callbacks as short stderr notices (repeats of one error once)."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.connected = False  # before: connect_nats reports; after close: no news
        self._last_error = ""

    def _say(self, text: str) -> None:
        if self.connected:
            self.err.write(f"ssmd tail: {text}\n")
            self.err.flush()

    async def on_error(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if text != self._last_error:
            self._say(f"NATS: {text}")
        self._last_error = text

    async def on_disconnected(self) -> None:
        self._say("disconnected from NATS, reconnecting")

    async def on_reconnected(self) -> None:
        self._last_error = ""
        self._say("reconnected")


async def run_tail(
    options: TailOptions, *, load: Callable[[str], Settings], out: TextIO, err: TextIO
) -> int:
    """Follow the subject and print records until --count, --timeout-s or SIGINT/SIGTERM.

    Exit codes: 0 records arrived (or a signal stopped it), 1 the timeout passed with no
    record, 2 bad options, unreachable server, or no stream for a JetStream tail.
    """
    try:
        target = resolve_target(options, load)
    except (ConfigError, ValueError) as exc:
        err.write(f"ssmd tail: {exc}\n")
        return EXIT_USAGE
    where = ", ".join(target.servers) or "the configured servers"
    notices = _ConnectionNotices(err)
    try:
        nc = await connect_nats(
            target.settings,
            servers=list(target.servers) or None,
            name=TAIL_CONNECTION_NAME,
            # Fail fast when nothing answers at start (two tries per server) ...
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            error_cb=notices.on_error,
            disconnected_cb=notices.on_disconnected,
            reconnected_cb=notices.on_reconnected,
        )
    except (TransportError, ConfigError) as exc:  # unreachable; a secret's env var or file
        err.write(f"ssmd tail: {exc}\n")
        return EXIT_USAGE
    # ... but once following, ride out server restarts like `tail -f` (nats-py reads these
    # options at every reconnect).
    nc.options["max_reconnect_attempts"] = -1
    nc.options["reconnect_time_wait"] = RECONNECT_WAIT_S
    notices.connected = True
    try:
        subscription = await _subscribe(nc, target, options, err, where=where)
        if subscription is None:
            return EXIT_USAGE
        try:
            return await _receive(*subscription, options, out=out, err=err)
        except BrokenPipeError:  # `ssmd tail | head`: the reader is gone, which is fine
            return EXIT_OK
    finally:
        notices.connected = False  # our own close is no news
        await nc.close()


async def _subscribe(
    nc: NatsClient, target: TailTarget, options: TailOptions, err: TextIO, *, where: str
) -> tuple[Subscription, bool] | None:
    """A core subscription, or an ordered JetStream consumer when a stream covers the subject.

    Returns (subscription, is_jetstream), or None after explaining why there is none.
    """
    subject = target.subject
    if not options.core:
        js = nc.jetstream()
        stream, why_not = await _find_stream(js, target)
        if stream is None and options.start is not None:
            err.write(
                f"ssmd tail: {why_not} on {where}; is a connector publishing there with"
                " transport.kind nats? (--core follows new messages without a stream)\n"
            )
            return None
        if stream is not None:
            start = options.start or StartPosition()
            try:
                js_sub = await js.subscribe(
                    subject, stream=stream, ordered_consumer=True, config=start.consumer_config()
                )
            except nats.js.errors.APIError as exc:
                err.write(f"ssmd tail: stream {stream} refused a consumer on {subject}: {exc}\n")
                return None
            err.write(
                f"ssmd tail: following {subject} in stream {stream} from {start.policy.value}\n"
            )
            err.flush()
            return js_sub, True
        err.write(f"ssmd tail: {why_not}; following new messages only\n")
    sub = await nc.subscribe(subject)
    await nc.flush()  # the server has the subscription before we say we are listening
    err.write(f"ssmd tail: following {subject} (core subscription, new messages only)\n")
    err.flush()
    return sub, False


async def _find_stream(js: JetStreamContext, target: TailTarget) -> tuple[str | None, str]:
    """The stream to read: the environment's if it covers the subject, else whichever stream
    the server says holds it. Returns (name, "") or (None, why there is none)."""
    subject = target.subject
    names = [target.stream_name] if target.stream_name else []
    why_not = f"no JetStream stream covers {subject}"
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            names.append(await js.find_stream_name_by_subject(subject))
        for name in dict.fromkeys(names):
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                continue
            if stream_covers(info.config.subjects or [], subject):
                return name, ""
            why_not = f"stream {name} holds {info.config.subjects}, which do not cover {subject}"
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return None, "the server has no JetStream (start nats-server with -js)"
    return None, why_not


async def _receive(
    sub: Subscription, jetstream: bool, options: TailOptions, *, out: TextIO, err: TextIO
) -> int:
    """Print messages until --count, --timeout-s without a record, or SIGINT/SIGTERM."""
    printed = 0
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    stop_wait = asyncio.ensure_future(stopped.wait())
    try:
        while options.count is None or printed < options.count:
            next_msg = asyncio.ensure_future(sub.next_msg(timeout=None))
            done, _ = await asyncio.wait(
                {next_msg, stop_wait},
                timeout=options.timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if next_msg not in done:  # a signal, or --timeout-s without a record
                next_msg.cancel()
                with contextlib.suppress(asyncio.CancelledError, nats.errors.Error):
                    await next_msg
                return EXIT_OK if printed or stop_wait in done else EXIT_NO_RECORDS
            try:
                msg = next_msg.result()
            except nats.errors.ConnectionClosedError:
                err.write("ssmd tail: the NATS connection closed\n")
                return EXIT_OK if printed else EXIT_NO_RECORDS
            content_type = msg.headers.get("Content-Type") if msg.headers else None
            stream_seq = msg.metadata.sequence.stream if jetstream else None
            try:
                line = render_message(msg.data, content_type, options.output, stream_seq=stream_seq)
            except msgspec.DecodeError as exc:
                where = f"stream_seq={stream_seq} " if stream_seq is not None else ""
                err.write(f"ssmd tail: {where}{msg.subject}: not a record ({exc})\n")
                continue
            out.write(line + "\n")
            out.flush()
            printed += 1
        return EXIT_OK
    finally:
        stop_wait.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
