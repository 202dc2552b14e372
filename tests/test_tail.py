"""`ssmd tail` as a real subprocess against a real nats-server: records published by the NATS
transport come back as they were (JSON), as readable decimal lines, by market, from a core
subscription, and the failure modes exit 2 with a message. Plus its pure formatting parts."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
from nats.js.api import DeliverPolicy

from ssmd.config import NatsTransportSettings
from ssmd.natsserver import NatsServer, free_port
from ssmd.records import (
    BookDelta,
    BookSnapshot,
    Flag,
    Level,
    Lifecycle,
    LifecycleScope,
    Record,
    Side,
    Status,
    StatusEvent,
    Ticker,
    Trade,
)
from ssmd.tail import StartPosition, parse_start, subject_to_tail
from ssmd.tail_format import format_record_line, format_utc_ns, record_json_line
from ssmd.transport import build_transport

pytestmark = pytest.mark.integration

TOOLBOX = str(Path(sys.executable).parent / "ssmd")
PREFIX = "ssmd.tailtest.kalshi"
STREAM = "SSMD_TAILTEST_KALSHI"
DOTTED = "KXBTCD-26AUG2017-T73749.99"  # a real ticker shape with a '.' in it
OTHER = "KXHIGHNY-26NOV21-B53"
T0_NS = 1_763_744_000_123_456_789  # 2025-11-21T16:53:20.123456789Z
DECODER = msgspec.json.Decoder(Record)


def sample_records() -> list[Record]:
    """One of each kind; two trades on the dotted ticker, one elsewhere."""
    return [
        Status(
            market="",
            receive_ts_ns=T0_NS,
            event=StatusEvent.CONNECTED,
            connection_id="tailtest/1/1",
        ),
        BookSnapshot(
            market=DOTTED,
            receive_ts_ns=T0_NS + 1,
            sid=1,
            seq=1,
            yes_bids=(Level(4400, 1000), Level(4500, 13600)),
            no_bids=(Level(5400, 300),),
        ),
        BookDelta(
            market=DOTTED,
            receive_ts_ns=T0_NS + 2,
            sid=1,
            seq=2,
            side=Side.NO,
            price_e4=5400,
            delta_e2=-500,
        ),
        Trade(
            market=DOTTED,
            exchange_ts_ns=T0_NS,
            receive_ts_ns=T0_NS + 3,
            sid=2,
            seq=1,
            trade_id="d91bc706-ee49-470d-82d8-11418bda6fed",
            yes_price_e4=3600,
            no_price_e4=6400,
            size_e2=13600,
            taker_side=Side.NO,
        ),
        Trade(
            market=OTHER,
            receive_ts_ns=T0_NS + 4,
            trade_id="t-other",
            yes_price_e4=4500,
            no_price_e4=5500,
            size_e2=100,
        ),
        Ticker(
            market=DOTTED,
            receive_ts_ns=T0_NS + 5,
            last_price_e4=3600,
            yes_bid_e4=4500,
            yes_ask_e4=4600,
            yes_bid_size_e2=13600,
            yes_ask_size_e2=700,
        ),
        Lifecycle(
            market=DOTTED,
            receive_ts_ns=T0_NS + 6,
            scope=LifecycleScope.MARKET,
            event_type="activated",
        ),
        Trade(
            market=DOTTED,
            receive_ts_ns=T0_NS + 7,
            trade_id="t-second",
            yes_price_e4=3700,
            no_price_e4=6300,
            size_e2=250,
            flags=(Flag.PRICE_SUM_MISMATCH,),
        ),
    ]


def nats_settings(payload: str = "json") -> NatsTransportSettings:
    return NatsTransportSettings.model_validate(
        {
            "servers": ["nats://127.0.0.1:4222"],  # overridden with the test server's URL
            "subject_prefix": PREFIX,
            "payload": payload,
            "stream": {"name": STREAM},
        }
    ).resolved("tailtest")


async def publish(server: NatsServer, records: Sequence[Record], payload: str = "json") -> None:
    """Publish through the real NATS transport and wait for every ack (close)."""
    transport = build_transport(nats_settings(payload), nats_servers=[server.url])
    await transport.start()
    try:
        for record in records:
            await transport.publish(record)
        await transport.flush()
    finally:
        await transport.close()
    assert transport.stats().records == len(records)


async def run_tail(*args: str, timeout_s: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        TOOLBOX,
        "tail",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


def decode_lines(stdout: str) -> list[Record]:
    return [DECODER.decode(line) for line in stdout.splitlines()]


# -- the command against a real server ------------------------------------------------------


async def test_json_from_all_prints_every_record_as_published(nats_server: NatsServer) -> None:
    records = sample_records()
    await publish(nats_server, records)
    code, stdout, stderr = await run_tail(
        "--server", nats_server.url, "--prefix", PREFIX, "--from", "all",
        "--count", str(len(records)), "--json",
    )  # fmt: skip
    assert code == 0, stderr
    assert decode_lines(stdout) == records
    assert f"stream {STREAM}" in stderr


async def test_msgpack_payloads_are_printed_as_json(nats_server: NatsServer) -> None:
    records = sample_records()
    await publish(nats_server, records, payload="msgpack")
    code, stdout, stderr = await run_tail(
        "--server", nats_server.url, f"{PREFIX}.>", "--from", "all",
        "--count", str(len(records)), "--json",
    )  # fmt: skip
    assert code == 0, stderr
    assert decode_lines(stdout) == records


async def test_readable_lines_show_decimals_time_and_stream_sequence(
    nats_server: NatsServer,
) -> None:
    records = sample_records()
    await publish(nats_server, records)
    code, stdout, stderr = await run_tail(
        "--server", nats_server.url, "--prefix", PREFIX, "--from", "all",
        "--count", str(len(records)),
    )  # fmt: skip
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == len(records)
    trade = lines[3]
    assert trade.startswith("2025-11-21T16:53:20.123456792Z trade ")
    assert f" {DOTTED} " in trade
    for text in ("yes=0.3600", "no=0.6400", "size=136.00", "taker=no/-", "stream_seq=4"):
        assert text in trade
    assert "best_yes=0.4500x136.00" in lines[1]
    assert "side=no price=0.5400 delta=-5.00" in lines[2]
    assert "bid=0.4500x136.00 ask=0.4600x7.00 last=0.3600" in lines[5]
    assert "flags=price_sum_mismatch" in lines[7]
    assert "event=connected" in lines[0]


async def test_market_with_a_dot_selects_that_market_only(nats_server: NatsServer) -> None:
    await publish(nats_server, sample_records())
    expected = [r for r in sample_records() if isinstance(r, Trade) and r.market == DOTTED]
    code, stdout, stderr = await run_tail(
        "--server", nats_server.url, "--prefix", PREFIX, "--kind", "trade", "--market", DOTTED,
        "--from", "all", "--count", "2", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    assert decode_lines(stdout) == expected
    assert "T73749%2E99" in stderr  # the subject followed carries the encoded token

    # Every kind of one market, and the stream's position options.
    of_market = [r for r in sample_records() if r.market == DOTTED]
    code, stdout, stderr = await run_tail(
        "--server", nats_server.url, "--prefix", PREFIX, "--market", DOTTED,
        "--from", "seq:3", "--count", str(len(of_market) - 1), "--json",
    )  # fmt: skip
    assert code == 0, stderr
    assert decode_lines(stdout) == of_market[1:]


async def test_from_last_and_timeout_exit_codes(nats_server: NatsServer) -> None:
    records = sample_records()
    await publish(nats_server, records)
    code, stdout, stderr = await run_tail(
        "--server", nats_server.url, "--prefix", PREFIX, "--from", "last", "--json",
        "--timeout-s", "0.5",
    )  # fmt: skip
    assert code == 0, stderr  # one record arrived, then silence
    assert decode_lines(stdout) == records[-1:]

    code, stdout, _ = await run_tail(
        "--server", nats_server.url, "--prefix", PREFIX, "--kind", "status", "--from", "new",
        "--timeout-s", "0.3",
    )  # fmt: skip
    assert (code, stdout) == (1, "")


async def test_core_receives_messages_published_after_it_starts(nats_server: NatsServer) -> None:
    records = sample_records()
    await publish(nats_server, records[:2])  # before: a core subscription never sees these
    proc = await asyncio.create_subprocess_exec(
        TOOLBOX, "tail", "--server", nats_server.url, "--prefix", PREFIX, "--core",
        "--count", "3", "--json",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        ready = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert b"core subscription" in ready, ready
        await publish(nats_server, records[2:5])
        stdout, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert decode_lines(stdout.decode()) == records[2:5]


async def test_no_stream_for_a_jetstream_tail_exits_2(nats_server: NatsServer) -> None:
    code, stdout, stderr = await run_tail(
        "--server", nats_server.url, "--prefix", "ssmd.nothing.kalshi", "--from", "all",
    )  # fmt: skip
    assert code == 2
    assert stdout == ""
    assert "no JetStream stream covers ssmd.nothing.kalshi.>" in stderr
    assert "--core" in stderr


async def test_unreachable_server_exits_2_with_the_url() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    code, stdout, stderr = await run_tail("--server", url, "--json")
    assert code == 2
    assert stdout == ""
    assert url in stderr
    assert "cannot connect" in stderr
    assert "Traceback" not in stderr


async def test_bad_options_exit_2() -> None:
    code, _, stderr = await run_tail("--from", "yesterday")
    assert code == 2
    assert "seq:N" in stderr
    code, _, stderr = await run_tail("--server", "nats://127.0.0.1:1", "x.>", "--kind", "trade")
    assert code == 2
    assert "either SUBJECT or --kind/--market" in stderr


# -- the pure parts -------------------------------------------------------------------------


def test_parse_start_accepts_each_form() -> None:
    assert parse_start("new") == StartPosition(DeliverPolicy.NEW)
    assert parse_start("all") == StartPosition(DeliverPolicy.ALL)
    assert parse_start("last") == StartPosition(DeliverPolicy.LAST)
    assert parse_start("seq:42") == StartPosition(DeliverPolicy.BY_START_SEQUENCE, stream_seq=42)
    at = parse_start("time:2026-01-31T14:00:00+01:00")
    assert at.start_time == dt.datetime(2026, 1, 31, 13, 0, tzinfo=dt.UTC)
    config = at.consumer_config()
    assert config.deliver_policy is DeliverPolicy.BY_START_TIME
    assert config.opt_start_time == at.start_time


@pytest.mark.parametrize(
    "text", ["", "first", "seq:0", "seq:-1", "seq:x", "time:", "time:2026-01-31T14:00:00"]
)
def test_parse_start_rejects_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"seq:N|UTC offset"):
        parse_start(text)


def test_subject_to_tail_builds_from_prefix_kind_and_market() -> None:
    assert subject_to_tail("p.x") == "p.x.>"
    assert subject_to_tail("p.x", kind="trade") == "p.x.trade.>"
    assert subject_to_tail("p.x", kind="status") == "p.x.status"
    assert subject_to_tail("p.x", market="A.B") == "p.x.*.A%2EB"
    assert subject_to_tail("p.x", kind="book_delta", market="A.B") == "p.x.book_delta.A%2EB"
    assert subject_to_tail("p.x", subject="q.>") == "q.>"
    with pytest.raises(ValueError, match="unknown record kind"):
        subject_to_tail("p.x", kind="trades")


def test_format_utc_ns_keeps_every_nanosecond() -> None:
    assert format_utc_ns(T0_NS) == "2025-11-21T16:53:20.123456789Z"
    assert format_utc_ns(0) == "1970-01-01T00:00:00.000000000Z"


def test_readable_line_without_a_stream_sequence() -> None:
    status = Status(
        market="",
        receive_ts_ns=T0_NS,
        event=StatusEvent.GAP,
        connection_id="c/1",
        channel="orderbook_delta",
        expected_seq=5,
        received_seq=9,
    )
    line = format_record_line(status, stream_seq=None)
    assert line == (
        "2025-11-21T16:53:20.123456789Z status        - event=gap connection=c/1"
        " channel=orderbook_delta expected_seq=5 received_seq=9"
    )


def test_record_json_line_is_one_compact_line_for_either_encoding() -> None:
    record = sample_records()[1]
    as_json = record_json_line(msgspec.json.encode(record), "application/json")
    as_msgpack = record_json_line(msgspec.msgpack.encode(record), "application/msgpack")
    assert as_json == as_msgpack == msgspec.json.encode(record).decode()
    assert "\n" not in as_json
    assert json.loads(as_json)["yes_bids"] == [[4400, 1000], [4500, 13600]]
    with pytest.raises(msgspec.DecodeError):
        record_json_line(b"[1, 2]", None)
