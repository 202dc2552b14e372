"""The NATS JetStream transport against real nats-servers: payloads, subjects and headers,
dedupe, stream validation, flush, a server crash (block and drop), auth, and a 3-node cluster."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js import api as js_api

from ssmd.config import NatsTransportSettings
from ssmd.natsserver import ClusterConfig, NatsServer, free_port
from ssmd.records import (
    BookDelta,
    BookSnapshot,
    Level,
    Lifecycle,
    LifecycleScope,
    Record,
    Side,
    Status,
    StatusEvent,
    Ticker,
    Trade,
    record_kind,
)
from ssmd.subjects import SubjectMapper, msg_id_for
from ssmd.transport import build_transport
from ssmd.transport.nats import (
    AckClient,
    LinkState,
    NatsConnectError,
    NatsTransport,
    NatsTransportError,
    NoJetStream,
    StreamMismatch,
    StreamMissing,
    connect_nats,
)
from ssmd.transport.nats_client import AckPatterns
from ssmd.transport.nats_core import (
    LATENCY_BOUNDS_NS,
    AckWatch,
    AckWindow,
    LatencyHistogram,
    PubAck,
    header_tail,
    header_value,
    hpub_command,
    hpub_subject,
    parse_pub_ack,
    stored_ack_head,
)

from .conftest import Stored, wait_until
from .conftest import read_stream as read_any_stream

pytestmark = pytest.mark.integration

ENV = "test"
PREFIX = "ssmd.test.kalshi"
STREAM = "SSMD_TEST_KALSHI"
TS = 1_763_744_000_000_000_000
MARKETS = ("KXSIMBTC-26NOV21-T97499.99", "KXA-26NOV21-T3.5", "KXB-26NOV21")


def nats_settings(servers: list[str], **changes: Any) -> NatsTransportSettings:
    data: dict[str, Any] = {
        "kind": "nats",
        "servers": servers,
        "ack_timeout_s": 2,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.3,
    }
    data.update(changes)
    return NatsTransportSettings.model_validate(data).resolved(ENV)


def trade(n: int, market: str = MARKETS[0]) -> Trade:
    return Trade(
        market=market,
        exchange_ts_ns=TS + n,
        receive_ts_ns=TS + n + 500,
        sid=3,
        seq=n,
        trade_id=f"trade-{n:08d}",
        yes_price_e4=3600,
        no_price_e4=6400,
        size_e2=13600,
        taker_side=Side.NO,
    )


def one_of_each_kind() -> list[Record]:
    market = MARKETS[0]
    return [
        BookSnapshot(
            market=market,
            receive_ts_ns=TS + 1,
            sid=1,
            seq=1,
            yes_bids=(Level(price_e4=4700, size_e2=100), Level(price_e4=4800, size_e2=250)),
            no_bids=(Level(price_e4=5100, size_e2=300),),
        ),
        BookDelta(
            market=market,
            exchange_ts_ns=TS,
            receive_ts_ns=TS + 2,
            sid=1,
            seq=2,
            side=Side.NO,
            price_e4=5100,
            delta_e2=-300,
        ),
        Ticker(
            market=MARKETS[1],
            exchange_ts_ns=TS,
            receive_ts_ns=TS + 3,
            sid=2,
            seq=1,
            last_price_e4=4800,
            yes_bid_e4=4700,
            yes_ask_e4=4900,
            volume_e2=123_400,
        ),
        trade(1, MARKETS[2]),
        Lifecycle(
            market=market,
            exchange_ts_ns=TS,
            receive_ts_ns=TS + 4,
            sid=4,
            seq=1,
            scope=LifecycleScope.MARKET,
            event_type="created",
            title="Bitcoin above 97,499.99?",
            custom_strike={"Underlying": "BTC"},
        ),
        Status(
            market="",
            receive_ts_ns=TS + 5,
            event=StatusEvent.GAP,
            connection_id="c1",
            channel="orderbook_delta",
            expected_seq=3,
            received_seq=5,
            markets=(market,),
        ),
    ]


async def read_stream(url: str, stream: str = STREAM) -> list[Stored]:
    return await read_any_stream(url, stream, f"{PREFIX}.>")


def decode_json(stored: list[Stored]) -> list[Record]:
    decoder = msgspec.json.Decoder(Record)
    return [decoder.decode(message.data) for message in stored]


@pytest.fixture
async def transport_factory() -> AsyncIterator[Callable[..., Awaitable[NatsTransport]]]:
    """Starts transports and closes whatever a test left open."""
    made: list[NatsTransport] = []

    async def make(settings: NatsTransportSettings, **kwargs: Any) -> NatsTransport:
        transport = NatsTransport(settings, **kwargs)
        made.append(transport)
        await transport.start()
        return transport

    yield make
    for transport in made:  # a failed test may leave records unacked: do not wait forever
        with contextlib.suppress(TimeoutError, NatsTransportError):
            await asyncio.wait_for(transport.close(), 5)


# -- the pure core ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "headers", "expected"),
    [
        (b'{"stream":"S","seq":7}', None, PubAck(stream="S", seq=7)),
        (b'{"stream":"S","seq":7,"duplicate":true}', None, PubAck("S", 7, duplicate=True)),
        (b'{"stream":"S","domain":"hub","seq":1}', None, PubAck(stream="S", seq=1)),
        (b"", {"Status": "503"}, "no stream takes the subject (503 no responders)"),
        (
            b"",
            {"Status": "408", "Description": "Request Timeout\nX: y"},
            "status 408 Request Timeout",
        ),
        (
            b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}',
            None,
            "maximum messages exceeded (code 503)",
        ),
        (b"garbage", None, "unreadable ack b'garbage'"),
        (b'{"stream":"S"}', None, 'ack without a sequence b\'{"stream":"S"}\''),
    ],
)
def test_parse_pub_ack(data: bytes, headers: dict[str, str] | None, expected: object) -> None:
    assert parse_pub_ack(data, headers) == expected


def test_ack_window_settles_in_any_order_and_counts() -> None:
    window = AckWindow(capacity=3)
    numbers = [window.add((k, b"", kind, TS, TS)) for k, kind in enumerate("aab", 1)]
    assert numbers == [0, 1, 2]
    assert window.full
    assert window.settle(1, duplicate=False, now_ns=TS)
    assert not window.settle(1, duplicate=False, now_ns=TS)  # the ack of a re-send
    assert window.unacked_from(0) == [0, 2]
    assert window.unacked_from(1) == [2]
    assert window.settle(0, duplicate=True, now_ns=TS)
    stats = window.stats(reconnects=2)
    assert stats.records_by_kind == {"a": 2}
    assert (stats.acked, stats.duplicates, stats.pending, stats.bytes_written) == (2, 1, 1, 3)
    assert stats.reconnects == 2


def test_stored_acks_settle_together_as_settle_would() -> None:
    """settle_stored settles the numbers of usual acks exactly as settle(n, duplicate=False)
    would; a number not pending (a re-send's ack) is not counted."""
    fast, slow = AckWindow(capacity=10), AckWindow(capacity=10)
    for window in (fast, slow):
        for k in range(6):
            window.add((10 + k, b"", "ab"[k % 2], TS - 3 * MS, TS - (2 + k // 3) * MS))
    assert fast.settle_stored([0, 4, 9, 5], TS) == 3
    for n in (0, 4, 5):
        assert slow.settle(n, duplicate=False, now_ns=TS)
    assert fast.stats(reconnects=0) == slow.stats(reconnects=0)
    assert fast.latency() == slow.latency()
    assert list(fast.pending) == [1, 2, 3]


def ack_bytes(n: int, body: bytes) -> bytes:
    """One ack as nats-server sends it: `MSG <inbox>.<n> 5 <size>` and the body."""
    return b"MSG _INBOX.abc.%d 5 %d\r\n%s\r\n" % (n, len(body), body)


def test_a_read_is_split_into_usual_acks_and_others_in_order() -> None:
    """Usual acks (`{"stream":<ours>,"seq":N}`, N > 0) give their numbers, every other ack
    its (n, data); a message that is not our ack ends the split, a cut ack waits."""
    head = stored_ack_head("S_1")
    assert head == b'{"stream":"S_1","seq":'
    patterns = AckPatterns("_INBOX.abc", 5, head)
    others = [
        (b"1", b'{"stream":"S_1","seq":42,"duplicate":true}'),
        (b"2", b'{"stream":"OTHER","seq":43}'),
        (b"3", b'{"stream":"S_1","seq":0}'),
        (b"5", b'{"stream":"S_1","domain":"d","seq":46}'),
        (b"6", b'{"stream":"S_1","seq":047}'),
    ]
    data = (
        ack_bytes(0, b'{"stream":"S_1","seq":41}')
        + ack_bytes(12, b'{"stream":"S_1","seq":1234567890123}')
        + b"".join(ack_bytes(int(n), body) for n, body in others[:3])
        + ack_bytes(4, b'{"stream":"S_1","seq":44}')
        + b"".join(ack_bytes(int(n), body) for n, body in others[3:])
        + ack_bytes(7, b'{"stream":"S_1","seq":48}')
    )
    assert patterns.split(bytearray(data)) == ([0, 12, 4, 7], others, len(data), True)
    other_sub = b"MSG other.subject 9 2\r\nhi\r\n"
    stored = ack_bytes(8, b'{"stream":"S_1","seq":49}')
    cut = stored + ack_bytes(9, b'{"stream":"S_1","seq":50}')[:-3]
    assert patterns.split(bytearray(cut)) == ([8], [], len(stored), False)
    assert patterns.split(bytearray(stored + other_sub + stored)) == ([8], [], len(stored), True)
    assert patterns.split(bytearray(other_sub + stored)) == ([], [], 0, True)
    # A usual ack's bytes and more before the end its size says: the size frames it.
    odd_data = b'{"stream":"S_1","seq":51}\r\n{}'
    odd = ack_bytes(10, odd_data)
    assert patterns.split(bytearray(stored + odd)) == (
        [8],
        [(b"10", odd_data)],
        len(stored + odd),
        True,
    )
    assert patterns.split(bytearray()) == ([], [], 0, True)


def test_entry_commands_are_hpub_command_of_the_record() -> None:
    # _entry renders each command from per-kind and per-market parts; it must be byte for byte
    # what hpub_command gives from the record's subject, Msg-Id and headers (what nats-py's
    # publish() sends, test above), for every kind, a status record (no market token), a
    # record without a sid, and a market that header_value changes.
    records = [
        *one_of_each_kind(),
        msgspec.structs.replace(one_of_each_kind()[0], sid=None),
        BookDelta(market="bad\nmarket", receive_ts_ns=TS, sid=1, seq=2, side=Side.NO,
                  price_e4=100, delta_e2=5),
        BookDelta(market="KX.A B*>", receive_ts_ns=TS, sid=1, seq=3, side=Side.YES,
                  price_e4=100, delta_e2=5),
    ]  # fmt: skip
    transport = NatsTransport(nats_settings(["nats://127.0.0.1:4222"], subject_prefix="p.q"))
    transport._reply_prefix = b"_INBOX.abc."  # what start() sets from the connection's inbox
    for n, record in enumerate(records * 2, start=7):  # twice: from the parts' caches too
        payload_len, command = transport._entry(record, n, TS)[:2]
        payload = msgspec.json.encode(record)
        kind = record_kind(record)
        expected = hpub_command(
            transport.mapper.subject_for(record).encode(),
            b"_INBOX.abc.%d" % n,
            header_value(msg_id_for(record)),
            header_tail(kind, record.market, "application/json"),
            payload,
        )
        assert command == expected, record
        assert hpub_subject(command) == transport.mapper.subject_for(record)
        assert payload_len == len(payload)


def test_ack_window_drop_runs() -> None:
    window = AckWindow(capacity=1)
    assert window.count_drop("M1")
    assert not window.count_drop("M2")
    assert not window.count_drop("")
    assert window.take_drops() == (3, {"M1", "M2"})
    assert window.take_drops() == (0, set())
    assert window.count_drop("M1")  # a new run
    assert window.dropped == 4


def test_ack_watch_fires_when_the_same_record_stays_oldest() -> None:
    window = AckWindow(capacity=10)
    watch = AckWatch(timeout_s=5)
    assert not watch.overdue(window, 0.0)  # nothing pending
    window.add((0, b"", "k", TS, TS))
    window.add((0, b"", "k", TS, TS))
    assert not watch.overdue(window, 100.0)  # first seen now
    assert not watch.overdue(window, 104.9)
    window.settle(0, duplicate=False, now_ns=TS)  # progress: the oldest changed
    assert not watch.overdue(window, 106.0)
    assert not watch.overdue(window, 110.0)
    assert watch.overdue(window, 111.0)
    assert not watch.overdue(window, 111.5)  # re-armed after firing


MS = 1_000_000  # nanoseconds


def bucket_of(latency_ns: int) -> int:
    """The index of the first bound >= latency_ns (len(bounds): beyond every bound)."""
    return next(
        (i for i, bound in enumerate(LATENCY_BOUNDS_NS) if latency_ns <= bound),
        len(LATENCY_BOUNDS_NS),
    )


def test_latency_buckets_span_a_tenth_of_a_millisecond_to_five_seconds() -> None:
    assert LATENCY_BOUNDS_NS[0] == MS // 10
    assert LATENCY_BOUNDS_NS[-1] == 5_000 * MS
    assert list(LATENCY_BOUNDS_NS) == sorted(set(LATENCY_BOUNDS_NS))


def test_latency_histogram_puts_a_bound_in_its_own_bucket_and_sums_exactly() -> None:
    histogram = LatencyHistogram()
    for latency_ns in (0, MS // 10, MS // 10 + 1, 3 * MS, 5_000 * MS, 5_000 * MS + 1, 60_000 * MS):
        histogram.observe(latency_ns)
    snapshot = histogram.snapshot()
    counts = dict.fromkeys(range(len(LATENCY_BOUNDS_NS) + 1), 0)
    for index in (0, 0, 1, bucket_of(3 * MS), len(LATENCY_BOUNDS_NS) - 1):
        counts[index] += 1
    counts[len(LATENCY_BOUNDS_NS)] += 2  # above 5 s: the +Inf bucket only
    assert snapshot.counts == tuple(counts.values())
    assert snapshot.count == 7
    assert snapshot.sum_ns == 0 + MS // 10 + MS // 10 + 1 + 3 * MS + 10_000 * MS + 1 + 60_000 * MS
    cumulative = snapshot.cumulative()
    assert cumulative == sorted(cumulative)
    assert cumulative[-1] == 7
    histogram.observe(MS)
    assert snapshot.count == 7  # a snapshot is a copy


def test_ack_window_times_each_ack_from_receive_and_from_publish() -> None:
    window = AckWindow(capacity=4)
    # received at TS, handed to the transport 2 ms later, acked 3 ms after that
    window.add((1, b"", "trade", TS, TS + 2 * MS))
    window.add((1, b"", "trade", TS + MS, TS + 2 * MS))
    assert window.settle(0, duplicate=False, now_ns=TS + 5 * MS)
    assert window.settle(1, duplicate=True, now_ns=TS + 6 * MS)
    assert not window.settle(1, duplicate=False, now_ns=TS + 9 * MS)  # a re-send's ack: not timed
    latency = window.latency()
    assert latency.last_ack_ns == TS + 6 * MS
    frame, publish = latency.frame_to_ack, latency.publish_to_ack
    assert (frame.count, frame.sum_ns) == (2, 5 * MS + 5 * MS)
    assert frame.counts[bucket_of(5 * MS)] == 2  # le 5 ms: a bound is in its own bucket
    assert (publish.count, publish.sum_ns) == (2, 3 * MS + 4 * MS)
    assert publish.counts[bucket_of(3 * MS)] == 2  # 3 and 4 ms: le 5 ms


def test_hpub_command_is_what_nats_py_sends() -> None:
    # nats-py's publish(): `HPUB subject reply hdr_len total_len`, the header block, the payload
    # (nats/protocol/command.py hpub_cmd, headers rendered in dict order).
    headers = {
        "Nats-Msg-Id": "book_delta:M:1:2:3",
        "Ssmd-Kind": "book_delta",
        "Ssmd-Market": "KXA-26NOV21-T3.5",
        "Content-Type": "application/json",
    }
    block = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    block += b"\r\n"
    payload = b'{"x":1}'
    expected = (
        f"HPUB s.book_delta.M _INBOX.abc.7 {len(block)} {len(block) + len(payload)}\r\n".encode()
        + block
        + payload
        + b"\r\n"
    )
    tail = header_tail("book_delta", "KXA-26NOV21-T3.5", "application/json")
    command = hpub_command(
        b"s.book_delta.M", b"_INBOX.abc.7", header_value("book_delta:M:1:2:3"), tail, payload
    )
    assert command == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [("plain", b"plain"), (" padded\t", b"padded"), ("a\r\nb", b"a  b"), ("é", "é".encode())],
)
def test_header_values_are_cleaned_as_nats_py_does(text: str, value: bytes) -> None:
    assert header_value(text) == value


@pytest.mark.parametrize(
    "cuts", [(), (25,), (12, 40), (36, 60, 75), (50, 90, 130, 170), tuple(range(1, 240, 7))]
)
async def test_acks_are_routed_from_the_parser_however_the_reads_are_cut(
    cuts: tuple[int, ...],
) -> None:
    client = AckClient()  # not connected: only its parser runs
    stored: list[int] = []
    received: list[tuple[bytes, bytes]] = []

    def on_pub_acks(stored_ns: list[int], others: list[tuple[bytes, bytes]]) -> None:
        stored.extend(stored_ns)
        received.extend(others)

    client.route_acks("_INBOX.abc", 5, stored_ack_head("S"), on_pub_acks)
    other = b"MSG other.subject 9 2\r\nhi\r\n"  # not ours: nats-py's path (no such sub)
    bodies = {
        0: b'{"stream":"S","seq":1}',
        1: b'{"seq":2}',
        2: b'{"stream":"S","seq":3}',
        12: b'{"seq":4}',
        13: b'{"stream":"S","seq":5}',
    }
    data = b"".join(ack_bytes(n, bodies[n]) for n in (0, 1, 2)) + other
    data += b"".join(ack_bytes(n, bodies[n]) for n in (12, 13))
    bounds = [0, *cuts, len(data)]
    for start, end in itertools.pairwise(bounds):
        await client._ps.parse(data[start:end])
    # Every ack once: a usual one by number (or, after nats-py parsed the other message, as
    # it came), any other with its data.
    assert set(stored) <= {0, 2, 13}
    assert sorted([*stored, *(int(n) for n, _ in received)]) == sorted(bodies)
    assert all(bodies[int(n)] == body for n, body in received)
    assert not client._ps.buf


# -- publishing --------------------------------------------------------------------------------


async def test_every_kind_is_stored_with_subject_headers_and_order(
    nats_server: NatsServer, transport_factory: Callable[..., Awaitable[NatsTransport]]
) -> None:
    transport = await transport_factory(nats_settings([nats_server.url]))
    records = one_of_each_kind() + [trade(n, MARKETS[n % 3]) for n in range(2, 50)]
    for record in records:
        await transport.publish(record)
    await transport.close()

    stored = await read_stream(nats_server.url)
    assert decode_json(stored) == records  # same records, same order
    mapper = SubjectMapper(PREFIX)
    for message, record in zip(stored, records, strict=True):
        assert message.subject == mapper.subject_for(record)
        assert message.headers["Nats-Msg-Id"] == msg_id_for(record)
        assert message.headers["Ssmd-Kind"] == record_kind(record)
        assert message.headers["Content-Type"] == "application/json"
        if record.market:
            assert message.headers["Ssmd-Market"] == record.market
    assert stored[0].subject == f"{PREFIX}.book_snapshot.KXSIMBTC-26NOV21-T97499%2E99"
    assert stored[5].subject == f"{PREFIX}.status"
    stats = transport.stats()
    assert stats.records == len(records)
    assert stats.records_by_kind["trade"] == 49
    assert stats.records_by_kind["status"] == 1
    assert (stats.acked, stats.pending, stats.duplicates, stats.dropped) == (len(records), 0, 0, 0)


async def test_msgpack_payload(
    nats_server: NatsServer, transport_factory: Callable[..., Awaitable[NatsTransport]]
) -> None:
    transport = await transport_factory(nats_settings([nats_server.url], payload="msgpack"))
    records = one_of_each_kind()
    for record in records:
        await transport.publish(record)
    await transport.close()
    stored = await read_stream(nats_server.url)
    decoder = msgspec.msgpack.Decoder(Record)
    assert [decoder.decode(message.data) for message in stored] == records
    assert {message.headers["Content-Type"] for message in stored} == {"application/msgpack"}


async def test_the_same_trade_twice_is_stored_once(
    nats_server: NatsServer, transport_factory: Callable[..., Awaitable[NatsTransport]]
) -> None:
    transport = await transport_factory(nats_settings([nats_server.url]))
    await transport.publish(trade(1))
    await transport.publish(trade(2))
    # The same exchange trade again (e.g. received by a second connection): same Msg-Id.
    await transport.publish(msgspec.structs.replace(trade(1), receive_ts_ns=TS + 9, sid=7))
    await transport.flush()
    stats = transport.stats()
    assert (stats.acked, stats.duplicates) == (3, 1)
    await transport.close()
    assert [r.trade_id for r in decode_json(await read_stream(nats_server.url))] == [  # type: ignore[union-attr]
        "trade-00000001",
        "trade-00000002",
    ]


async def test_flush_returns_after_every_ack(
    nats_server: NatsServer, transport_factory: Callable[..., Awaitable[NatsTransport]]
) -> None:
    transport = await transport_factory(nats_settings([nats_server.url], max_pending_acks=256))
    for n in range(1000):
        await transport.publish(trade(n))
    await transport.flush()
    assert transport.stats().pending == 0
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().stream_info(STREAM)
    finally:
        await nc.close()
    assert info.state.messages == 1000
    assert info.config.subjects == [f"{PREFIX}.>"]
    assert info.config.duplicate_window == 120
    assert info.config.storage == js_api.StorageType.FILE


async def test_publish_many_keeps_order_past_a_full_window(
    nats_server: NatsServer, transport_factory: Callable[..., Awaitable[NatsTransport]]
) -> None:
    transport = await transport_factory(nats_settings([nats_server.url], max_pending_acks=64))
    records: list[Record] = [trade(n, MARKETS[n % 3]) for n in range(10, 1010)]
    records[500:500] = one_of_each_kind()
    for start in range(0, len(records), 300):  # batches bigger than the window
        await transport.publish_many(records[start : start + 300])
    await transport.close()
    stored = await read_stream(nats_server.url)
    assert decode_json(stored) == records
    assert [message.headers["Nats-Msg-Id"] for message in stored] == [
        msg_id_for(record) for record in records
    ]
    assert transport.stats().acked == len(records)


async def test_records_follow_nats_py_commands_still_in_its_buffer(
    nats_server: NatsServer, transport_factory: Callable[..., Awaitable[NatsTransport]]
) -> None:
    """Our HPUBs go to the socket at once, but not ahead of a command nats-py has buffered for
    its flusher (here a SUB): those records wait behind it, later ones go straight out."""
    transport = await transport_factory(nats_settings([nats_server.url]))
    nc = transport._nc
    assert nc is not None
    seen: list[bytes] = []
    got = asyncio.Event()

    async def receive(msg: Msg) -> None:
        seen.append(msg.data)
        got.set()

    await nc.subscribe("probe.after", cb=receive)
    assert nc._pending_data_size > 0  # the SUB waits for nats-py's flusher task
    records: list[Record] = [trade(n, MARKETS[n % 3]) for n in range(300)]
    await transport.publish_many(records[:100])  # behind the SUB, in nats-py's buffer
    await transport.publish_many(records[100:200])
    for record in records[200:]:
        await transport.publish(record)
    await transport.flush()
    other = await nats.connect(nats_server.url)
    try:
        await other.publish("probe.after", b"hello")  # the SUB reached the server
        await other.flush()
        await asyncio.wait_for(got.wait(), 5)
    finally:
        await other.close()
    assert seen == [b"hello"]
    await transport.close()
    assert decode_json(await read_stream(nats_server.url)) == records


async def test_publish_many_with_overflow_drop_counts_and_reports(
    nats_server: NatsServer, transport_factory: Callable[..., Awaitable[NatsTransport]]
) -> None:
    window = 16
    settings = nats_settings([nats_server.url], max_pending_acks=window, overflow="drop")
    transport = await transport_factory(settings, clock_ns=lambda: TS + 5)
    await nats_server.kill()
    during = [trade(n) for n in range(50)]
    await transport.publish_many(during)  # never blocks
    assert (transport.stats().pending, transport.stats().dropped) == (window, 50 - window)
    await nats_server.restart()
    await transport.flush()  # waits out the reconnect; reports the drops
    await transport.publish_many([trade(50)])
    await transport.close()
    records = decode_json(await read_stream(nats_server.url))
    assert records[:window] == during[:window]
    status = records[window]
    assert isinstance(status, Status)
    assert status.event is StatusEvent.DROPPED
    assert f"{50 - window} records dropped" in status.reason
    assert records[window + 1 :] == [trade(50)]


async def test_every_ack_is_timed_from_the_frame_and_from_the_publish_call(
    nats_server: NatsServer, transport_factory: Callable[..., Awaitable[NatsTransport]]
) -> None:
    """The transport's clock reads T0 when publish_many() is called and T0 + 20 ms for every
    ack: each record's two latencies are known exactly, whichever way the acks arrive."""
    t0 = TS + 1_000 * MS
    clock = itertools.chain([t0], itertools.repeat(t0 + 20 * MS)).__next__
    # A window smaller than the batch: some records wait for room in publish_many().
    settings = nats_settings([nats_server.url], max_pending_acks=32)
    transport = await transport_factory(settings, clock_ns=clock)
    records = [
        msgspec.structs.replace(trade(n), receive_ts_ns=t0 - (40 + n % 2) * MS) for n in range(100)
    ]
    await transport.publish_many(records)
    await transport.flush()
    latency = transport.latency()
    acked = transport.stats().acked
    assert acked == len(records)
    assert latency.last_ack_ns == t0 + 20 * MS
    publish, frame = latency.publish_to_ack, latency.frame_to_ack
    assert publish.count == frame.count == acked
    assert publish.counts[bucket_of(20 * MS)] == acked  # le 25 ms
    assert publish.sum_ns == acked * 20 * MS
    assert frame.counts[bucket_of(60 * MS)] == acked  # 60 ms and 61 ms: le 100 ms
    assert frame.sum_ns == 50 * 60 * MS + 50 * 61 * MS
    for histogram in (publish, frame):
        cumulative = histogram.cumulative()
        assert cumulative == sorted(cumulative)
        assert cumulative[-1] == acked


async def test_ack_latency_on_the_real_clock_counts_each_record_once(
    nats_server: NatsServer, transport_factory: Callable[..., Awaitable[NatsTransport]]
) -> None:
    transport = await transport_factory(nats_settings([nats_server.url], max_pending_acks=64))
    before_ns = time.time_ns()
    for start in range(0, 300, 50):
        now_ns = time.time_ns()
        batch = [
            msgspec.structs.replace(trade(n), receive_ts_ns=now_ns)
            for n in range(start, start + 50)
        ]
        await transport.publish_many(batch)
    await transport.publish(msgspec.structs.replace(trade(300), receive_ts_ns=time.time_ns()))
    await transport.close()
    latency = transport.latency()
    assert latency.frame_to_ack.count == latency.publish_to_ack.count == 301
    assert transport.stats().acked == 301
    assert before_ns < latency.last_ack_ns <= time.time_ns()
    for histogram in (latency.frame_to_ack, latency.publish_to_ack):
        assert 0 < histogram.sum_ns <= 301 * (latency.last_ack_ns - before_ns)
        cumulative = histogram.cumulative()
        assert cumulative == sorted(cumulative)
        assert cumulative[-1] == 301


async def test_build_transport_makes_a_nats_transport_with_server_override(
    nats_server: NatsServer,
) -> None:
    settings = nats_settings(["nats://127.0.0.1:1"])  # unused: overridden below
    transport = build_transport(settings, nats_servers=[nats_server.url])
    assert isinstance(transport, NatsTransport)
    await transport.start()
    assert transport.server == nats_server.url
    await transport.publish(trade(1))
    await transport.close()
    await transport.close()  # idempotent
    assert len(await read_stream(nats_server.url)) == 1
    with pytest.raises(NatsTransportError, match="closed"):
        await transport.publish(trade(2))


async def test_connect_nats_uses_the_settings_and_lets_callers_override(
    nats_server: NatsServer,
) -> None:
    settings = nats_settings(["nats://127.0.0.1:1"])
    nc = await connect_nats(settings, servers=[nats_server.url])
    try:
        assert nc.is_connected
        assert nc.options["name"] == "ssmd-test"
    finally:
        await nc.close()
    nc = await connect_nats(settings, servers=[nats_server.url], name="ssmd-tail")
    try:
        assert nc.options["name"] == "ssmd-tail"
    finally:
        await nc.close()


# -- refusing to start -------------------------------------------------------------------------


async def test_a_stream_that_does_not_cover_our_subjects_is_refused(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(name=STREAM, subjects=["ssmd.test.kalshi.trade.>"])
    finally:
        await nc.close()
    transport = NatsTransport(nats_settings([nats_server.url]))
    with pytest.raises(StreamMismatch) as info:
        await transport.start()
    error = info.value
    assert error.stream == STREAM
    assert error.stream_subjects == ["ssmd.test.kalshi.trade.>"]
    assert error.ours == f"{PREFIX}.>"
    assert error.server == nats_server.url
    message = str(error)
    assert "ssmd.test.kalshi.trade.>" in message
    assert f"add `{PREFIX}.>` to the stream's subjects" in message
    assert "transport.subject_prefix" in message


async def test_a_covering_stream_made_by_someone_else_is_used(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(name=STREAM, subjects=["other.>", "ssmd.>"])
    finally:
        await nc.close()
    transport = NatsTransport(nats_settings([nats_server.url], stream={"create": False}))
    await transport.start()
    await transport.publish(trade(1))
    await transport.close()
    assert len(await read_stream(nats_server.url)) == 1


async def test_create_false_without_the_stream_is_refused(nats_server: NatsServer) -> None:
    transport = NatsTransport(nats_settings([nats_server.url], stream={"create": False}))
    with pytest.raises(StreamMissing) as info:
        await transport.start()
    assert info.value.stream == STREAM
    assert "create: true" in info.value.fix
    assert f"[{PREFIX}.>]" in info.value.fix


async def test_no_server_listening_is_a_connect_error() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    transport = NatsTransport(nats_settings([url]))
    with pytest.raises(NatsConnectError) as info:
        await transport.start()
    assert url in str(info.value)


async def test_a_server_without_jetstream_is_refused(tmp_path: Path) -> None:
    async with NatsServer(tmp_path / "nats", jetstream=False) as server:
        transport = NatsTransport(nats_settings([server.url]))
        with pytest.raises(NoJetStream) as info:
            await transport.start()
    assert "-js" in info.value.fix


async def test_user_and_password_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ["--user", "ssmd", "--pass", "pw-right"]
    async with NatsServer(tmp_path / "nats", extra_args=extra) as server:
        settings = nats_settings([server.url], user="ssmd", password_env="SSMD_TEST_NATS_PW")
        monkeypatch.setenv("SSMD_TEST_NATS_PW", "pw-wrong")
        with pytest.raises(NatsConnectError) as info:
            await NatsTransport(settings).start()
        assert "pw-wrong" not in str(info.value)
        monkeypatch.setenv("SSMD_TEST_NATS_PW", "pw-right")
        transport = NatsTransport(settings)
        await transport.start()
        await transport.publish(trade(1))
        await transport.close()
        assert transport.stats().acked == 1


# -- a server crash ----------------------------------------------------------------------------


async def test_kill_and_restart_keeps_every_record_once_in_order(
    nats_server: NatsServer, transport_factory: Callable[..., Awaitable[NatsTransport]]
) -> None:
    window = 64
    transport = await transport_factory(nats_settings([nats_server.url], max_pending_acks=window))
    records = [trade(n, MARKETS[n % 3]) for n in range(3000)]
    returned = 0
    halfway = asyncio.Event()

    async def publish_all() -> None:
        nonlocal returned
        for record in records:
            await transport.publish(record)
            returned += 1
            if returned == 1000:
                halfway.set()

    publisher = asyncio.create_task(publish_all())
    await halfway.wait()
    await nats_server.kill()
    # The window fills with unacked records, then publish() holds the producer back.
    await wait_until(lambda: transport.stats().pending == window, 10, "a full window")
    returned_while_down = returned
    await asyncio.sleep(0.3)  # the outage goes on
    assert not publisher.done()
    assert returned == returned_while_down < len(records)

    await nats_server.restart()
    await asyncio.wait_for(publisher, 30)
    await transport.close()

    stats = transport.stats()
    assert stats.reconnects >= 1
    # Whether any record was in flight at the kill is timing; the window bounds the re-sends.
    assert stats.resent <= window
    assert stats.acked == len(records)
    stored = await read_stream(nats_server.url)
    assert decode_json(stored) == records  # each record exactly once, in publish order
    assert [message.seq for message in stored] == list(range(1, len(records) + 1))


async def test_overflow_drop_counts_and_reports_the_drops(
    nats_server: NatsServer, transport_factory: Callable[..., Awaitable[NatsTransport]]
) -> None:
    window = 32
    settings = nats_settings([nats_server.url], max_pending_acks=window, overflow="drop")
    transport = await transport_factory(settings, clock_ns=lambda: TS + 77)
    before = [trade(n) for n in range(10)]
    for record in before:
        await transport.publish(record)
    await transport.flush()

    await nats_server.kill()
    during = [trade(n, MARKETS[n % 2]) for n in range(10, 110)]
    for record in during:  # never blocks: beyond the window, records are dropped
        await transport.publish(record)
    stats = transport.stats()
    assert (stats.pending, stats.dropped) == (window, 100 - window)

    await nats_server.restart()
    await transport.close()

    records = decode_json(await read_stream(nats_server.url))
    assert records[: 10 + window] == before + during[:window]
    assert len(records) == 10 + window + 1
    status = records[-1]
    assert isinstance(status, Status)
    assert status.event is StatusEvent.DROPPED
    assert status.connection_id == "transport"
    assert status.receive_ts_ns == TS + 77
    assert f"{100 - window} records dropped" in status.reason
    assert status.markets == tuple(sorted(MARKETS[:2]))
    assert transport.stats().dropped == 100 - window


class FreezableProxy:
    """A TCP forwarder to nats-server that can stop passing bytes without closing anything:
    a half-open connection, as after a network partition."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.close()


async def test_an_ack_timeout_on_a_frozen_connection_reconnects_and_resends(
    nats_server: NatsServer, transport_factory: Callable[..., Awaitable[NatsTransport]]
) -> None:
    async with FreezableProxy(nats_server.port) as proxy:
        settings = nats_settings([proxy.url], ack_timeout_s=0.5, max_pending_acks=50)
        transport = await transport_factory(settings)
        records = [trade(n) for n in range(300)]
        for record in records[:100]:
            await transport.publish(record)
        proxy.flowing.clear()  # nothing passes any more, and nothing is closed either
        publisher = asyncio.create_task(publish_each(transport, records[100:]))
        await wait_until(lambda: transport.state is LinkState.DOWN, 10, "the ack timeout")
        assert not publisher.done()
        proxy.flowing.set()
        await asyncio.wait_for(publisher, 30)
        await transport.close()
    stats = transport.stats()
    assert stats.reconnects >= 1
    assert stats.resent >= 1
    assert decode_json(await read_stream(nats_server.url)) == records


async def publish_each(transport: NatsTransport, records: list[Trade]) -> None:
    for record in records:
        await transport.publish(record)


async def test_a_deleted_stream_is_created_again_and_the_window_resent(
    nats_server: NatsServer, transport_factory: Callable[..., Awaitable[NatsTransport]]
) -> None:
    transport = await transport_factory(nats_settings([nats_server.url]))
    for n in range(10):
        await transport.publish(trade(n))
    await transport.flush()
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().delete_stream(STREAM)
    finally:
        await nc.close()
    # JetStream answers "no responders" for a subject no stream takes: an error ack.
    after = [trade(n) for n in range(10, 30)]
    for record in after:
        await transport.publish(record)
    await transport.close()
    assert transport.stats().reconnects >= 1
    assert decode_json(await read_stream(nats_server.url)) == after


# -- a three-node cluster ----------------------------------------------------------------------


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[NatsServer]]:
    route_ports = [free_port() for _ in range(3)]
    routes = [f"nats://127.0.0.1:{port}" for port in route_ports]
    nodes = [
        NatsServer(
            tmp_path / f"n{i + 1}",
            server_name=f"n{i + 1}",
            cluster=ClusterConfig(
                name="ssmd-test", port=route_ports[i], routes=routes[:i] + routes[i + 1 :]
            ),
            ready_timeout_s=30,
        )
        for i in range(3)
    ]
    try:
        await asyncio.gather(*(node.start() for node in nodes))
        yield nodes
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


async def start_when_the_cluster_is_ready(transport: NatsTransport, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await transport.start()
            return
        except NatsTransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


async def read_stream_when_ready(url: str, timeout_s: float) -> list[Stored]:
    """read_stream, retried while the cluster elects new leaders after a node loss."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await read_stream(url)
        except (nats.errors.TimeoutError, nats.js.errors.APIError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


async def test_cluster_node_loss_loses_and_duplicates_nothing(cluster: list[NatsServer]) -> None:
    urls = [node.url for node in cluster]
    settings = nats_settings(urls, max_pending_acks=128, stream={"replicas": 3})
    transport = NatsTransport(settings)
    await start_when_the_cluster_is_ready(transport, 30)
    records = [trade(n, MARKETS[n % 3]) for n in range(2000)]
    halfway = asyncio.Event()

    async def publish_all() -> None:
        for n, record in enumerate(records):
            await transport.publish(record)
            if n == 700:
                halfway.set()

    publisher = asyncio.create_task(publish_all())
    await halfway.wait()
    connected = next(node for node in cluster if node.url == transport.server)
    await connected.kill()
    await asyncio.wait_for(publisher, 60)
    await asyncio.wait_for(transport.close(), 60)
    assert transport.stats().reconnects >= 1

    survivor = next(node for node in cluster if node.running)
    stored = decode_json(await read_stream_when_ready(survivor.url, 30))
    ids = [record.trade_id for record in stored]  # type: ignore[union-attr]
    assert len(ids) == len(set(ids)), "a record is stored twice"
    assert sorted(ids) == sorted(record.trade_id for record in records), "a record is missing"
    # We lost our own node: what it had passed on is a prefix, the re-sends follow in order.
    assert ids == [record.trade_id for record in records]
