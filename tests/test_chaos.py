"""Chaos: the connector (a real process) against a simulator injecting a seeded random schedule
of faults, publishing to a real JetStream. Afterwards, accounting against the simulator's own log
proves that every data frame it sent was published, or was lost where ssmd reported it (a gap,
or a connection's tail after a reported disconnect) and repaired; every trade is stored once;
the books rebuilt from the stream equal the exchange's. Figures are printed.

CI runs a fixed seed for SSMD_CHAOS_SECONDS (default 40 s); `make soak` runs longer with a
random seed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.book import BookSet, BookState
from ssmd.errors import FrameDecodeError
from ssmd.exchange.schedule import RandomFaults
from ssmd.exchange.server import ExchangeSimulator
from ssmd.messages import (
    ErrorFrame,
    FrameDecoder,
    Ok,
    OrderbookDelta,
    OrderbookSnapshot,
    Subscribed,
    TickerFrame,
    TradeFrame,
    Unsubscribed,
)
from ssmd.natsserver import NatsServer
from ssmd.normalize import normalize
from ssmd.records import (
    BookDelta,
    BookSnapshot,
    Flag,
    Record,
    RecordBase,
    Status,
    StatusEvent,
    Trade,
    record_kind,
)
from ssmd.wiretime import rfc3339_to_ns

from .conftest import read_stream as read_any_stream
from .conftest import wait_until, write_pem
from .test_connector_e2e import KEY_ID, spawn_connector, write_connector_env

pytestmark = pytest.mark.integration

CHAOS_SECONDS = float(os.environ.get("SSMD_CHAOS_SECONDS", "40"))
CHAOS_SEED = int(os.environ.get("SSMD_CHAOS_SEED", "7"))
FAULT_RATE_HZ = float(os.environ.get("SSMD_CHAOS_FAULT_RATE", "0.5"))
STREAM = "SSMD_CHAOS_KALSHI"


def write_env(
    tmp_path: Path, *, url: str, key_file: Path, nats_url: str, markets: list[str]
) -> Path:
    return write_connector_env(
        tmp_path,
        name="chaos",
        url=url,
        key_file=key_file,
        markets=markets,
        transport=f"  kind: nats\n  servers: [{nats_url}]\n",
        exchange=(
            "  ping_interval_s: 0.5\n  repair_timeout_s: 3\n"
            "  reconnect: {base_s: 0.05, cap_s: 1.0, healthy_after_s: 5, max_auth_retries: 50}\n"
        ),
    )


async def read_stream(nats_url: str) -> list[Record]:
    decoder = msgspec.json.Decoder(Record)
    return [
        decoder.decode(m.data)
        for m in await read_any_stream(nats_url, STREAM, "ssmd.chaos.kalshi.>")
    ]


def comparable(record: RecordBase) -> RecordBase:
    """A record without what only the receiver adds (receive time, the after_resync flag)."""
    flags = tuple(f for f in record.flags if f is not Flag.AFTER_RESYNC)
    return msgspec.structs.replace(record, receive_ts_ns=0, flags=flags)


@dataclass
class Accounting:
    connections: int = 0
    frames_sent: int = 0
    published: int = 0
    duplicates_dropped: int = 0
    malformed: int = 0
    in_reported_gap: int = 0
    skipped_inside_reported_gaps: int = 0
    lost_in_reported_disconnect: int = 0
    silent_losses: list[str] = field(default_factory=list)


def session_segments(records: list[Record]) -> list[tuple[str, list[Record]]]:
    """The stream cut at each `connected` status: (connection id, the records that followed)."""
    segments: list[tuple[str, list[Record]]] = []
    for record in records:
        if isinstance(record, Status) and record.event is StatusEvent.CONNECTED:
            segments.append((record.connection_id, []))
        elif segments:
            segments[-1][1].append(record)
    return segments


def account(
    sent_by_connection: dict[int, list[bytes]],
    skipped_by_connection: dict[int, list[tuple[int, int]]],
    records: list[Record],
) -> Accounting:
    decoder = FrameDecoder()
    result = Accounting()
    segments = session_segments(records)
    connection_ids = sorted(sent_by_connection)
    assert len(connection_ids) == len(segments), (connection_ids, [s[0] for s in segments])
    result.connections = len(segments)
    # A trade fetched over REST after a reconnect (§9.5) can be published before its live frame
    # arrives; the live frame is then dropped by the trade-id dedupe: published once, not lost.
    backfilled_trade_ids = {
        r.trade_id for r in records if isinstance(r, Trade) and Flag.BACKFILLED in r.flags
    }
    for connection_id, (session_id, segment) in zip(connection_ids, segments, strict=True):
        published: dict[tuple[str, int, int], RecordBase] = {}
        tickers: set[RecordBase] = set()
        gaps: list[tuple[int, int, int]] = []
        for record in segment:
            if isinstance(record, Status):
                if (
                    record.event is StatusEvent.GAP
                    and record.connection_id == session_id
                    and record.sid is not None
                    and record.expected_seq is not None
                    and record.received_seq is not None
                ):
                    gaps.append((record.sid, record.expected_seq, record.received_seq))
            elif Flag.BACKFILLED in record.flags:
                continue
            elif record.seq is not None and record.sid is not None:
                published[(record_kind(record), record.sid, record.seq)] = comparable(record)
            else:
                tickers.add(comparable(record))
        book_sids: set[int] = set()
        seen: set[tuple[int, int]] = set()
        unresolved: list[tuple[int, str]] = []
        last_published = -1
        for index, data in enumerate(sent_by_connection[connection_id]):
            try:
                frame = decoder.decode(data)
            except FrameDecodeError:
                result.malformed += 1  # injected; ssmd counts and logs these
                continue
            if isinstance(frame, Subscribed):
                if frame.msg is not None and frame.msg.channel == "orderbook_delta":
                    book_sids.add(frame.msg.sid)
                continue
            if isinstance(frame, Ok | Unsubscribed | ErrorFrame):
                continue
            result.frames_sent += 1
            is_book = isinstance(frame, OrderbookSnapshot | OrderbookDelta)
            try:
                expected = comparable(
                    normalize(frame, 0, no_side_in_yes_price=is_book and frame.sid in book_sids)
                )
            except FrameDecodeError:
                result.malformed += 1
                continue
            sid, seq = frame.sid, frame.seq
            if isinstance(frame, TickerFrame) or seq is None or sid is None:
                if expected in tickers:
                    result.published += 1
                    last_published = index
                else:
                    unresolved.append((index, f"{session_id}: {data[:160]!r}"))
                continue
            key = (record_kind(expected), sid, seq)
            if (sid, seq) in seen:
                result.duplicates_dropped += 1
                continue
            seen.add((sid, seq))
            if key in published:
                assert published[key] == expected, f"{session_id} sid {sid} seq {seq} differs"
                result.published += 1
                last_published = index
            elif any(s == sid and lo <= seq < hi for s, lo, hi in gaps):
                result.in_reported_gap += 1
            elif isinstance(frame, TradeFrame) and frame.msg.trade_id in backfilled_trade_ids:
                result.duplicates_dropped += 1
            else:
                unresolved.append((index, f"{session_id} sid {sid} seq {seq}: {data[:160]!r}"))
        disconnect_reasons = [
            r.reason
            for r in segment
            if isinstance(r, Status)
            and r.event is StatusEvent.DISCONNECTED
            and r.connection_id == session_id
        ]
        for index, what in unresolved:
            # TCP delivers in order: what ssmd never got is the connection's tail, lost with it,
            # which counts only when ssmd reported that connection's loss.
            if index > last_published and disconnect_reasons[:1] != ["shutdown"]:
                result.lost_in_reported_disconnect += 1
            else:
                result.silent_losses.append(what)
        # Frames the exchange dropped on purpose (a consumed seq never sent) must each lie in a
        # gap ssmd reported on that connection, or in its lost tail.
        for sid, seq in skipped_by_connection.get(connection_id, []):
            if any(s == sid and lo <= seq < hi for s, lo, hi in gaps):
                result.skipped_inside_reported_gaps += 1
            elif not disconnect_reasons or disconnect_reasons[0] == "shutdown":
                result.silent_losses.append(f"{session_id} skipped sid {sid} seq {seq} unreported")
    return result


async def test_chaos_every_frame_is_published_or_inside_a_reported_and_repaired_gap(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, nats_server: NatsServer
) -> None:
    key_file = write_pem(tmp_path / "kalshi.pem", rsa_key)
    sim = ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()},
        market_count=10,
        rate_hz=400.0,
        seed=CHAOS_SEED,
        random_faults=RandomFaults(rate_hz=FAULT_RATE_HZ, seed=CHAOS_SEED),
    )
    async with sim:
        env = write_env(
            tmp_path,
            url=sim.url,
            key_file=key_file,
            nats_url=nats_server.url,
            markets=list(sim.markets),
        )
        # Faults start once ssmd is connected: a 401 on the very first handshake is fatal by
        # design (bad credentials), and how long the process takes to start is not the point.
        await sim.pause()
        proc = await spawn_connector(env)
        try:
            await wait_until(
                lambda: sim.connections >= 1 or proc.returncode is not None,
                60,
                "the connector's first connection",
            )
            sim.resume()
            await asyncio.sleep(CHAOS_SECONDS)  # the run itself: faults fire meanwhile
            await sim.pause()  # no more market events nor faults
            sim.end_stall()
            await settle(nats_server.url)
            died = proc.returncode
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        log = stderr.decode()
        assert died is None, "the connector died during the chaos run:\n" + log[-6000:]
        assert proc.returncode == 0, log[-4000:]
        # Every accepted connection, even one aborted before its first frame, pairs with a session.
        sent_by_connection: dict[int, list[bytes]] = {
            n: [] for n in range(1, sim.accepted_connections + 1)
        }
        for frame in sim.sent:
            sent_by_connection.setdefault(frame.connection_id, []).append(frame.data)
        skipped_by_connection: dict[int, list[tuple[int, int]]] = {}
        for skipped in sim.skipped:
            if skipped.sid is not None and skipped.seq is not None:
                skipped_by_connection.setdefault(skipped.connection_id, []).append(
                    (skipped.sid, skipped.seq)
                )
        faults = Counter(type(f.fault).__name__ for f in sim.faults)
        exchange_trades = sim.trades.all_trades()
        exchange_books = {
            ticker: (dict(market.yes_bids), dict(market.no_bids))
            for ticker, market in sim.generator.markets.items()
        }

    records = await read_stream(nats_server.url)
    result = account(sent_by_connection, skipped_by_connection, records)

    statuses = Counter(r.event.value for r in records if isinstance(r, Status))
    trades = [r for r in records if isinstance(r, Trade)]
    trade_ids = Counter(t.trade_id for t in trades)
    first_live_trade_ns = min(
        (t.exchange_ts_ns or 0 for t in trades if Flag.BACKFILLED not in t.flags), default=0
    )
    # Every exchange trade since ssmd first saw one is stored exactly once (live or backfilled).
    expected_trade_ids = {
        t.trade_id for t in exchange_trades if rfc3339_to_ns(t.created_time) >= first_live_trade_ns
    }
    books = BookSet()
    for record in records:
        if isinstance(record, BookSnapshot | BookDelta):
            books.apply(record)

    figures = {
        "seed": CHAOS_SEED,
        "seconds": CHAOS_SECONDS,
        "faults_injected": sum(faults.values()),
        "faults_by_kind": dict(faults),
        "connections": result.connections,
        "frames_sent": result.frames_sent,
        "records_in_stream": len(records),
        "frames_published": result.published,
        "duplicates_dropped": result.duplicates_dropped,
        "malformed_frames": result.malformed,
        "gaps_reported": statuses.get("gap", 0),
        "resyncs": statuses.get("resynced", 0),
        "stale": statuses.get("stale", 0),
        "frames_lost_inside_reported_gaps": result.in_reported_gap,
        "frames_skipped_by_exchange_inside_reported_gaps": result.skipped_inside_reported_gaps,
        "frames_lost_with_a_reported_disconnect": result.lost_in_reported_disconnect,
        "trades_backfilled": sum(1 for t in trades if Flag.BACKFILLED in t.flags),
        "silent_losses": len(result.silent_losses),
    }
    print("\nchaos figures:", json.dumps(figures, indent=2))

    assert sum(faults.values()) >= CHAOS_SECONDS * FAULT_RATE_HZ / 3, faults
    assert result.connections >= 2, "the schedule never broke a connection"
    assert result.silent_losses == [], result.silent_losses[:10]
    assert [t for t, n in trade_ids.items() if n > 1] == []
    assert expected_trade_ids - set(trade_ids) == set()
    for ticker, (yes_bids, no_bids) in exchange_books.items():
        book = books[ticker]
        assert book.state is BookState.LIVE, f"{ticker} ended {book.state}"
        assert (book.yes_bids, book.no_bids) == (yes_bids, no_bids), ticker


async def settle(nats_url: str, quiet_s: float = 8.0, timeout_s: float = 90.0) -> None:
    """Wait until the stream stops growing for `quiet_s` (repairs done, everything acked).
    8 s outlasts two repair deadlines (3 s each in the chaos environment) plus a reconnect."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last = -1
        quiet_since = loop.time()
        while loop.time() < deadline:
            count = (await js.stream_info(STREAM)).state.messages
            if count != last:
                last, quiet_since = count, loop.time()
            elif loop.time() - quiet_since >= quiet_s:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"the stream kept growing for {timeout_s} s after the pause")
    finally:
        await nc.close()
