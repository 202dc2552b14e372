"""Exact local order books built from BookSnapshot/BookDelta records (PROTOCOL.md §7.1).

Pure bookkeeping: no asyncio, no clock, no sequence tracking (gap detection per sid is the
session's job, §4.3; it calls `invalidate`). Prices are 1/10,000 $, sizes 1/100 contract.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Iterator, Mapping

from ssmd.fixedpoint import ONE_DOLLAR_E4
from ssmd.records import BookDelta, BookSnapshot, Level, Side

BookRecord = BookSnapshot | BookDelta


class BookState(enum.Enum):
    """Whether a book can be trusted and can take deltas."""

    AWAITING_SNAPSHOT = "awaiting_snapshot"  # never had a snapshot: deltas cannot apply
    LIVE = "live"  # built from a snapshot plus every delta since
    INVALID = "invalid"  # a gap or an impossible update: untrusted until the next snapshot


class ApplyResult(enum.Enum):
    """What applying one record did. Expected conditions are results, not exceptions."""

    APPLIED = "applied"
    # A delta before any snapshot, or on an INVALID book: refused, book unchanged (§4.3).
    NEEDS_SNAPSHOT = "needs_snapshot"
    # A delta would drive a level below zero (refused: levels unchanged), or a snapshot
    # carried a negative size (stored without that level). Either way the book is now
    # INVALID: the exchange's view and ours disagree and only a snapshot can fix it (§4.3).
    NEGATIVE_LEVEL = "negative_level"


# Enum members as module constants for the delta hot path: `BookState.LIVE` is a metaclass
# attribute lookup (~50 ns on CPython 3.11), a module global is a dict hit.
_LIVE = BookState.LIVE
_INVALID = BookState.INVALID
_APPLIED = ApplyResult.APPLIED
_NEEDS_SNAPSHOT = ApplyResult.NEEDS_SNAPSHOT
_NEGATIVE_LEVEL = ApplyResult.NEGATIVE_LEVEL
_YES = Side.YES


class _Ladder:
    """One side's bids, price_e4 -> size_e2 (sizes always > 0), with a lazily kept best.

    The best price is cached; adding a level only compares with it, and removing the best
    marks it unknown so the next best-price query pays one max() over the side. Kalshi books
    are a few dozen to a few hundred levels, so this beats a sorted structure on the delta
    hot path.
    """

    __slots__ = ("best_e4", "best_known", "sizes_e2")

    def __init__(self, sizes_e2: dict[int, int]) -> None:
        self.sizes_e2 = sizes_e2
        self.best_e4: int | None = None
        self.best_known = False

    def best(self) -> int | None:
        if not self.best_known:
            self.best_e4 = max(self.sizes_e2, default=None)
            self.best_known = True
        return self.best_e4

    def best_level(self) -> Level | None:
        price_e4 = self.best()
        if price_e4 is None:
            return None
        return Level(price_e4, self.sizes_e2[price_e4])

    def depth(self, levels: int) -> tuple[Level, ...]:
        if levels < 0:
            raise ValueError(f"levels must be >= 0, got {levels}")
        sizes = self.sizes_e2
        return tuple(Level(p, sizes[p]) for p in heapq.nlargest(levels, sizes))

    def ascending(self) -> tuple[Level, ...]:
        sizes = self.sizes_e2
        return tuple(Level(p, sizes[p]) for p in sorted(sizes))


def _ladder_from(levels: tuple[Level, ...]) -> tuple[_Ladder, bool]:
    """A side from snapshot levels, and whether any size was negative.

    Levels are keyed by price, the last one wins on a repeated price (§7.1.1: do not rely on
    order, build a map). Levels of size 0 are not levels and are dropped silently; negative
    ones are dropped and reported.
    """
    sizes_e2 = {level.price_e4: level.size_e2 for level in levels}
    smallest_e2 = min(sizes_e2.values(), default=1)
    if smallest_e2 <= 0:
        sizes_e2 = {p: s for p, s in sizes_e2.items() if s > 0}
    return _Ladder(sizes_e2), smallest_e2 < 0


class OrderBook:
    """One market's book: resting bids to buy YES and to buy NO (§7.1.1: only bids are sent).

    `yes_bids` and `no_bids` map price_e4 -> size_e2 (every size > 0) and are read-only for
    callers. NO bids are in NO-leg price, as BookSnapshot/BookDelta records always are
    (§7.1.4), so YES ask = $1 - best NO bid and NO ask = $1 - best YES bid.

    Queries answer from the stored levels whatever the `state`; an INVALID book keeps its last
    levels for inspection, but only a LIVE book is the exchange's book. Prices are stored as
    received: out-of-domain prices are normalize's business (Flag.PRICE_OUT_OF_RANGE).
    """

    __slots__ = ("_no", "_yes", "last_seq", "market", "no_bids", "state", "yes_bids")

    def __init__(self, market: str) -> None:
        self.market = market
        self.state = BookState.AWAITING_SNAPSHOT
        self.last_seq: int | None = None  # seq of the last record applied (None: none had one)
        self._yes = _Ladder({})
        self._no = _Ladder({})
        self.yes_bids: dict[int, int] = self._yes.sizes_e2
        self.no_bids: dict[int, int] = self._no.sizes_e2

    def __repr__(self) -> str:
        return (
            f"OrderBook({self.market!r}, {self.state.name}, yes={len(self.yes_bids)} levels, "
            f"no={len(self.no_bids)} levels, last_seq={self.last_seq})"
        )

    def _check_market(self, market: str) -> None:
        if market != self.market:
            raise ValueError(f"record for {market!r} applied to the book of {self.market!r}")

    def apply_snapshot(self, snapshot: BookSnapshot) -> ApplyResult:
        """Replace the whole book, from any state. Any snapshot, solicited or not, is a full
        replacement (§4.2.8, including a ladder-less one: the book emptied).

        Rule for an impossible snapshot: levels with a negative size are left out, every other
        level is stored, and the book becomes INVALID with result NEGATIVE_LEVEL (we hold what
        the exchange sent but cannot vouch for it). Otherwise the book becomes LIVE.
        """
        self._check_market(snapshot.market)
        self._yes, yes_negative = _ladder_from(snapshot.yes_bids)
        self._no, no_negative = _ladder_from(snapshot.no_bids)
        self.yes_bids = self._yes.sizes_e2
        self.no_bids = self._no.sizes_e2
        self.last_seq = snapshot.seq
        if yes_negative or no_negative:
            self.state = BookState.INVALID
            return ApplyResult.NEGATIVE_LEVEL
        self.state = BookState.LIVE
        return ApplyResult.APPLIED

    def apply_delta(self, delta: BookDelta) -> ApplyResult:
        """Add a signed size change at (side, price) (§7.1.2); a level reaching 0 is removed.

        Refused with the book unchanged: NEEDS_SNAPSHOT unless LIVE; NEGATIVE_LEVEL when the
        level would drop below zero, which also makes the book INVALID (§4.3).
        """
        if self.state is not _LIVE:
            return _NEEDS_SNAPSHOT
        if delta.market != self.market:
            self._check_market(delta.market)
        # The ladder update is inlined (the hottest path of the book): a level reaching 0
        # disappears (§7.1.2); below zero, nothing changes and the book is INVALID.
        ladder = self._yes if delta.side is _YES else self._no
        sizes = ladder.sizes_e2
        price_e4 = delta.price_e4
        size_e2 = sizes.get(price_e4, 0) + delta.delta_e2
        if size_e2 > 0:
            sizes[price_e4] = size_e2
            if ladder.best_known and (ladder.best_e4 is None or price_e4 > ladder.best_e4):
                ladder.best_e4 = price_e4
        elif size_e2 == 0:
            if sizes.pop(price_e4, None) is not None and price_e4 == ladder.best_e4:
                ladder.best_known = False
        else:
            self.state = _INVALID
            return _NEGATIVE_LEVEL
        self.last_seq = delta.seq
        return _APPLIED

    def invalidate(self) -> None:
        """Distrust the book until the next snapshot (a gap on its sid, §4.3). A book that
        never had a snapshot stays AWAITING_SNAPSHOT."""
        if self.state is BookState.LIVE:
            self.state = BookState.INVALID

    def best_yes_bid(self) -> Level | None:
        return self._yes.best_level()

    def best_no_bid(self) -> Level | None:
        return self._no.best_level()

    def best_yes_ask(self) -> Level | None:
        """Implied YES ask: $1 - best NO bid, with that bid's size (§7.1.1)."""
        level = self._no.best_level()
        return None if level is None else Level(ONE_DOLLAR_E4 - level.price_e4, level.size_e2)

    def best_no_ask(self) -> Level | None:
        """Implied NO ask: $1 - best YES bid, with that bid's size."""
        level = self._yes.best_level()
        return None if level is None else Level(ONE_DOLLAR_E4 - level.price_e4, level.size_e2)

    def depth(self, side: Side, levels: int) -> tuple[Level, ...]:
        """The best `levels` bids of `side` (own-leg price), best (highest) first."""
        return (self._yes if side is Side.YES else self._no).depth(levels)

    def is_crossed(self) -> bool:
        """Best YES bid >= implied best YES ask, i.e. YES bid + NO bid >= $1. A live exchange
        book never crosses, so a crossed local book points at a missed update."""
        yes_e4 = self._yes.best()
        no_e4 = self._no.best()
        return yes_e4 is not None and no_e4 is not None and yes_e4 + no_e4 >= ONE_DOLLAR_E4

    def snapshot_levels(self) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """(yes_bids, no_bids) ascending by price, directly comparable with a BookSnapshot's."""
        return self._yes.ascending(), self._no.ascending()


class BookSet(Mapping[str, OrderBook]):
    """The books of many markets, keyed by market ticker; routes book records to them.

    A record for a market not yet held creates its book (AWAITING_SNAPSHOT), so a stray delta
    shows up in `markets_needing_snapshot()`.
    """

    __slots__ = ("_books",)

    def __init__(self) -> None:
        self._books: dict[str, OrderBook] = {}

    def __getitem__(self, market: str) -> OrderBook:
        return self._books[market]

    def __iter__(self) -> Iterator[str]:
        return iter(self._books)

    def __len__(self) -> int:
        return len(self._books)

    def __contains__(self, market: object) -> bool:
        return market in self._books

    def __repr__(self) -> str:
        return f"BookSet({len(self._books)} markets, {len(self.markets_needing_snapshot())} stale)"

    def _book(self, market: str) -> OrderBook:
        book = self._books.get(market)
        if book is None:
            book = self._books[market] = OrderBook(market)
        return book

    def apply(self, record: BookRecord) -> ApplyResult:
        """Apply a BookSnapshot or BookDelta to its market's book. Any other record raises
        TypeError: trades, tickers and the rest are not book state."""
        if isinstance(record, BookDelta):
            return self.apply_delta(record)
        if isinstance(record, BookSnapshot):
            return self._book(record.market).apply_snapshot(record)
        raise TypeError(f"BookSet applies BookSnapshot/BookDelta, not {type(record).__name__}")

    def apply_delta(self, delta: BookDelta) -> ApplyResult:
        """apply() of a BookDelta without the type dispatch (the session's hot path)."""
        book = self._books.get(delta.market)
        if book is None:
            book = self._book(delta.market)
        return book.apply_delta(delta)

    def track(self, markets: Iterable[str]) -> None:
        """Hold a book for each market (AWAITING_SNAPSHOT if new), e.g. right after subscribing."""
        for market in markets:
            self._book(market)

    def discard(self, market: str) -> None:
        """Forget a market's book (unsubscribed); no error if it was not held."""
        self._books.pop(market, None)

    def invalidate(self, markets: Iterable[str]) -> None:
        """Distrust these markets' books until their next snapshot: a gap on an orderbook sid
        invalidates every book on that sid (§4.3). Markets not yet held are tracked."""
        for market in markets:
            self._book(market).invalidate()

    def markets_needing_snapshot(self) -> set[str]:
        """Markets whose book is not LIVE: what a `get_snapshot` should ask for (§4.3)."""
        return {market for market, book in self._books.items() if book.state is not BookState.LIVE}
