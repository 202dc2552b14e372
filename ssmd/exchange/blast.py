"""Blast mode of the simulator (`ssmd exchange --blast N`, a bench device for issue 7): each
connection's frames for N market events are built once and then sent in a loop as fast as the
client reads, rewriting only each frame's seq and the trade ids, so that the simulator is not
the bottleneck of a flat-out bench run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ssmd.exchange.catalog import format_rfc3339_us
from ssmd.exchange.market import BookChange, MarketEvent, MarketGenerator, Trade
from ssmd.exchange.outbound import ClientLink
from ssmd.exchange.protocol import ExchangeChannel, ExchangeConnection, Subscription

BATCH_FRAMES = 100  # frames queued per connection per turn (then the senders run)
SETTLE_S = 0.2  # a connection gets its tape once no command came for this long
_IDLE_S = 0.05  # nothing to send on any connection: look again after this
_DIGITS = frozenset(b"0123456789")
_LIFECYCLE = ExchangeChannel.MARKET_LIFECYCLE_V2
NS_PER_S = 1_000_000_000
_US_PER_S = 1_000_000
_NS_PER_US = 1_000
# The parts of a frame rewritten at send time: the envelope's seq, a trade id's last group
# (the pass number), and the exchange times: integer `ts` (s) and `ts_ms`, RFC3339 `ts`
# (deltas) and `time` (tickers), all with 6 fractional digits as the simulator writes them.
_SLOTS = re.compile(
    rb'"(seq|ts|ts_ms)":\d+|"(ts|time)":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"'
    rb'|"trade_id":"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-)[0-9a-f]{12}"'
)


class Slot(enum.Enum):
    """What fills one `%` slot of a template."""

    SEQ = b'"seq":%d'
    TS_S = b'"ts":%d'
    TS_MS = b'"ts_ms":%d'
    TS_RFC3339 = b'"ts":"%s"'
    TIME_RFC3339 = b'"time":"%s"'
    PASS = b"%012x"


_SLOT_BY_KEY = {
    b"seq": Slot.SEQ,
    b"ts": Slot.TS_S,
    b"ts_ms": Slot.TS_MS,
    b"ts ": Slot.TS_RFC3339,
    b"time ": Slot.TIME_RFC3339,
}


@dataclass(frozen=True)
class Template:
    """One frame with printf slots, in order (its `%` doubled); `sid` None: no subscription."""

    sid: int | None
    text: bytes
    slots: tuple[Slot, ...]


def make_template(frame: bytes, sid: int | None) -> Template:
    """The template of a frame built by ExchangeConnection: its seq, trade id tail and
    exchange times become slots."""
    slots: list[Slot] = []

    def slot(match: re.Match[bytes]) -> bytes:
        if match[3] is not None:  # a trade id: keep its first four groups
            slots.append(Slot.PASS)
            return b'"trade_id":"' + match[3] + Slot.PASS.value + b'"'
        found = _SLOT_BY_KEY[match[1] or match[2] + b" "]
        slots.append(found)
        return found.value

    text = _SLOTS.sub(slot, frame.replace(b"%", b"%%"))
    return Template(sid, text, tuple(slots))


def _inverse(event: BookChange | Trade) -> BookChange | Trade:
    """The event that undoes `event`'s change to the book (the same level, size negated)."""
    change = event if isinstance(event, BookChange) else event.book_change
    undo = dataclasses.replace(change, delta_e2=-change.delta_e2)
    return undo if isinstance(event, BookChange) else dataclasses.replace(event, book_change=undo)


def _subscriptions_key(protocol: ExchangeConnection) -> tuple[tuple[int, int], ...]:
    """What a tape was built for: each sid and how many markets it covers (-1: all)."""
    return tuple(
        (sub.sid, -1 if sub.markets is None else len(sub.markets)) for sub in protocol.subscriptions
    )


class BlastTape:
    """One connection's frames for N events: a forward pass, then its mirror, which undoes the
    forward pass's book changes in reverse order (each delta negated). Every pass therefore
    leaves the client's books (and the generator's, restored after building) where they
    started, and the tape loops with exact books and gap-free seqs. In the mirror, tickers,
    trades, lifecycle frames and snapshots are the forward ones (a snapshot shows the same book
    at its mirrored place); trade ids carry the pass number, so none ever repeats.

    Pure: frames come from the connection's own ExchangeConnection; seqs from its subscriptions
    at render time, so commands answered meanwhile keep every sid gap-free.
    """

    def __init__(self, templates: list[Template], key: tuple[tuple[int, int], ...]) -> None:
        self.templates = templates
        self.key = key
        self.position = 0
        self.passes = 0  # passes started (forward and mirror each count): trade id numbers

    @classmethod
    def build(
        cls, generator: MarketGenerator, protocol: ExchangeConnection, events: int, now_ns: int
    ) -> BlastTape:
        """Draw `events` events for the markets `protocol` subscribed (all: any market) from
        `generator` and build their frames for it; the generator's books and every sid's next
        seq are put back after."""
        next_seqs = [(sub, sub.next_seq) for sub in protocol.subscriptions]
        scoped = [s for s in protocol.subscriptions if s.channel is not _LIFECYCLE]
        covered = [  # None: every market (lifecycle frames go to every connection anyway)
            market
            for market in dict.fromkeys(m for sub in scoped for m in sub.markets or ())
            if generator.is_streaming(market)
        ]
        tickers = None if any(sub.markets is None for sub in scoped) else covered or None
        forward: list[tuple[MarketEvent, list[bytes]]] = []
        for _ in range(events):
            event = generator.next_event(now_ns, tickers)
            forward.append((event, protocol.frames_for_event(event, now_ns)))
        mirror: list[tuple[MarketEvent, list[bytes]]] = []
        for event, frames in reversed(forward):
            if isinstance(event, BookChange | Trade):
                undo = _inverse(event)
                frames = protocol.frames_for_event(undo, now_ns)
                change = undo if isinstance(undo, BookChange) else undo.book_change
                generator.markets[change.market].apply_book_change(change)
            mirror.append((event, frames))
        for sub, next_seq in next_seqs:
            sub.next_seq = next_seq
        templates = [
            make_template(frame, _frame_sid(frame))
            for _, frames in (*forward, *mirror)
            for frame in frames
        ]
        return cls(templates, _subscriptions_key(protocol))

    @property
    def at_loop_start(self) -> bool:
        """Before a forward pass: the client's books are where the tape started them."""
        return self.position == 0

    def frames_to_send(
        self,
        subscriptions: dict[int, Subscription],
        count: int,
        now_ns: int,
        *,
        stop_at_loop_end: bool,
    ) -> list[bytes]:
        """The next `count` frames (fewer at the end of a loop, forward pass and mirror, if
        `stop_at_loop_end`), with the next seqs of `subscriptions` (by sid; frames of other
        sids are skipped) and exchange times from `now_ns` on, 1 µs apart within the second
        (ticker Msg-Ids carry the time: a tape's tickers never repeat one)."""
        templates = self.templates
        half = len(templates) // 2
        second, rest_ns = divmod(now_ns, NS_PER_S)
        first_us = max(0, min(rest_ns // _NS_PER_US, _US_PER_S - count))
        second_text = format_rfc3339_us(second * NS_PER_S)[:-8].encode()  # no ".000000Z"
        out: list[bytes] = []
        while len(out) < count and templates:
            if self.position % half == 0:
                if stop_at_loop_end and out and self.position == 0:
                    break
                self.passes += 1
            template = templates[self.position]
            self.position = (self.position + 1) % len(templates)
            sub = subscriptions.get(template.sid) if template.sid is not None else None
            if template.sid is not None and sub is None:
                continue
            micros = min(first_us + len(out), _US_PER_S - 1)
            args: list[int | bytes] = []
            for slot in template.slots:
                if slot is Slot.SEQ and sub is not None:
                    args.append(sub.next_seq)
                    sub.next_seq += 1
                elif slot is Slot.PASS:
                    args.append(self.passes)
                elif slot is Slot.TS_S:
                    args.append(second)
                elif slot is Slot.TS_MS:
                    args.append(second * 1_000 + micros // 1_000)
                else:  # RFC3339 `ts` or `time`
                    args.append(b"%s.%06dZ" % (second_text, micros))
            out.append(template.text % tuple(args))
        return out


def _frame_sid(frame: bytes) -> int | None:
    at = frame.find(b'"sid":')
    if at < 0:
        return None
    start = end = at + len(b'"sid":')
    while frame[end] in _DIGITS:
        end += 1
    return int(frame[start:end])


class Blaster:
    """The blast loop of one simulator: a tape per connection, built once it has subscribed
    and gone quiet (SETTLE_S without a command), rebuilt at the end of a loop if its
    subscriptions changed; frames go through each connection's outbox (backpressure as usual).
    A subscription added mid-loop gets its frames from the next loop on. Blast trades are not
    in the REST trade log (GET /markets/trades)."""

    def __init__(
        self, generator: MarketGenerator, events: int, clock_ns: Callable[[], int]
    ) -> None:
        self._generator = generator
        self._events = events
        self._clock_ns = clock_ns
        self._tapes: dict[int, BlastTape] = {}
        self._last_command_s: dict[int, float] = {}
        self._passes: dict[int, int] = {}  # per connection, across rebuilt tapes

    def note_command(self, connection_id: int) -> None:
        """A command arrived on the connection (its tape waits until it settles)."""
        self._last_command_s[connection_id] = asyncio.get_running_loop().time()

    def _tape_for(self, client: ClientLink, now_s: float) -> BlastTape | None:
        cid = client.connection_id
        protocol = client.protocol
        tape = self._tapes.get(cid)
        if tape is not None and (
            tape.key == _subscriptions_key(protocol) or not tape.at_loop_start
        ):
            return tape
        if not protocol.subscriptions or now_s - self._last_command_s.get(cid, 0.0) < SETTLE_S:
            return tape
        if tape is not None:
            self._passes[cid] = tape.passes
        tape = BlastTape.build(self._generator, protocol, self._events, self._clock_ns())
        tape.passes = self._passes.get(cid, 0)
        self._tapes[cid] = tape
        return tape

    async def run(self, clients: Callable[[], Iterable[ClientLink]], lock: asyncio.Lock) -> None:
        """Forever: a batch of frames to every connection with a tape, in turn."""
        loop = asyncio.get_running_loop()
        while True:
            sent = False
            async with lock:
                for client in list(clients()):
                    tape = self._tape_for(client, loop.time())
                    if tape is None:
                        continue
                    subscriptions = {sub.sid: sub for sub in client.protocol.subscriptions}
                    frames = tape.frames_to_send(
                        subscriptions, BATCH_FRAMES, self._clock_ns(), stop_at_loop_end=True
                    )
                    if frames:
                        await client.deliver(frames)
                        sent = True
            live = {client.connection_id for client in clients()}
            for cid in [cid for cid in self._tapes if cid not in live]:
                del self._tapes[cid]
            await asyncio.sleep(0 if sent else _IDLE_S)
