"""The file transport: exact round trips, rotation with atomic rename, durability, errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from ssmd.config import FileTransportSettings
from ssmd.errors import TransportError
from ssmd.fixedpoint import parse_price, parse_size
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
    Status,
    StatusEvent,
    Ticker,
    Trade,
    record_kind,
)
from ssmd.transport import FileTransport, FileTransportError, build_transport, read_records
from ssmd.transport.files import PART_SUFFIX

T0_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z
T0_NS = int(T0_S) * 1_000_000_000


class FakeClock:
    """An injected wall clock the test moves by hand."""

    def __init__(self, now_s: float = T0_S) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def trade(n: int) -> Trade:
    return Trade(
        market="KXBTCD-26AUG2017-T73749.99",
        exchange_ts_ns=T0_NS + n,
        receive_ts_ns=T0_NS + n + 500,
        sid=3,
        seq=n,
        trade_id=f"d91bc706-ee49-470d-82d8-{n:012d}",
        yes_price_e4=parse_price("0.3600"),
        no_price_e4=parse_price("0.6400"),
        size_e2=parse_size("136.00"),
        taker_side=Side.NO,
        taker_book_side=BookSide.ASK,
        is_block_trade=False,
    )


def sample_records() -> list[Record]:
    """One or more records of every kind, with every kind of field value."""
    market = "KXBTCD-26AUG2017-T73749.99"
    return [
        BookSnapshot(
            market=market,
            receive_ts_ns=T0_NS,
            sid=1,
            seq=1,
            market_id="9b0f6b43-5b68-4f9f-9f02-9a2d1d8d0e51",
            yes_bids=(Level(100, 50_000), Level(4800, 13_600)),
            no_bids=(Level(5100, 1),),
        ),
        trade(1),
        BookDelta(
            market=market,
            exchange_ts_ns=T0_NS + 2,
            receive_ts_ns=T0_NS + 3,
            sid=1,
            seq=2,
            side=Side.YES,
            price_e4=4800,
            delta_e2=-13_600,
        ),
        Ticker(
            market=market,
            exchange_ts_ns=T0_NS + 4,
            receive_ts_ns=T0_NS + 5,
            last_price_e4=4800,
            yes_bid_e4=4700,
            yes_ask_e4=4900,
            volume_e2=123_456_789_000,
            notional_volume_usd=98_765,
        ),
        Lifecycle(
            market=market,
            receive_ts_ns=T0_NS + 6,
            scope=LifecycleScope.MARKET,
            event_type="price_level_structure_updated",
            price_level_structure="tapered_deci_cent",
            price_ranges=(PriceRange(0, 1000, 10), PriceRange(1000, 9000, 100)),
            custom_strike={"team": "BOR", "nested": [1, "two"]},
        ),
        Status(
            market="",
            receive_ts_ns=T0_NS + 7,
            event=StatusEvent.GAP,
            connection_id="local/1/1",
            channel="orderbook_delta",
            expected_seq=3,
            received_seq=5,
            markets=(market, "KXGOLDH-26AUG2711-T4615.99"),
            reason="seq jumped — résumé ✓",
            flags=(Flag.AFTER_RESYNC,),
        ),
        trade(2),
        BookDelta(
            market=market,
            receive_ts_ns=T0_NS + 9,
            side=Side.NO,
            price_e4=5100,
            delta_e2=7,
            flags=(Flag.PRICE_OUT_OF_RANGE, Flag.NEGATIVE_SIZE),
        ),
    ]


def by_kind_in_file_name_order(records: list[Record]) -> list[Record]:
    """What read_records returns: grouped by kind (file names sort by kind), publish order kept."""
    return sorted(records, key=record_kind)


def files_under(directory: Path, suffix: str) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.name.endswith(suffix))


def make_transport(
    directory: Path,
    *,
    rotate_max_bytes: int = 1 << 20,
    rotate_interval_s: float = 3600,
    clock_s: Callable[[], float] | None = None,
) -> FileTransport:
    return FileTransport(
        directory,
        rotate_max_bytes=rotate_max_bytes,
        rotate_interval_s=rotate_interval_s,
        clock_s=clock_s or FakeClock(),
    )


async def test_records_round_trip_exactly(tmp_path: Path) -> None:
    records = sample_records()
    transport = make_transport(tmp_path / "records")
    await transport.start()
    for record in records:
        await transport.publish(record)
    await transport.close()

    assert read_records(tmp_path / "records") == by_kind_in_file_name_order(records)
    stats = transport.stats()
    assert stats.records_by_kind == {
        "book_snapshot": 1,
        "trade": 2,
        "book_delta": 2,
        "ticker": 1,
        "lifecycle": 1,
        "status": 1,
    }
    assert stats.records == len(records)
    completed = files_under(tmp_path / "records", ".jsonl")
    assert stats.files_written == len(completed) == 6
    assert stats.bytes_written == sum(path.stat().st_size for path in completed)
    assert files_under(tmp_path, PART_SUFFIX) == []


async def test_publish_many_writes_what_publish_does(tmp_path: Path) -> None:
    records = sample_records()
    one_by_one, batched = make_transport(tmp_path / "one"), make_transport(tmp_path / "many")
    for transport in (one_by_one, batched):
        await transport.start()
    for record in records:
        await one_by_one.publish(record)
    await batched.publish_many(records)
    for transport in (one_by_one, batched):
        await transport.close()
    assert read_records(tmp_path / "many") == read_records(tmp_path / "one")
    assert batched.stats() == one_by_one.stats()


async def test_layout_is_one_directory_and_file_per_kind(tmp_path: Path) -> None:
    transport = make_transport(tmp_path)
    await transport.start()
    for record in sample_records():
        await transport.publish(record)
    await transport.close()
    names = {path.relative_to(tmp_path).as_posix() for path in files_under(tmp_path, ".jsonl")}
    assert names == {
        f"{kind}/{kind}-20260101T000000Z-000000.jsonl"
        for kind in ("book_snapshot", "book_delta", "trade", "ticker", "lifecycle", "status")
    }
    # Each line is one JSON object tagged with its kind.
    lines = (tmp_path / "trade" / "trade-20260101T000000Z-000000.jsonl").read_bytes().splitlines()
    assert [msgspec.json.decode(line)["kind"] for line in lines] == ["trade", "trade"]
    assert [msgspec.json.decode(line)["seq"] for line in lines] == [1, 2]


async def test_rotation_by_size_keeps_order_and_completes_every_file(tmp_path: Path) -> None:
    one_line = len(msgspec.json.encode(trade(0))) + 1
    transport = make_transport(tmp_path, rotate_max_bytes=3 * one_line + 10)
    await transport.start()
    trades = [trade(n) for n in range(10)]
    for record in trades:
        await transport.publish(record)
    await transport.close()

    completed = files_under(tmp_path / "trade", ".jsonl")
    assert [path.name for path in completed] == [
        f"trade-20260101T000000Z-{n:06d}.jsonl" for n in range(4)
    ]
    assert [len(path.read_bytes().splitlines()) for path in completed] == [3, 3, 3, 1]
    assert all(path.stat().st_size <= 3 * one_line + 10 for path in completed)
    assert files_under(tmp_path, PART_SUFFIX) == []
    assert read_records(tmp_path) == trades
    assert transport.stats().files_written == 4


async def test_a_record_larger_than_the_limit_gets_its_own_file(tmp_path: Path) -> None:
    transport = make_transport(tmp_path, rotate_max_bytes=10)
    await transport.start()
    for record in (trade(1), trade(2)):
        await transport.publish(record)
    await transport.close()
    assert len(files_under(tmp_path, ".jsonl")) == 2
    assert read_records(tmp_path) == [trade(1), trade(2)]


async def test_rotation_by_age_on_publish_uses_the_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    transport = make_transport(tmp_path, rotate_interval_s=60, clock_s=clock)
    await transport.start()
    await transport.publish(trade(1))
    clock.now_s += 59.9
    await transport.publish(trade(2))
    assert files_under(tmp_path, ".jsonl") == []  # still one open .part file
    clock.now_s += 0.1  # the first file is now 60 s old
    await transport.publish(trade(3))
    completed = files_under(tmp_path, ".jsonl")
    assert [path.name for path in completed] == ["trade-20260101T000000Z-000000.jsonl"]
    assert read_records(tmp_path) == [trade(1), trade(2)]
    await transport.close()
    assert [path.name for path in files_under(tmp_path, ".jsonl")] == [
        "trade-20260101T000000Z-000000.jsonl",
        "trade-20260101T000100Z-000001.jsonl",
    ]
    assert read_records(tmp_path) == [trade(1), trade(2), trade(3)]


async def test_flush_rotates_files_that_aged_without_new_records(tmp_path: Path) -> None:
    clock = FakeClock()
    transport = make_transport(tmp_path, rotate_interval_s=3600, clock_s=clock)
    await transport.start()
    await transport.publish(trade(1))
    await transport.flush()
    assert read_records(tmp_path) == []  # flushed to the .part file, not yet complete
    clock.now_s += 3600
    await transport.flush()
    assert read_records(tmp_path) == [trade(1)]
    assert files_under(tmp_path, PART_SUFFIX) == []
    await transport.close()
    assert transport.stats().files_written == 1


async def test_readers_ignore_part_files_of_an_unclosed_transport(tmp_path: Path) -> None:
    transport = make_transport(tmp_path)
    await transport.start()
    await transport.publish(trade(1))
    await transport.flush()
    (part,) = files_under(tmp_path, PART_SUFFIX)
    assert msgspec.json.decode(part.read_bytes().strip())["trade_id"] == trade(1).trade_id
    assert read_records(tmp_path) == []
    await transport.close()
    assert not part.exists()
    assert read_records(tmp_path) == [trade(1)]


async def test_close_fsyncs_the_file_before_rename_then_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    synced: list[tuple[int, bool]] = []  # (inode, was a .part file present at fsync time)

    def recording_fsync(fd: int) -> None:
        synced.append((os.fstat(fd).st_ino, bool(files_under(tmp_path, PART_SUFFIX))))
        real_fsync(fd)

    transport = make_transport(tmp_path)
    await transport.start()
    await transport.publish(trade(1))
    monkeypatch.setattr(os, "fsync", recording_fsync)
    await transport.close()

    (completed,) = files_under(tmp_path, ".jsonl")
    file_inode = completed.stat().st_ino
    dir_inode = completed.parent.stat().st_ino
    assert synced == [(file_inode, True), (dir_inode, False)]


async def test_close_is_idempotent_and_publish_after_close_fails(tmp_path: Path) -> None:
    transport = make_transport(tmp_path)
    await transport.start()
    await transport.publish(trade(1))
    await transport.close()
    await transport.close()
    with pytest.raises(TransportError, match="closed"):
        await transport.publish(trade(2))
    assert read_records(tmp_path) == [trade(1)]


async def test_publish_before_start_fails(tmp_path: Path) -> None:
    transport = make_transport(tmp_path)
    with pytest.raises(TransportError, match="not started"):
        await transport.publish(trade(1))


async def test_a_restart_in_the_same_second_never_overwrites(tmp_path: Path) -> None:
    for batch in ([trade(1), trade(2)], [trade(3)]):
        transport = make_transport(tmp_path)  # same clock reading: same timestamp in names
        await transport.start()
        for record in batch:
            await transport.publish(record)
        await transport.close()
    assert [path.name for path in files_under(tmp_path, ".jsonl")] == [
        "trade-20260101T000000Z-000000.jsonl",
        "trade-20260101T000000Z-000001.jsonl",
    ]
    assert read_records(tmp_path) == [trade(1), trade(2), trade(3)]


async def test_unusable_directory_raises_transport_error_with_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file")
    transport = make_transport(blocker / "records")
    with pytest.raises(FileTransportError) as info:
        await transport.start()
    assert isinstance(info.value, TransportError)
    assert info.value.path == blocker / "records"
    assert str(blocker / "records") in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


async def test_directory_removed_under_a_running_transport(tmp_path: Path) -> None:
    directory = tmp_path / "records"
    transport = make_transport(directory)
    await transport.start()
    directory.rmdir()
    directory.write_text("now a file")  # the kind directory cannot be created under it
    with pytest.raises(FileTransportError) as info:
        await transport.publish(trade(1))
    assert info.value.path == directory / "trade"
    assert isinstance(info.value.__cause__, OSError)
    await transport.close()


def test_read_records_reports_the_corrupt_file_and_line(tmp_path: Path) -> None:
    kind_dir = tmp_path / "trade"
    kind_dir.mkdir()
    path = kind_dir / "trade-20260101T000000Z-000000.jsonl"
    path.write_bytes(msgspec.json.encode(trade(1)) + b"\n{not json\n")
    with pytest.raises(FileTransportError) as info:
        read_records(tmp_path)
    assert info.value.path == path
    assert info.value.operation == "decode line 2"


def test_build_transport_from_settings(tmp_path: Path) -> None:
    settings = FileTransportSettings(dir=tmp_path / "out", rotate_max_bytes=1000)
    transport = build_transport(settings)
    assert isinstance(transport, FileTransport)
    assert transport.directory == tmp_path / "out"
