"""The raw-frame recorder: what goes in comes out (non-ASCII and non-UTF-8 frames, marks with
the session setup), rotation by the entries' own times and by size, files that appear under
their final name only once complete, crash leftovers, a failing directory, and capture files."""

from __future__ import annotations

from pathlib import Path

import pytest
import zstandard

from ssmd.config.recording import RecordingSettings
from ssmd.messages import Channel
from ssmd.recording import (
    COMPLETE_SUFFIX,
    PARTIAL_SUFFIX,
    FrameRecorder,
    MarkKind,
    RecordedFrame,
    RecordedMark,
    RecordingError,
    SessionSetup,
    session_setup,
)
from ssmd.records import StatusEvent
from ssmd.replay import CAPTURE_STEP_NS, read_entries
from ssmd.session import KalshiSession

T0 = 1_763_744_000_000_000_000  # 2025-11-21T16:53:20Z
S = 1_000_000_000
CONN = "local/4242/1"
SETUP = SessionSetup(
    channels=(Channel.ORDERBOOK_DELTA, Channel.TRADE),
    markets=("KXA-26NOV21-T3.5", "KXB-26NOV21"),
    use_yes_price=True,
)
DELTA = (
    b'{"type":"orderbook_delta","sid":1,"seq":2,"msg":{"market_ticker":"KXA-26NOV21-T3.5",'
    b'"market_id":"m1","price_dollars":"0.9600","delta_fp":"-54.00","side":"yes"}}'
)


def entries(path: Path) -> list[RecordedFrame | RecordedMark]:
    return list(read_entries(path))


def frame(n: int, ts_ns: int, connection_id: str = CONN) -> RecordedFrame:
    text = f'{{"type":"trade","sid":2,"seq":{n},"msg":{{"trade_id":"t-{n:06d}"}}}}'
    return RecordedFrame(ts_ns, connection_id, text)


def write(recorder: FrameRecorder, entry: RecordedFrame | RecordedMark) -> None:
    if isinstance(entry, RecordedFrame):
        recorder.write_frame(entry.connection_id, entry.data, entry.ts_ns)
    else:
        recorder.mark(
            entry.connection_id,
            entry.kind,
            entry.ts_ns,
            reason=entry.reason,
            setup=entry.setup,
            markets=entry.markets,
        )


def test_frames_and_marks_come_back_exactly(tmp_path: Path) -> None:
    written: list[RecordedFrame | RecordedMark] = [
        RecordedMark(T0, CONN, MarkKind.CONNECTED, setup=SETUP),
        RecordedFrame(T0 + 1, CONN, DELTA.decode()),
        # Non-ASCII text (a title with accents, an emoji, a quote and a newline escaped in JSON)
        RecordedFrame(
            T0 + 2,
            CONN,
            '{"type":"market_lifecycle_v2","sid":4,"seq":1,'
            '"msg":{"title":"Pokémon ≥ 3 🎲 \\"x\\"\\n"}}',
        ),
        RecordedFrame(T0 + 3, "other/1", b"\xff\xfe not UTF-8 \x00"),  # kept as bytes (base64)
        RecordedFrame(T0 + 4, CONN, "not JSON at all {"),  # recorded as received, decoded later
        RecordedMark(T0 + 5, CONN, MarkKind.GAP, reason="2 frame(s) missing on sid 1"),
        RecordedMark(T0 + 6, CONN, MarkKind.MARKETS_ADDED, markets=("KXC-26NOV21",)),
        RecordedMark(T0 + 7, CONN, MarkKind.DISCONNECTED, reason="close code 1000 'resync'"),
    ]
    recorder = FrameRecorder(tmp_path, name="rec")
    for entry in written:
        write(recorder, entry)
    recorder.write_frame(CONN, DELTA, T0 + 8)  # bytes that are UTF-8 come back as text
    recorder.close()

    [path] = recorder.completed
    assert path.name == f"rec-20251121T165320Z-000001{COMPLETE_SUFFIX}"
    assert entries(path) == [*written, RecordedFrame(T0 + 8, CONN, DELTA.decode())]
    # One JSON object per line, in the documented shape.
    lines = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()).splitlines()
    assert lines[0] == (
        b'{"t":1763744000000000000,"c":"local/4242/1","mark":"connected","session":'
        b'{"channels":["orderbook_delta","trade"],"markets":["KXA-26NOV21-T3.5","KXB-26NOV21"],'
        b'"use_yes_price":true}}'
    )
    assert lines[1].startswith(b'{"t":1763744000000000001,"c":"local/4242/1","f":"{\\"type\\"')
    assert lines[3] == b'{"t":1763744000000000003,"c":"other/1","b":"//4gbm90IFVURi04IAA="}'
    assert recorder.frames_written == 5
    assert recorder.bytes_in == sum(len(line) + 1 for line in lines)
    assert 0 < recorder.bytes_out == path.stat().st_size


def test_rotates_by_the_entries_own_times_and_on_a_timer(tmp_path: Path) -> None:
    recorder = FrameRecorder(tmp_path, name="rec", rotate_interval_s=10)
    recorder.mark(CONN, MarkKind.CONNECTED, T0, setup=SETUP)
    write(recorder, frame(1, T0 + 5 * S))
    write(recorder, frame(2, T0 + 10 * S - 1))
    assert recorder.completed == []
    write(recorder, frame(3, T0 + 10 * S))  # 10 s after the file's first entry: a new file
    assert len(recorder.completed) == 1
    write(recorder, frame(4, T0 + 31 * S))  # any later entry opens the next file
    recorder.poll(T0 + 40 * S)  # not due: this file started at +31 s
    assert len(recorder.completed) == 2
    recorder.poll(T0 + 41 * S)  # a quiet hour still ends its file
    assert len(recorder.completed) == 3
    assert recorder.current_path is None
    recorder.close()

    first, second, third = (entries(path) for path in recorder.completed)
    assert first == [
        RecordedMark(T0, CONN, MarkKind.CONNECTED, setup=SETUP),
        frame(1, T0 + 5 * S),
        frame(2, T0 + 10 * S - 1),
    ]
    # Each later file starts with the open connection's setup: it replays on its own.
    assert second == [
        RecordedMark(T0 + 10 * S, CONN, MarkKind.CONTINUED, setup=SETUP),
        frame(3, T0 + 10 * S),
    ]
    assert third == [
        RecordedMark(T0 + 31 * S, CONN, MarkKind.CONTINUED, setup=SETUP),
        frame(4, T0 + 31 * S),
    ]
    names = [path.name for path in recorder.completed]
    assert names == [
        "rec-20251121T165320Z-000001.jsonl.zst",
        "rec-20251121T165330Z-000002.jsonl.zst",
        "rec-20251121T165351Z-000003.jsonl.zst",
    ]


def test_rotates_by_size_keeping_every_entry_once_in_order(tmp_path: Path) -> None:
    line_bytes = len(b'{"t":%d,"c":"%s","f":' % (T0, CONN.encode())) + 2  # + "}\n" ...
    recorder = FrameRecorder(tmp_path, rotate_max_bytes=400, chunk_bytes=64)
    written = [frame(n, T0 + n) for n in range(40)]
    for entry in written:
        write(recorder, entry)
    recorder.write_frame(CONN, "x" * 1000, T0 + 99)  # bigger than a file: alone in one
    recorder.close()

    read_back = [entry for path in recorder.completed for entry in entries(path)]
    assert read_back == [*written, RecordedFrame(T0 + 99, CONN, "x" * 1000)]
    assert len(recorder.completed) > 5
    sizes = [
        len(zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()))
        for path in recorder.completed
    ]
    assert all(size <= 400 for size in sizes[:-1])
    assert sizes[-1] > 1000 + line_bytes
    assert recorder.bytes_in == sum(sizes)


def test_a_file_is_partial_until_complete_and_renamed_atomically(tmp_path: Path) -> None:
    recorder = FrameRecorder(tmp_path, name="rec", rotate_interval_s=60)
    write(recorder, frame(1, T0))
    partial = recorder.current_path
    assert partial is not None
    assert partial.name.endswith(PARTIAL_SUFFIX)
    assert sorted(path.name for path in tmp_path.iterdir()) == [partial.name]
    write(recorder, frame(2, T0 + 60 * S))  # rotation: the first file is renamed, complete
    [done] = recorder.completed
    assert done == tmp_path / partial.name.removesuffix(".partial")
    assert not partial.exists()
    assert entries(done) == [frame(1, T0)]
    recorder.close()
    recorder.close()  # idempotent
    write(recorder, frame(3, T0 + 61 * S))  # ignored once closed
    assert not list(tmp_path.glob(f"*{PARTIAL_SUFFIX}"))
    assert [entries(path) for path in recorder.completed] == [
        [frame(1, T0)],
        [frame(2, T0 + 60 * S)],
    ]


def test_a_crash_leaves_a_partial_file_readable_up_to_the_last_flush(tmp_path: Path) -> None:
    recorder = FrameRecorder(tmp_path)
    written = [frame(n, T0 + n) for n in range(100)]
    for entry in written:
        write(recorder, entry)
    recorder.flush()
    write(recorder, frame(100, T0 + 100))  # buffered only: lost in the "crash"
    partial = recorder.current_path
    assert partial is not None
    crashed = tmp_path / "crashed" / partial.name
    crashed.parent.mkdir()
    crashed.write_bytes(partial.read_bytes())
    assert entries(crashed) == written
    # Cut in the middle of the stream: whatever whole lines it holds, nothing else.
    cut = tmp_path / "cut" / partial.name
    cut.parent.mkdir()
    cut.write_bytes(partial.read_bytes()[: partial.stat().st_size // 2])
    assert entries(cut) == written[: len(entries(cut))]
    recorder.close()


def test_a_write_failure_stops_recording_without_raising(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the directory should be")
    recorder = FrameRecorder(blocked / "recordings")
    write(recorder, frame(1, T0))
    write(recorder, frame(2, T0 + 1))
    recorder.mark(CONN, MarkKind.DISCONNECTED, T0 + 2, reason="shutdown")
    recorder.close()
    assert isinstance(recorder.error, RecordingError)
    assert recorder.error.operation == "create file"
    assert recorder.error.path == blocked / "recordings"
    assert recorder.completed == []


def test_mark_status_keeps_what_a_replay_needs(tmp_path: Path) -> None:
    session = KalshiSession(
        connection_id=CONN,
        channels=[Channel.ORDERBOOK_DELTA, Channel.TRADE],
        markets=SETUP.markets,
        use_yes_price=True,
    )
    assert session_setup(session) == SETUP
    recorder = FrameRecorder(tmp_path)
    recorder.mark_status(session.status_record(StatusEvent.CONNECTED, T0), session)
    recorder.mark_status(session.status_record(StatusEvent.SUBSCRIBED, T0 + 1), session)
    stale = session.status_record(StatusEvent.STALE, T0 + 2, reason="stale: no pong within 10 s")
    recorder.mark_status(stale, session)
    gone = session.status_record(StatusEvent.DISCONNECTED, T0 + 3, reason="shutdown")
    recorder.mark_status(gone, session)
    recorder.close()
    assert entries(recorder.completed[0]) == [
        RecordedMark(T0, CONN, MarkKind.CONNECTED, setup=SETUP),
        RecordedMark(T0 + 2, CONN, MarkKind.STALE, reason="stale: no pong within 10 s"),
        RecordedMark(T0 + 3, CONN, MarkKind.DISCONNECTED, reason="shutdown"),
    ]


def test_settings_build_a_recorder(tmp_path: Path) -> None:
    settings = RecordingSettings(dir=tmp_path / "rec", rotate_interval_s=5, zstd_level=1)
    recorder = FrameRecorder.from_settings(settings, name="local")
    write(recorder, frame(1, T0))
    write(recorder, frame(2, T0 + 5 * S))
    recorder.close()
    assert [path.parent for path in recorder.completed] == [tmp_path / "rec"] * 2
    assert all(path.name.startswith("local-") for path in recorder.completed)
    with pytest.raises(ValueError, match="rotate_interval_s"):
        FrameRecorder(tmp_path, rotate_interval_s=0)


def test_a_capture_gets_deterministic_receive_times(captures_dir: Path) -> None:
    path = captures_dir / "kalshi-docs__orderbook_delta.jsonl"
    lines = path.read_text().splitlines()
    assert entries(path) == [
        RecordedFrame(n * CAPTURE_STEP_NS, f"capture:{path.name}", line)
        for n, line in enumerate(lines, start=1)
    ]


def test_a_corrupt_recording_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"t":1,"c":"x","f":"{}"}\n{"t":"later","c":"x","f":"{}"}\n')
    with pytest.raises(RecordingError, match="decode line 2") as raised:
        entries(path)
    assert raised.value.path == path
