"""Normalization (wire frames -> records) checked against hand-computed values in every era."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import msgspec
import pytest

from ssmd.errors import FrameDecodeError
from ssmd.messages import CONTROL_FRAME_TYPES, DATA_FRAME_TYPES, INVALID_FIELDS, FrameDecoder
from ssmd.normalize import NORMALIZER_BY_FRAME_TYPE, normalize, run_normalize
from ssmd.records import (
    BookDelta,
    BookSide,
    BookSnapshot,
    Flag,
    Level,
    Lifecycle,
    LifecycleScope,
    PriceRange,
    Record,
    Side,
    Ticker,
    Trade,
)

CAPTURES = Path(__file__).resolve().parents[2] / "shared/kalshi/captures"
RX = 1_787_000_000_123_456_789  # receive time used throughout
DECODER = FrameDecoder()


def capture(name: str, line_number: int) -> bytes:
    """One line (1-based) of a capture file."""
    return (CAPTURES / name).read_bytes().splitlines()[line_number - 1]


def norm(data: bytes | str, *, yes_price: bool = False) -> Record:
    frame = DECODER.decode(data)
    assert isinstance(frame, DATA_FRAME_TYPES)
    return normalize(frame, RX, no_side_in_yes_price=yes_price)


# --- order book snapshots (§7.1.1, §7.1.3, §7.1.4) ---------------------------------------


def test_current_snapshot() -> None:
    record = norm(capture("kalshi-docs__orderbook_delta.jsonl", 1))
    assert record == BookSnapshot(
        market="FED-23DEC-T3.00",
        market_id="9b0f6b43-5b68-4f9f-9f02-9a2d1b8ac1a1",
        exchange_ts_ns=None,
        receive_ts_ns=RX,
        sid=2,
        seq=2,
        flags=(),
        yes_bids=(Level(800, 30000), Level(2200, 33300)),
        no_bids=(Level(5400, 2000), Level(5600, 14600)),
    )


def test_use_yes_price_snapshot_is_converted_to_no_leg_prices() -> None:
    """demo 2026-08-17 subscribed with use_yes_price: true; NO 0.92 yes-leg = NO bid at 0.08."""
    line = capture("ericsngyun__probability-arena__demo-2026-08-17-wire.jsonl", 13)
    assert norm(line, yes_price=True) == BookSnapshot(
        market="KXMAXSHARDINGTEST-26AUG2818-T55099.99",
        market_id="c0c20d5f-7946-41d7-9eda-6b184855c5ab",
        receive_ts_ns=RX,
        sid=1,
        seq=1,
        yes_bids=(Level(7700, 250000), Level(7800, 19100), Level(8800, 20000)),
        no_bids=(Level(800, 20000),),
    )


def test_use_yes_price_snapshot_levels_are_resorted_after_conversion() -> None:
    # NO levels arrive 0.53, 0.52, 0.40 in yes-leg price: 0.47, 0.48, 0.60 in no-leg price.
    line = capture("ericsngyun__probability-arena__demo-2026-08-17-get-snapshot.jsonl", 3)
    assert norm(line, yes_price=True) == BookSnapshot(
        market="KXMAXSHARDINGTEST-26AUG2818-T65399.99",
        market_id="0b58a781-1098-485b-91f5-da977f86e99e",
        receive_ts_ns=RX,
        sid=1,
        seq=2,
        yes_bids=(Level(3600, 20000),),
        no_bids=(Level(4700, 250000), Level(4800, 217600), Level(6000, 20000)),
    )
    # The same frame read as default pricing keeps the numbers, sorted ascending.
    default = norm(line)
    assert isinstance(default, BookSnapshot)
    assert default.no_bids == (Level(4000, 20000), Level(5200, 217600), Level(5300, 250000))


def test_get_snapshot_reply_keeps_sid_and_seq() -> None:
    record = norm(capture("ericsngyun__probability-arena__demo-2026-08-17-get-snapshot.jsonl", 6))
    assert isinstance(record, BookSnapshot)
    assert (record.sid, record.seq) == (1, 31)


def test_legacy_cents_era_snapshot_uses_the_dollar_strings() -> None:
    """2026-01-16 docs: cents arrays plus 3-dp `*_dollars` with integer counts; no market_id."""
    assert norm(capture("kalshi-docs-2026-01-16__marketdata.jsonl", 10)) == BookSnapshot(
        market="FED-23DEC-T3.00",
        market_id=None,
        receive_ts_ns=RX,
        sid=2,
        seq=2,
        yes_bids=(Level(800, 30000), Level(2200, 33300)),
        no_bids=(Level(5400, 2000), Level(5600, 14600)),
    )


def test_pre_dollar_cents_only_snapshot() -> None:
    """The ≤ 2025-09-08 shape (§7.1.3): only `yes`/`no` [[cents, count]]."""
    line = (
        '{"type":"orderbook_snapshot","sid":1,"seq":1,"msg":{"market_ticker":"KXMLBGAME-25AUG12SDSF-SD",'
        '"market_id":"dda543e6-bd0c-4275-8814-a17f6ab61762","yes":[[4,8100],[3,80000]],'
        '"no":[[1,73590]]}}'
    )
    assert norm(line) == BookSnapshot(
        market="KXMLBGAME-25AUG12SDSF-SD",
        market_id="dda543e6-bd0c-4275-8814-a17f6ab61762",
        receive_ts_ns=RX,
        sid=1,
        seq=1,
        yes_bids=(Level(300, 8000000), Level(400, 810000)),
        no_bids=(Level(100, 7359000),),
    )


def test_transitional_snapshot_prefers_fp_strings_over_cents() -> None:
    record = norm(capture("kalshi-docs-2026-03-06__marketdata.jsonl", 10))
    assert isinstance(record, BookSnapshot)
    assert record.yes_bids == (Level(800, 30000), Level(2200, 33300))
    conflicting = (
        '{"type":"orderbook_snapshot","sid":1,"seq":1,"msg":{"market_ticker":"M",'
        '"yes":[[8,300]],"yes_dollars":[["0.080",300]],"yes_dollars_fp":[["0.0805","300.50"]]}}'
    )
    record = norm(conflicting)
    assert isinstance(record, BookSnapshot)
    assert record.yes_bids == (Level(805, 30050),)
    assert record.no_bids == ()


def test_ladderless_snapshot_with_empty_market_id() -> None:
    line = capture("ericsngyun__probability-arena__demo-2026-08-17-wire.jsonl", 37)
    assert norm(line, yes_price=True) == BookSnapshot(
        market="KXTESTMATCH-26AUG122030BANAUS-AUS",
        market_id=None,
        receive_ts_ns=RX,
        sid=1,
        seq=55,
        yes_bids=(),
        no_bids=(),
    )


# --- order book deltas -------------------------------------------------------------------


def test_legacy_2025_delta_cents_and_nine_digit_ts() -> None:
    line = (
        '{"type":"orderbook_delta","sid":1,"seq":3,"msg":{"market_ticker":"KXMLBGAME-25AUG12SDSF-SD",'
        '"market_id":"dda543e6-bd0c-4275-8814-a17f6ab61762","price":51,"delta":-1,"side":"no",'
        '"ts":"2025-08-12T21:00:32.539836022Z"}}'
    )
    assert norm(line) == BookDelta(
        market="KXMLBGAME-25AUG12SDSF-SD",
        market_id="dda543e6-bd0c-4275-8814-a17f6ab61762",
        exchange_ts_ns=1_755_032_432_539_836_022,
        receive_ts_ns=RX,
        sid=1,
        seq=3,
        side=Side.NO,
        price_e4=5100,
        delta_e2=-100,
    )


def test_2026_01_delta_without_time() -> None:
    assert norm(capture("kalshi-docs-2026-01-16__marketdata.jsonl", 11)) == BookDelta(
        market="FED-23DEC-T3.00",
        market_id=None,
        exchange_ts_ns=None,
        receive_ts_ns=RX,
        sid=2,
        seq=3,
        side=Side.YES,
        price_e4=9600,
        delta_e2=-5400,
    )


def test_transitional_delta() -> None:
    assert norm(capture("kalshi-docs-2026-03-06__marketdata.jsonl", 11)) == BookDelta(
        market="FED-23DEC-T3.00",
        market_id="9b0f6b43-5b68-4f9f-9f02-9a2d1b8ac1a1",
        exchange_ts_ns=1_669_149_841_000_000_000,
        receive_ts_ns=RX,
        sid=2,
        seq=3,
        side=Side.YES,
        price_e4=9600,
        delta_e2=-5400,
    )


def test_current_delta() -> None:
    assert norm(capture("kalshi-docs__orderbook_delta.jsonl", 2)) == BookDelta(
        market="FED-23DEC-T3.00",
        market_id="9b0f6b43-5b68-4f9f-9f02-9a2d1b8ac1a1",
        exchange_ts_ns=1_669_149_841_000_000_000,
        receive_ts_ns=RX,
        sid=2,
        seq=3,
        side=Side.YES,
        price_e4=9600,
        delta_e2=-5400,
    )


def test_live_delta_fractional_ts_beats_ts_ms() -> None:
    line = capture("Haripratiik__prediction-market-trading-engine__test-kalshi-ws-py.jsonl", 3)
    assert norm(line) == BookDelta(
        market="KXGOLDH-26AUG2711-T4615.99",
        market_id="ef793c45-beed-4096-8a3a-1c70af894be7",
        exchange_ts_ns=1_787_838_983_996_443_000,  # ts_ms alone would say ...996_000_000
        receive_ts_ns=RX,
        sid=1,
        seq=2,
        side=Side.YES,
        price_e4=100,
        delta_e2=1000,
    )


def test_ts_ms_used_when_ts_has_no_fraction() -> None:
    line = (
        '{"type":"orderbook_delta","sid":1,"seq":9,"msg":{"market_ticker":"M","side":"yes",'
        '"price_dollars":"0.1200","delta_fp":"-4444.00","ts":"2026-08-20T00:36:00Z",'
        '"ts_ms":1787186160630}}'
    )
    record = norm(line)
    assert isinstance(record, BookDelta)
    assert record.exchange_ts_ns == 1_787_186_160_630_000_000


def test_use_yes_price_delta_no_side_is_converted_yes_side_is_not() -> None:
    no_line = capture("ericsngyun__probability-arena__demo-2026-08-17-wire.jsonl", 6)
    assert norm(no_line, yes_price=True) == BookDelta(
        market="KXMAXSHARDINGTEST-26AUG2818-T70099.99",
        market_id="0542596c-0742-4d21-9898-9427005cfa5a",
        exchange_ts_ns=1_786_956_597_530_891_000,
        receive_ts_ns=RX,
        sid=1,
        seq=62,
        side=Side.NO,
        price_e4=8100,  # 0.19 in yes-leg price
        delta_e2=10000,
    )
    yes_line = capture("ericsngyun__probability-arena__demo-2026-08-17-wire.jsonl", 5)
    record = norm(yes_line, yes_price=True)
    assert isinstance(record, BookDelta)
    assert (record.side, record.price_e4) == (Side.YES, 1500)
    default = norm(no_line)
    assert isinstance(default, BookDelta)
    assert default.price_e4 == 1900


# --- ticker (§7.2) -----------------------------------------------------------------------


def test_legacy_ticker_never_traded_price_dollars_empty() -> None:
    line = capture("aaronwald__ssmd__connector-messages-rs.jsonl", 2)
    assert norm(line) == Ticker(
        market="KXBRASILEIROGAME-25NOV29CEACRU-CRU",
        market_id="5f2c3445-bdee-42d8-a8ae-648dd1fedb22",
        exchange_ts_ns=1_732_579_880_000_000_000,
        receive_ts_ns=RX,
        sid=1,
        seq=None,
        last_price_e4=None,
        yes_bid_e4=3700,
        yes_ask_e4=4300,
        yes_bid_size_e2=None,
        yes_ask_size_e2=None,
        last_trade_size_e2=None,
        volume_e2=0,
        open_interest_e2=0,
        notional_volume_usd=0,
        notional_open_interest_usd=0,
    )


def test_legacy_ticker_traded() -> None:
    line = capture("aaronwald__ssmd__connector-messages-rs.jsonl", 1)
    assert norm(line) == Ticker(
        market="KXRANKLISTGOOGLESEARCH-26JAN-BIA",
        market_id="2ee24704-7e13-4248-97f5-3b7ffabf4325",
        exchange_ts_ns=1_732_579_880_000_000_000,
        receive_ts_ns=RX,
        sid=1,
        last_price_e4=1200,
        yes_bid_e4=1100,
        yes_ask_e4=1200,
        volume_e2=35_197_000,
        open_interest_e2=18_264_600,
        notional_volume_usd=175_985,
        notional_open_interest_usd=91_323,
    )


def test_2026_01_ticker_strings_win_and_ints_fill_gaps() -> None:
    """yes_bid_dollars "0.345" beats yes_bid 45; yes_ask has no string, so 53 cents is used."""
    assert norm(capture("kalshi-docs-2026-01-16__marketdata.jsonl", 12)) == Ticker(
        market="FED-23DEC-T3.00",
        exchange_ts_ns=1_669_149_841_000_000_000,
        receive_ts_ns=RX,
        sid=11,
        last_price_e4=4800,
        yes_bid_e4=3450,
        yes_ask_e4=5300,
        volume_e2=3_389_600,
        open_interest_e2=2_042_200,
        notional_volume_usd=16948,
        notional_open_interest_usd=10211,
    )


def test_current_ticker() -> None:
    assert norm(capture("kalshi-docs__ticker.jsonl", 1)) == Ticker(
        market="FED-23DEC-T3.00",
        market_id="9b0f6b43-5b68-4f9f-9f02-9a2d1b8ac1a1",
        exchange_ts_ns=1_669_149_841_000_000_000,
        receive_ts_ns=RX,
        sid=11,
        seq=None,
        flags=(),
        last_price_e4=4800,
        yes_bid_e4=4500,
        yes_ask_e4=5300,
        yes_bid_size_e2=30000,
        yes_ask_size_e2=15000,
        last_trade_size_e2=2500,
        volume_e2=3_389_600,
        open_interest_e2=2_042_200,
        notional_volume_usd=16948,
        notional_open_interest_usd=10211,
    )


def test_live_ticker_precise_time_and_fractional_sizes() -> None:
    line = capture("ericsngyun__probability-arena__demo-2026-08-17-wire.jsonl", 21)
    assert norm(line) == Ticker(
        market="KXMAXSHARDINGTEST-26AUG2818-T73699.99",
        market_id="0033ff5b-ab9a-456d-90c4-2d4dd2dcbb26",
        exchange_ts_ns=1_786_956_597_868_890_000,  # `time` .86889 beats ts_ms ...868
        receive_ts_ns=RX,
        sid=2,
        last_price_e4=1000,
        yes_bid_e4=600,
        yes_ask_e4=1000,
        yes_bid_size_e2=40000,
        yes_ask_size_e2=40000,
        last_trade_size_e2=200,
        volume_e2=10_599_836,
        open_interest_e2=885_202,
        notional_volume_usd=52999,
        notional_open_interest_usd=4426,
    )


def test_live_ticker_zero_price_means_never_traded() -> None:
    line = capture("Haripratiik__prediction-market-trading-engine__test-kalshi-ws-py.jsonl", 4)
    record = norm(line)
    assert isinstance(record, Ticker)
    assert record.last_price_e4 is None
    assert record.exchange_ts_ns == 1_787_838_990_880_000_000
    assert (record.yes_bid_e4, record.yes_ask_e4) == (100, 9800)
    assert (record.notional_volume_usd, record.notional_open_interest_usd) == (None, None)


@pytest.mark.parametrize(
    ("extra", "seq", "flags"),
    [
        ("", None, ()),  # the 15-keyword construction: no seq, in range
        (',"seq":12', 12, ()),  # a seq (not sent today) is kept
        (',"price_dollars":"1.2000"', None, (Flag.PRICE_OUT_OF_RANGE,)),  # flagged
    ],
)
def test_ticker_every_construction_path_keeps_every_field(
    extra: str, seq: int | None, flags: tuple[Flag, ...]
) -> None:
    envelope_extra = extra if extra.startswith(',"seq"') else ""
    msg_extra = "" if envelope_extra else extra
    line = (
        '{"type":"ticker","sid":2' + envelope_extra + ',"msg":{"market_ticker":"M",'
        '"market_id":"id","yes_bid_dollars":"0.4100","yes_ask_dollars":"0.4300",'
        '"volume_fp":"10.00","open_interest_fp":"7.50","dollar_volume":3,'
        '"dollar_open_interest":2,"yes_bid_size_fp":"1.00","yes_ask_size_fp":"2.00",'
        '"last_trade_size_fp":"0.50","time":"2026-08-17T08:49:57.86889Z"' + msg_extra + "}}"
    )
    assert norm(line) == Ticker(
        market="M",
        exchange_ts_ns=1_786_956_597_868_890_000,
        receive_ts_ns=RX,
        sid=2,
        seq=seq,
        flags=flags,
        market_id="id",
        last_price_e4=12000 if flags else None,
        yes_bid_e4=4100,
        yes_ask_e4=4300,
        yes_bid_size_e2=100,
        yes_ask_size_e2=200,
        last_trade_size_e2=50,
        volume_e2=1000,
        open_interest_e2=750,
        notional_volume_usd=3,
        notional_open_interest_usd=2,
    )


def test_every_data_frame_type_has_a_normalizer_and_no_control_type_does() -> None:
    assert set(NORMALIZER_BY_FRAME_TYPE) == set(DATA_FRAME_TYPES)
    assert not set(NORMALIZER_BY_FRAME_TYPE) & set(CONTROL_FRAME_TYPES)


# --- trade (§7.4) ------------------------------------------------------------------------


def test_legacy_trade_oct_2025() -> None:
    line = (
        '{"type":"trade","sid":1,"seq":16,"msg":{"trade_id":"5b0276ef-7715-46f2-56d8-a1c7b9e59e58",'
        '"market_ticker":"KXHIGHCHI-25OCT02-B80.5","yes_price":27,"no_price":73,'
        '"yes_price_dollars":"0.2700","no_price_dollars":"0.7300","count":7,"taker_side":"yes",'
        '"ts":1759350609}}'
    )
    assert norm(line) == Trade(
        market="KXHIGHCHI-25OCT02-B80.5",
        exchange_ts_ns=1_759_350_609_000_000_000,
        receive_ts_ns=RX,
        sid=1,
        seq=16,
        flags=(),
        trade_id="5b0276ef-7715-46f2-56d8-a1c7b9e59e58",
        yes_price_e4=2700,
        no_price_e4=7300,
        size_e2=700,
        taker_side=Side.YES,
        taker_book_side=None,
        is_block_trade=None,
    )


def test_2026_01_doc_trade_without_trade_id_or_seq() -> None:
    assert norm(capture("kalshi-docs-2026-01-16__marketdata.jsonl", 13)) == Trade(
        market="HIGHNY-22DEC23-B53.5",
        exchange_ts_ns=1_669_149_841_000_000_000,
        receive_ts_ns=RX,
        sid=11,
        seq=None,
        trade_id="",
        yes_price_e4=3600,
        no_price_e4=6400,
        size_e2=13600,
        taker_side=Side.NO,
    )


def test_current_trade() -> None:
    assert norm(capture("kalshi-docs__trade.jsonl", 1)) == Trade(
        market="HIGHNY-22DEC23-B53.5",
        exchange_ts_ns=1_669_149_841_000_000_000,
        receive_ts_ns=RX,
        sid=11,
        seq=2,
        flags=(),
        trade_id="d91bc706-ee49-470d-82d8-11418bda6fed",
        yes_price_e4=3600,
        no_price_e4=6400,
        size_e2=13600,
        taker_side=Side.NO,
        taker_book_side=BookSide.ASK,
        is_block_trade=False,
    )


def test_first_post_migration_trade() -> None:
    line = capture("aaronwald__ssmd__connector-messages-rs.jsonl", 3)
    assert norm(line) == Trade(
        market="KXBTCD-26MAR1213-T69499.99",
        exchange_ts_ns=1_773_331_880_000_000_000,
        receive_ts_ns=RX,
        sid=2,
        seq=2573,
        trade_id="5d937db7-0c71-43cb-0b60-b56a4387af64",
        yes_price_e4=8900,
        no_price_e4=1100,
        size_e2=300,
        taker_side=Side.YES,
    )


def test_taker_outcome_side_wins_over_taker_side() -> None:
    line = (
        '{"type":"trade","sid":3,"seq":1,"msg":{"trade_id":"t","market_ticker":"M",'
        '"yes_price_dollars":"0.1000","no_price_dollars":"0.9000","count_fp":"47.03",'
        '"taker_side":"yes","taker_outcome_side":"no","taker_book_side":"ask","ts":1,"ts_ms":1500}}'
    )
    record = norm(line)
    assert isinstance(record, Trade)
    assert (record.taker_side, record.taker_book_side) == (Side.NO, BookSide.ASK)
    assert record.size_e2 == 4703
    assert record.exchange_ts_ns == 1_500_000_000


# --- lifecycle (§7.5) --------------------------------------------------------------------


def test_lifecycle_created() -> None:
    assert norm(capture("kalshi-docs__market_lifecycle_v2.jsonl", 1)) == Lifecycle(
        market="INXD-23SEP14-B4487",
        exchange_ts_ns=None,
        receive_ts_ns=RX,
        sid=13,
        seq=3,
        flags=(),
        scope=LifecycleScope.MARKET,
        event_type="created",
        event_ticker="INXD-23SEP14",
        series_ticker=None,
        title="S&P 500 closes up by 0.02% or more",
        subtitle="S&P 500 closes up 0.02%+",
        open_ts_ns=1_694_635_200_000_000_000,
        close_ts_ns=1_694_721_600_000_000_000,
        expected_expiration_ts_ns=1_694_721_600_000_000_000,
        price_level_structure="linear_cent",
        strike_type="greater",
        floor_strike="4487",
    )


def test_lifecycle_created_2026_01_string_strike() -> None:
    record = norm(capture("kalshi-docs-2026-01-16__marketdata.jsonl", 15))
    assert isinstance(record, Lifecycle)
    assert record.floor_strike == "4487"
    assert record.event_ticker is None
    assert record.seq is None


def test_lifecycle_determined() -> None:
    line = (
        '{"type":"market_lifecycle_v2","sid":1,"seq":279597,"msg":{"market_ticker":'
        '"KXMLBSPREAD-26JUL191605WSHATH-ATH4","determination_ts":1784501722,"result":"no",'
        '"settlement_value":"0.0000","event_type":"determined"}}'
    )
    assert norm(line) == Lifecycle(
        market="KXMLBSPREAD-26JUL191605WSHATH-ATH4",
        receive_ts_ns=RX,
        sid=1,
        seq=279597,
        scope=LifecycleScope.MARKET,
        event_type="determined",
        determination_ts_ns=1_784_501_722_000_000_000,
        result="no",
        settlement_value_e4=0,
    )


def test_lifecycle_settled() -> None:
    line = (
        '{"type":"market_lifecycle_v2","sid":1,"seq":274085,"msg":{"market_ticker":'
        '"KXBNB15M-26JUL191830-30","settled_ts":1784500206,"event_type":"settled"}}'
    )
    assert norm(line) == Lifecycle(
        market="KXBNB15M-26JUL191830-30",
        receive_ts_ns=RX,
        sid=1,
        seq=274085,
        scope=LifecycleScope.MARKET,
        event_type="settled",
        settled_ts_ns=1_784_500_206_000_000_000,
    )


def test_lifecycle_deactivated_and_close_date() -> None:
    deactivated = norm(
        '{"type":"market_lifecycle_v2","sid":1,"seq":7,"msg":{"market_ticker":'
        '"KXNFLFIRSTTD-25OCT05MIACAR-CARCHUBBARD30","is_deactivated":true,"event_type":"deactivated"}}'
    )
    assert isinstance(deactivated, Lifecycle)
    assert (deactivated.event_type, deactivated.is_deactivated) == ("deactivated", True)
    moved = norm(
        '{"type":"market_lifecycle_v2","sid":1,"seq":43,"msg":{"market_ticker":"KXMLBWINS-NYM-25-T80",'
        '"close_ts":1759353839,"event_type":"close_date_updated"}}'
    )
    assert isinstance(moved, Lifecycle)
    assert moved.close_ts_ns == 1_759_353_839_000_000_000


def test_lifecycle_price_levels_and_exact_strikes() -> None:
    structure = norm(capture("kalshi-docs__market_lifecycle_v2.jsonl", 2))
    assert isinstance(structure, Lifecycle)
    assert structure.price_level_structure == "deci_cent"
    assert structure.price_ranges == (PriceRange(start_e4=0, end_e4=10000, step_e4=10),)
    strikes = norm(
        '{"type":"market_lifecycle_v2","sid":13,"seq":5,"msg":{"event_type":"metadata_updated",'
        '"market_ticker":"K","strike_type":"between","floor_strike":95000.10,'
        '"cap_strike":95250.000000000000001,"custom_strike":{"Team":"LAL","n":[1,2]}}}'
    )
    assert isinstance(strikes, Lifecycle)
    assert (strikes.floor_strike, strikes.cap_strike) == ("95000.10", "95250.000000000000001")
    assert strikes.custom_strike == {"Team": "LAL", "n": [1, 2]}
    exponent = norm(
        '{"type":"market_lifecycle_v2","sid":13,"seq":6,"msg":{"event_type":"metadata_updated",'
        '"market_ticker":"K","floor_strike":1.5e3,"cap_strike":-25E-1}}'
    )
    assert isinstance(exponent, Lifecycle)
    assert (exponent.floor_strike, exponent.cap_strike) == ("1500", "-2.5")


def test_multivariate_lifecycle_is_market_scoped() -> None:
    record = norm(capture("kalshi-docs__multivariate_market_lifecycle.jsonl", 1))
    assert record == Lifecycle(
        market="KXMVE-TEST-EVENT-M1",
        receive_ts_ns=RX,
        sid=14,
        seq=7,
        scope=LifecycleScope.MARKET,
        event_type="created",
        event_ticker="KXMVE-TEST-EVENT",
        title="Market 1",
        subtitle="YES 1",
        open_ts_ns=1_773_936_000_000_000_000,
        close_ts_ns=1_774_022_400_000_000_000,
        expected_expiration_ts_ns=1_774_029_600_000_000_000,
    )


def test_event_lifecycle() -> None:
    assert norm(capture("kalshi-docs__market_lifecycle_v2.jsonl", 5)) == Lifecycle(
        market="KXQUICKSETTLE-26JAN25H2150",
        receive_ts_ns=RX,
        sid=5,
        seq=8,
        scope=LifecycleScope.EVENT,
        event_type="event_created",
        event_ticker="KXQUICKSETTLE-26JAN25H2150",
        series_ticker="KXQUICKSETTLE",
        title="What will 1+1 equal on Jan 25 at 21:50?",
        subtitle="Jan 25 at 21:50",
    )


def test_event_lifecycle_old_sub_title_key() -> None:
    assert norm(capture("kalshi-docs-2026-01-16__marketdata.jsonl", 16)) == Lifecycle(
        market="INXD-23SEP14",
        receive_ts_ns=RX,
        sid=5,
        scope=LifecycleScope.EVENT,
        event_type="event_created",
        event_ticker="INXD-23SEP14",
        series_ticker="INXD",
        title="INX title",
        subtitle="INX subtitle",
    )


def test_event_fee_update() -> None:
    assert norm(capture("kalshi-docs__market_lifecycle_v2.jsonl", 6)) == Lifecycle(
        market="KXBTCD-26MAY2018",
        receive_ts_ns=RX,
        sid=5,
        seq=9,
        scope=LifecycleScope.EVENT,
        event_type="event_fee_updated",
        event_ticker="KXBTCD-26MAY2018",
        fee_type_override="quadratic",
        fee_multiplier_override="1",
    )
    cleared = norm(capture("kalshi-docs__market_lifecycle_v2.jsonl", 7))
    assert isinstance(cleared, Lifecycle)
    assert (cleared.fee_type_override, cleared.fee_multiplier_override) == (None, None)
    exact = norm(
        '{"type":"event_fee_update","sid":5,"seq":11,"msg":{"event_ticker":"E",'
        '"fee_multiplier_override":0.0700}}'
    )
    assert isinstance(exact, Lifecycle)
    assert exact.fee_multiplier_override == "0.0700"


# --- flags and rejections ----------------------------------------------------------------


def test_snapshot_flags() -> None:
    out_of_range = norm(
        '{"type":"orderbook_snapshot","sid":1,"seq":1,"msg":{"market_ticker":"M",'
        '"yes_dollars_fp":[["1.0500","1.00"]]}}'
    )
    assert out_of_range.flags == (Flag.PRICE_OUT_OF_RANGE,)
    negative = norm(
        '{"type":"orderbook_snapshot","sid":1,"seq":1,"msg":{"market_ticker":"M",'
        '"no_dollars_fp":[["0.5000","-5.00"]]}}'
    )
    assert negative.flags == (Flag.NEGATIVE_SIZE,)
    assert isinstance(negative, BookSnapshot)
    assert negative.no_bids == (Level(5000, -500),)  # still returned, values intact
    both = norm(
        '{"type":"orderbook_snapshot","sid":1,"seq":1,"msg":{"market_ticker":"M",'
        '"yes_dollars_fp":[["0.5000","-5.00"]],"no_dollars_fp":[["-0.0100","1.00"]]}}'
    )
    assert both.flags == (Flag.PRICE_OUT_OF_RANGE, Flag.NEGATIVE_SIZE)


def test_delta_ticker_lifecycle_out_of_range_flags() -> None:
    delta = norm(
        '{"type":"orderbook_delta","sid":1,"seq":2,"msg":{"market_ticker":"M","side":"no",'
        '"price_dollars":"1.2000","delta_fp":"1.00"}}',
        yes_price=True,
    )
    assert isinstance(delta, BookDelta)
    assert (delta.price_e4, delta.flags) == (-2000, (Flag.PRICE_OUT_OF_RANGE,))
    ticker = norm(
        '{"type":"ticker","sid":2,"msg":{"market_ticker":"M","yes_ask_dollars":"1.0100"}}'
    )
    assert ticker.flags == (Flag.PRICE_OUT_OF_RANGE,)
    settled = norm(
        '{"type":"market_lifecycle_v2","sid":1,"seq":1,"msg":{"market_ticker":"M",'
        '"event_type":"determined","settlement_value":"2.0000"}}'
    )
    assert settled.flags == (Flag.PRICE_OUT_OF_RANGE,)
    in_range = norm(capture("kalshi-docs__orderbook_delta.jsonl", 2))
    assert in_range.flags == ()


def test_trade_flags() -> None:
    template = (
        '{"type":"trade","sid":3,"seq":1,"msg":{"trade_id":"t","market_ticker":"M",'
        '"yes_price_dollars":"%s","no_price_dollars":"%s","count_fp":"1.00"}}'
    )
    mismatch = norm(template % ("0.5000", "0.4000"))
    assert isinstance(mismatch, Trade)
    assert mismatch.flags == (Flag.PRICE_SUM_MISMATCH,)
    assert (mismatch.yes_price_e4, mismatch.no_price_e4) == (5000, 4000)
    outside = norm(template % ("1.1000", "-0.1000"))
    assert outside.flags == (Flag.PRICE_OUT_OF_RANGE,)
    both = norm(template % ("1.1000", "0.1000"))
    assert both.flags == (Flag.PRICE_OUT_OF_RANGE, Flag.PRICE_SUM_MISMATCH)


@pytest.mark.parametrize(
    ("line", "type_name", "field"),
    [
        (
            '{"type":"orderbook_delta","msg":{"market_ticker":"M","side":"yes",'
            '"price_dollars":"abc","delta_fp":"1.00"}}',
            "orderbook_delta",
            "price_dollars",
        ),
        (
            '{"type":"orderbook_delta","msg":{"market_ticker":"M","side":"yes",'
            '"price_dollars":"0.1000","delta_fp":"1.234"}}',
            "orderbook_delta",
            "delta_fp",
        ),
        (
            '{"type":"orderbook_delta","msg":{"market_ticker":"M","side":"yes",'
            '"price_dollars":"0.1000","delta_fp":"1.00","ts":"yesterday.5"}}',
            "orderbook_delta",
            "ts",
        ),
        (
            '{"type":"orderbook_delta","msg":{"market_ticker":"M","side":"yes","delta_fp":"1.00"}}',
            "orderbook_delta",
            "price_dollars",
        ),
        (
            '{"type":"orderbook_snapshot","msg":{"market_ticker":"M",'
            '"no_dollars_fp":[["0.1000","x"]]}}',
            "orderbook_snapshot",
            "no_dollars_fp",
        ),
        (
            '{"type":"ticker","msg":{"market_ticker":"M","volume_fp":"1e3"}}',
            "ticker",
            "volume_fp",
        ),
        (
            '{"type":"ticker","msg":{"market_ticker":"M","time":"2026-13-01T00:00:00.1Z"}}',
            "ticker",
            "time",
        ),
        (
            '{"type":"trade","msg":{"market_ticker":"M","yes_price_dollars":"0.1000",'
            '"no_price_dollars":"0.9000"}}',
            "trade",
            "count_fp",
        ),
        (
            '{"type":"market_lifecycle_v2","msg":{"market_ticker":"M","event_type":"determined",'
            '"settlement_value":"one"}}',
            "market_lifecycle_v2",
            "settlement_value",
        ),
        (
            '{"type":"multivariate_market_lifecycle","msg":{"market_ticker":"M",'
            '"event_type":"created","additional_metadata":{"floor_strike":"abc"}}}',
            "multivariate_market_lifecycle",
            "floor_strike",
        ),
        (
            '{"type":"market_lifecycle_v2","msg":{"market_ticker":"M",'
            '"event_type":"metadata_updated","cap_strike":true}}',
            "market_lifecycle_v2",
            "cap_strike",
        ),
        (
            '{"type":"event_fee_update","msg":{"event_ticker":"E","fee_multiplier_override":"x"}}',
            "event_fee_update",
            "fee_multiplier_override",
        ),
    ],
)
def test_non_decimal_strings_raise_invalid_fields(line: str, type_name: str, field: str) -> None:
    with pytest.raises(FrameDecodeError) as caught:
        norm(line)
    assert caught.value.reason == INVALID_FIELDS
    assert caught.value.type_name == type_name
    assert field in caught.value.detail


# --- run_normalize: the `ssmd normalize FILE` engine -------------------------------------


def run(lines: list[bytes], *, yes_price: bool = False) -> tuple[int, list[dict[str, object]], str]:
    out = io.BytesIO()
    err = io.StringIO()
    ticks = itertools.count(1000)
    status = run_normalize(
        lines, out, err, no_side_in_yes_price=yes_price, clock_ns=lambda: next(ticks)
    )
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    return status, records, err.getvalue()


def test_run_normalize_on_a_live_capture_with_control_frames() -> None:
    path = CAPTURES / "ericsngyun__probability-arena__demo-2026-08-17-wire.jsonl"
    status, records, err = run(path.read_bytes().splitlines(keepends=True), yes_price=True)
    assert (status, err) == (0, "")
    # 39 lines: 3 `subscribed` + 1 sid-scoped `error` are handled without output.
    assert len(records) == 35
    kinds = [r["kind"] for r in records]
    assert (
        kinds
        == ["book_delta"] * 8
        + ["book_snapshot"] * 8
        + ["ticker"] * 8
        + ["trade"] * 8
        + ["book_snapshot"] * 3
    )
    assert [r["receive_ts_ns"] for r in records] == list(range(1000, 1035))
    assert records[1]["price_e4"] == 8100  # NO 0.19 in yes-leg price
    assert records[8]["no_bids"] == [[800, 20000]]


def test_run_normalize_on_control_only_capture() -> None:
    path = CAPTURES / "kalshi-docs__control.jsonl"
    status, records, err = run(path.read_bytes().splitlines(keepends=True))
    assert (status, records, err) == (0, [], "")


def test_run_normalize_reports_every_bad_line(tmp_path: Path) -> None:
    good_delta = capture("kalshi-docs__orderbook_delta.jsonl", 2)
    good_trade = capture("kalshi-docs__trade.jsonl", 1)
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(
        b"\n".join(
            [
                good_delta,  # 1
                b"",  # 2 blank: skipped, not an error
                b"{not json",  # 3
                b'{"type":"fill","sid":13,"msg":{}}',  # 4
                b'{"id":1,"cmd":"subscribe","params":{"channels":["ticker"]}}',  # 5
                b'{"type":"subscribed","id":1,"msg":{"channel":"ticker","sid":2}}',  # 6
                b'{"type":"trade","sid":3,"msg":{"market_ticker":1}}',  # 7
                b'{"type":"orderbook_delta","msg":{"market_ticker":"M","side":"yes",'
                b'"price_dollars":"0.1","delta_fp":"one"}}',  # 8
                b"   ",  # 9 blank
                good_trade,  # 10
            ]
        )
        + b"\n"
    )
    with source.open("rb") as lines:
        status, records, err = run(list(lines))
    assert status == 1
    assert [r["kind"] for r in records] == ["book_delta", "trade"]
    assert records[0]["price_e4"] == 9600
    assert records[1]["trade_id"] == "d91bc706-ee49-470d-82d8-11418bda6fed"
    err_lines = err.splitlines()
    assert len(err_lines) == 5
    assert err_lines[0].startswith("line 3: malformed_json: ")
    assert err_lines[1] == "line 4: unsupported_type: fill"
    assert err_lines[2] == "line 5: no_type: no string `type` field"
    assert err_lines[3].startswith("line 7: invalid_fields: ")
    assert "$.msg.market_ticker" in err_lines[3]
    assert err_lines[4].startswith("line 8: invalid_fields: delta_fp: ")


def test_run_normalize_output_decodes_back_to_the_same_records() -> None:
    lines = [
        capture("kalshi-docs__orderbook_delta.jsonl", 1),
        capture("kalshi-docs__ticker.jsonl", 1),
        capture("kalshi-docs__market_lifecycle_v2.jsonl", 1),
    ]
    out = io.BytesIO()
    status = run_normalize(
        lines, out, io.StringIO(), no_side_in_yes_price=False, clock_ns=lambda: RX
    )
    assert status == 0
    decoded = [msgspec.json.decode(line, type=Record) for line in out.getvalue().splitlines()]
    assert decoded == [norm(line) for line in lines]
