"""Derived top-of-book records (ssmd.records.Top) from the local books of ssmd.book: the exact
arithmetic (`top_of_book`, `american_odds_e2`) and `TopTracker`, which decides when a market's
top is published. Pure: no asyncio, and the only clock is the time the caller passes in.

Prices are 1/10,000 $ (`*_e4`), sizes 1/100 contract (`*_e2`); books hold bids only, NO bids in
NO-leg price, so YES ask = $1 - best NO bid and NO ask = $1 - best YES bid (PROTOCOL.md §7.1.1,
§7.1.4). Every derived value is an exact integer; see ssmd.records.Top for the field contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ssmd.book import BookRecord, BookState, OrderBook
from ssmd.fixedpoint import ONE_DOLLAR_E4, price_in_domain
from ssmd.records import Flag, Level, LiquidityTier, Top, TopTrigger

if TYPE_CHECKING:  # the config package imports the session, which imports this module
    from ssmd.config.top import TopSettings

HALF_DOLLAR_E4 = ONE_DOLLAR_E4 // 2
EVEN_ODDS_E2 = 10_000  # +100.00: American odds of a price of exactly $0.50
MID_E5_PER_E4_SUM = 5  # (bid_e4 + ask_e4) / 2 in 1/10,000 $ == (bid_e4 + ask_e4) * 5 in 1/100,000 $
# Flags of the triggering book record that say something about the top too.
_CARRIED_FLAGS = (Flag.AFTER_RESYNC,)


def american_odds_e2(price_e4: int) -> int | None:
    """American odds, in hundredths, of buying at `price_e4` (a $1 payout at p = price/$1).

    p < 0.5: +100(1-p)/p; p > 0.5: -100p/(1-p); p = 0.5: +100 (i.e. 10,000). Rounded down,
    toward -infinity, so the quoted odds never promise more than the price pays: +x.xx49 ->
    +x.xx, -y.yy01 -> -y.yy-0.01. None outside (0, 1), where odds are undefined (p = 0: nothing
    to risk; p = 1: nothing to win) or the price is not a price. 0.0001 -> +999,900.00
    (99,990,000), 0.9999 -> -999,900.00.
    """
    if price_e4 <= 0 or price_e4 >= ONE_DOLLAR_E4:
        return None
    if price_e4 == HALF_DOLLAR_E4:
        return EVEN_ODDS_E2
    rest_e4 = ONE_DOLLAR_E4 - price_e4
    if price_e4 < HALF_DOLLAR_E4:
        return (EVEN_ODDS_E2 * rest_e4) // price_e4
    return (-EVEN_ODDS_E2 * price_e4) // rest_e4  # Python's // floors: toward -infinity


def liquidity_tier(depth_e2: int, settings: TopSettings) -> LiquidityTier:
    """The tier of `depth_e2` resting near a price: NONE at 0, THIN below moderate, MODERATE
    from moderate_min_contracts, DEEP from deep_min_contracts (both bounds inclusive)."""
    if depth_e2 <= 0:
        return LiquidityTier.NONE
    if depth_e2 < settings.moderate_min_e2:
        return LiquidityTier.THIN
    if depth_e2 < settings.deep_min_e2:
        return LiquidityTier.MODERATE
    return LiquidityTier.DEEP


def depth_near_best_e2(bids: Mapping[int, int], window_e4: int) -> int:
    """Total size of the bids priced within `window_e4` of the best one (inclusive); 0 when
    there is none. The size of a side's bids near its best is the size buyable near the other
    side's ask: NO bids within w of the best NO bid are YES asks within w of the YES ask."""
    if not bids:
        return 0
    floor_e4 = max(bids) - window_e4
    return sum(size_e2 for price_e4, size_e2 in bids.items() if price_e4 >= floor_e4)


def _complement(level: Level | None) -> int | None:
    return None if level is None else ONE_DOLLAR_E4 - level.price_e4


def top_of_book(
    book: OrderBook,
    market: str,
    receive_ts_ns: int,
    settings: TopSettings,
    *,
    trigger: TopTrigger = TopTrigger.BOTH,
    exchange_ts_ns: int | None = None,
    sid: int | None = None,
    seq: int | None = None,
    flags: tuple[Flag, ...] = (),
) -> Top:
    """The `top` record of `book` as it stands (whatever its state: TopTracker only asks a LIVE
    book). `flags` are added to the record's own: PRICE_OUT_OF_RANGE when a best price lies
    outside [$0, $1] (the book stores prices as received; normalize flagged the record)."""
    if market != book.market:
        raise ValueError(f"top of {market!r} asked of the book of {book.market!r}")
    yes_bid = book.best_yes_bid()
    no_bid = book.best_no_bid()
    yes_bid_e4 = None if yes_bid is None else yes_bid.price_e4
    no_bid_e4 = None if no_bid is None else no_bid.price_e4
    yes_ask_e4 = _complement(no_bid)
    no_ask_e4 = _complement(yes_bid)
    mid_e5: int | None = None
    spread_e4: int | None = None
    if yes_bid_e4 is not None and yes_ask_e4 is not None:
        mid_e5 = (yes_bid_e4 + yes_ask_e4) * MID_E5_PER_E4_SUM
        spread_e4 = yes_ask_e4 - yes_bid_e4
    out_of_range = any(
        price_e4 is not None and not price_in_domain(price_e4)
        for price_e4 in (yes_bid_e4, no_bid_e4)
    )
    own_flags = (Flag.PRICE_OUT_OF_RANGE,) if out_of_range else ()
    yes_ask_depth_e2 = depth_near_best_e2(book.no_bids, settings.depth_window_e4)
    no_ask_depth_e2 = depth_near_best_e2(book.yes_bids, settings.depth_window_e4)
    return Top(
        market=market,
        exchange_ts_ns=exchange_ts_ns,
        receive_ts_ns=receive_ts_ns,
        sid=sid,
        seq=seq,
        flags=(*flags, *(flag for flag in own_flags if flag not in flags)),
        trigger=trigger,
        yes_bid_e4=yes_bid_e4,
        yes_bid_size_e2=None if yes_bid is None else yes_bid.size_e2,
        yes_ask_e4=yes_ask_e4,
        yes_ask_size_e2=None if no_bid is None else no_bid.size_e2,
        no_bid_e4=no_bid_e4,
        no_ask_e4=no_ask_e4,
        mid_e5=mid_e5,
        spread_e4=spread_e4,
        yes_implied_prob_e4=yes_ask_e4,
        no_implied_prob_e4=no_ask_e4,
        yes_american_odds_e2=None if yes_ask_e4 is None else american_odds_e2(yes_ask_e4),
        no_american_odds_e2=None if no_ask_e4 is None else american_odds_e2(no_ask_e4),
        yes_ask_depth_e2=yes_ask_depth_e2,
        no_ask_depth_e2=no_ask_depth_e2,
        yes_liquidity=liquidity_tier(yes_ask_depth_e2, settings),
        no_liquidity=liquidity_tier(no_ask_depth_e2, settings),
    )


@dataclass(slots=True)
class _Published:
    """What a market's last top was built from, and when it went out."""

    yes_bid: Level | None
    no_bid: Level | None
    published_ns: int


@dataclass(slots=True)
class _Pending:
    """A best-level change held back by the minimum interval, due at `due_ns`."""

    book: OrderBook
    record: BookRecord  # the last book record applied since: the top is the book after it
    due_ns: int


def _trigger(last: _Published, yes_bid: Level | None, no_bid: Level | None) -> TopTrigger | None:
    bid_changed = yes_bid != last.yes_bid
    ask_changed = no_bid != last.no_bid
    if bid_changed and ask_changed:
        return TopTrigger.BOTH
    if bid_changed:
        return TopTrigger.BID
    return TopTrigger.ASK if ask_changed else None


class TopTracker:
    """Decides when each market's `top` is published, from its book after every book record.

    Call `receive_book(book, record)` after applying each BookSnapshot/BookDelta to `book`
    (whatever the ApplyResult). A top is returned when the best YES bid or best NO bid (price
    or size) differs from the market's last published top and at least
    `settings.min_interval_ms` has passed since that top, on the records' receive_ts_ns clock.
    A market's first top (once its book is LIVE) goes out at once, even for an empty book.

    A change inside the interval is not lost: it is held, and published by the first
    `receive_book` for that market at or after the interval's end, or by `flush_due(now_ns)`
    (a driver timer; `next_due_ns()` says when to call it), whichever comes first. Changes
    coalesce: the top then shows the book as it is, and if it is back to the published best
    levels nothing is published. `trigger` compares with the last published top.

    Books that are not LIVE (awaiting a snapshot, or invalid after a gap, §4.3) publish nothing
    and drop any held change; the next snapshot makes the book LIVE and is compared with the
    last published top as usual.

    A top carries the receive_ts_ns, sid, seq and exchange_ts_ns of the book record it shows
    the book after (for a flushed top, the last record applied before the flush), so at most
    one top follows any book record, and a replay of the same records, flushed at the same
    times (e.g. at each record's receive_ts_ns), gives the same tops.
    """

    def __init__(self, settings: TopSettings) -> None:
        self.settings = settings
        self._interval_ns = settings.min_interval_ns
        self._published: dict[str, _Published] = {}
        self._pending: dict[str, _Pending] = {}

    def __repr__(self) -> str:
        return f"TopTracker({len(self._published)} markets, {len(self._pending)} held)"

    @property
    def held_markets(self) -> frozenset[str]:
        """Markets with a change held back by the minimum interval."""
        return frozenset(self._pending)

    def receive_book(self, book: OrderBook, record: BookRecord) -> Top | None:
        """The top to publish after `record` was applied to `book`, or None."""
        market = book.market
        if record.market != market:
            raise ValueError(f"record for {record.market!r} with the book of {market!r}")
        if book.state is not BookState.LIVE:
            self._pending.pop(market, None)
            return None
        yes_bid = book.best_yes_bid()
        no_bid = book.best_no_bid()
        last = self._published.get(market)
        now_ns = record.receive_ts_ns
        if last is None:
            return self._publish(book, record, TopTrigger.BOTH, yes_bid, no_bid, now_ns)
        trigger = _trigger(last, yes_bid, no_bid)
        if trigger is None:
            self._pending.pop(market, None)
            return None
        due_ns = last.published_ns + self._interval_ns
        if now_ns < due_ns:
            self._pending[market] = _Pending(book, record, due_ns)
            return None
        return self._publish(book, record, trigger, yes_bid, no_bid, now_ns)

    def next_due_ns(self) -> int | None:
        """When the earliest held change becomes due (for a driver timer); None: none held."""
        return min((pending.due_ns for pending in self._pending.values()), default=None)

    def flush_due(self, now_ns: int) -> list[Top]:
        """Publish the held changes due at `now_ns` (the receive_ts_ns clock: epoch ns)."""
        due = [market for market, pending in self._pending.items() if pending.due_ns <= now_ns]
        tops: list[Top] = []
        for market in due:
            pending = self._pending.pop(market)
            book = pending.book
            if book.state is not BookState.LIVE:
                continue
            yes_bid = book.best_yes_bid()
            no_bid = book.best_no_bid()
            trigger = _trigger(self._published[market], yes_bid, no_bid)
            if trigger is not None:
                tops.append(self._publish(book, pending.record, trigger, yes_bid, no_bid, now_ns))
        return tops

    def forget(self, market: str) -> None:
        """Drop a market (its book was discarded): its next top is a first one again."""
        self._published.pop(market, None)
        self._pending.pop(market, None)

    def _publish(
        self,
        book: OrderBook,
        record: BookRecord,
        trigger: TopTrigger,
        yes_bid: Level | None,
        no_bid: Level | None,
        now_ns: int,
    ) -> Top:
        self._pending.pop(book.market, None)
        self._published[book.market] = _Published(yes_bid, no_bid, now_ns)
        return top_of_book(
            book,
            book.market,
            record.receive_ts_ns,
            self.settings,
            trigger=trigger,
            exchange_ts_ns=record.exchange_ts_ns,
            sid=record.sid,
            seq=record.seq,
            flags=tuple(flag for flag in record.flags if flag in _CARRIED_FLAGS),
        )
