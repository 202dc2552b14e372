"""The sink contract: what the connector needs from any transport (files, NATS JetStream).

A transport receives normalized records in order, may await in `publish` to push back on the
producer, and makes everything durable on `close`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ssmd.records import Record


@dataclass(frozen=True)
class TransportStats:
    """A snapshot of what a transport has written so far."""

    records_by_kind: dict[str, int] = field(default_factory=dict)
    files_written: int = 0  # completed output files (file transport); 0 for network sinks
    bytes_written: int = 0  # encoded record bytes handed to the sink (NATS: acked)
    # Network sinks (NATS); 0 for files.
    pending: int = 0  # published, not yet acknowledged
    acked: int = 0  # acknowledged: stored, or a duplicate of a stored record
    duplicates: int = 0  # acks that said "duplicate" (the Msg-Id was stored already)
    resent: int = 0  # records sent again after a reconnect
    dropped: int = 0  # records dropped because the in-flight window was full (overflow: drop)
    reconnects: int = 0

    @property
    def records(self) -> int:
        return sum(self.records_by_kind.values())


class Transport(Protocol):
    """Where normalized records go. Methods are called from one asyncio task, in order."""

    async def start(self) -> None:
        """Open connections or directories; raise TransportError if the sink is unusable."""

    async def publish(self, record: Record) -> None:
        """Hand one record to the sink; may await to apply backpressure."""

    async def publish_many(self, records: Sequence[Record]) -> None:
        """publish() each record in order; a sink may do it with one await for the batch.
        The caller may reuse `records` once this returns."""

    async def flush(self) -> None:
        """Push buffered records to the sink (not necessarily to stable storage)."""

    async def close(self) -> None:
        """Flush, make everything durable, and release resources. Idempotent."""

    def stats(self) -> TransportStats:
        """Counters so far (a copy: later publishes do not change it)."""
