"""The nats-py side of the JetStream transport: connecting with every auth option, stream
creation/validation, and a client whose parser hands JetStream acks straight to the transport
(no per-ack Msg, queue or task). Relies on nats-py 2.16 internals (`Parser.buf/state`,
`Client._send_command`): the transport tests fail at once if a release changes them;
pyproject pins nats-py 2.16.x.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api as js_api
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

from ssmd.config import NatsTransportSettings, resolve_nats_secrets
from ssmd.logs import get_logger
from ssmd.subjects import stream_covers
from ssmd.transport.nats_core import (
    NatsConnectError,
    NatsTransportError,
    NoJetStream,
    PubAcks,
    StreamMismatch,
    StreamMissing,
    connect_options,
)

NATS_ERRORS = (OSError, TimeoutError, nats.errors.Error)
_JS_NOT_ENABLED_FOR_ACCOUNT = 10039  # JetStream API err_code
_STREAM_NAME_IN_USE = 10058

log = get_logger("ssmd.transport.nats")
_CRLF_LEN = 2


class AckParser(Parser):
    """nats-py's protocol parser with a fast path for the acks at the front of what was read.

    `MSG <inbox>.<n> <sid> <size>` with our ack subscription's sid is matched with one regex;
    the acks of one read go to `on_pub_acks([(n, data), ...])` in one call. Anything else, and
    a message not yet whole, is left to nats-py's own parse (nats/protocol/parser.py), which
    continues from there.
    """

    def __init__(self, nc: Client) -> None:
        super().__init__(nc)
        self.ack_line: re.Pattern[bytes] | None = None
        self.on_pub_acks: Callable[[PubAcks], None] | None = None

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        ack_line, on_pub_acks = self.ack_line, self.on_pub_acks
        if ack_line is not None and on_pub_acks is not None and self.state == AWAITING_CONTROL_LINE:
            pos, size = 0, len(buf)
            acks: PubAcks = []
            while (line := ack_line.match(buf, pos)) is not None:
                start = line.end()
                end = start + int(line[2])
                if end + _CRLF_LEN > size:  # the rest of this ack comes with the next read:
                    del buf[:pos]  # keep the fast path for it (nats-py's would take over)
                    if acks:
                        on_pub_acks(acks)
                    return
                acks.append((line[1], bytes(buf[start:end])))
                pos = end + _CRLF_LEN
            if pos:
                del buf[:pos]
                on_pub_acks(acks)
        await super().parse()


class AckClient(Client):
    """nats-py's Client, with the JetStream acks of one subscription handled as they are parsed.

    An ack is tiny and there is one per record: nats-py would parse it generically, build a
    Msg, queue it and hand it to a callback task. Here `on_pub_acks([(n, data), ...])` (n: the
    reply subject's last token) runs straight from the parser (AckParser) once per read, or
    from _process_msg (nats/aio/client.py) for an ack that arrived in pieces. Messages with
    headers (status replies such as 503) and other subscriptions take nats-py's usual path.
    """

    def __init__(self) -> None:
        super().__init__()
        self._ps: AckParser = AckParser(self)
        self._ack_sid = -1
        self._ack_prefix_len = 0
        self._on_pub_acks: Callable[[PubAcks], None] | None = None

    def route_acks(self, inbox: str, sid: int, on_pub_acks: Callable[[PubAcks], None]) -> None:
        """Send messages on `{inbox}.<n>` for subscription `sid` to on_pub_acks([(n, data)])."""
        self._ack_sid, self._ack_prefix_len = sid, len(inbox) + 1
        self._on_pub_acks = on_pub_acks
        pattern = b"MSG " + re.escape(inbox.encode()) + rb"\.(\d+) %d (\d+)\r\n" % sid
        self._ps.ack_line, self._ps.on_pub_acks = re.compile(pattern), on_pub_acks

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        on_pub_acks = self._on_pub_acks
        if sid == self._ack_sid and not headers and on_pub_acks is not None:
            on_pub_acks([(subject[self._ack_prefix_len :], data)])
            return
        await super()._process_msg(sid, subject, reply, data, headers)


async def connect_nats(
    settings: NatsTransportSettings,
    *,
    servers: Sequence[str] | None = None,
    client: Client | None = None,
    **callbacks: Any,
) -> Client:
    """A connected nats-py client with every option the settings give (servers, name, auth, TLS).

    `servers` overrides settings.servers; `client` is a not yet connected Client to use (an
    AckClient). `callbacks` go to nats-py's connect as they are and win over the settings
    (error_cb, disconnected_cb, ..., name, allow_reconnect). Raises NatsConnectError
    (ConfigError when a secret's env var or file is unusable).
    """
    urls = list(servers or settings.servers)
    where = ", ".join(urls)
    if not urls:
        fix = "set transport.servers, or start the managed_server first"
        raise NatsConnectError("no server URL", fix=fix)
    options = connect_options(settings, resolve_nats_secrets(settings), urls) | callbacks
    client = client or Client()
    try:
        await client.connect(**options)
    except ModuleNotFoundError as exc:  # nkeys: nats-py imports it for nkey/creds auth only
        message = f"nkey and creds authentication need the {exc.name} package"
        raise NatsConnectError(message, server=where, fix=f"pip install {exc.name}") from exc
    except NATS_ERRORS as exc:
        with contextlib.suppress(*NATS_ERRORS):
            await client.close()
        fix = "check that nats-server runs there, transport.servers and the credentials"
        reason = str(exc) or type(exc).__name__
        raise NatsConnectError(f"cannot connect ({reason})", server=where, fix=fix) from exc
    return client


async def ensure_stream(
    nc: Client,
    settings: NatsTransportSettings,
    stream_name: str,
    ours: str,
    server: str,
) -> None:
    """Create the stream when missing (if allowed); refuse one that does not cover us."""
    where = {"server": server, "stream": stream_name}
    jsm = nc.jsm(timeout=settings.ack_timeout_s)
    try:
        try:
            info = await jsm.stream_info(stream_name)
        except nats.js.errors.NotFoundError:
            if not settings.stream.create:
                fix = f"create it with subjects [{ours}], or set transport.stream.create: true"
                message = "the stream does not exist and transport.stream.create is false"
                raise StreamMissing(message, **where, fix=fix) from None
            try:
                await jsm.add_stream(stream_config(settings, stream_name, ours))
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:  # else: someone created it just now
                    raise
                info = await jsm.stream_info(stream_name)
            else:
                log.info("nats.stream.created", **where, subjects=[ours])
                return
    except nats.js.errors.ServiceUnavailableError as exc:
        if exc.code is None or exc.err_code == _JS_NOT_ENABLED_FOR_ACCOUNT:
            fix = "start nats-server with -js (or `jetstream {}` in its config)"
            raise NoJetStream("the server has no JetStream", **where, fix=fix) from exc
        raise NatsTransportError(f"JetStream unavailable: {exc.description}", **where) from exc
    except nats.js.errors.APIError as exc:
        raise NatsTransportError(f"JetStream refused: {exc.description}", **where) from exc
    except NATS_ERRORS as exc:
        reason = str(exc) or type(exc).__name__
        raise NatsTransportError(f"stream lookup failed ({reason})", **where) from exc
    subjects = list(info.config.subjects or [])
    if not stream_covers(subjects, ours):
        raise StreamMismatch(**where, stream_subjects=subjects, ours=ours)
    window_s = info.config.duplicate_window or 0
    if window_s < settings.stream.duplicate_window_s:
        log.warning("nats.stream.short_duplicate_window", **where, duplicate_window_s=window_s)


def stream_config(
    settings: NatsTransportSettings, stream_name: str, ours: str
) -> js_api.StreamConfig:
    stream = settings.stream
    return js_api.StreamConfig(
        name=stream_name,
        subjects=[ours],
        storage=js_api.StorageType(stream.storage.value),
        num_replicas=stream.replicas,
        max_age=stream.max_age_s,
        max_bytes=stream.max_bytes,
        duplicate_window=stream.duplicate_window_s,
        discard=js_api.DiscardPolicy(stream.discard.value),
    )
