"""The pure core of the NATS transport (no nats-py, no asyncio, no clock): HPUB protocol bytes,
the window of published, unacked records with its counters and ack-latency histograms, JetStream
PubAck parsing, the `dropped` status record, nats-py connect options, link states and errors.
"""

from __future__ import annotations

import enum
import ssl
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

import msgspec

from ssmd.config import NatsPayload, NatsSecrets, NatsTlsSettings, NatsTransportSettings
from ssmd.errors import TransportError
from ssmd.records import BookDelta, BookSnapshot, Record, Status, StatusEvent, Top, record_kind
from ssmd.subjects import encode_token, msg_id_for
from ssmd.transport.base import TransportStats

HEADER_MSG_ID = "Nats-Msg-Id"  # JetStream dedupes on it (ssmd.subjects.msg_id_for)
HEADER_KIND = "Ssmd-Kind"
HEADER_MARKET = "Ssmd-Market"
HEADER_CONTENT_TYPE = "Content-Type"
CONTENT_TYPES = {NatsPayload.JSON: "application/json", NatsPayload.MSGPACK: "application/msgpack"}
DROP_CONNECTION_ID = "transport"

# One record waiting for its ack: payload size, the whole HPUB command (reply subject included,
# so a re-send after a reconnect is the same bytes; hpub_subject() reads its subject back), kind,
# the record's receive_ts_ns (its frame's arrival) and published_ns (when publish() or
# publish_many() was called with it).
Entry = tuple[int, bytes, str, int, int]
# Acks that need a JSON parse, in order: (n, ack JSON) with n the reply subject's last token.
PubAcks = list[tuple[bytes, bytes]]

# Upper bounds of the ack-latency histogram buckets: 0.1 ms to 5 s in 1-2.5-5 steps (a last,
# unbounded bucket takes the rest). Nanoseconds, exact integers.
LATENCY_BOUNDS_NS: tuple[int, ...] = tuple(
    micros * 1_000
    for micros in (
        100, 250, 500,
        1_000, 2_500, 5_000,
        10_000, 25_000, 50_000,
        100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 5_000_000,
    )
)  # fmt: skip

_HEADER_HEAD = b"NATS/1.0\r\n" + HEADER_MSG_ID.encode() + b": "
HEADER_HEAD_LEN = len(_HEADER_HEAD)
_HEADER_VALUE_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


class NatsTransportError(TransportError):
    """NATS or JetStream refused or failed; says which server, stream and subject, and the fix."""

    def __init__(
        self, message: str, *, server: str = "", stream: str = "", subject: str = "", fix: str = ""
    ) -> None:
        self.message = message
        self.server = server
        self.stream = stream
        self.subject = subject
        self.fix = fix
        where = ", ".join(
            f"{name} {value}"
            for name, value in (("server", server), ("stream", stream), ("subject", subject))
            if value
        )
        text = f"NATS {where}: {message}" if where else f"NATS: {message}"
        super().__init__(f"{text} (fix: {fix})" if fix else text)


class NatsConnectError(NatsTransportError):
    """No configured server accepted the connection."""


class NoJetStream(NatsTransportError):
    """The server answers, but JetStream is not enabled for us."""


class StreamMissing(NatsTransportError):
    """The stream does not exist and transport.stream.create is false."""


class StreamMismatch(NatsTransportError):
    """The stream exists but its subjects do not cover the subjects we publish."""

    def __init__(self, *, server: str, stream: str, stream_subjects: list[str], ours: str) -> None:
        self.stream_subjects = stream_subjects
        self.ours = ours
        prefix = ours.removesuffix(".>")
        super().__init__(
            f"its subjects {stream_subjects} do not cover {ours}",
            server=server,
            stream=stream,
            subject=ours,
            fix=f"add `{ours}` to the stream's subjects or set transport.subject_prefix to a"
            f" subject it covers (now {prefix})",
        )


class LinkState(enum.Enum):
    DOWN = "down"  # no usable connection: records wait in the window
    RESENDING = "resending"  # connected, re-sending the window; new records wait
    UP = "up"  # records are sent as they are published
    CLOSED = "closed"


def ssl_context(tls: NatsTlsSettings) -> ssl.SSLContext:
    """A client TLS context with the configured CA and client certificate."""
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None and tls.key_file is not None:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(str(p) for p in (tls.ca_file, tls.cert_file, tls.key_file) if p)
        raise NatsTransportError(
            f"cannot load TLS files ({exc})", fix=f"check transport.tls: {files}"
        ) from exc
    return context


def connect_options(
    settings: NatsTransportSettings, secrets: NatsSecrets, servers: list[str]
) -> dict[str, Any]:
    """nats-py connect() keyword arguments: servers, name, one auth method, TLS."""
    options: dict[str, Any] = {"servers": servers, "name": settings.connection_name}
    if settings.user is not None:
        options["user"], options["password"] = settings.user, secrets.password
    if secrets.token is not None:
        options["token"] = secrets.token
    if secrets.nkey_seed is not None:
        options["nkeys_seed_str"] = secrets.nkey_seed
    if settings.creds_file is not None:
        options["user_credentials"] = str(settings.creds_file)
    if settings.tls.enabled:
        options["tls"] = ssl_context(settings.tls)
    return options


def header_value(text: str) -> bytes:
    """A header value as nats-py's publish() writes it: stripped, CR and LF as spaces, UTF-8."""
    if text.isprintable() and text[:1] != " " and text[-1:] != " ":  # nothing to change
        return text.encode()
    return text.strip().translate(_HEADER_VALUE_NEWLINES).encode()


def header_tail(kind: str, market: str, content_type: str) -> bytes:
    """The header block after the Msg-Id value: the same for every record of a kind and market.

    The whole block reads `NATS/1.0`, then Nats-Msg-Id, Ssmd-Kind, Ssmd-Market, Content-Type
    (in that order), then an empty line: what nats-py sends for those headers.
    """
    lines = ((HEADER_KIND, kind), (HEADER_MARKET, market), (HEADER_CONTENT_TYPE, content_type))
    rendered = b"".join(b"\r\n%s: %s" % (key.encode(), header_value(v)) for key, v in lines)
    return rendered + b"\r\n\r\n"


def hpub_command(subject: bytes, reply: bytes, msg_id: bytes, tail: bytes, payload: bytes) -> bytes:
    """`HPUB <subject> <reply> <header bytes> <total bytes>` + headers + payload: one message
    with headers in the NATS client protocol (byte for byte what nats-py's publish() sends)."""
    header_len = HEADER_HEAD_LEN + len(msg_id) + len(tail)
    return b"HPUB %s %s %d %d\r\n%s%s%s%s\r\n" % (
        subject,
        reply,
        header_len,
        header_len + len(payload),
        _HEADER_HEAD,
        msg_id,
        tail,
        payload,
    )


# The HPUB command of a record is rendered from two small caches (nats.py) rather than one
# entry per (record type, market): KindParts, the same for every record of a type, and
# MarketParts, the same for every record of a market. 10,000 markets x 4 kinds took ~620 B per
# (type, market) pair (25 MB when all are filled); per market it is ~280 B (2.8 MB).
#
# KindParts: the kind, `HPUB {prefix}.{kind}.` (`HPUB {prefix}.status` for status records,
# whose subject has no market token), whether the market token follows, the header block from
# the end of the Msg-Id value to the Ssmd-Market value, and the Msg-Id head `{kind}:` of a kind
# keyed by sid, seq and receive time (None: msg_id_for per record).
KindParts = tuple[str, bytes, bool, bytes, bytes | None]
# MarketParts: the market's subject token, the header block from its Ssmd-Market value to the
# end (content type included), and the market as it appears in a seq-keyed Msg-Id (None when
# header_value would change it: msg_id_for per record then).
MarketParts = tuple[bytes, bytes, bytes | None]
# hpub_command's bytes in one format: subject head, market token, reply prefix, reply number,
# header bytes, total bytes, Msg-Id, header middle, market tail, payload.
HPUB_FORMAT = b"%s%s %s%d %d %d\r\n" + _HEADER_HEAD + b"%s%s%s%s\r\n"
_SEQ_KEYED_KINDS = frozenset({BookDelta, BookSnapshot, Top})
_PROBE_MARKET = "PROBE-MARKET"


def kind_parts(record: Record, subject: str, prefix: str) -> KindParts:
    """The KindParts of `record`'s type; `subject` is its subject under `prefix`."""
    kind = record_kind(record)
    middle = b"\r\n%s: %s\r\n%s: " % (
        HEADER_KIND.encode(),
        header_value(kind),
        HEADER_MARKET.encode(),
    )
    head = f"{prefix}.{kind}."
    with_token = subject.startswith(head)
    subject_head = b"HPUB " + (head if with_token else subject).encode()
    return kind, subject_head, with_token, middle, _seq_id_head(record, kind)


def hpub_subject(command: bytes) -> str:
    """The subject of an HPUB command (`HPUB <subject> <reply> ...`), for logs: entries keep
    the command, not the subject (one string less per record in flight)."""
    return command.split(b" ", 2)[1].decode()


def market_parts(market: str, content_type: str) -> MarketParts:
    """The MarketParts of `market` (the content type ends the header block)."""
    value = header_value(market)
    tail = b"%s\r\n%s: %s\r\n\r\n" % (
        value,
        HEADER_CONTENT_TYPE.encode(),
        header_value(content_type),
    )
    return encode_token(market).encode(), tail, value if value == market.encode() else None


def _seq_id_head(record: Record, kind: str) -> bytes | None:
    """`{kind}:` when the Msg-Id of this record type is `{kind}:{market}:{sid}:{seq}:{receive
    time}` (checked on a probe record), else None."""
    if type(record) not in _SEQ_KEYED_KINDS:
        return None
    probe = msgspec.structs.replace(record, market=_PROBE_MARKET, sid=7, seq=8, receive_ts_ns=9)
    head = f"{kind}:"
    if msg_id_for(probe) != f"{head}{_PROBE_MARKET}:7:8:9":
        return None
    return head.encode()


def stored_ack_head(stream: str) -> bytes:
    """What JetStream's ack of a record stored in `stream` starts with (then the seq, `}`)."""
    return b'{"stream":%s,"seq":' % msgspec.json.encode(stream)


class PubAck(msgspec.Struct):
    """JetStream's answer to one publish (`{"stream","seq","duplicate"}` or `{"error"}`)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_ACK_DECODER = msgspec.json.Decoder(PubAck)


def parse_pub_ack(data: bytes, headers: dict[str, str] | None) -> PubAck | str:
    """The PubAck, or why the publish was not stored (a status reply such as 503 no responders
    when no stream takes the subject, or a JetStream error)."""
    if not data and headers and headers.get("Status"):
        status = headers["Status"]
        if status == "503":
            return "no stream takes the subject (503 no responders)"
        description = headers.get("Description", "").split("\n", 1)[0].strip()
        return f"status {status} {description}".strip()
    try:
        ack = _ACK_DECODER.decode(data)
    except msgspec.DecodeError:
        return f"unreadable ack {data[:80]!r}"
    if ack.error is not None:
        return f"{ack.error.get('description', 'error')} (code {ack.error.get('code')})"
    if ack.seq <= 0:
        return f"ack without a sequence {data[:80]!r}"
    return ack


def drop_status(count: int, markets: set[str], *, window: int, receive_ts_ns: int) -> Status:
    """The status record that reports `count` records dropped (transport.overflow: drop)."""
    return Status(
        market="",
        receive_ts_ns=receive_ts_ns,
        event=StatusEvent.DROPPED,
        connection_id=DROP_CONNECTION_ID,
        markets=tuple(sorted(markets)),
        reason=f"{count} records dropped: {window} publishes awaited their NATS ack"
        " (transport.overflow: drop)",
    )


@dataclass(frozen=True)
class HistogramSnapshot:
    """A latency histogram at one moment: `counts[i]` latencies were <= bounds_ns[i] (and above
    the bound before); the last count is of those above every bound."""

    bounds_ns: tuple[int, ...]
    counts: tuple[int, ...]
    sum_ns: int

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        """Prometheus `le` buckets: how many were <= each bound, then the total (+Inf)."""
        running, out = 0, []
        for count in self.counts:
            running += count
            out.append(running)
        return out


class LatencyHistogram:
    """Counts of latencies in nanoseconds per bucket of `bounds_ns`, and their sum. A negative
    latency (the wall clock stepped back) lands in the first bucket and lowers the sum."""

    __slots__ = ("bounds_ns", "counts", "sum_ns")

    def __init__(self, bounds_ns: tuple[int, ...] = LATENCY_BOUNDS_NS) -> None:
        self.bounds_ns = bounds_ns
        self.counts = [0] * (len(bounds_ns) + 1)
        self.sum_ns = 0

    def observe(self, latency_ns: int) -> None:
        self.counts[bisect_left(self.bounds_ns, latency_ns)] += 1
        self.sum_ns += latency_ns

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds_ns, tuple(self.counts), self.sum_ns)


@dataclass(frozen=True)
class AckLatency:
    """The ack-latency histograms of a transport and when the last ack arrived (0: none yet)."""

    frame_to_ack: HistogramSnapshot  # frame received (record.receive_ts_ns) -> JetStream ack
    publish_to_ack: HistogramSnapshot  # publish()/publish_many() call -> JetStream ack
    last_ack_ns: int


class AckWindow:
    """The records published and not yet acked, oldest first, and what happened to them.

    Records are numbered in publish order; `n` is also the suffix of the reply subject their
    ack comes back on. Each ack is timed against the entry's receive_ts_ns and published_ns
    (latency histograms): no per-record state beyond the entry itself.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.pending: dict[int, Entry] = {}  # insertion order == publish order
        self.next_n = 0
        self.sent_upto = 0  # every n below this was sent at least once
        self.acked = 0
        self.duplicates = 0
        self.acked_bytes = 0
        self.acked_by_kind: dict[str, int] = {}
        self.resent = 0
        self.dropped = 0
        self.unreported_drops = 0
        self.dropped_markets: set[str] = set()
        self.frame_to_ack = LatencyHistogram()
        self.publish_to_ack = LatencyHistogram()
        self.last_ack_ns = 0

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.capacity

    def add(self, entry: Entry) -> int:
        n = self.next_n
        self.next_n = n + 1
        self.pending[n] = entry
        return n

    def settle(self, n: int, *, duplicate: bool, now_ns: int) -> bool:
        """Record the ack of `n` received at `now_ns` (the clock of receive_ts_ns); False when
        it is not pending (an ack of a re-send)."""
        entry = self.pending.pop(n, None)
        if entry is None:
            return False
        payload_len, _, kind, receive_ts_ns, published_ns = entry
        self.acked_by_kind[kind] = self.acked_by_kind.get(kind, 0) + 1
        self.acked += 1
        self.acked_bytes += payload_len
        if duplicate:
            self.duplicates += 1
        # LatencyHistogram.observe() for both, inlined: this runs once per record.
        histogram, latency_ns = self.frame_to_ack, now_ns - receive_ts_ns
        histogram.counts[bisect_left(histogram.bounds_ns, latency_ns)] += 1
        histogram.sum_ns += latency_ns
        histogram, latency_ns = self.publish_to_ack, now_ns - published_ns
        histogram.counts[bisect_left(histogram.bounds_ns, latency_ns)] += 1
        histogram.sum_ns += latency_ns
        self.last_ack_ns = now_ns
        return True

    def settle_stored(self, ns: list[int], now_ns: int) -> int:
        """Settle records `ns` whose acks (received at `now_ns`) said stored, not duplicate:
        settle(n, duplicate=False) for each, with lookups hoisted out of the loop. Returns
        how many were pending (an ack of a re-send may find its record settled already)."""
        pop, by_kind = self.pending.pop, self.acked_by_kind
        frame_counts, frame_bounds = self.frame_to_ack.counts, self.frame_to_ack.bounds_ns
        publish_counts = self.publish_to_ack.counts
        publish_bounds = self.publish_to_ack.bounds_ns
        settled = acked_bytes = frame_sum_ns = publish_sum_ns = 0
        last_published_ns = publish_latency_ns = publish_bucket = -1
        for n in ns:
            entry = pop(n, None)
            if entry is None:
                continue
            payload_len, _, kind, receive_ts_ns, published_ns = entry
            by_kind[kind] = by_kind.get(kind, 0) + 1
            acked_bytes += payload_len
            latency_ns = now_ns - receive_ts_ns
            frame_counts[bisect_left(frame_bounds, latency_ns)] += 1
            frame_sum_ns += latency_ns
            if published_ns != last_published_ns:  # a publish batch shares published_ns
                last_published_ns = published_ns
                publish_latency_ns = now_ns - published_ns
                publish_bucket = bisect_left(publish_bounds, publish_latency_ns)
            publish_counts[publish_bucket] += 1
            publish_sum_ns += publish_latency_ns
            settled += 1
        if settled:
            self.acked += settled
            self.acked_bytes += acked_bytes
            self.frame_to_ack.sum_ns += frame_sum_ns
            self.publish_to_ack.sum_ns += publish_sum_ns
            self.last_ack_ns = now_ns
        return settled

    def unacked_from(self, n: int) -> list[int]:
        """Pending numbers >= n, in publish order."""
        return [m for m in self.pending if m >= n]

    def count_drop(self, market: str) -> bool:
        """Count one dropped record; True when it starts a new run of drops."""
        first = not self.unreported_drops
        self.dropped += 1
        self.unreported_drops += 1
        if market:
            self.dropped_markets.add(market)
        return first

    def take_drops(self) -> tuple[int, set[str]]:
        """The drops not reported yet (count, markets), now counted as reported."""
        taken = self.unreported_drops, self.dropped_markets
        self.unreported_drops, self.dropped_markets = 0, set()
        return taken

    def latency(self) -> AckLatency:
        return AckLatency(
            self.frame_to_ack.snapshot(), self.publish_to_ack.snapshot(), self.last_ack_ns
        )

    def stats(self, *, reconnects: int) -> TransportStats:
        return TransportStats(
            records_by_kind=dict(self.acked_by_kind),
            bytes_written=self.acked_bytes,
            pending=len(self.pending),
            acked=self.acked,
            duplicates=self.duplicates,
            resent=self.resent,
            dropped=self.dropped,
            reconnects=reconnects,
        )


class AckWatch:
    """Notices when the oldest pending record has waited too long (times are injected)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._oldest = -1
        self._since_s = 0.0

    def reset(self) -> None:
        self._oldest = -1

    def overdue(self, window: AckWindow, now_s: float) -> bool:
        """True when the same record has been the oldest pending for timeout_s."""
        if not window.pending:
            self._oldest = -1
            return False
        oldest = next(iter(window.pending))
        if oldest != self._oldest:
            self._oldest, self._since_s = oldest, now_s
            return False
        if now_s - self._since_s >= self.timeout_s:
            self._oldest = -1
            return True
        return False
