"""`top` records from a running connector (issue 8): every top is the book as it stood after
the book record behind it, and a recording replays into the same tops. (The minimum interval is
between publications, which a record does not carry: tests/test_top.py checks it with times.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ssmd.book import BookSet
from ssmd.config import Settings
from ssmd.config.top import TopSettings
from ssmd.records import BookDelta, BookSnapshot, Record, Top
from ssmd.replay import Replayer, read_entries
from ssmd.runner import Connector
from ssmd.top import top_of_book
from ssmd.transport.files import read_records

from .conftest import wait_until

TOP = {"enabled": True, "min_interval_ms": 50}


def local_settings(tmp_path: Path, **extra: object) -> Settings:
    return Settings.model_validate(
        {
            "name": "toptest",
            "exchange": {"simulator": {"markets": 6, "rate_hz": 1500, "seed": 12}},
            "transport": {"kind": "file", "dir": str(tmp_path / "records")},
            "runtime": {"summary_interval_s": 0},
            "top": TOP,
            **extra,
        }
    )


async def run_for(settings: Settings, tops_wanted: int) -> Connector:
    connector = Connector(settings)
    stop = asyncio.Event()
    run = asyncio.create_task(connector.run(stop))

    def tops() -> int:
        return (
            connector.transport.stats().records_by_kind.get("top", 0)
            if connector.has_transport
            else 0
        )

    await wait_until(lambda: tops() >= tops_wanted, 20, f"{tops_wanted} top records")
    stop.set()
    assert await asyncio.wait_for(run, 20) == 0
    return connector


def check_tops_against_books(records: list[Record], settings: TopSettings) -> int:
    """Rebuild the books from the published book records; each top must equal the top of its
    market's book right after the book record with the same sid/seq."""
    books = BookSet()
    checked = 0
    for record in records:
        if isinstance(record, BookSnapshot | BookDelta):
            books.apply(record)
            latest = record
        elif isinstance(record, Top):
            assert (record.sid, record.seq) == (latest.sid, latest.seq)
            expected = top_of_book(
                books[record.market],
                record.market,
                record.receive_ts_ns,
                settings,
                trigger=record.trigger,
                exchange_ts_ns=record.exchange_ts_ns,
                sid=record.sid,
                seq=record.seq,
                flags=record.flags,
            )
            assert record == expected
            checked += 1
    return checked


async def test_published_tops_equal_the_books_they_follow(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    await run_for(settings, 60)
    records = read_records(tmp_path / "records")
    # Files are per kind: put the records back in receive order (stable for equal times).
    records.sort(key=lambda r: (r.receive_ts_ns, 0 if not isinstance(r, Top) else 1))
    assert check_tops_against_books(records, settings.top) >= 60
    markets = {r.market for r in records if isinstance(r, Top)}
    assert len(markets) == 6


async def test_a_recording_replays_into_the_same_tops(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, recording={"dir": str(tmp_path / "rec")})
    await run_for(settings, 40)
    live = [r for r in read_records(tmp_path / "records") if isinstance(r, Top)]
    replayer = Replayer(top=settings.top)
    for path in sorted((tmp_path / "rec").glob("*.jsonl.zst")):
        for entry in read_entries(path):
            await replayer.receive(entry)
    replayed = [r for r in replayer.records_to_publish() if isinstance(r, Top)]
    assert len(live) >= 40
    assert replayed == live
