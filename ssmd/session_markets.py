"""The market set one connection follows while it runs (PROTOCOL.md §5.1-§5.3, §6.3, §6.6).

Each add/remove call becomes, per market-scoped channel, an `update_subscription` (or a first
`subscribe`, or an `unsubscribe` when nothing is left), tracked by command id until the exchange
confirms or refuses it. Pure: the session hosts it and passes each frame's receive time.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ssmd.book import BookSet
from ssmd.messages import (
    Channel,
    Command,
    Ok,
    Subscribe,
    SubscribeParams,
    Unsubscribe,
    UnsubscribeParams,
    UpdateAction,
    UpdateSubscription,
    UpdateSubscriptionParams,
    encode_command,
)
from ssmd.records import Status, StatusEvent
from ssmd.session_events import (
    MarketsChanged,
    MarketsRejected,
    SessionEvent,
    Subscription,
    SubscriptionState,
)

# §7.0: the channels that take a market filter. market_lifecycle_v2 takes none.
MARKET_CHANNELS = frozenset({Channel.ORDERBOOK_DELTA, Channel.TICKER, Channel.TRADE})
MARKET_LIMIT_EXCEEDED = 26  # §6.6
UNSUPPORTED_ACTION = 13  # §6.6; §12 #26: `trade` may not accept add/delete_markets
# §6.6 18 "Command timeout" and 27 "Too many requests": the command did not run, so it is sent
# again (after the driver's SlowDown delay), at most MAX_RETRIES times, then counts as refused.
RETRY_CODES = frozenset({18, 27})
MAX_RETRIES = 3
_ADD = UpdateAction.ADD_MARKETS
_DELETE = UpdateAction.DELETE_MARKETS


class MarketsHost(Protocol):
    """What market changes need from their session."""

    books: BookSet
    subscriptions: dict[Channel, Subscription]
    use_yes_price: bool

    def next_command_id(self) -> int: ...

    def send(self, command: bytes) -> None: ...

    def emit(self, event: SessionEvent) -> None: ...

    def subscribe(self, channel: Channel) -> Subscription: ...

    def restart_channel(self, channel: Channel, reason: str) -> Subscription: ...

    def discard_books(self, markets: tuple[str, ...], ts_ns: int) -> None: ...

    def status_record(
        self, event: StatusEvent, ts_ns: int, *, markets: tuple[str, ...] = ()
    ) -> Status: ...


class CommandKind(enum.Enum):
    """What one tracked command does for a channel."""

    UPDATE = "update_subscription"  # add_markets / delete_markets on the sid (§5.3)
    ADD_BY_SUBSCRIBE = "subscribe_again"  # §4.2.5 idempotent subscribe: adds, answered by `ok`
    SUBSCRIBE = "subscribe"  # a new sid carrying the whole market set (§5.1)
    UNSUBSCRIBE = "unsubscribe"  # the set emptied, or a refused delete rebuilds the sid (§5.2)


@dataclass
class MarketChange:
    """One add/remove call, until every channel it went to confirmed it."""

    action: UpdateAction
    markets: tuple[str, ...]
    version: int  # the market set's version right after this call
    waiting: set[Channel] = field(default_factory=set)
    announce: bool = True  # MarketsChanged still due (False: refused, or undoing a refusal)


@dataclass
class TrackedCommand:
    """A command sent (or, for SUBSCRIBE, owned by the session) for one channel."""

    kind: CommandKind
    channel: Channel
    subscription: Subscription
    changes: list[MarketChange]
    markets: tuple[str, ...] = ()
    action: UpdateAction = _ADD
    version: int = 0  # SUBSCRIBE: the market set's version the subscribe carried
    command_id: int = 0
    retries: int = 0
    resubscribe: bool = False  # UNSUBSCRIBE: subscribe again once the old sid is gone


class MarketChanges:
    """The markets a connection wants (`wanted`) and every change on its way to the exchange.

    All market-scoped channels carry the same set, so a removal that empties one empties all:
    they are unsubscribed rather than left with an empty list (undocumented, §5.3).
    """

    def __init__(self, host: MarketsHost, markets: Iterable[str], channels: Iterable[Channel]):
        self._host = host
        self.wanted: dict[str, None] = dict.fromkeys(markets)
        self._channels = tuple(c for c in dict.fromkeys(channels) if c in MARKET_CHANNELS)
        self._version = 0
        self._commands: dict[int, TrackedCommand] = {}
        self._unsubscribing: dict[int, TrackedCommand] = {}  # by sid
        self._queued: dict[Channel, list[MarketChange]] = {}  # until the channel has a sid

    def add(self, markets: Iterable[str]) -> None:
        new = tuple(m for m in dict.fromkeys(markets) if m not in self.wanted)
        if new:
            self.wanted.update(dict.fromkeys(new))
            self._change(_ADD, new)

    def remove(self, markets: Iterable[str]) -> None:
        gone = tuple(m for m in dict.fromkeys(markets) if m in self.wanted)
        for market in gone:
            del self.wanted[market]
        if gone:
            self._change(_DELETE, gone)

    def _change(self, action: UpdateAction, markets: tuple[str, ...]) -> None:
        self._version += 1
        change = MarketChange(action, markets, self._version)
        for channel in self._channels:
            self._start(channel, change)

    def _start(self, channel: Channel, change: MarketChange) -> None:
        """Send (or queue) `channel`'s part of `change`; it then waits for that channel."""
        if not change.markets:
            return  # an add whose markets were all refused meanwhile
        sub = self._host.subscriptions.get(channel)
        if sub is not None and (
            sub.state is SubscriptionState.REQUESTED or sub.sid in self._unsubscribing
        ):
            subscribing = self._commands.get(sub.command_id)
            if subscribing is not None and change.version <= subscribing.version:
                subscribing.changes.append(change)  # the subscribe in flight already carries it
            else:
                self._queued.setdefault(channel, []).append(change)
        elif sub is None or sub.sid is None or sub.state is not SubscriptionState.ACTIVE:
            if change.action is _DELETE:
                return  # nothing subscribed on this channel: nothing to remove
            subscribing = self._subscribe(channel)  # every wanted market, this change's too
            if subscribing is None:
                return
            subscribing.changes.append(change)
        elif change.action is _DELETE and not self.wanted:
            self._issue(TrackedCommand(CommandKind.UNSUBSCRIBE, channel, sub, [change]))
        else:
            self._issue(
                TrackedCommand(
                    CommandKind.UPDATE, channel, sub, [change], change.markets, change.action
                )
            )
        change.waiting.add(channel)

    def _issue(self, tracked: TrackedCommand) -> None:
        command_id = self._host.next_command_id()
        tracked.command_id = command_id
        self._commands[command_id] = tracked
        sid = tracked.subscription.sid or 0
        command: Command
        if tracked.kind is CommandKind.UPDATE:
            params = UpdateSubscriptionParams(
                sids=[sid], market_tickers=list(tracked.markets), action=tracked.action
            )
            command = UpdateSubscription(id=command_id, params=params)
        elif tracked.kind is CommandKind.ADD_BY_SUBSCRIBE:
            orderbook = tracked.channel is Channel.ORDERBOOK_DELTA
            subscribe_params = SubscribeParams(
                channels=[tracked.channel.value],
                market_tickers=list(tracked.markets),
                use_yes_price=self._host.use_yes_price if orderbook else None,
            )
            command = Subscribe(id=command_id, params=subscribe_params)
        else:
            self._unsubscribing[sid] = tracked
            command = Unsubscribe(id=command_id, params=UnsubscribeParams(sids=[sid]))
        self._host.send(encode_command(command))

    # -- the session tells us what happened ---------------------------------------------------

    def on_subscribe(self, sub: Subscription) -> None:
        """The session sent a subscribe for a market channel: it carries the whole wanted set,
        so every change still outstanding on that channel waits for its `subscribed` now."""
        tracked = TrackedCommand(
            CommandKind.SUBSCRIBE,
            sub.channel,
            sub,
            [],
            sub.markets,
            version=self._version,
            command_id=sub.command_id,
        )
        for old in [t for t in self._commands.values() if t.channel is sub.channel]:
            del self._commands[old.command_id]
            if old.kind is CommandKind.UNSUBSCRIBE:
                self._unsubscribing.pop(old.subscription.sid or 0, None)
            tracked.changes.extend(old.changes)
        tracked.changes.extend(self._queued.pop(sub.channel, []))
        self._commands[sub.command_id] = tracked

    def on_subscribed(self, sub: Subscription, ts_ns: int) -> None:
        tracked = self._commands.pop(sub.command_id, None)
        if tracked is None:
            return
        for change in tracked.changes:
            self._confirm(change, sub.channel, ts_ns)
        self._flush(sub.channel, ts_ns)

    def on_ok(self, frame: Ok, ts_ns: int) -> None:
        """§6.3: an update (or an idempotent subscribe) ran; the list is the exchange's truth."""
        tracked = self._commands.get(frame.id or 0)
        if tracked is None or tracked.kind not in (
            CommandKind.UPDATE,
            CommandKind.ADD_BY_SUBSCRIBE,
        ):
            return
        del self._commands[tracked.command_id]
        sub = tracked.subscription
        acked = frame.acked_market_tickers
        if acked is not None:
            sub.markets = acked
        elif tracked.action is _ADD:
            sub.markets = (*sub.markets, *(m for m in tracked.markets if m not in sub.markets))
        else:
            sub.markets = tuple(m for m in sub.markets if m not in tracked.markets)
        for change in tracked.changes:
            self._confirm(change, tracked.channel, ts_ns)

    def on_unsubscribed(self, sid: int, ts_ns: int) -> None:
        """A sid we unsubscribed is gone (the session already ended it)."""
        tracked = self._unsubscribing.pop(sid, None)
        if tracked is None:
            return
        self._commands.pop(tracked.command_id, None)
        channel = tracked.channel
        if self._host.subscriptions.get(channel) is tracked.subscription:
            del self._host.subscriptions[channel]
        if channel is Channel.ORDERBOOK_DELTA:
            self._host.discard_books(tracked.subscription.markets, ts_ns)
        if tracked.resubscribe and self.wanted:
            # A refused delete_markets: the new sid carries the set without those markets.
            sub = self._host.restart_channel(channel, "delete_markets refused: resubscribed")
            subscribing = self._commands.get(sub.command_id)
            if subscribing is not None:
                subscribing.changes.extend(tracked.changes)
                return
        for change in tracked.changes:
            self._confirm(change, channel, ts_ns)
        self._flush(channel, ts_ns)

    def on_error(
        self, command_id: int | None, sid: int | None, code: int, message: str, ts_ns: int
    ) -> None:
        """An error naming one of our commands: retry it, fall back, or give up. The session
        passes every error but a terminal one on a sid (that sid is re-created, and what was
        outstanding on it rides on the new subscribe). A sid-scoped error without an id (as
        captured live, §6.5) answers the oldest update in flight on that sid.
        """
        tracked = self._commands.get(command_id) if command_id is not None else None
        if tracked is None and command_id is None and sid is not None:
            tracked = next(
                (
                    t
                    for t in self._commands.values()
                    if t.subscription.sid == sid
                    and t.kind in (CommandKind.UPDATE, CommandKind.ADD_BY_SUBSCRIBE)
                ),
                None,
            )
        if tracked is None:
            return
        own_subscribe = tracked.kind is CommandKind.SUBSCRIBE and not tracked.changes
        if own_subscribe and code != MARKET_LIMIT_EXCEEDED and code not in RETRY_CODES:
            return  # the session's first subscribe, refused for a reason not about markets
        del self._commands[tracked.command_id]
        if code in RETRY_CODES and tracked.retries < MAX_RETRIES:
            self._retry(tracked, ts_ns)
        elif tracked.kind is CommandKind.UNSUBSCRIBE:
            # e.g. 7 Unknown subscription ID: the sid is gone already, which is what we wanted.
            self.on_unsubscribed(tracked.subscription.sid or 0, ts_ns)
        elif tracked.kind is CommandKind.UPDATE and tracked.action is _DELETE:
            # The markets must go: rebuild the sid without them (unsubscribe, then subscribe).
            tracked.kind, tracked.resubscribe, tracked.retries = CommandKind.UNSUBSCRIBE, True, 0
            self._issue(tracked)
        elif tracked.kind is CommandKind.UPDATE and code == UNSUPPORTED_ACTION:
            # §12 #26: re-subscribing adds markets to the existing sid (§4.2.5).
            tracked.kind, tracked.retries = CommandKind.ADD_BY_SUBSCRIBE, 0
            self._issue(tracked)
        else:
            self._reject(tracked, code, message, ts_ns)

    # -- inside ---------------------------------------------------------------------------------

    def _subscribe(self, channel: Channel) -> TrackedCommand | None:
        """A new subscribe for `channel` with the wanted set (None: nothing is wanted)."""
        sub = self._host.subscribe(channel)
        return self._commands.get(sub.command_id)

    def _retry(self, tracked: TrackedCommand, ts_ns: int) -> None:
        tracked.retries += 1
        if tracked.kind is not CommandKind.SUBSCRIBE:
            self._issue(tracked)
            return
        again = self._subscribe(tracked.channel)  # a new command id, the current set
        if again is not None:
            again.changes.extend(tracked.changes)
            again.retries = tracked.retries
            return
        for change in tracked.changes:  # nothing is wanted any more: nothing to carry
            self._not_carried(change, tracked.channel, ts_ns)

    def _reject(self, tracked: TrackedCommand, code: int, message: str, ts_ns: int) -> None:
        """The markets were not added on this channel: forget them on every channel, so the
        driver can place them elsewhere."""
        channel = tracked.channel
        refused = tracked.markets
        if tracked.kind is CommandKind.SUBSCRIBE:
            if self._host.subscriptions.get(channel) is tracked.subscription:
                del self._host.subscriptions[channel]
            # The markets it was sent for; the whole set if none (a first subscribe, or one
            # that only carried removals: the channel cannot carry the set).
            adds = (m for c in tracked.changes if c.action is _ADD for m in c.markets)
            refused = tuple(dict.fromkeys(adds)) or tracked.subscription.markets
        forgotten = tuple(m for m in refused if m in self.wanted)
        for market in forgotten:
            del self.wanted[market]
        for change in tracked.changes:
            self._not_carried(change, channel, ts_ns)
        if forgotten:
            self._host.emit(
                MarketsRejected(
                    channel=channel,
                    markets=forgotten,
                    code=code,
                    message=message,
                    command_id=tracked.command_id,
                )
            )
            self._forget(channel, forgotten)
        if tracked.kind is CommandKind.SUBSCRIBE:
            self._flush(channel, ts_ns)  # what waited for that sid: subscribe anew, or drop

    def _forget(self, refusing: Channel, forgotten: tuple[str, ...]) -> None:
        """Take refused markets off every channel that has (or may get) them; later adds of
        them still on their way neither add nor announce them."""
        gone = set(forgotten)
        changes = [c for t in self._commands.values() for c in t.changes]
        changes += [c for t in self._unsubscribing.values() for c in t.changes]
        changes += [c for queued in self._queued.values() for c in queued]
        for change in changes:
            if change.action is _ADD and gone.intersection(change.markets):
                change.markets = tuple(m for m in change.markets if m not in gone)
                change.announce = change.announce and bool(change.markets)
        self._version += 1
        undo = MarketChange(_DELETE, forgotten, self._version, announce=False)
        for channel in self._channels:
            if channel is not refusing or not self.wanted or self._may_add(channel, gone):
                self._start(channel, undo)

    def _may_add(self, channel: Channel, markets: set[str]) -> bool:
        """Whether a command in flight on `channel` may still add any of `markets`."""
        for tracked in self._commands.values():
            if tracked.channel is not channel:
                continue
            if tracked.kind is CommandKind.SUBSCRIBE:
                if markets.intersection(tracked.subscription.markets):
                    return True
            elif tracked.action is _ADD and markets.intersection(tracked.markets):
                return True
        return False

    def _not_carried(self, change: MarketChange, channel: Channel, ts_ns: int) -> None:
        """`channel` will not carry `change`: an add is then never announced; a removal is
        (the channel does not have those markets either)."""
        change.announce = change.announce and change.action is _DELETE
        change.waiting.discard(channel)
        self._complete_if_done(change, ts_ns)

    def _confirm(self, change: MarketChange, channel: Channel, ts_ns: int) -> None:
        if channel is Channel.ORDERBOOK_DELTA and change.action is _DELETE:
            self._host.discard_books(change.markets, ts_ns)
        change.waiting.discard(channel)
        self._complete_if_done(change, ts_ns)

    def _flush(self, channel: Channel, ts_ns: int) -> None:
        """The channel has a sid again (or none at all): send what waited for it, in order."""
        for change in self._queued.pop(channel, []):
            change.waiting.discard(channel)
            self._start(channel, change)
            self._complete_if_done(change, ts_ns)

    def _complete_if_done(self, change: MarketChange, ts_ns: int) -> None:
        if change.waiting or not change.announce:
            return
        change.announce = False  # once per call
        added = change.action is _ADD
        event = StatusEvent.MARKETS_ADDED if added else StatusEvent.MARKETS_REMOVED
        status = self._host.status_record(event, ts_ns, markets=change.markets)
        self._host.emit(
            MarketsChanged(
                added=change.markets if added else (),
                removed=() if added else change.markets,
                status=status,
            )
        )
