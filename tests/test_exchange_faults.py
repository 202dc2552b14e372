"""The simulator misbehaving on purpose, seen by a real signed client on 127.0.0.1 (§3, §4, §6.6).

Every test checks the wire (frames, close codes, HTTP statuses) and the accounting: what the
client received is exactly `sent`, and `sent` + `skipped` cover every seq of every sid.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode

from ssmd.auth import WS_PATH, signed_headers
from ssmd.errors import ConfigError
from ssmd.exchange.cli import exchange_main
from ssmd.exchange.faults import (
    AbortConnection,
    Burst,
    CloseCode,
    CloseConnection,
    DuplicateFrame,
    FaultedFrames,
    FrameFaults,
    MalformedFrame,
    MalformedKind,
    RejectHandshakes,
    SkipReason,
    SkipSeq,
    Stall,
    StallMode,
    TerminateSubscription,
    UnsolicitedSnapshot,
    frame_sid_seq,
)
from ssmd.exchange.outbound import BackpressurePolicy
from ssmd.exchange.protocol import ErrorCode
from ssmd.exchange.schedule import (
    FaultKind,
    FaultSchedule,
    RandomFaults,
    parse_fault_kinds,
    parse_fault_spec,
)
from ssmd.exchange.server import ExchangeSimulator
from ssmd.fixedpoint import parse_price, parse_size

KEY_ID = "a952bcbe-ec3b-4b5b-b8f9-11dae589608c"
NOW_MS = 1_787_000_000_000
TIMEOUT_S = 10
ALL_CHANNELS = ["orderbook_delta", "ticker", "trade", "market_lifecycle_v2"]
Frame_ = dict[str, Any]


def fixed_clock() -> int:
    return NOW_MS * 1_000_000


class Recorder(ClientConnection):
    """A client connection noting every text frame and Ping, in arrival order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[tuple[Opcode, bytes]] = []
        self.changed = asyncio.Event()

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode in (Opcode.TEXT, Opcode.PING):
            self.events.append((event.opcode, bytes(event.data)))
            self.changed.set()
        super().process_event(event)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def make_sim(rsa_key: rsa.RSAPrivateKey, **options: Any) -> ExchangeSimulator:
    settings: dict[str, Any] = {
        "market_count": 4,
        "rate_hz": 400.0,
        "seed": 3,
        "ping_interval_s": None,
        "clock_ns": fixed_clock,
    }
    settings.update(options)
    return ExchangeSimulator(public_keys={KEY_ID: rsa_key.public_key()}, **settings)


@pytest.fixture
async def sim(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[ExchangeSimulator]:
    async with make_sim(rsa_key) as simulator:
        yield simulator


async def open_client(sim: ExchangeSimulator, rsa_key: rsa.RSAPrivateKey) -> Recorder:
    headers = signed_headers(KEY_ID, rsa_key, NOW_MS, "GET", WS_PATH)
    ws = await connect(
        sim.url,
        additional_headers=headers,
        create_connection=Recorder,
        ping_interval=None,
        max_queue=None,  # keep reading (and seeing Pings) while the test is not calling recv
    )
    assert isinstance(ws, Recorder)
    return ws


async def subscribe(ws: ClientConnection, markets: list[str], channels: list[str]) -> None:
    params = {"channels": channels, "market_tickers": markets}
    await ws.send(json.dumps({"id": 1, "cmd": "subscribe", "params": params}))


async def read(ws: ClientConnection, received: list[bytes], until: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while not until():
            received.append(await ws.recv(decode=False))


def sent_to(sim: ExchangeSimulator, connection_id: int = 1) -> list[bytes]:
    return [f.data for f in sim.sent if f.connection_id == connection_id]


async def read_all_sent(
    sim: ExchangeSimulator, ws: ClientConnection, received: list[bytes]
) -> None:
    """Stop producing, then read until the client has every frame the server sent it."""
    await sim.pause()
    await read(ws, received, lambda: len(received) >= len(sent_to(sim)))
    assert received == sent_to(sim)


def loads(data: bytes) -> Frame_ | None:
    try:
        frame: Frame_ = json.loads(data)
    except json.JSONDecodeError:
        return None
    return frame


def seq_accounting(sim: ExchangeSimulator, connection_id: int = 1) -> dict[int, list[int]]:
    """Per sid, every seq sent or skipped, sorted: each must be 1..N without a hole."""
    by_sid: dict[int, list[int]] = {}
    for data in sent_to(sim, connection_id):
        frame = loads(data) or loads(data + b"}")  # an INVALID_JSON frame lost its last byte
        assert frame is not None
        if "seq" in frame:
            by_sid.setdefault(frame["sid"], []).append(frame["seq"])
    for skipped in sim.skipped:
        if skipped.connection_id == connection_id and skipped.seq is not None:
            assert skipped.sid is not None
            by_sid.setdefault(skipped.sid, []).append(skipped.seq)
    for sid, numbers in by_sid.items():
        assert sorted(set(numbers)) == list(range(1, max(numbers) + 1)), sid
    return {sid: sorted(numbers) for sid, numbers in by_sid.items()}


# -- pure: fault values and frame faults --------------------------------------------------------


def test_fault_values_reject_impossible_parameters() -> None:
    for make in (
        lambda: Stall(0),
        lambda: RejectHandshakes(0),
        lambda: Burst(0),
        lambda: TerminateSubscription(ErrorCode.UNKNOWN_SID),
    ):
        with pytest.raises(ConfigError) as info:
            make()
        assert info.value.source == "exchange fault"
        assert info.value.field


def test_frame_faults_apply_once_to_the_first_frame_they_fit() -> None:
    ticker = b'{"type":"ticker","sid":2,"msg":{"price_dollars":"0.5000"}}'
    first = b'{"type":"orderbook_delta","sid":1,"seq":4,"msg":{}}'
    second = b'{"type":"trade","sid":3,"seq":9,"msg":{}}'
    frames = [ticker, first, second]
    assert [frame_sid_seq(f) for f in frames] == [(2, None), (1, 4), (3, 9)]
    faults = FrameFaults()
    faults.add(SkipSeq())
    result = faults.apply_to(frames)
    assert (result.to_send, result.dropped) == ([ticker, second], [first])  # ticker: no seq
    assert faults.pending == []
    faults.add(SkipSeq(sid=99))  # no such sid: stays pending, frames untouched
    faults.add(DuplicateFrame(sid=3))
    faults.add(MalformedFrame(MalformedKind.INVALID_JSON))
    result = faults.apply_to(frames)
    assert result == FaultedFrames([ticker[:-1], first, second, second], [])
    assert faults.pending == [SkipSeq(sid=99)]
    assert frame_sid_seq(ticker[:-1]) == (None, None)
    assert faults.apply_to(frames).to_send == frames


def test_wrong_field_type_turns_a_fixed_point_string_into_the_same_number() -> None:
    delta = (
        b'{"type":"orderbook_delta","sid":1,"seq":7,"msg":{"market_ticker":"KXSIM-26NOV21-T0001",'
        b'"market_id":"m","price_dollars":"0.4800","delta_fp":"-12.50","side":"yes"}}'
    )
    lifecycle = b'{"type":"market_lifecycle_v2","sid":2,"seq":1,"msg":{"event_type":"x"}}'
    faults = FrameFaults()
    faults.add(MalformedFrame(MalformedKind.WRONG_FIELD_TYPE))
    (lifecycle_out, delta_out) = faults.apply_to([lifecycle, delta]).to_send
    assert lifecycle_out == lifecycle  # nothing to corrupt there
    assert delta_out == delta.replace(b'"0.4800"', b"0.4800")
    assert json.loads(delta_out)["msg"]["delta_fp"] == "-12.50"


# -- faults on the wire -------------------------------------------------------------------------


async def test_skip_seq_is_a_real_gap_and_is_accounted_for(
    sim: ExchangeSimulator, rsa_key: rsa.RSAPrivateKey
) -> None:
    ws = await open_client(sim, rsa_key)
    await subscribe(ws, sim.markets, ["orderbook_delta", "trade"])
    received: list[bytes] = []
    await read(ws, received, lambda: len(received) >= 20)
    assert await sim.inject_fault(SkipSeq(sid=1), connection_id=1)
    gaps: list[tuple[int, int]] = []

    def gap_seen() -> bool:
        seqs = [f["seq"] for f in map(json.loads, received) if f.get("sid") == 1 and "seq" in f]
        gaps[:] = [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]
        return bool(gaps)

    await read(ws, received, gap_seen)
    await read_all_sent(sim, ws, received)
    assert gaps == [(gaps[0][0], gaps[0][0] + 2)]
    (skipped,) = sim.skipped
    assert (skipped.connection_id, skipped.sid, skipped.seq) == (1, 1, gaps[0][0] + 1)
    assert skipped.reason is SkipReason.SKIP_SEQ
    assert json.loads(skipped.data)["type"] == "orderbook_delta"
    seq_accounting(sim)
    (record,) = sim.faults
    assert (record.at_ns, record.connection_id, record.fault) == (fixed_clock(), 1, SkipSeq(sid=1))
    await ws.close()


async def test_duplicate_and_malformed_frames_reach_the_wire(
    sim: ExchangeSimulator, rsa_key: rsa.RSAPrivateKey
) -> None:
    ws = await open_client(sim, rsa_key)
    await subscribe(ws, sim.markets, ["orderbook_delta", "ticker", "trade"])
    received: list[bytes] = []
    await read(ws, received, lambda: len(received) >= 10)
    await sim.inject_fault(DuplicateFrame())
    await read(ws, received, lambda: any(a == b for a, b in itertools.pairwise(received)))
    await sim.inject_fault(MalformedFrame(MalformedKind.INVALID_JSON))
    await read(ws, received, lambda: loads(received[-1]) is None)
    broken = received[-1]
    await sim.inject_fault(MalformedFrame(MalformedKind.WRONG_FIELD_TYPE))

    def has_number_price() -> bool:
        frame = loads(received[-1]) or {}
        return any(isinstance(v, float) for v in frame.get("msg", {}).values())

    await read(ws, received, has_number_price)
    wrong = json.loads(received[-1])
    await read_all_sent(sim, ws, received)
    assert loads(broken + b"}") is not None
    assert wrong["type"] in ("orderbook_delta", "ticker", "trade")
    (number_key,) = [k for k, v in wrong["msg"].items() if isinstance(v, float)]
    assert number_key.endswith(("_dollars", "_fp"))
    assert sim.skipped == []
    seq_accounting(sim)
    await ws.close()


@pytest.mark.parametrize("code", [ErrorCode.BUFFER_OVERFLOW, ErrorCode.CHANNEL_ERROR])
async def test_terminal_error_drops_the_subscription(
    sim: ExchangeSimulator, rsa_key: rsa.RSAPrivateKey, code: ErrorCode
) -> None:
    ws = await open_client(sim, rsa_key)
    await subscribe(ws, sim.markets, ["orderbook_delta", "trade"])
    received: list[bytes] = []
    await read(ws, received, lambda: len(received) >= 30)
    await sim.inject_fault(TerminateSubscription(code, sid=1), connection_id=1)
    await read(ws, received, lambda: json.loads(received[-1])["type"] == "error")
    await read_all_sent(sim, ws, received)
    frames = [json.loads(f) for f in received]
    index = next(i for i, f in enumerate(frames) if f["type"] == "error")
    error = frames[index]
    assert error == {"type": "error", "sid": 1, "seq": error["seq"], "msg": code.msg}
    assert error["seq"] == max(f["seq"] for f in frames[:index] if f.get("sid") == 1) + 1
    assert all(f.get("sid") != 1 for f in frames[index + 1 :])
    assert seq_accounting(sim)[1][-1] == error["seq"]
    # Still connected; the orderbook channel can be subscribed again on a new sid (§4.2.6).
    await ws.send(json.dumps({"id": 5, "cmd": "list_subscriptions"}))
    await read(ws, received, lambda: json.loads(received[-1]).get("id") == 5)
    assert json.loads(received[-1])["msg"] == [{"channel": "trade", "sid": 2}]
    await ws.close()


async def test_unsolicited_snapshot_matches_the_book_built_from_deltas(
    sim: ExchangeSimulator, rsa_key: rsa.RSAPrivateKey
) -> None:
    ws = await open_client(sim, rsa_key)
    market = sim.markets[1]
    await subscribe(ws, [market], ["orderbook_delta"])
    received: list[bytes] = []
    await read(ws, received, lambda: len(received) >= 40)
    await sim.inject_fault(UnsolicitedSnapshot(market))
    await read(ws, received, lambda: json.loads(received[-1])["type"] == "orderbook_snapshot")
    frames = [json.loads(f) for f in received]
    assert [f["type"] for f in frames[:2]] == ["subscribed", "orderbook_snapshot"]
    assert [f["type"] for f in frames[2:-1]] == ["orderbook_delta"] * (len(frames) - 3)
    unsolicited = frames[-1]
    assert "id" not in unsolicited
    assert [f["seq"] for f in frames[1:]] == list(range(1, len(frames)))

    def ladder(msg: Frame_, key: str) -> dict[int, int]:
        return {parse_price(p): parse_size(s) for p, s in msg.get(key, [])}

    book = {side: ladder(frames[1]["msg"], f"{side}_dollars_fp") for side in ("yes", "no")}
    for frame in frames[2:-1]:
        levels, msg = book[frame["msg"]["side"]], frame["msg"]
        price_e4 = parse_price(msg["price_dollars"])
        levels[price_e4] = levels.get(price_e4, 0) + parse_size(msg["delta_fp"])
        if levels[price_e4] == 0:
            del levels[price_e4]
    assert ladder(unsolicited["msg"], "yes_dollars_fp") == book["yes"]
    assert ladder(unsolicited["msg"], "no_dollars_fp") == book["no"]
    await ws.close()


@pytest.mark.parametrize("code", list(CloseCode))
async def test_close_fault_closes_cleanly_with_its_code(
    rsa_key: rsa.RSAPrivateKey, code: CloseCode
) -> None:
    sim = make_sim(rsa_key, rate_hz=None)
    received: list[bytes] = []
    async with sim:
        ws = await open_client(sim, rsa_key)
        await subscribe(ws, sim.markets, ALL_CHANNELS)
        await read(ws, received, lambda: len(received) >= 200)
        await sim.inject_fault(CloseConnection(code))
        with pytest.raises(ConnectionClosed) as info:
            await read(ws, received, lambda: False)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == code
        assert info.value.rcvd.reason == f"injected fault: close {code.value}"
    assert received == sent_to(sim)
    assert {s.reason for s in sim.skipped} <= {SkipReason.CLOSED}
    seq_accounting(sim)


async def test_abort_fault_drops_the_tcp_connection(rsa_key: rsa.RSAPrivateKey) -> None:
    sim = make_sim(rsa_key, rate_hz=None)
    received: list[bytes] = []
    async with sim:
        ws = await open_client(sim, rsa_key)
        await subscribe(ws, sim.markets, ALL_CHANNELS)
        await read(ws, received, lambda: len(received) >= 200)
        await sim.inject_fault(AbortConnection(), connection_id=1)
        with pytest.raises(ConnectionClosed) as info:
            await read(ws, received, lambda: False)
        assert info.value.rcvd is None  # no close frame
        assert ws.close_code == 1006
    assert received == sent_to(sim)
    assert {s.reason for s in sim.skipped} <= {SkipReason.CLOSED}
    seq_accounting(sim)


async def test_rejected_handshakes_then_accepted(
    sim: ExchangeSimulator, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert await sim.inject_fault(RejectHandshakes(2))
    for _ in range(2):
        with pytest.raises(InvalidStatus) as info:
            await open_client(sim, rsa_key)
        assert info.value.response.status_code == 401
        body = json.loads(info.value.response.body)
        assert body["code"] == "authentication_error"
    ws = await open_client(sim, rsa_key)
    await ws.send(json.dumps({"id": 1, "cmd": "list_subscriptions"}))
    assert json.loads(await ws.recv()) == {"type": "ok", "id": 1, "msg": []}
    assert [(r.connection_id, r.fault) for r in sim.faults] == [(None, RejectHandshakes(2))]
    await ws.close()


def data_between_pings(events: list[tuple[Opcode, bytes]], start: int, pings: int) -> int:
    """Text frames between the 2nd and the `pings`-th Ping received after `start` (the 1st
    may have been sent just before the stall, with data frames behind it)."""
    kinds = [opcode for opcode, _ in events[start:]]
    ping_at = [i for i, kind in enumerate(kinds) if kind is Opcode.PING][:pings]
    return kinds[ping_at[1] : ping_at[-1]].count(Opcode.TEXT)


async def test_pings_only_stall_holds_data_but_keeps_pinging(rsa_key: rsa.RSAPrivateKey) -> None:
    async with make_sim(rsa_key, ping_interval_s=0.02) as sim:
        ws = await open_client(sim, rsa_key)
        await subscribe(ws, sim.markets, ALL_CHANNELS)
        received: list[bytes] = []
        await read(ws, received, lambda: len(received) >= 20)
        await sim.inject_fault(Stall(60.0, StallMode.PINGS_ONLY), connection_id=1)
        start = len(ws.events)
        await ws.wait_for(lambda: [k for k, _ in ws.events[start:]].count(Opcode.PING) >= 5)
        assert data_between_pings(ws.events, start, 5) == 0
        before = len(ws.events)
        sim.end_stall(1)
        await ws.wait_for(lambda: [k for k, _ in ws.events[before:]].count(Opcode.TEXT) >= 5)
        await read_all_sent(sim, ws, received)
        assert sim.skipped == []
        seq_accounting(sim)
        await ws.close()


async def test_silent_stall_sends_and_reads_nothing(rsa_key: rsa.RSAPrivateKey) -> None:
    async with make_sim(rsa_key, ping_interval_s=0.02) as sim:
        ws = await open_client(sim, rsa_key)
        await subscribe(ws, sim.markets, ALL_CHANNELS)
        received: list[bytes] = []
        await read(ws, received, lambda: len(received) >= 20)
        await sim.inject_fault(Stall(60.0, StallMode.SILENT))
        sent_before = len(sent_to(sim))
        pong = await ws.ping(b"are you there")
        with pytest.raises(TimeoutError):  # nothing is read: the Ping is not answered
            await asyncio.wait_for(asyncio.shield(pong), 0.3)
        assert len(sent_to(sim)) == sent_before
        pings = [k for k, _ in ws.events].count(Opcode.PING)
        sim.end_stall()
        async with asyncio.timeout(TIMEOUT_S):
            await pong
        await ws.wait_for(lambda: [k for k, _ in ws.events].count(Opcode.PING) > pings)
        await read_all_sent(sim, ws, received)
        assert len(received) > sent_before
        await ws.close()


async def test_stall_ends_by_itself(rsa_key: rsa.RSAPrivateKey) -> None:
    async with make_sim(rsa_key) as sim:
        ws = await open_client(sim, rsa_key)
        await subscribe(ws, sim.markets, ["orderbook_delta"])
        received: list[bytes] = []
        await sim.inject_fault(Stall(0.1, StallMode.SILENT))
        await read(ws, received, lambda: len(received) >= 50)
        async with asyncio.timeout(TIMEOUT_S):
            await (await ws.ping())
        await ws.close()


async def test_burst_produces_events_above_the_rate(rsa_key: rsa.RSAPrivateKey) -> None:
    async with make_sim(rsa_key, rate_hz=1.0) as sim:
        ws = await open_client(sim, rsa_key)
        await subscribe(ws, sim.markets, ALL_CHANNELS)
        received: list[bytes] = []
        await read(ws, received, lambda: len(received) >= 3)  # subscribed x4 + snapshots
        await sim.pause()
        before = len(sent_to(sim))
        assert await sim.inject_fault(Burst(500))
        await read_all_sent(sim, ws, received)
        frames = [json.loads(f) for f in received[before:]]
        assert len(frames) >= 500  # every event reaches one of the four channels
        assert {f["type"] for f in frames} >= {"orderbook_delta", "ticker", "trade"}
        assert [(r.connection_id, r.fault) for r in sim.faults] == [(None, Burst(500))]
        seq_accounting(sim)
        await ws.close()


async def test_slow_consumer_overflow_sends_error_25_and_drops_the_sids(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    sim = make_sim(
        rsa_key,
        rate_hz=1.0,
        outbox_frames=50,
        backpressure=BackpressurePolicy.OVERFLOW,
        overflow_after_s=0.0,  # the second event that finds the outbox over capacity overflows
    )
    async with sim:
        ws = await open_client(sim, rsa_key)
        await subscribe(ws, sim.markets, ["orderbook_delta", "ticker", "trade"])
        received: list[bytes] = []
        await read(ws, received, lambda: len(received) >= 3)
        await sim.pause()
        # The client stops being served while a burst fills its outbox: it overflows.
        await sim.inject_fault(Stall(60.0, StallMode.PINGS_ONLY), connection_id=1)
        await sim.inject_fault(Burst(2_000))
        sim.end_stall(1)
        await read_all_sent(sim, ws, received)
    frames = [json.loads(f) for f in received]
    errors = [f for f in frames if f["type"] == "error"]
    assert sorted(e["sid"] for e in errors) == [1, 2, 3]
    overflow = ErrorCode.BUFFER_OVERFLOW.msg
    for error in errors:
        assert error == {"type": "error", "sid": error["sid"], "seq": error["seq"], "msg": overflow}
        after = frames[frames.index(error) + 1 :]
        assert all(f.get("sid") != error["sid"] for f in after)
    assert len(received) < 100  # 50 queued, then only the three errors
    assert {s.reason for s in sim.skipped} == {SkipReason.OVERFLOW}
    assert {s.sid for s in sim.skipped} == {1, 2, 3}
    accounted = seq_accounting(sim)
    for error in errors:  # the error's seq comes after every dropped one (a gap, then death)
        assert accounted[error["sid"]][-1] == error["seq"]


async def test_block_policy_never_drops(rsa_key: rsa.RSAPrivateKey) -> None:
    sim = make_sim(rsa_key, rate_hz=1.0, outbox_frames=5)
    async with sim:
        ws = await open_client(sim, rsa_key)
        await subscribe(ws, sim.markets, ["orderbook_delta", "ticker", "trade"])
        received: list[bytes] = []
        await read(ws, received, lambda: len(received) >= 3)
        await sim.pause()
        await sim.inject_fault(Burst(300))  # blocks on the tiny outbox until the client reads
        await read_all_sent(sim, ws, received)
    assert sim.skipped == []
    assert all(json.loads(f)["type"] != "error" for f in received)
    seq_accounting(sim)


# -- random schedules ---------------------------------------------------------------------------


def test_random_schedule_is_reproducible_and_filtered() -> None:
    markets = ["A", "B", "C"]
    spec = RandomFaults(rate_hz=0.5, seed=7)
    first = FaultSchedule(spec, markets).take(300)
    assert first == FaultSchedule(spec, markets).take(300)
    assert first != FaultSchedule(RandomFaults(rate_hz=0.5, seed=8), markets).take(300)
    kinds = {type(item.fault).__name__ for item in first}
    assert len(kinds) == 10  # every kind appears (stall and silence are both a Stall)
    mean_s = sum(item.delay_s for item in first) / len(first)
    assert 1.6 < mean_s < 2.4  # one fault every 2 s on average
    only = FaultSchedule(RandomFaults(5.0, 7, (FaultKind.STALL, FaultKind.ABORT)), markets)
    drawn = [item.fault for item in only.take(100)]
    assert {type(f) for f in drawn} == {Stall, AbortConnection}
    assert {f.mode for f in drawn if isinstance(f, Stall)} == {StallMode.PINGS_ONLY}
    assert all(1.0 <= f.duration_s <= 5.0 for f in drawn if isinstance(f, Stall))


def test_fault_spec_parsing() -> None:
    assert parse_fault_spec("none") is None
    assert parse_fault_spec("random:rate=0.5,seed=7") == RandomFaults(0.5, 7)
    assert parse_fault_spec("random:rate=2") == RandomFaults(2.0, 1)
    kinds = parse_fault_kinds("close, abort,close")
    assert kinds == (FaultKind.CLOSE, FaultKind.ABORT)
    assert parse_fault_spec("random:rate=1", kinds) == RandomFaults(1.0, 1, kinds)
    for bad in ("random", "random:rate=0", "random:rate=x", "chaos:rate=1", "random:rate=1,x=2",
                "random:seed=3", "random:rate=1,rate=2", "random:rate=nan"):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            parse_fault_spec(bad)
        assert info.value.field == "--faults"
        assert "random:rate=" in info.value.fix
    with pytest.raises(ConfigError) as kind_info:
        parse_fault_kinds("close,explode")
    assert kind_info.value.field == "--fault-kinds"
    assert "skip_seq" in kind_info.value.fix


def test_cli_rejects_a_bad_fault_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--generate-key", str(tmp_path), "--port", "0", "--faults", "random:rate=-1"]
    assert exchange_main(argv) == 2
    assert "--faults" in capsys.readouterr().err


async def test_random_schedule_drives_faults_on_a_live_connection(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    spec = RandomFaults(50.0, 11, (FaultKind.SKIP_SEQ, FaultKind.MALFORMED, FaultKind.SNAPSHOT))
    async with make_sim(rsa_key, random_faults=spec) as sim:
        ws = await open_client(sim, rsa_key)
        await subscribe(ws, sim.markets, ["orderbook_delta", "trade"])
        received: list[bytes] = []
        await read(ws, received, lambda: len(sim.faults) >= 8 and bool(sim.skipped))
        await read_all_sent(sim, ws, received)
        recorded = [r.fault for r in sim.faults]
        expected = [item.fault for item in FaultSchedule(spec, sim.markets).take(500)]
        # Faults drawn before the client connected had no target; the rest follow the seed.
        offset = next(
            i for i in range(len(expected)) if expected[i : i + len(recorded)] == recorded
        )
        assert offset < 100
        skipped = sum(isinstance(f, SkipSeq) for f in recorded)
        assert 0 < len(sim.skipped) <= skipped  # the last ones may still wait for a frame
        seq_accounting(sim)
        await ws.close()
