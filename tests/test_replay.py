"""`ssmd replay` against real components: a simulated session (the real simulator with faults,
the real clients with a recorder) replays into the file transport record for record as the
live run wrote them, twice into a real JetStream with nothing stored the second time, a capture
replays deterministically, the recorded pace is kept when asked, and the command line."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.auth import Credentials
from ssmd.client import KalshiClient
from ssmd.client_picows import PicowsKalshiClient
from ssmd.config import NatsTransportSettings
from ssmd.exchange.faults import DuplicateFrame, MalformedFrame, SkipSeq
from ssmd.exchange.server import ExchangeSimulator
from ssmd.messages import Channel
from ssmd.natsserver import NatsServer
from ssmd.recording import FrameRecorder, MarkKind, RecordedFrame, RecordedMark, SessionSetup
from ssmd.records import BookSnapshot, Flag, Record, Status, StatusEvent, Trade
from ssmd.replay import (
    CAPTURE_STEP_NS,
    Replayer,
    add_replay_parser,
    read_entries,
    replay_files,
)
from ssmd.session import KalshiSession
from ssmd.session_events import RecentIds
from ssmd.subjects import msg_id_for
from ssmd.transport import FileTransport, build_transport, read_records

from .conftest import drained, wait_until

pytestmark = pytest.mark.integration

KEY_ID = "replay-test-key"
ClientClass = type[KalshiClient] | type[PicowsKalshiClient]


class LiveRun:
    """What a recorded live run left: the records in sink order and the recording files."""

    def __init__(self, records: list[Record], files: list[Path]) -> None:
        self.records = records
        self.files = files


async def run_connection(
    cls: ClientClass,
    sim: ExchangeSimulator,
    key: rsa.RSAPrivateKey,
    recorder: FrameRecorder,
    recent: RecentIds,
    connection_id: str,
    inject_faults: bool,
) -> list[Record]:
    """One client connection with a recorder, until it has streamed (and repaired a gap)."""
    session = KalshiSession(
        connection_id=connection_id,
        channels=list(Channel),
        markets=sim.markets,
        use_yes_price=True,
        recent_trades=recent,
    )
    sink: asyncio.Queue[Record | None] = asyncio.Queue()
    client = cls(url=sim.url, credentials=Credentials(KEY_ID, key), session=session, sink=sink)
    client.recorder = recorder
    stop = asyncio.Event()
    runner = asyncio.create_task(client.run(stop))
    await wait_until(lambda: session.stats.frames_received >= 300, 20, "frames")
    if inject_faults:
        sid = session.subscriptions[Channel.ORDERBOOK_DELTA].sid
        await sim.inject_fault(SkipSeq(sid=sid))  # a gap: get_snapshot repairs the books
        await sim.inject_fault(DuplicateFrame())
        await sim.inject_fault(MalformedFrame())
        await wait_until(lambda: session.stats.resyncs >= 1, 20, "the book repair")
    start = session.stats.frames_received
    await wait_until(lambda: session.stats.frames_received >= start + 300, 20, "more frames")
    stop.set()
    await asyncio.wait_for(runner, 20)
    return drained(sink)


async def record_live_run(tmp_path: Path, key: rsa.RSAPrivateKey, cls: ClientClass) -> LiveRun:
    """Two connections one after the other (the first with a gap, a duplicate and a malformed
    frame), recorded into one recording, the live records also written by the file transport."""
    recorder = FrameRecorder(tmp_path / "recording", name="live")
    recent = RecentIds()
    sim = ExchangeSimulator(
        public_keys={KEY_ID: key.public_key()}, market_count=4, rate_hz=3000.0, seed=11
    )
    async with sim:
        records = await run_connection(cls, sim, key, recorder, recent, "live/1", True)
        records += await run_connection(cls, sim, key, recorder, recent, "live/2", False)
    recorder.close()
    assert recorder.error is None
    live = FileTransport(tmp_path / "live", rotate_max_bytes=1 << 30, rotate_interval_s=3600)
    await live.start()
    await live.publish_many(records)
    await live.close()
    return LiveRun(records, recorder.completed)


async def replay_in_memory(files: list[Path]) -> list[Record]:
    replayer = Replayer()
    for path in files:
        for entry in read_entries(path):
            await replayer.receive(entry)
    return replayer.records_to_publish()


@pytest.mark.parametrize("cls", [KalshiClient, PicowsKalshiClient])
async def test_a_replay_gives_the_live_records_exactly(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, cls: ClientClass
) -> None:
    live = await record_live_run(tmp_path, rsa_key, cls)
    # The live run had what makes a replay hard: two connections, a gap and its repair.
    statuses = [r.event for r in live.records if isinstance(r, Status)]
    assert statuses.count(StatusEvent.CONNECTED) == statuses.count(StatusEvent.DISCONNECTED) == 2
    assert StatusEvent.GAP in statuses
    assert StatusEvent.RESYNCED in statuses
    assert any(isinstance(r, BookSnapshot) and Flag.AFTER_RESYNC in r.flags for r in live.records)
    entries = [entry for path in live.files for entry in read_entries(path)]
    marks = [(e.connection_id, e.kind) for e in entries if isinstance(e, RecordedMark)]
    continuity = (MarkKind.CONNECTED, MarkKind.DISCONNECTED)
    assert [mark for mark in marks if mark[1] in continuity] == [
        ("live/1", MarkKind.CONNECTED),
        ("live/1", MarkKind.DISCONNECTED),
        ("live/2", MarkKind.CONNECTED),
        ("live/2", MarkKind.DISCONNECTED),
    ]
    # The gap and its repair are marked where they happened, between connect and disconnect.
    gaps = [
        (r.connection_id, MarkKind.GAP if r.event is StatusEvent.GAP else MarkKind.RESYNCED)
        for r in live.records
        if isinstance(r, Status) and r.event in (StatusEvent.GAP, StatusEvent.RESYNCED)
    ]
    assert [mark for mark in marks if mark[1] in (MarkKind.GAP, MarkKind.RESYNCED)] == gaps
    for connection_id, kind in gaps:
        index = marks.index((connection_id, kind))
        assert marks.index((connection_id, MarkKind.CONNECTED)) < index
        assert index < marks.index((connection_id, MarkKind.DISCONNECTED))

    # Record for record, in order, receive times included.
    assert await replay_in_memory(live.files) == live.records

    # Through the transport: the same files as the live run's.
    replayed = FileTransport(tmp_path / "replay", rotate_max_bytes=1 << 30, rotate_interval_s=3600)
    await replayed.start()
    stats = await replay_files(live.files, replayed)
    await replayed.close()
    frames = sum(isinstance(e, RecordedFrame) for e in entries)
    assert (stats.frames, stats.connections, stats.records) == (frames, 2, len(live.records))
    assert read_records(tmp_path / "replay") == read_records(tmp_path / "live")


async def stream_count(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    finally:
        await nc.close()


async def test_replaying_into_jetstream_twice_stores_nothing_new(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, nats_server: NatsServer
) -> None:
    live = await record_live_run(tmp_path, rsa_key, KalshiClient)
    settings = NatsTransportSettings.model_validate(
        {"kind": "nats", "servers": [nats_server.url], "ack_timeout_s": 5}
    ).resolved("replaytest")
    counts = []
    duplicates = []
    for _ in range(2):
        transport = build_transport(settings)
        await transport.start()
        await replay_files(live.files, transport)
        await transport.close()
        counts.append(await stream_count(nats_server.url, settings.stream.name))
        duplicates.append(transport.stats().duplicates)
    assert counts[0] == len({msg_id_for(record) for record in live.records})
    assert counts[1] == counts[0]
    assert duplicates[1] == len(live.records)  # every record of the second replay was known


async def test_a_capture_replays_the_same_records_every_time(
    tmp_path: Path, captures_dir: Path
) -> None:
    capture = captures_dir / "ericsngyun__probability-arena__demo-2026-08-17-wire.jsonl"
    runs = []
    for attempt in range(2):
        transport = FileTransport(
            tmp_path / str(attempt), rotate_max_bytes=1 << 30, rotate_interval_s=3600
        )
        await transport.start()
        stats = await replay_files([capture], transport)
        await transport.close()
        runs.append(read_records(tmp_path / str(attempt)))
    assert runs[0] == runs[1]
    lines = [line for line in capture.read_text().splitlines() if line.strip()]
    assert stats.frames == len(lines)
    trade_lines = [n for n, line in enumerate(lines, start=1) if '"type":"trade"' in line]
    trades = [r for r in runs[0] if isinstance(r, Trade)]
    # Each trade carries its line's synthetic receive time (a repeated seq is dropped).
    assert len(trades) >= len(trade_lines) - 1 >= 2
    assert {t.receive_ts_ns for t in trades} <= {n * CAPTURE_STEP_NS for n in trade_lines}
    assert [t.receive_ts_ns for t in trades] == sorted(t.receive_ts_ns for t in trades)


async def test_the_recorded_pace_is_kept_or_sped_up(tmp_path: Path) -> None:
    recorder = FrameRecorder(tmp_path, name="paced")
    t0 = 1_763_744_000_000_000_000
    for n, offset_s in enumerate([0.0, 0.5, 0.5, 2.0]):
        frame = f'{{"type":"trade","sid":1,"seq":{n + 1},"msg":{{"trade_id":"t{n}",'
        frame += '"market_ticker":"KXA","yes_price_dollars":"0.4000","no_price_dollars":"0.6000",'
        frame += f'"count_fp":"1.00","taker_side":"yes","ts":{t0 // 10**9}}}}}'
        recorder.write_frame("c/1", frame, t0 + int(offset_s * 1e9))
    recorder.close()
    now_s = 100.0
    slept: list[float] = []

    def monotonic() -> float:
        return now_s

    async def sleep(seconds: float) -> None:
        nonlocal now_s
        slept.append(round(seconds, 6))
        now_s += seconds

    transport = FileTransport(tmp_path / "out", rotate_max_bytes=1 << 30, rotate_interval_s=3600)
    await transport.start()
    await replay_files(recorder.completed, transport, speed=2.0, monotonic_s=monotonic, sleep=sleep)
    await transport.close()
    assert slept == [0.25, 0.75]  # half the recorded gaps; simultaneous frames do not wait
    assert len(read_records(tmp_path / "out")) == 4


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ssmd")
    add_replay_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def test_the_command_line_replays_into_the_file_transport(
    tmp_path: Path, captures_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = captures_dir / "kalshi-docs__trade.jsonl"
    out = tmp_path / "out"
    assert run_cli(["replay", str(capture), "--transport", "file", "--dir", str(out)]) == 0
    [trade] = read_records(out)
    assert isinstance(trade, Trade)
    assert (trade.trade_id, trade.receive_ts_ns) == (
        "d91bc706-ee49-470d-82d8-11418bda6fed",
        CAPTURE_STEP_NS,
    )
    assert (
        "1 frames from 1 file(s), 1 connection(s): 1 records (trade 1)" in capsys.readouterr().err
    )

    env = tmp_path / "files.yaml"
    env.write_text(
        "name: files\nexchange:\n  simulator: {}\n"
        f"transport:\n  kind: file\n  dir: {tmp_path / 'env-out'}\n"
    )
    assert run_cli(["replay", str(capture), "--env", str(env), "--speed", "max"]) == 0
    assert read_records(tmp_path / "env-out") == [trade]


def test_the_command_line_refuses_bad_options(
    tmp_path: Path, captures_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = str(captures_dir / "kalshi-docs__trade.jsonl")
    assert run_cli(["replay", capture, "--dir", str(tmp_path)]) == 2
    assert "--transport file and --dir go together" in capsys.readouterr().err
    assert (
        run_cli(
            [
                "replay",
                str(tmp_path / "missing.jsonl.zst"),
                "--transport",
                "file",
                "--dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "no such file" in capsys.readouterr().err
    assert run_cli(["replay", capture, "--env", str(tmp_path / "nowhere.yaml")]) == 2
    assert "configuration error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(["replay", capture, "--speed", "0"])
    assert "must be more than 0" in capsys.readouterr().err


async def test_a_deadline_mark_gives_the_session_the_recorded_time(tmp_path: Path) -> None:
    """A repair that times out with no frame escalates at the mark's time, as it did live:
    get_snapshot → resubscribe at +11.5 s → reconnect at +22 s, so the frame at +22.5 s is not
    read (were the marks ignored, the frame at +20 s would escalate and the last one be read)."""
    s = 1_000_000_000
    t0 = 1_763_744_000_000_000_000
    setup = SessionSetup(channels=(Channel.ORDERBOOK_DELTA,), markets=("KXA",), use_yes_price=False)

    def delta(seq: int) -> str:
        return (
            f'{{"type":"orderbook_delta","sid":1,"seq":{seq},"msg":{{"market_ticker":"KXA",'
            '"market_id":"m","price_dollars":"0.4000","delta_fp":"1.00","side":"yes"}}'
        )

    recorder = FrameRecorder(tmp_path, name="deadline")
    recorder.mark("c/1", MarkKind.CONNECTED, t0, setup=setup)
    recorder.write_frame(
        "c/1", '{"type":"subscribed","id":1,"msg":{"channel":"orderbook_delta","sid":1}}', t0
    )
    recorder.write_frame(
        "c/1",
        '{"type":"orderbook_snapshot","sid":1,"seq":1,"msg":{"market_ticker":"KXA",'
        '"market_id":"m","yes_dollars_fp":[["0.4000","5.00"]]}}',
        t0,
    )
    recorder.write_frame("c/1", delta(3), t0 + 1 * s)  # seq 2 lost: get_snapshot, deadline +11 s
    recorder.mark("c/1", MarkKind.DEADLINE, t0 + 11 * s + s // 2)
    recorder.write_frame("c/1", delta(4), t0 + 20 * s)
    recorder.mark("c/1", MarkKind.DEADLINE, t0 + 22 * s)
    recorder.write_frame("c/1", delta(5), t0 + 22 * s + s // 2)
    recorder.close()

    replayer = Replayer()
    for entry in read_entries(recorder.completed[0]):
        await replayer.receive(entry)
    assert (replayer.stats.frames, replayer.stats.frames_skipped) == (5, 1)
    statuses = [r.event for r in replayer.records_to_publish() if isinstance(r, Status)]
    assert statuses == [StatusEvent.CONNECTED, StatusEvent.SUBSCRIBED, StatusEvent.GAP]


async def test_an_environment_whose_nats_server_runs_already_is_published_to(
    tmp_path: Path, captures_dir: Path, nats_server: NatsServer
) -> None:
    """`--env` with a managed nats-server whose port is taken (the connector's own server is
    up): the replay publishes to it instead of failing."""
    port = int(nats_server.url.rsplit(":", 1)[1])
    env = tmp_path / "replaynats.yaml"
    env.write_text(
        "name: replaynats\nexchange:\n  simulator: {}\ntransport:\n  kind: nats\n"
        f"  managed_server:\n    port: {port}\n    store_dir: {tmp_path / 'unused'}\n"
    )
    capture = str(captures_dir / "kalshi-docs__orderbook_delta.jsonl")
    assert await asyncio.to_thread(run_cli, ["replay", capture, "--env", str(env)]) == 0
    # The snapshot, the delta, and the gap it makes (it removes 54 at a level the book lacks).
    assert await stream_count(nats_server.url, "SSMD_REPLAYNATS_KALSHI") == 3
