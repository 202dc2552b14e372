"""Rebuilding order books a session can no longer trust (PROTOCOL.md §4.3).

A repair covers markets of one orderbook sid and climbs a ladder, each rung with a deadline:
`get_snapshot` on the same sid, then unsubscribe + subscribe (a new sid, fresh snapshots), then
a reconnect. Pure: the session hosts it and passes each frame's receive time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import msgspec

from ssmd.book import ApplyResult, BookSet
from ssmd.messages import (
    Channel,
    Unsubscribe,
    UnsubscribeParams,
    UpdateAction,
    UpdateSubscription,
    UpdateSubscriptionParams,
    encode_command,
)
from ssmd.records import BookDelta, BookSnapshot, Flag, Status, StatusEvent
from ssmd.session_events import (
    BookInvalid,
    ReconnectRequired,
    RepairMethod,
    RepairStarted,
    Resynced,
    SessionEvent,
    SessionStats,
    Subscription,
)


class RepairHost(Protocol):
    """What a repair needs from its session."""

    books: BookSet
    stats: SessionStats

    def next_command_id(self) -> int: ...

    def send(self, command: bytes) -> None: ...

    def emit(self, event: SessionEvent) -> None: ...

    def subscribe(self, channel: Channel) -> Subscription: ...

    def subscription_for_sid(self, sid: int) -> Subscription | None: ...

    def status_record(
        self,
        event: StatusEvent,
        ts_ns: int,
        *,
        reason: str = "",
        channel: Channel | None = None,
        sid: int | None = None,
        seq: int | None = None,
        markets: tuple[str, ...] = (),
        expected_seq: int | None = None,
        received_seq: int | None = None,
    ) -> Status: ...


@dataclass
class Repair:
    """Books of `pending` markets on one orderbook sid await a fresh snapshot."""

    sid: int | None
    markets: tuple[str, ...]
    pending: set[str]
    method: RepairMethod
    reason: str
    deadline_ns: int
    command_id: int | None = None
    snapshot_seq: int | None = None


class BookRepairs:
    """Every repair under way on one connection, by sid and by the command that serves it."""

    def __init__(self, host: RepairHost, *, timeout_ns: int) -> None:
        self._host = host
        self._timeout_ns = timeout_ns
        self._by_sid: dict[int, Repair] = {}
        self._by_command: dict[int, Repair] = {}
        self._unsubscribing: dict[int, Repair] = {}  # old sid awaiting `unsubscribed`
        self.next_deadline_ns: int | None = None

    @property
    def active(self) -> bool:
        return bool(self._by_sid or self._by_command or self._unsubscribing)

    def on_book_record(
        self,
        record: BookDelta | BookSnapshot,
        result: ApplyResult,
        sid: int | None,
        receive_ts_ns: int,
    ) -> BookDelta | BookSnapshot:
        """Account for one applied book record; returns it, flagged when it ends a repair."""
        if isinstance(record, BookSnapshot):
            repair = self._by_sid.get(sid) if sid is not None else None
            if repair is not None and record.market in repair.pending:
                repair.pending.discard(record.market)
                repair.snapshot_seq = record.seq
                record = msgspec.structs.replace(record, flags=(*record.flags, Flag.AFTER_RESYNC))
                if not repair.pending:
                    self._finish(repair, receive_ts_ns)
            return record
        if result is not ApplyResult.APPLIED and sid is not None:
            repair = self._by_sid.get(sid)
            if repair is None or record.market not in repair.pending:
                reason = f"{result.value} for {record.market} at seq {record.seq}"
                status = self._host.status_record(
                    StatusEvent.GAP,
                    receive_ts_ns,
                    reason=reason,
                    channel=Channel.ORDERBOOK_DELTA,
                    sid=sid,
                    seq=record.seq,
                    markets=(record.market,),
                )
                self._host.emit(
                    BookInvalid(sid=sid, market=record.market, reason=reason, status=status)
                )
                self.start(sid, (record.market,), RepairMethod.GET_SNAPSHOT, reason, receive_ts_ns)
        return record

    def start(
        self,
        sid: int,
        markets: tuple[str, ...],
        method: RepairMethod,
        reason: str,
        receive_ts_ns: int,
    ) -> None:
        self._host.stats.repairs += 1
        existing = self._by_sid.get(sid)
        pending = set(markets) | (existing.pending if existing else set())
        all_markets = tuple(sorted(pending))
        self._host.books.invalidate(all_markets)
        repair = Repair(
            sid=sid,
            markets=all_markets,
            pending=pending,
            method=method,
            reason=reason,
            deadline_ns=receive_ts_ns + self._timeout_ns,
        )
        self._by_sid[sid] = repair
        self._run(repair)
        self._update_deadline()

    def _run(self, repair: Repair) -> None:
        self._host.emit(
            RepairStarted(
                sid=repair.sid or 0,
                markets=repair.markets,
                method=repair.method,
                reason=repair.reason,
            )
        )
        sid = repair.sid
        if repair.method is RepairMethod.GET_SNAPSHOT and sid is not None:
            # §4.3 (a): snapshots for the named markets, on the same sid, seq continuing.
            command_id = self._host.next_command_id()
            repair.command_id = command_id
            self._by_command[command_id] = repair
            params = UpdateSubscriptionParams(
                sids=[sid], market_tickers=sorted(repair.pending), action=UpdateAction.GET_SNAPSHOT
            )
            self._host.send(encode_command(UpdateSubscription(id=command_id, params=params)))
        elif repair.method is RepairMethod.RESUBSCRIBE and sid is not None:
            # §4.3 (b): unsubscribe, then (once confirmed) subscribe: a new sid, fresh snapshots.
            subscription = self._host.subscription_for_sid(sid)
            if subscription is None:
                self._resubscribe(repair)
                return
            self._unsubscribing[sid] = repair
            command = Unsubscribe(
                id=self._host.next_command_id(), params=UnsubscribeParams(sids=[sid])
            )
            self._host.send(encode_command(command))
        else:
            # §4.3 (c): nothing else worked on this connection.
            self._host.emit(ReconnectRequired(reason=f"repair failed: {repair.reason}"))

    def _resubscribe(self, repair: Repair) -> None:
        subscription = self._host.subscribe(Channel.ORDERBOOK_DELTA)
        repair.sid = None
        repair.pending = set(subscription.markets)
        repair.markets = subscription.markets
        self._by_command[subscription.command_id] = repair

    def escalate(self, repair: Repair, reason: str, receive_ts_ns: int) -> None:
        if repair.command_id is not None:
            self._by_command.pop(repair.command_id, None)
        if repair.sid is not None:
            self._by_sid.pop(repair.sid, None)
        ladder = list(RepairMethod)
        repair.method = ladder[min(ladder.index(repair.method) + 1, len(ladder) - 1)]
        repair.reason = reason
        repair.deadline_ns = receive_ts_ns + self._timeout_ns
        if repair.sid is not None:
            self._by_sid[repair.sid] = repair
        self._run(repair)
        self._update_deadline()

    def escalate_overdue(self, receive_ts_ns: int) -> None:
        overdue = [r for r in self._all() if r.deadline_ns < receive_ts_ns]
        for repair in overdue:
            self.escalate(repair, f"{repair.method.value} timed out", receive_ts_ns)
        self._update_deadline()

    def _all(self) -> list[Repair]:
        repairs = {id(r): r for r in self._by_sid.values()}
        repairs.update({id(r): r for r in self._by_command.values()})
        return list(repairs.values())

    def _update_deadline(self) -> None:
        deadlines = [r.deadline_ns for r in self._all()]
        self.next_deadline_ns = min(deadlines) if deadlines else None

    def _finish(self, repair: Repair, receive_ts_ns: int) -> None:
        self._drop(repair)
        self._update_deadline()
        self._host.stats.resyncs += 1
        status = self._host.status_record(
            StatusEvent.RESYNCED,
            receive_ts_ns,
            reason=f"{repair.method.value} after {repair.reason}",
            channel=Channel.ORDERBOOK_DELTA,
            sid=repair.sid,
            seq=repair.snapshot_seq,
            markets=repair.markets,
        )
        self._host.emit(
            Resynced(
                sid=repair.sid or 0,
                markets=repair.markets,
                snapshot_seq=repair.snapshot_seq,
                status=status,
            )
        )

    def forget_markets(self, markets: Iterable[str], receive_ts_ns: int) -> None:
        """Markets left the subscription (delete_markets, §5.3): no repair waits for them. A
        repair left waiting for nothing ends; RESYNCED names the markets it did rebuild."""
        gone = set(markets)
        for repair in self._all():
            if not gone & (repair.pending | set(repair.markets)):
                continue
            repair.pending -= gone
            repair.markets = tuple(m for m in repair.markets if m not in gone)
            if repair.pending:
                continue
            if repair.markets:
                self._finish(repair, receive_ts_ns)
            else:
                self._drop(repair)
        self._update_deadline()

    def _drop(self, repair: Repair) -> None:
        if repair.sid is not None:
            self._by_sid.pop(repair.sid, None)
        if repair.command_id is not None:
            self._by_command.pop(repair.command_id, None)

    def on_refused(self, command_id: int, code: int, receive_ts_ns: int) -> bool:
        """The exchange answered one of our repair commands with an error: climb the ladder."""
        repair = self._by_command.get(command_id)
        if repair is None:
            return False
        self.escalate(repair, f"{repair.method.value} refused: code {code}", receive_ts_ns)
        return True

    def on_unsubscribed(self, sid: int) -> None:
        """§4.2.6: only once the old sid is gone may the channel be subscribed again."""
        repair = self._unsubscribing.pop(sid, None)
        if repair is not None:
            self._resubscribe(repair)

    def on_subscribed(self, command_id: int, sid: int) -> None:
        repair = self._by_command.pop(command_id, None)
        if repair is not None:
            repair.sid = sid
            self._by_sid[sid] = repair

    def recreate(self, markets: tuple[str, ...], old_sid: int, reason: str, ts_ns: int) -> None:
        """§6.6: the orderbook subscription died (error 10/25): subscribe again, resync all."""
        self._by_sid.pop(old_sid, None)
        self._host.books.invalidate(markets)
        self._host.stats.repairs += 1
        repair = Repair(
            sid=None,
            markets=markets,
            pending=set(markets),
            method=RepairMethod.RESUBSCRIBE,
            reason=reason,
            deadline_ns=ts_ns + self._timeout_ns,
        )
        self._host.emit(
            RepairStarted(sid=old_sid, markets=markets, method=repair.method, reason=reason)
        )
        self._resubscribe(repair)
        self._update_deadline()
