"""Lifecycle frames to `lifecycle` records (PROTOCOL.md §7.5): market_lifecycle_v2,
multivariate_market_lifecycle, event_lifecycle and event_fee_update. The cold part of
normalization, kept apart from the per-frame hot path in ssmd.normalize."""

from __future__ import annotations

from ssmd.messages import (
    EventFeeUpdate,
    EventLifecycle,
    MarketLifecycleV2,
    MultivariateMarketLifecycle,
)
from ssmd.normalize_fields import OUT_OF_RANGE, number_text, opt_ns, out_of_range, price_field
from ssmd.records import Lifecycle, LifecycleScope, PriceRange


def _market_lifecycle(
    frame: MarketLifecycleV2 | MultivariateMarketLifecycle, name: str, receive_ts_ns: int
) -> Lifecycle:
    """market_lifecycle_v2 and multivariate_market_lifecycle (same shape). Strikes and titles
    come top-level (metadata_updated) or from additional_metadata (created)."""
    msg = frame.msg
    meta = msg.additional_metadata
    floor_raw = msg.floor_strike
    cap_raw = msg.cap_strike
    if meta is not None:
        floor_raw = floor_raw if len(floor_raw) else meta.floor_strike
        cap_raw = cap_raw if len(cap_raw) else meta.cap_strike
    settlement_e4 = None
    if msg.settlement_value:
        settlement_e4 = price_field(msg.settlement_value, "settlement_value", name)
    price_ranges = None
    if msg.price_ranges is not None:
        field = "price_ranges"
        price_ranges = tuple(
            PriceRange(
                start_e4=price_field(r.start, field, name),
                end_e4=price_field(r.end, field, name),
                step_e4=price_field(r.step, field, name),
            )
            for r in msg.price_ranges
        )
    prices = [settlement_e4]
    for band in price_ranges or ():
        prices += (band.start_e4, band.end_e4, band.step_e4)
    expected_s = msg.expected_expiration_ts
    if expected_s is None and meta is not None:
        expected_s = meta.expected_expiration_ts
    return Lifecycle(
        market=msg.market_ticker,
        receive_ts_ns=receive_ts_ns,
        sid=frame.sid,
        seq=frame.seq,
        flags=OUT_OF_RANGE if any(out_of_range(p) for p in prices) else (),
        scope=LifecycleScope.MARKET,
        event_type=msg.event_type,
        event_ticker=msg.event_ticker or (meta.event_ticker if meta else None),
        title=meta.title if meta else None,
        subtitle=msg.yes_sub_title or (meta.yes_sub_title if meta else None),
        open_ts_ns=opt_ns(msg.open_ts),
        close_ts_ns=opt_ns(msg.close_ts),
        expected_expiration_ts_ns=opt_ns(expected_s),
        determination_ts_ns=opt_ns(msg.determination_ts),
        settled_ts_ns=opt_ns(msg.settled_ts),
        result=msg.result,
        settlement_value_e4=settlement_e4,
        is_deactivated=msg.is_deactivated,
        price_level_structure=msg.price_level_structure,
        price_ranges=price_ranges,
        strike_type=msg.strike_type or (meta.strike_type if meta else None),
        floor_strike=number_text(floor_raw, "floor_strike", name),
        cap_strike=number_text(cap_raw, "cap_strike", name),
        custom_strike=msg.custom_strike or (meta.custom_strike if meta else None),
    )


def normalize_event_lifecycle(
    frame: EventLifecycle, receive_ts_ns: int, _flip: bool = False
) -> Lifecycle:
    msg = frame.msg
    return Lifecycle(
        market=msg.event_ticker,
        receive_ts_ns=receive_ts_ns,
        sid=frame.sid,
        seq=frame.seq,
        scope=LifecycleScope.EVENT,
        event_type="event_created",
        event_ticker=msg.event_ticker,
        series_ticker=msg.series_ticker,
        title=msg.title,
        subtitle=msg.subtitle if msg.subtitle is not None else msg.sub_title,
    )


def normalize_event_fee_update(
    frame: EventFeeUpdate, receive_ts_ns: int, _flip: bool = False
) -> Lifecycle:
    msg = frame.msg
    return Lifecycle(
        market=msg.event_ticker,
        receive_ts_ns=receive_ts_ns,
        sid=frame.sid,
        seq=frame.seq,
        scope=LifecycleScope.EVENT,
        event_type="event_fee_updated",
        event_ticker=msg.event_ticker,
        fee_type_override=msg.fee_type_override,
        fee_multiplier_override=number_text(
            msg.fee_multiplier_override, "fee_multiplier_override", "event_fee_update"
        ),
    )


def normalize_market_lifecycle_v2(
    frame: MarketLifecycleV2, receive_ts_ns: int, _flip: bool
) -> Lifecycle:
    return _market_lifecycle(frame, "market_lifecycle_v2", receive_ts_ns)


def normalize_multivariate_lifecycle(
    frame: MultivariateMarketLifecycle, receive_ts_ns: int, _flip: bool
) -> Lifecycle:
    return _market_lifecycle(frame, "multivariate_market_lifecycle", receive_ts_ns)
