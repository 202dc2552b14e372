"""Which WebSocket connection carries which market (pure): at most `cap` markets per connection,
new markets to the least-loaded connection with room, another connection when all are full.
Kalshi caps markets per subscription and answers error 26 beyond it (PROTOCOL.md §6.6)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_MARKETS_PER_CONNECTION = 200


@dataclass(frozen=True)
class Moves:
    """What changed: markets to add to / remove from each connection (by index)."""

    added: dict[int, tuple[str, ...]] = field(default_factory=dict)
    removed: dict[int, tuple[str, ...]] = field(default_factory=dict)
    unplaced: tuple[str, ...] = ()  # no room anywhere (max_connections reached)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.unplaced)


class Placement:
    """Connection 0 always exists (it also carries the lifecycle channel). Markets refused
    with error 26 lower the cap of every connection from then on."""

    def __init__(self, cap: int = DEFAULT_MARKETS_PER_CONNECTION, max_connections: int = 64):
        if cap < 1 or max_connections < 1:
            raise ValueError(f"cap and max_connections must be >= 1, got {cap}, {max_connections}")
        self.cap = cap
        self.max_connections = max_connections
        self._markets: list[dict[str, None]] = [{}]
        self._caps: list[int] = [cap]
        self._where: dict[str, int] = {}

    @property
    def connection_count(self) -> int:
        return len(self._markets)

    def markets_of(self, index: int) -> tuple[str, ...]:
        return tuple(self._markets[index])

    def connection_of(self, market: str) -> int | None:
        return self._where.get(market)

    def __contains__(self, market: object) -> bool:
        return market in self._where

    def __len__(self) -> int:
        return len(self._where)

    def load(self) -> list[int]:
        return [len(markets) for markets in self._markets]

    def place(self, markets: Iterable[str], *, avoid: int | None = None) -> Moves:
        """Put every market not yet placed on the least-loaded connection with room (ties go to
        the lowest index), opening connections as needed; `avoid` is skipped (it refused them)."""
        new = [market for market in dict.fromkeys(markets) if market not in self._where]
        if not new:
            return Moves()
        room = sum(max(0, cap - len(m)) for i, (cap, m) in enumerate(self._pairs()) if i != avoid)
        while room < len(new) and len(self._markets) < self.max_connections:
            self._markets.append({})
            self._caps.append(self.cap)
            room += self.cap
        added: dict[int, list[str]] = {}
        unplaced: list[str] = []
        for market in new:
            index = self._least_loaded(avoid)
            if index is None:
                unplaced.append(market)
                continue
            self._markets[index][market] = None
            self._where[market] = index
            added.setdefault(index, []).append(market)
        return Moves(
            added={i: tuple(m) for i, m in sorted(added.items())}, unplaced=tuple(unplaced)
        )

    def remove(self, markets: Iterable[str]) -> Moves:
        """Take markets off their connections; unknown markets are ignored."""
        removed: dict[int, list[str]] = {}
        for market in dict.fromkeys(markets):
            index = self._where.pop(market, None)
            if index is None:
                continue
            del self._markets[index][market]
            removed.setdefault(index, []).append(market)
        return Moves(removed={i: tuple(m) for i, m in sorted(removed.items())})

    def refused(self, index: int, markets: Iterable[str]) -> Moves:
        """Connection `index` was refused `markets` (error 26): the exchange's cap is lower
        than ours. It is at least what the connection still holds (the exchange accepted that),
        or, when it holds nothing (a whole subscribe refused), taken as half the refused batch.
        The lower cap applies to every connection; the refused markets are placed again, on
        other connections (answers to the same batch on its other channels are still coming)."""
        refused = [m for m in dict.fromkeys(markets) if self._where.get(m) == index]
        if not refused:
            return Moves()
        for market in refused:
            del self._where[market]
            del self._markets[index][market]
        held = len(self._markets[index])
        self.cap = min(self.cap, held if held > 0 else max(1, len(refused) // 2))
        self._caps = [min(cap, self.cap) for cap in self._caps]
        return self.place(refused, avoid=index)

    def _pairs(self) -> list[tuple[int, dict[str, None]]]:
        return list(zip(self._caps, self._markets, strict=True))

    def _least_loaded(self, avoid: int | None) -> int | None:
        best: int | None = None
        for index, (cap, markets) in enumerate(self._pairs()):
            if index == avoid or len(markets) >= cap:
                continue
            if best is None or len(markets) < len(self._markets[best]):
                best = index
        return best
