"""The exchange side of one Kalshi WS v2 connection (PROTOCOL.md §4-§7): commands in, frames out.

Pure: no asyncio, no sockets. `ExchangeConnection` owns the sids and per-sid seqs of one client
connection and builds every frame it must be sent, byte for byte, with its own encoder.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from ssmd.exchange.catalog import EventLifecycle, Lifecycle, format_rfc3339_us, lifecycle_msg
from ssmd.exchange.market import (
    BookChange,
    MarketEvent,
    Side,
    SimMarket,
    SnapshotResend,
    TickerChange,
    TickerStats,
    Trade,
)
from ssmd.fixedpoint import ONE_DOLLAR_E4, format_price, format_size

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class ExchangeChannel(enum.Enum):
    """The channels the simulator serves (§7.0); any other name is error 8."""

    ORDERBOOK_DELTA = "orderbook_delta"
    TICKER = "ticker"
    TRADE = "trade"
    MARKET_LIFECYCLE_V2 = "market_lifecycle_v2"


class ErrorCode(enum.Enum):
    """§6.6 codes and their exact texts (6, 16 and 17 are retired and never sent)."""

    UNABLE_TO_PROCESS = (1, "Unable to process message")
    PARAMS_REQUIRED = (2, "Params required")
    CHANNELS_REQUIRED = (3, "Channels required")
    SIDS_REQUIRED = (4, "Subscription IDs required")
    UNKNOWN_COMMAND = (5, "Unknown command")
    UNKNOWN_SID = (7, "Unknown subscription ID")
    UNKNOWN_CHANNEL = (8, "Unknown channel name")
    CHANNEL_ERROR = (10, "Channel error")
    INVALID_PARAMETER = (11, "Invalid parameter")
    EXACTLY_ONE_SID = (12, "Exactly one subscription ID is required")
    UNSUPPORTED_ACTION = (13, "Unsupported action")
    MARKET_TICKER_REQUIRED = (14, "Market Ticker required")
    ACTION_REQUIRED = (15, "Action required")
    BUFFER_OVERFLOW = (25, "Subscription buffer overflow")
    MARKET_LIMIT_EXCEEDED = (26, "Subscription market limit exceeded")

    @property
    def msg(self) -> dict[str, int | str]:
        """The error frame's `msg` object."""
        code, text = self.value
        return {"code": code, "msg": text}


@dataclass
class Subscription:
    """One sid: a channel, its markets (None = every market) and its running seq (§4.1)."""

    sid: int
    channel: ExchangeChannel
    markets: dict[str, None] | None
    use_yes_price: bool = False
    skip_ticker_ack: bool = False
    next_seq: int = 1

    def covers(self, market: str) -> bool:
        return self.markets is None or market in self.markets

    def add_markets(self, markets: list[str] | None) -> list[str]:
        """Merge `markets` in (None = every market); return the newly added ones, in order."""
        if self.markets is None:
            return []
        if markets is None:
            self.markets = None  # widened to every market: no per-market snapshots
            return []
        added = [market for market in markets if market not in self.markets]
        self.markets.update(dict.fromkeys(added))
        return added


class ExchangeConnection:
    """Kalshi's view of one client connection: sids from 1, per-sid seqs from 1 (§3, §4).

    `markets` is the live market state (read for snapshots and initial tickers); `clock_ns`
    stamps tickers sent in reply to a command (`send_initial_snapshot`). Subscribing or adding
    past `max_markets_per_subscription` in one sid: error 26, no change (§6.6, §12 #11).
    """

    def __init__(
        self,
        markets: Mapping[str, SimMarket],
        *,
        clock_ns: Callable[[], int],
        max_markets_per_subscription: int | None = None,
    ) -> None:
        self._markets = markets
        self._clock_ns = clock_ns
        self._max_markets = max_markets_per_subscription
        self._next_sid = 1
        self._by_sid: dict[int, Subscription] = {}
        self._by_channel: dict[ExchangeChannel, Subscription] = {}

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._by_sid.values())  # sids only grow, so this is sid order

    def subscription(self, sid: int) -> Subscription | None:
        return self._by_sid.get(sid)

    # -- commands (§5) ------------------------------------------------------------------------

    def receive_command(self, data: str | bytes) -> list[bytes]:
        """Parse one client command and return the exact frames to send in reply."""
        try:
            command = _decode(data)
        except msgspec.DecodeError:
            return [self._error(None, ErrorCode.UNABLE_TO_PROCESS)]
        if not isinstance(command, dict):
            return [self._error(None, ErrorCode.UNABLE_TO_PROCESS)]
        raw_id = command.get("id", 0)
        if not _is_int(raw_id):
            return [self._error(None, ErrorCode.UNABLE_TO_PROCESS)]
        cmd_id: int | None = raw_id or None  # §4: id 0 means "no id"
        cmd = command.get("cmd")
        if cmd is not None and not isinstance(cmd, str):
            return [self._error(cmd_id, ErrorCode.UNABLE_TO_PROCESS)]
        if cmd == "list_subscriptions":  # §6.4: an `ok` whose `msg` is a list
            listing = [{"channel": sub.channel.value, "sid": sub.sid} for sub in self.subscriptions]
            return [self._frame("ok", cmd_id, None, listing)]
        handler = {
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "update_subscription": self._update_subscription,
        }.get(cmd or "")
        if handler is None:
            return [self._error(cmd_id, ErrorCode.UNKNOWN_COMMAND)]
        if "params" not in command:
            return [self._error(cmd_id, ErrorCode.PARAMS_REQUIRED)]
        params = command["params"]
        if not isinstance(params, dict):
            return [self._error(cmd_id, ErrorCode.UNABLE_TO_PROCESS)]
        return handler(cmd_id, params)

    def _subscribe(self, cmd_id: int | None, params: dict[str, Any]) -> list[bytes]:
        names = params.get("channels")
        if names is None or names == []:
            return [self._error(cmd_id, ErrorCode.CHANNELS_REQUIRED)]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return [self._error(cmd_id, ErrorCode.UNABLE_TO_PROCESS)]
        channels: dict[ExchangeChannel, None] = {}
        for name in names:
            try:
                channels[ExchangeChannel(name)] = None
            except ValueError:
                return [self._error(cmd_id, ErrorCode.UNKNOWN_CHANNEL)]
        markets = _requested_markets(params)
        flag_names = ("use_yes_price", "skip_ticker_ack", "send_initial_snapshot")
        flags = [params.get(name, False) for name in flag_names]
        if isinstance(markets, ErrorCode) or not all(isinstance(f, bool) for f in flags):
            return [self._error(cmd_id, ErrorCode.UNABLE_TO_PROCESS)]
        use_yes_price, skip_ticker_ack, send_initial_snapshot = flags
        if ExchangeChannel.ORDERBOOK_DELTA in channels and markets is None:
            return [self._error(cmd_id, ErrorCode.MARKET_TICKER_REQUIRED)]
        capped = (c for c in channels if c is not ExchangeChannel.MARKET_LIFECYCLE_V2)
        if any(self._over_cap(self._by_channel.get(c), markets) for c in capped):
            return [self._error(cmd_id, ErrorCode.MARKET_LIMIT_EXCEEDED)]
        acks: list[bytes] = []
        data: list[bytes] = []
        for channel in channels:
            # §7.5: lifecycle takes no market filter; ticker/trade without one = every market.
            wanted = None if channel is ExchangeChannel.MARKET_LIFECYCLE_V2 else markets
            sub = self._by_channel.get(channel)
            if sub is None:
                sub = Subscription(
                    sid=self._next_sid,
                    channel=channel,
                    markets=None if wanted is None else dict.fromkeys(wanted),
                    use_yes_price=use_yes_price,
                    skip_ticker_ack=skip_ticker_ack,
                )
                self._next_sid += 1
                self._by_sid[sub.sid] = sub
                self._by_channel[channel] = sub
                ack = {"channel": channel.value, "sid": sub.sid}
                acks.append(self._frame("subscribed", cmd_id, None, ack))  # §6.1: no seq
                added = self._covered(sub)
            else:
                # §4.2.5: idempotent re-subscribe → `ok` (consuming a seq) with the full list;
                # snapshots only for markets that were not already in the subscription.
                added = sub.add_markets(wanted)
                acks.append(self._ok(cmd_id, sub))
            data.extend(self._initial_frames(sub, added, send_initial_snapshot))
        return acks + data  # acks first, then the data they announce

    def _unsubscribe(self, cmd_id: int | None, params: dict[str, Any]) -> list[bytes]:
        sids = params.get("sids")
        if sids is None or sids == []:
            return [self._error(cmd_id, ErrorCode.SIDS_REQUIRED)]
        if not isinstance(sids, list) or not all(_is_int(sid) for sid in sids):
            return [self._error(cmd_id, ErrorCode.UNABLE_TO_PROCESS)]
        frames: list[bytes] = []
        for sid in sids:
            sub = self._by_sid.pop(sid, None)
            if sub is None:
                frames.append(self._error(cmd_id, ErrorCode.UNKNOWN_SID))
                continue
            del self._by_channel[sub.channel]
            # §6.2 current form: id, sid, a seq consumed from the dying subscription, no msg.
            frames.append(self._frame("unsubscribed", cmd_id, sub, None))
        return frames

    def _update_subscription(self, cmd_id: int | None, params: dict[str, Any]) -> list[bytes]:
        sids: list[Any] = []
        if "sid" in params:
            sids.append(params["sid"])
        if "sids" in params:
            if not isinstance(params["sids"], list):
                return [self._error(cmd_id, ErrorCode.UNABLE_TO_PROCESS)]
            sids.extend(params["sids"])
        if not all(_is_int(sid) for sid in sids):
            return [self._error(cmd_id, ErrorCode.UNABLE_TO_PROCESS)]
        if len(set(sids)) != 1:
            return [self._error(cmd_id, ErrorCode.EXACTLY_ONE_SID)]
        action = params.get("action")
        if action is None:
            return [self._error(cmd_id, ErrorCode.ACTION_REQUIRED)]
        if not isinstance(action, str):
            return [self._error(cmd_id, ErrorCode.UNABLE_TO_PROCESS)]
        sub = self._by_sid.get(sids[0])
        if sub is None:
            return [self._error(cmd_id, ErrorCode.UNKNOWN_SID)]
        if action == "get_snapshot":
            return self._get_snapshot(cmd_id, sub, params)
        if (
            action not in ("add_markets", "delete_markets")
            or sub.channel is ExchangeChannel.MARKET_LIFECYCLE_V2
        ):
            return [self._sid_error(sub, ErrorCode.UNSUPPORTED_ACTION)]
        markets = _requested_markets(params)
        send_initial_snapshot = params.get("send_initial_snapshot", False)
        if isinstance(markets, ErrorCode) or not isinstance(send_initial_snapshot, bool):
            return [self._error(cmd_id, ErrorCode.UNABLE_TO_PROCESS)]
        if markets is None:
            return [self._error(cmd_id, ErrorCode.MARKET_TICKER_REQUIRED)]
        if action == "delete_markets":
            remaining = sub.markets if sub.markets is not None else dict.fromkeys(self._markets)
            for market in markets:
                remaining.pop(market, None)
            sub.markets = remaining
            return [self._ok(cmd_id, sub)]
        if self._over_cap(sub, markets):
            return [self._error(cmd_id, ErrorCode.MARKET_LIMIT_EXCEEDED)]
        # §4.2.7: add_markets keeps the sid and its seq running, then snapshots the new ones.
        added = sub.add_markets(markets)
        return [self._ok(cmd_id, sub), *self._initial_frames(sub, added, send_initial_snapshot)]

    def _get_snapshot(
        self, cmd_id: int | None, sub: Subscription, params: dict[str, Any]
    ) -> list[bytes]:
        # §4.3 / captures demo-2026-08-17: only orderbook sids; others get error 13 carrying
        # that sid and its next seq. Only `market_tickers` is accepted (§5.3).
        if sub.channel is not ExchangeChannel.ORDERBOOK_DELTA:
            return [self._sid_error(sub, ErrorCode.UNSUPPORTED_ACTION)]
        tickers = params.get("market_tickers")
        if tickers is None or tickers == []:
            return [self._error(cmd_id, ErrorCode.MARKET_TICKER_REQUIRED)]
        if not isinstance(tickers, list) or not all(isinstance(t, str) for t in tickers):
            return [self._error(cmd_id, ErrorCode.UNABLE_TO_PROCESS)]
        # §4.2.4: snapshots carry the command id and the next seqs; no `ok` is sent.
        return [
            self._snapshot(sub, market, cmd_id)
            for market in dict.fromkeys(tickers)
            if sub.covers(market)
        ]

    # -- market events -------------------------------------------------------------------------

    def frames_for_event(self, event: MarketEvent, now_ns: int) -> list[bytes]:
        """The data frames this connection gets for one market event, stamped with `now_ns`."""
        frames: list[bytes] = []
        for sub in self.subscriptions:
            frames.extend(self._frames_for_sub(sub, event, now_ns))
        return frames

    def _frames_for_sub(self, sub: Subscription, event: MarketEvent, now_ns: int) -> list[bytes]:
        channel = sub.channel
        if isinstance(event, BookChange | Trade):
            if not sub.covers(event.market):
                return []
            if channel is ExchangeChannel.ORDERBOOK_DELTA:
                change = event if isinstance(event, BookChange) else event.book_change
                return [self._delta(sub, change, now_ns)]
            if channel is ExchangeChannel.TRADE and isinstance(event, Trade):
                return [self._trade(sub, event, now_ns)]
            return []
        if isinstance(event, TickerChange):
            if channel is ExchangeChannel.TICKER and sub.covers(event.market):
                return [self._ticker(sub, event.stats, now_ns)]
            return []
        if isinstance(event, SnapshotResend):  # a load-mix device (market.SnapshotResend)
            covered = channel is ExchangeChannel.ORDERBOOK_DELTA and sub.covers(event.market)
            return [self._snapshot(sub, event.market, None)] if covered else []
        if channel is ExchangeChannel.MARKET_LIFECYCLE_V2:
            return [self._lifecycle(sub, event)]
        return []

    # -- exchange-initiated frames (faults, overflow) -------------------------------------------

    def terminate_subscription(self, sid: int | None, code: ErrorCode) -> list[bytes]:
        """A terminal sid-scoped error (10/25, §3, §6.6) on `sid` (None: the lowest active sid),
        consuming its next seq; the subscription is gone. [] when there is no such sid."""
        sub = self._by_sid.get(sid) if sid is not None else next(iter(self._by_sid.values()), None)
        if sub is None:
            return []
        frame = self._sid_error(sub, code)
        del self._by_sid[sub.sid]
        del self._by_channel[sub.channel]
        return [frame]

    def unsolicited_snapshot(self, market: str | None) -> list[bytes]:
        """An `orderbook_snapshot` of `market`'s current book (None: the sid's first market) on
        the orderbook sid, next seq, no `id` (§4.2.8). [] when no orderbook sid covers it."""
        sub = self._by_channel.get(ExchangeChannel.ORDERBOOK_DELTA)
        if sub is not None and market is None:
            market = next(iter(self._covered(sub)), None)
        if sub is None or market is None or not sub.covers(market):
            return []
        return [self._snapshot(sub, market, None)]

    # -- frame builders ------------------------------------------------------------------------

    def _initial_frames(
        self, sub: Subscription, markets: Iterable[str], send_initial_snapshot: bool
    ) -> list[bytes]:
        if sub.channel is ExchangeChannel.ORDERBOOK_DELTA:
            return [self._snapshot(sub, market, None) for market in markets]
        if sub.channel is ExchangeChannel.TICKER and send_initial_snapshot:
            now_ns = self._clock_ns()
            return [
                self._ticker(sub, self._markets[market].ticker_stats(), now_ns)
                for market in markets
                if market in self._markets
            ]
        return []

    def _snapshot(self, sub: Subscription, ticker: str, cmd_id: int | None) -> bytes:
        """§7.1.1: empty sides omitted; an unknown market is ladder-less with market_id ""."""
        market = self._markets.get(ticker)
        market_id = market.market_id if market is not None else ""
        msg: dict[str, Any] = {"market_ticker": ticker, "market_id": market_id}
        for side, key in ((Side.YES, "yes_dollars_fp"), (Side.NO, "no_dollars_fp")):
            # §7.1.4: with use_yes_price NO levels are quoted in YES-leg price; the list stays
            # ascending in NO-leg price, i.e. descending in the quoted price.
            side_levels = market.levels(side) if market is not None else []
            if side_levels:
                msg[key] = [
                    [format_price(self._quoted_price(sub, side, p)), format_size(s)]
                    for p, s in side_levels
                ]
        return self._frame("orderbook_snapshot", cmd_id, sub, msg)

    def _delta(self, sub: Subscription, change: BookChange, now_ns: int) -> bytes:
        market = self._markets[change.market]
        msg = {
            "market_ticker": change.market,
            "market_id": market.market_id,
            "price_dollars": format_price(self._quoted_price(sub, change.side, change.price_e4)),
            "delta_fp": format_size(change.delta_e2),
            "side": change.side.value,
            "ts": format_rfc3339_us(now_ns),
            "ts_ms": now_ns // 1_000_000,
        }
        return self._frame("orderbook_delta", None, sub, msg)

    def _ticker(self, sub: Subscription, stats: TickerStats, now_ns: int) -> bytes:
        msg = {  # §7.2: all 15 current fields, no seq
            "market_id": stats.market_id,
            "market_ticker": stats.market,
            "price_dollars": format_price(stats.last_price_e4),
            "yes_bid_dollars": format_price(stats.yes_bid_e4),
            "yes_ask_dollars": format_price(stats.yes_ask_e4),
            "volume_fp": format_size(stats.volume_e2),
            "open_interest_fp": format_size(stats.open_interest_e2),
            "dollar_volume": stats.dollar_volume,
            "dollar_open_interest": stats.dollar_open_interest,
            "yes_bid_size_fp": format_size(stats.yes_bid_size_e2),
            "yes_ask_size_fp": format_size(stats.yes_ask_size_e2),
            "last_trade_size_fp": format_size(stats.last_trade_size_e2),
            "ts": now_ns // 1_000_000_000,
            "ts_ms": now_ns // 1_000_000,
            "time": format_rfc3339_us(now_ns),
        }
        return _encode({"type": "ticker", "sid": sub.sid, "msg": msg})

    def _trade(self, sub: Subscription, trade: Trade, now_ns: int) -> bytes:
        taker = trade.taker_side.value
        msg = {  # §7.4 current shape; yes + no = 1
            "trade_id": trade.trade_id,
            "market_ticker": trade.market,
            "yes_price_dollars": format_price(trade.yes_price_e4),
            "no_price_dollars": format_price(trade.no_price_e4),
            "count_fp": format_size(trade.size_e2),
            "taker_side": taker,
            "taker_outcome_side": taker,
            "taker_book_side": trade.taker_book_side.value,
            "is_block_trade": False,
            "ts": now_ns // 1_000_000_000,
            "ts_ms": now_ns // 1_000_000,
        }
        return self._frame("trade", None, sub, msg)

    def _lifecycle(self, sub: Subscription, event: Lifecycle | EventLifecycle) -> bytes:
        type_name, msg = lifecycle_msg(event)
        return self._frame(type_name, None, sub, msg)

    def _ok(self, cmd_id: int | None, sub: Subscription) -> bytes:
        """§6.3: `msg.market_tickers` = the full list after the change (none if skip_ticker_ack)."""
        msg: dict[str, Any] = {}
        if not sub.skip_ticker_ack:
            msg["market_tickers"] = list(self._covered(sub))
        return self._frame("ok", cmd_id, sub, msg)

    def _error(self, cmd_id: int | None, code: ErrorCode) -> bytes:
        """A command-scoped §6.5 error: the id, no sid, no seq."""
        return self._frame("error", cmd_id, None, code.msg)

    def _sid_error(self, sub: Subscription, code: ErrorCode) -> bytes:
        """A subscription-scoped error: sid + a consumed seq, no id (as captured live, §6.5)."""
        return self._frame("error", None, sub, code.msg)

    def _frame(
        self, type_name: str, cmd_id: int | None, sub: Subscription | None, msg: object
    ) -> bytes:
        """Envelope in live key order: type, id, sid, seq, msg (§4). A sub adds sid + seq."""
        frame: dict[str, Any] = {"type": type_name}
        if cmd_id is not None:
            frame["id"] = cmd_id
        if sub is not None:
            frame["sid"] = sub.sid
            frame["seq"] = self._take_seq(sub)
        if msg is not None:
            frame["msg"] = msg
        return _encode(frame)

    # -- helpers -------------------------------------------------------------------------------

    def _over_cap(self, sub: Subscription | None, markets: list[str] | None) -> bool:
        """Would `markets` (None: every market, uncapped) push `sub` past the market cap?"""
        if self._max_markets is None or markets is None or (sub and sub.markets is None):
            return False
        listed = set(markets) | (sub.markets.keys() if sub and sub.markets else set())
        return len(listed) > self._max_markets

    def _covered(self, sub: Subscription) -> Iterable[str]:
        return list(self._markets) if sub.markets is None else list(sub.markets)

    def _take_seq(self, sub: Subscription) -> int:
        """§4.2.1: one counter per sid, shared by every market and by sid-scoped acks."""
        seq = sub.next_seq
        sub.next_seq = seq + 1
        return seq

    @staticmethod
    def _quoted_price(sub: Subscription, side: Side, price_e4: int) -> int:
        if side is Side.NO and sub.use_yes_price:
            return ONE_DOLLAR_E4 - price_e4
        return price_e4


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _requested_markets(params: Mapping[str, Any]) -> list[str] | ErrorCode | None:
    """`market_ticker` and/or `market_tickers`, deduplicated in order; None when neither."""
    markets: list[str] = []
    single = params.get("market_ticker")
    if single is not None:
        if not isinstance(single, str):
            return ErrorCode.UNABLE_TO_PROCESS
        markets.append(single)
    many = params.get("market_tickers")
    if many is not None:
        if not isinstance(many, list) or not all(isinstance(m, str) for m in many):
            return ErrorCode.UNABLE_TO_PROCESS
        markets.extend(many)
    return list(dict.fromkeys(markets)) or None
