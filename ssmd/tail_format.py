"""How `ssmd tail` shows a record (pure): the payload decoded (JSON or msgpack, as the
transport's Content-Type says), then one readable line (UTC time, kind, market, decimal prices
and sizes, stream sequence) or the record as one JSON line."""

from __future__ import annotations

import datetime as dt
import enum

import msgspec

from ssmd.fixedpoint import format_fixed, format_price, format_size
from ssmd.records import (
    BookDelta,
    BookSnapshot,
    Level,
    Lifecycle,
    Record,
    Status,
    Ticker,
    Top,
    Trade,
    record_kind,
)

_RECORD_DECODER_JSON: msgspec.json.Decoder[Record] = msgspec.json.Decoder(Record)
_RECORD_DECODER_MSGPACK: msgspec.msgpack.Decoder[Record] = msgspec.msgpack.Decoder(Record)
_JSON_ENCODER = msgspec.json.Encoder()


class OutputFormat(enum.Enum):
    READABLE = "readable"
    JSON = "json"


def _is_msgpack(content_type: str | None) -> bool:  # the transport sends application/msgpack
    return content_type is not None and "msgpack" in content_type.lower()


def decode_record(payload: bytes, content_type: str | None) -> Record:
    """One published payload to its record (msgpack per `Content-Type`, JSON otherwise).

    Raises msgspec.DecodeError (including ValidationError) when it is not a record.
    """
    if _is_msgpack(content_type):
        return _RECORD_DECODER_MSGPACK.decode(payload)
    return _RECORD_DECODER_JSON.decode(payload)


def record_json_line(payload: bytes, content_type: str | None) -> str:
    """The payload as one compact JSON line, whatever its encoding, fields kept as published.

    Raises msgspec.DecodeError when the payload is not a JSON or msgpack object.
    """
    decode = msgspec.msgpack.decode if _is_msgpack(content_type) else msgspec.json.decode
    value = decode(payload)
    if not isinstance(value, dict):
        raise msgspec.DecodeError("payload is not an object")
    return _JSON_ENCODER.encode(value).decode()


def format_utc_ns(ts_ns: int) -> str:
    """Integer ns since the epoch to RFC 3339 UTC with all nine decimals."""
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


def _price(price_e4: int | None) -> str:
    return "-" if price_e4 is None else format_price(price_e4)


def _size(size_e2: int | None) -> str:
    return "-" if size_e2 is None else format_size(size_e2)


def _odds(odds_e2: int | None) -> str:
    return "-" if odds_e2 is None else ("+" if odds_e2 > 0 else "") + format_fixed(odds_e2, 2)


def _best(levels: tuple[Level, ...]) -> str:
    # Book levels are ascending by price: the best bid is the last one.
    return (
        f"{format_price(levels[-1].price_e4)}x{format_size(levels[-1].size_e2)}" if levels else "-"
    )


def _key_fields(record: Record) -> list[str]:
    match record:
        case Trade():
            taker = record.taker_side.value if record.taker_side else "-"
            book_side = record.taker_book_side.value if record.taker_book_side else "-"
            fields = [
                f"yes={format_price(record.yes_price_e4)}",
                f"no={format_price(record.no_price_e4)}",
                f"size={format_size(record.size_e2)}",
                f"taker={taker}/{book_side}",
            ]
            return [*fields, "block"] if record.is_block_trade else fields
        case Ticker():
            return [
                f"bid={_price(record.yes_bid_e4)}x{_size(record.yes_bid_size_e2)}",
                f"ask={_price(record.yes_ask_e4)}x{_size(record.yes_ask_size_e2)}",
                f"last={_price(record.last_price_e4)}",
                f"volume={_size(record.volume_e2)}",
                f"open_interest={_size(record.open_interest_e2)}",
            ]
        case BookSnapshot():
            return [
                f"yes_bids={len(record.yes_bids)}",
                f"best_yes={_best(record.yes_bids)}",
                f"no_bids={len(record.no_bids)}",
                f"best_no={_best(record.no_bids)}",
            ]
        case BookDelta():
            return [
                f"side={record.side.value}",
                f"price={format_price(record.price_e4)}",
                f"delta={format_size(record.delta_e2)}",
            ]
        case Lifecycle():
            fields = [f"scope={record.scope.value}", f"event={record.event_type}"]
            if record.result:
                fields.append(f"result={record.result}")
            if record.settlement_value_e4 is not None:
                fields.append(f"settlement={format_price(record.settlement_value_e4)}")
            return fields
        case Status():
            optional = (
                ("channel", record.channel or None),
                ("expected_seq", record.expected_seq),
                ("received_seq", record.received_seq),
                ("markets", len(record.markets) or None),
                ("reason", repr(record.reason) if record.reason else None),
            )
            fields = [f"event={record.event.value}", f"connection={record.connection_id}"]
            return fields + [f"{name}={value}" for name, value in optional if value is not None]
        case Top():
            mid = "-" if record.mid_e5 is None else format_fixed(record.mid_e5, 5)
            return [
                f"bid={_price(record.yes_bid_e4)}x{_size(record.yes_bid_size_e2)}",
                f"ask={_price(record.yes_ask_e4)}x{_size(record.yes_ask_size_e2)}",
                f"mid={mid}",
                f"odds={_odds(record.yes_american_odds_e2)}/{_odds(record.no_american_odds_e2)}",
                f"liquidity={record.yes_liquidity.value}/{record.no_liquidity.value}",
                f"trigger={record.trigger.value}",
            ]


def format_record_line(record: Record, *, stream_seq: int | None) -> str:
    """One readable line: the record's receive time (UTC), kind, market, key fields with
    prices and sizes as decimals, flags, and the JetStream stream sequence when there is one."""
    parts = [
        format_utc_ns(record.receive_ts_ns),
        f"{record_kind(record):<13}",
        record.market or "-",
        *_key_fields(record),
    ]
    if record.flags:
        parts.append("flags=" + ",".join(flag.value for flag in record.flags))
    if stream_seq is not None:
        parts.append(f"stream_seq={stream_seq}")
    return " ".join(parts)


def render_message(
    payload: bytes, content_type: str | None, output: OutputFormat, *, stream_seq: int | None
) -> str:
    """One received message as its output line. Raises msgspec.DecodeError if not a record."""
    if output is OutputFormat.JSON:
        return record_json_line(payload, content_type)
    return format_record_line(decode_record(payload, content_type), stream_seq=stream_seq)
