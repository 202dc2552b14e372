"""Kalshi WebSocket v2 wire messages (PROTOCOL.md §4-§7): msgspec Structs and one decoder.

Server frames (one tagged union on `type`, named after it; `ErrorFrame`, `TickerFrame` and
`TradeFrame` avoid clashing with builtins/records) and client commands (tagged on `cmd`).
"""

from __future__ import annotations

import enum
from typing import Any, Final, TypeAlias

import msgspec

from ssmd.errors import FrameDecodeError
from ssmd.records import BookSide, Side


class Channel(enum.Enum):
    """Market-data channels ssmd subscribes to (§7.0)."""

    ORDERBOOK_DELTA = "orderbook_delta"
    TICKER = "ticker"
    TRADE = "trade"
    MARKET_LIFECYCLE_V2 = "market_lifecycle_v2"


# FrameDecodeError.reason values (short and stable: tests, logs and metrics key on them).
MALFORMED_JSON: Final = "malformed_json"
NO_TYPE: Final = "no_type"
UNSUPPORTED_TYPE: Final = "unsupported_type"
INVALID_FIELDS: Final = "invalid_fields"

# Absent JSON-number fields kept as exact source text (msgspec.Raw cannot sit in a union, so
# "absent" is the empty Raw and JSON null is Raw(b"null")).
NO_RAW: Final = msgspec.Raw()


class _Wire(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """Base of every payload struct: immutable, unknown keys ignored, absent keys not encoded."""


class _Frame(_Wire, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Envelope fields of every server frame (§4)."""

    id: int | None = None
    sid: int | None = None
    seq: int | None = None


# --- control frames (§6) -----------------------------------------------------------------


class SubscriptionInfo(_Wire, frozen=True, gc=False):
    """One entry of a `list_subscriptions` reply, and the body of `subscribed` (§6.1, §6.4)."""

    channel: str
    sid: int


class OkMsg(_Wire, frozen=True, gc=False):
    """`ok` body after an update or re-subscribe: the full market list after the change (§6.3)."""

    market_tickers: tuple[str, ...] | None = None
    market_ids: tuple[str, ...] | None = None


class ErrorMsg(_Wire, frozen=True, gc=False):
    """`error` body (§6.5, codes in §6.6)."""

    code: int
    msg: str = ""
    market_ticker: str | None = None
    market_tickers: tuple[str, ...] | None = None


class Subscribed(_Frame, frozen=True, tag="subscribed", gc=False):
    """Ack of one channel of a `subscribe` (§6.1); `msg` tolerated absent (older form)."""

    msg: SubscriptionInfo | None = None


class Ok(_Frame, frozen=True, tag="ok", gc=False):
    """`ok` in every era: `msg` object (§6.3), `msg` list (§6.4), or Jan-2026 top-level keys."""

    msg: OkMsg | tuple[SubscriptionInfo, ...] | None = None
    market_tickers: tuple[str, ...] | None = None
    subscriptions: tuple[SubscriptionInfo, ...] | None = None

    @property
    def acked_market_tickers(self) -> tuple[str, ...] | None:
        """The market list of an update/re-subscribe ack, wherever the era put it."""
        if isinstance(self.msg, OkMsg):
            return self.msg.market_tickers
        return self.market_tickers

    @property
    def listed_subscriptions(self) -> tuple[SubscriptionInfo, ...] | None:
        """The reply to `list_subscriptions` (`msg` list now, `subscriptions` in Jan 2026)."""
        if isinstance(self.msg, tuple):
            return self.msg
        return self.subscriptions


class Unsubscribed(_Frame, frozen=True, tag="unsubscribed", gc=False):
    """One per unsubscribed sid; no `msg` (§6.2)."""


class ErrorFrame(_Frame, frozen=True, tag="error", gc=False):
    """Command or subscription error (§6.5); sid-scoped ones consume a seq (§4.1)."""

    msg: ErrorMsg


# --- orderbook_delta channel (§7.1) ------------------------------------------------------


class OrderbookSnapshotMsg(_Wire, frozen=True, gc=False):
    """A full book in any era (§7.1.1, §7.1.3); an empty side's keys are omitted."""

    market_ticker: str
    market_id: str | None = None
    yes: tuple[tuple[int, int], ...] | None = None
    no: tuple[tuple[int, int], ...] | None = None
    yes_dollars: tuple[tuple[str, int], ...] | None = None
    no_dollars: tuple[tuple[str, int], ...] | None = None
    yes_dollars_fp: tuple[tuple[str, str], ...] | None = None
    no_dollars_fp: tuple[tuple[str, str], ...] | None = None


class OrderbookDeltaMsg(_Wire, frozen=True, gc=False):
    """A signed size change at (side, price) in any era (§7.1.2, §7.1.3)."""

    market_ticker: str
    side: Side
    market_id: str | None = None
    price: int | None = None
    price_dollars: str | None = None
    delta: int | None = None
    delta_fp: str | None = None
    ts: str | None = None
    ts_ms: int | None = None
    client_order_id: str | None = None
    subaccount: int | None = None


class OrderbookSnapshot(_Frame, frozen=True, tag="orderbook_snapshot", gc=False):
    msg: OrderbookSnapshotMsg


class OrderbookDelta(_Frame, frozen=True, tag="orderbook_delta", gc=False):
    msg: OrderbookDeltaMsg


# --- ticker (§7.2) and trade (§7.4) ------------------------------------------------------


class TickerMsg(_Wire, frozen=True, gc=False):
    """Top of book and statistics in every era (§7.2): current strings and legacy ints."""

    market_ticker: str
    market_id: str | None = None
    price: int | None = None
    yes_bid: int | None = None
    yes_ask: int | None = None
    price_dollars: str | None = None
    yes_bid_dollars: str | None = None
    yes_ask_dollars: str | None = None
    no_bid_dollars: str | None = None
    no_ask_dollars: str | None = None
    volume: int | None = None
    open_interest: int | None = None
    volume_fp: str | None = None
    open_interest_fp: str | None = None
    dollar_volume: int | None = None
    dollar_open_interest: int | None = None
    yes_bid_size_fp: str | None = None
    yes_ask_size_fp: str | None = None
    last_trade_size_fp: str | None = None
    ts: int | None = None
    ts_ms: int | None = None
    time: str | None = None
    clock: int | None = msgspec.field(default=None, name="Clock")


class TickerFrame(_Frame, frozen=True, tag="ticker", gc=False):
    msg: TickerMsg


class TradeMsg(_Wire, frozen=True, gc=False):
    """A public print in every era (§7.4); `trade_id` is absent in the Jan-2026 doc example."""

    market_ticker: str
    trade_id: str | None = None
    yes_price: int | None = None
    no_price: int | None = None
    yes_price_dollars: str | None = None
    no_price_dollars: str | None = None
    count: int | None = None
    count_fp: str | None = None
    taker_side: Side | None = None
    taker_outcome_side: Side | None = None
    taker_book_side: BookSide | None = None
    is_block_trade: bool | None = None
    ts: int | None = None
    ts_ms: int | None = None


class TradeFrame(_Frame, frozen=True, tag="trade", gc=False):
    msg: TradeMsg


# --- lifecycle (§7.5) --------------------------------------------------------------------


class PriceRangeMsg(_Wire, frozen=True, gc=False):
    """A tick band in dollar strings (§7.1.5)."""

    start: str
    end: str
    step: str


class AdditionalMetadata(_Wire, frozen=True, gc=False):
    """`additional_metadata` of a lifecycle `created` (§7.5); strikes keep their JSON text."""

    name: str | None = None
    title: str | None = None
    yes_sub_title: str | None = None
    no_sub_title: str | None = None
    rules_primary: str | None = None
    rules_secondary: str | None = None
    can_close_early: bool | None = None
    event_ticker: str | None = None
    expected_expiration_ts: int | None = None
    strike_type: str | None = None
    floor_strike: msgspec.Raw = NO_RAW
    cap_strike: msgspec.Raw = NO_RAW
    custom_strike: dict[str, Any] | None = None


class MarketLifecycleMsg(_Wire, frozen=True, gc=False):
    """Every `event_type` of market_lifecycle_v2 / multivariate_market_lifecycle (§7.5)."""

    market_ticker: str
    event_type: str
    event_ticker: str | None = None
    exchange_index: int | None = None
    open_ts: int | None = None
    close_ts: int | None = None
    expected_expiration_ts: int | None = None
    determination_ts: int | None = None
    settled_ts: int | None = None
    result: str | None = None
    settlement_value: str | None = None
    is_deactivated: bool | None = None
    price_level_structure: str | None = None
    price_ranges: tuple[PriceRangeMsg, ...] | None = None
    strike_type: str | None = None
    floor_strike: msgspec.Raw = NO_RAW
    cap_strike: msgspec.Raw = NO_RAW
    custom_strike: dict[str, Any] | None = None
    yes_sub_title: str | None = None
    no_sub_title: str | None = None
    additional_metadata: AdditionalMetadata | None = None


class EventLifecycleMsg(_Wire, frozen=True, gc=False):
    """A new event (§7.5); the subtitle key was `sub_title` in Jan-2026 docs."""

    event_ticker: str
    exchange_index: int | None = None
    title: str | None = None
    subtitle: str | None = None
    sub_title: str | None = None
    collateral_return_type: str | None = None
    series_ticker: str | None = None
    strike_date: int | None = None
    strike_period: str | None = None


class EventFeeUpdateMsg(_Wire, frozen=True, gc=False):
    """Fee override change (§7.5); the multiplier keeps its exact JSON number text."""

    event_ticker: str
    fee_type_override: str | None = None
    fee_multiplier_override: msgspec.Raw = NO_RAW


class MarketLifecycleV2(_Frame, frozen=True, tag="market_lifecycle_v2", gc=False):
    msg: MarketLifecycleMsg


class MultivariateMarketLifecycle(
    _Frame, frozen=True, tag="multivariate_market_lifecycle", gc=False
):
    msg: MarketLifecycleMsg


class EventLifecycle(_Frame, frozen=True, tag="event_lifecycle", gc=False):
    msg: EventLifecycleMsg


class EventFeeUpdate(_Frame, frozen=True, tag="event_fee_update", gc=False):
    msg: EventFeeUpdateMsg


ControlFrame: TypeAlias = Subscribed | Ok | Unsubscribed | ErrorFrame
DataFrame: TypeAlias = (
    OrderbookSnapshot
    | OrderbookDelta
    | TickerFrame
    | TradeFrame
    | MarketLifecycleV2
    | MultivariateMarketLifecycle
    | EventLifecycle
    | EventFeeUpdate
)
Frame: TypeAlias = ControlFrame | DataFrame

CONTROL_FRAME_TYPES: Final = (Subscribed, Ok, Unsubscribed, ErrorFrame)
DATA_FRAME_TYPES: Final = (
    OrderbookSnapshot,
    OrderbookDelta,
    TickerFrame,
    TradeFrame,
    MarketLifecycleV2,
    MultivariateMarketLifecycle,
    EventLifecycle,
    EventFeeUpdate,
)


def frame_type_name(frame_type: type[msgspec.Struct]) -> str:
    """The wire `type` tag of a frame class ("orderbook_delta", ...)."""
    tag = frame_type.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


FRAME_TYPE_NAMES: Final = frozenset(
    frame_type_name(t) for t in (*CONTROL_FRAME_TYPES, *DATA_FRAME_TYPES)
)


class _Probe(msgspec.Struct):
    """Second, failure-only decode: just enough to classify a document that did not decode."""

    type: Any = None
    cmd: Any = None


def _classify_failure(
    data: bytes | str, exc: msgspec.ValidationError, *, key: str, known: frozenset[str]
) -> FrameDecodeError:
    """Why a document failed the typed decode: MALFORMED_JSON, NO_TYPE, UNSUPPORTED_TYPE or
    INVALID_FIELDS. `key` is the discriminator ("type" or "cmd"), `known` its valid values."""
    try:
        probed = msgspec.json.decode(data, type=_Probe)
    except msgspec.ValidationError:
        return FrameDecodeError(NO_TYPE, detail="not a JSON object")
    except msgspec.DecodeError as probe_exc:
        return FrameDecodeError(MALFORMED_JSON, detail=str(probe_exc))
    name = probed.type if key == "type" else probed.cmd
    if not isinstance(name, str):
        return FrameDecodeError(NO_TYPE, detail=f"no string `{key}` field")
    if name in known:
        return FrameDecodeError(INVALID_FIELDS, detail=str(exc), type_name=name)
    return FrameDecodeError(UNSUPPORTED_TYPE, type_name=name)


class FrameDecoder:
    """Decodes one server text frame into a Frame struct; one msgspec call on the happy path.

    Raises FrameDecodeError with `reason` MALFORMED_JSON, NO_TYPE, UNSUPPORTED_TYPE (with
    `type_name`: private channels, index feeds, removed channels) or INVALID_FIELDS (a known
    type whose fields have the wrong types; `detail` carries msgspec's `$.path` message).
    """

    __slots__ = ("_decode",)

    def __init__(self) -> None:
        self._decode = _FRAME_DECODER.decode

    def decode(self, data: bytes | str) -> Frame:
        try:
            return self._decode(data)
        except msgspec.DecodeError as exc:
            raise frame_decode_error(data, exc) from exc


def frame_decode_error(data: bytes | str, exc: msgspec.DecodeError) -> FrameDecodeError:
    """The FrameDecodeError of a frame `decode_frame` refused with `exc`."""
    if isinstance(exc, msgspec.ValidationError):
        return _classify_failure(data, exc, key="type", known=FRAME_TYPE_NAMES)
    return FrameDecodeError(MALFORMED_JSON, detail=str(exc))


# --- commands, client → server (§5) ------------------------------------------------------


class UpdateAction(enum.Enum):
    """Market-data `update_subscription` actions (§5.3)."""

    ADD_MARKETS = "add_markets"
    DELETE_MARKETS = "delete_markets"
    GET_SNAPSHOT = "get_snapshot"


class SubscribeParams(_Wire, frozen=True, gc=False):
    """`subscribe` params (§5.1); None options are not sent."""

    channels: list[str]
    market_ticker: str | None = None
    market_tickers: list[str] | None = None
    use_yes_price: bool | None = None
    send_initial_snapshot: bool | None = None
    skip_ticker_ack: bool | None = None


class UnsubscribeParams(_Wire, frozen=True, gc=False):
    sids: list[int]


class UpdateSubscriptionParams(_Wire, frozen=True, gc=False):
    """`update_subscription` params (§5.3): exactly one sid is valid, the list form is sent."""

    sids: list[int]
    market_tickers: list[str]
    action: UpdateAction


class _Command(_Wire, frozen=True, tag_field="cmd", gc=False):
    id: int


class Subscribe(_Command, frozen=True, tag="subscribe", gc=False):
    params: SubscribeParams


class Unsubscribe(_Command, frozen=True, tag="unsubscribe", gc=False):
    params: UnsubscribeParams


class UpdateSubscription(_Command, frozen=True, tag="update_subscription", gc=False):
    params: UpdateSubscriptionParams


class ListSubscriptions(_Command, frozen=True, tag="list_subscriptions", gc=False):
    """No params (§5.4)."""


Command: TypeAlias = Subscribe | Unsubscribe | UpdateSubscription | ListSubscriptions
COMMAND_NAMES: Final = frozenset(
    frame_type_name(t) for t in (Subscribe, Unsubscribe, UpdateSubscription, ListSubscriptions)
)

_FRAME_DECODER: Final[msgspec.json.Decoder[Frame]] = msgspec.json.Decoder(Frame)
decode_frame: Final = _FRAME_DECODER.decode
"""FrameDecoder.decode without its Python frame, for the session's hot path: raises
FRAME_DECODE_FAILURE (msgspec's DecodeError), which frame_decode_error() turns into the
FrameDecodeError FrameDecoder would raise (-80 ns a frame, measured in receive_frame)."""
FRAME_DECODE_FAILURE: Final = msgspec.DecodeError
_COMMAND_DECODER: Final[msgspec.json.Decoder[Command]] = msgspec.json.Decoder(Command)
_COMMAND_ENCODER: Final = msgspec.json.Encoder()


def encode_command(cmd: Command) -> bytes:
    """JSON text of a command; options left at None are omitted (§5)."""
    return _COMMAND_ENCODER.encode(cmd)


def decode_command(data: bytes | str) -> Command:
    """Parse a client command (simulator side). FrameDecodeError reasons as for frames, with
    NO_TYPE for a missing `cmd` and UNSUPPORTED_TYPE (type_name = cmd) for an unknown one."""
    try:
        return _COMMAND_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise _classify_failure(data, exc, key="cmd", known=COMMAND_NAMES) from exc
    except msgspec.DecodeError as exc:
        raise FrameDecodeError(MALFORMED_JSON, detail=str(exc)) from exc
