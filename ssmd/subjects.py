"""NATS subjects and JetStream Msg-Ids for records (pure: no I/O, no clock).

Subjects: `{prefix}.{kind}.{token(market)}`, and `{prefix}.status` for status records. A market
ticker becomes one subject token through a reversible percent-encoding (`encode_token`): `%`,
`.`, `*`, `>`, whitespace, control characters and non-ASCII (as UTF-8 bytes) become `%XX`, so
`KXA-26NOV21-T3.5` is published on `{prefix}.trade.KXA-26NOV21-T3%2E5`; the empty string is `%`.

Msg-Ids (the `Nats-Msg-Id` header JetStream dedupes on within the stream's duplicate window):

- trade: `trade:{trade_id}`, the exchange's id. Safe to publish from two instances at once.
- ticker: `ticker:{market}:{exchange_ts_ns}:` + the top-of-book and statistics values: the same
  exchange fact gives the same key on any instance. Safe from two instances.
- lifecycle: `lifecycle:{market}:{event_type}:` + blake2b (8 bytes, hex) of the record's exchange
  content (every field except receive_ts_ns, sid, seq). Safe from two instances.
- book_snapshot / book_delta: `{kind}:{market}:{sid}:{seq}:{receive_ts_ns}`: one received frame.
  Dedupes retries and re-publishes of the same record, NOT the same fact received by another
  instance (sids and seqs are per connection). Not safe from two instances.
- status: `status:{connection_id}:{event}:{receive_ts_ns}`.
- top (derived, ssmd.top): `top:{market}:{sid}:{seq}:{receive_ts_ns}` of the book record the top
  shows the book after. At most one top follows any book record, so two tops never share a key,
  and a replay of the same frames (same receive times, same flush times) gives the same keys.
  Like the book keys: not safe from two instances.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from ssmd.records import (
    BookDelta,
    BookSnapshot,
    Lifecycle,
    Record,
    Status,
    Ticker,
    Top,
    Trade,
    record_kind,
)

STATUS_TOKEN = "status"
EMPTY_TOKEN = "%"  # encode_token(""): a lone `%` never comes out of encoding anything else
# Kept as is: printable ASCII except the NATS specials; everything else becomes %XX.
_KEPT = frozenset(chr(code) for code in range(0x21, 0x7F)) - frozenset("%.*>")
_ENCODED_TOKEN = re.compile(r"(?:[^%]|%[0-9A-F]{2})+")
_CONTENT_ENCODER = msgspec.json.Encoder(order="deterministic")


def encode_token(text: str) -> str:
    """`text` as one NATS subject token; `decode_token` reverses it exactly."""
    if not text:
        return EMPTY_TOKEN
    if all(char in _KEPT for char in text):
        return text
    parts: list[str] = []
    for char in text:
        if char in _KEPT:
            parts.append(char)
        else:
            parts.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(parts)


def decode_token(token: str) -> str:
    """The text `encode_token` made `token` from. ValueError when it is not such a token."""
    if token == EMPTY_TOKEN:
        return ""
    if _ENCODED_TOKEN.fullmatch(token) is None or any(
        char not in _KEPT for char in token if char != "%"
    ):
        raise ValueError(f"not an encoded subject token: {token!r}")
    if "%" not in token:
        return token
    data = bytearray()
    index = 0
    while index < len(token):
        char = token[index]
        if char == "%":
            data.append(int(token[index + 1 : index + 3], 16))
            index += 3
        else:
            data.extend(char.encode("ascii"))
            index += 1
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 after decoding: {token!r}") from exc


class SubjectMapper:
    """Subjects under one prefix.

    Not cached: the NATS transport asks once per record type and keeps each market's token
    (nats_core.KindParts, MarketParts); a cache per (record type, market) here held 7.7 MB at
    the end of a 10,000-market blast run (measured by a deep-size census).
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.status_subject = f"{prefix}.{STATUS_TOKEN}"

    def subject_for(self, record: Record) -> str:
        if isinstance(record, Status):
            return self.status_subject
        return f"{self.prefix}.{record_kind(record)}.{encode_token(record.market)}"

    def kind_subject(self, kind: str) -> str:
        """The wildcard subject of one record kind (`{prefix}.trade.>`); status is literal."""
        if kind == STATUS_TOKEN:
            return self.status_subject
        return f"{self.prefix}.{kind}.>"

    @property
    def all_subjects(self) -> str:
        """`{prefix}.>`: every subject this mapper produces."""
        return f"{self.prefix}.>"


def _text(value: object) -> str:
    return "" if value is None else str(value)


# The builders below run once per published record: f-strings with the None checks inline
# (an int formats as str(int) does), one dict lookup by type to pick the builder.


def _trade_id(record: Trade) -> str:
    return f"trade:{record.trade_id}"


def _ticker_id(record: Ticker) -> str:
    r = record
    return (
        f"ticker:{r.market}:{_text(r.exchange_ts_ns)}"
        f":{'' if r.last_price_e4 is None else r.last_price_e4}"
        f":{'' if r.yes_bid_e4 is None else r.yes_bid_e4}"
        f":{'' if r.yes_ask_e4 is None else r.yes_ask_e4}"
        f":{'' if r.yes_bid_size_e2 is None else r.yes_bid_size_e2}"
        f":{'' if r.yes_ask_size_e2 is None else r.yes_ask_size_e2}"
        f":{'' if r.last_trade_size_e2 is None else r.last_trade_size_e2}"
        f":{'' if r.volume_e2 is None else r.volume_e2}"
        f":{'' if r.open_interest_e2 is None else r.open_interest_e2}"
        f":{'' if r.notional_volume_usd is None else r.notional_volume_usd}"
        f":{'' if r.notional_open_interest_usd is None else r.notional_open_interest_usd}"
    )


def _lifecycle_id(record: Lifecycle) -> str:
    content = msgspec.structs.replace(record, receive_ts_ns=0, sid=None, seq=None)
    digest = hashlib.blake2b(_CONTENT_ENCODER.encode(content), digest_size=8).hexdigest()
    return f"lifecycle:{record.market}:{record.event_type}:{digest}"


def _delta_id(record: BookDelta) -> str:
    sid, seq = record.sid, record.seq
    sid_text = "" if sid is None else sid
    seq_text = "" if seq is None else seq
    return f"book_delta:{record.market}:{sid_text}:{seq_text}:{record.receive_ts_ns}"


def _snapshot_id(record: BookSnapshot) -> str:
    sid, seq = record.sid, record.seq
    sid_text = "" if sid is None else sid
    seq_text = "" if seq is None else seq
    return f"book_snapshot:{record.market}:{sid_text}:{seq_text}:{record.receive_ts_ns}"


def _top_id(record: Top) -> str:
    sid, seq = record.sid, record.seq
    sid_text = "" if sid is None else sid
    seq_text = "" if seq is None else seq
    return f"top:{record.market}:{sid_text}:{seq_text}:{record.receive_ts_ns}"


def _status_id(record: Status) -> str:
    return f"status:{record.connection_id}:{record.event.value}:{record.receive_ts_ns}"


_ID_BUILDERS: dict[type, Callable[[Any], str]] = {
    Trade: _trade_id,
    BookDelta: _delta_id,
    BookSnapshot: _snapshot_id,
    Ticker: _ticker_id,
    Lifecycle: _lifecycle_id,
    Status: _status_id,
    Top: _top_id,
}


def msg_id_for(record: Record) -> str:
    """The JetStream dedupe key of `record` (see the module docstring for what each one means)."""
    return _ID_BUILDERS[type(record)](record)


def subject_covers(stream_subject: str, ours: str) -> bool:
    """True when every subject matching `ours` also matches the filter `stream_subject`.

    Both may use `*` (one token) and a final `>` (one or more tokens).
    """
    theirs = stream_subject.split(".")
    mine = ours.split(".")
    for index, their_token in enumerate(theirs):
        if their_token == ">":
            return index < len(mine)  # ours has at least one token here (a literal, * or >)
        if index >= len(mine):
            return False  # the stream's filter is longer than anything we publish
        my_token = mine[index]
        if my_token == ">":
            return False  # we publish any length, the filter needs exactly this shape
        if their_token != "*" and (my_token == "*" or my_token != their_token):
            return False
    return len(theirs) == len(mine)


def stream_covers(stream_subjects: Iterable[str], ours: str) -> bool:
    """True when the union of the stream's subject filters covers `ours`.

    A final `>` in ours is split into `*` and `*.>` when no single filter covers it, so
    `[p.*, p.*.>]` covers `p.>`.
    """
    subjects = list(stream_subjects)
    if any(subject_covers(subject, ours) for subject in subjects):
        return True
    tokens = ours.split(".")
    longest = max((subject.count(".") + 1 for subject in subjects), default=0)
    if tokens[-1] != ">" or len(tokens) > longest:
        return False
    base = tokens[:-1]
    return stream_covers(subjects, ".".join([*base, "*"])) and stream_covers(
        subjects, ".".join([*base, "*", ">"])
    )
