"""The in-process micro-bench (issue 7): decode, normalize and the session's seq and book work in
CPU µs per frame, on a fixed seeded list of frames built by the simulator's own protocol code.

`python -m ssmd.bench.micro` prints it alone (quick to iterate on while profiling).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ssmd.bench.measure import MicroFigures, StageFigures, TypeFigures
from ssmd.bench.report import render_micro
from ssmd.exchange.cli import parse_event_mix
from ssmd.exchange.market import DEFAULT_MIX, EventMix, MarketGenerator
from ssmd.exchange.protocol import ExchangeConnection
from ssmd.messages import Channel, FrameDecoder
from ssmd.normalize import NORMALIZER_BY_FRAME_TYPE
from ssmd.session import KalshiSession

NS_PER_US = 1_000
_START_NS = 1_795_219_200_000_000_000  # 2026-11-21T00:00:00Z: a fixed, seeded exchange clock
_TIMER_CALIBRATION_CALLS = 200_000


@dataclass(frozen=True)
class MicroSettings:
    """What to build and how often to time it. `frame_interval_ns` spaces the exchange times
    (33 µs: about 30k frames/s, the flat-out rate of the bench)."""

    frames: int = 200_000
    repetitions: int = 5
    markets: int = 1000
    seed: int = 1
    mix: EventMix = DEFAULT_MIX
    frame_interval_ns: int = 33_000


@dataclass(frozen=True)
class FrameTape:
    """The subscribe replies (acks and snapshots) a session must see first, then the data
    frames to time, with each one's wire type."""

    setup: list[bytes]
    frames: list[bytes]
    types: list[str]
    markets: list[str]


def new_session(markets: Sequence[str]) -> KalshiSession:
    """A session as the bench's ssmd runs it: every channel, every market, use_yes_price."""
    return KalshiSession(
        connection_id="micro", channels=list(Channel), markets=markets, use_yes_price=True
    )


def build_tape(settings: MicroSettings) -> FrameTape:
    """The frames one connection of the simulator sends for `settings.frames` data frames:
    a session's subscribes answered by ExchangeConnection, then events from MarketGenerator."""
    generator = MarketGenerator(settings.markets, settings.seed, mix=settings.mix)
    now_ns = _START_NS
    exchange = ExchangeConnection(generator.markets, clock_ns=lambda: now_ns)
    session = new_session(generator.tickers)
    setup: list[bytes] = []
    for command in session.commands_to_send():
        setup += exchange.receive_command(command)
    frames: list[bytes] = []
    while len(frames) < settings.frames:
        now_ns += settings.frame_interval_ns
        frames += exchange.frames_for_event(generator.next_event(now_ns), now_ns)
    del frames[settings.frames :]
    decode = FrameDecoder().decode
    types = [_type_name(decode(frame)) for frame in frames]
    return FrameTape(setup, frames, types, generator.tickers)


def _type_name(frame: object) -> str:
    tag = type(frame).__struct_config__.tag  # type: ignore[attr-defined]
    assert isinstance(tag, str)
    return tag


def _cpu_ns_per_frame(run: Callable[[], None], frames: int, repetitions: int) -> list[float]:
    """CPU ns per frame of `run()` (which handles `frames` frames), once per repetition."""
    out = []
    for _ in range(repetitions):
        gc.collect()
        started = time.process_time_ns()
        run()
        out.append((time.process_time_ns() - started) / frames)
    return out


def _stage(samples_ns: list[float]) -> StageFigures:
    return StageFigures(
        best_us=min(samples_ns) / NS_PER_US, median_us=statistics.median(samples_ns) / NS_PER_US
    )


def _time_decode(frames: list[bytes], repetitions: int) -> list[float]:
    decode = FrameDecoder().decode

    def run() -> None:
        for frame in frames:
            decode(frame)

    return _cpu_ns_per_frame(run, len(frames), repetitions)


def _time_decode_normalize(frames: list[bytes], repetitions: int) -> list[float]:
    decode = FrameDecoder().decode
    normalizers = NORMALIZER_BY_FRAME_TYPE
    receive_ts_ns = _START_NS

    def run() -> None:
        for data in frames:
            frame = decode(data)
            # NO-side prices in YES-leg price (use_yes_price); ignored by non-book frames.
            normalizers[type(frame)](frame, receive_ts_ns, True)

    return _cpu_ns_per_frame(run, len(frames), repetitions)


def _primed_session(tape: FrameTape) -> KalshiSession:
    """A fresh session that has sent its subscribes and seen their acks and snapshots."""
    session = new_session(tape.markets)
    session.commands_to_send()
    for data in tape.setup:
        session.receive_frame(data, _START_NS)
    session.events_to_handle()
    return session


def _time_session(tape: FrameTape, repetitions: int) -> list[float]:
    """receive_frame over the data frames, a fresh primed session per repetition."""
    out = []
    frames = tape.frames
    for _ in range(repetitions):
        session = _primed_session(tape)
        receive = session.receive_frame
        receive_ts_ns = _START_NS
        gc.collect()
        started = time.process_time_ns()
        for data in frames:
            receive(data, receive_ts_ns)
        out.append((time.process_time_ns() - started) / len(frames))
        if session.stats.records_out != len(frames) + len(tape.setup) - len(Channel):
            raise AssertionError(f"the session dropped frames: {session.stats}")
    return out


def _timer_overhead_ns() -> float:
    """What one perf_counter_ns() pair around nothing costs (subtracted from per-call times)."""
    clock = time.perf_counter_ns
    best = float("inf")
    for _ in range(3):
        total = 0
        for _ in range(_TIMER_CALIBRATION_CALLS):
            started = clock()
            total += clock() - started
        best = min(best, total / _TIMER_CALIBRATION_CALLS)
    return best


def _session_ns_by_type(tape: FrameTape, repetitions: int) -> dict[str, float]:
    """receive_frame per call, summed by wire type (timer overhead subtracted): the median
    over repetitions of each type's mean."""
    clock = time.perf_counter_ns
    overhead_ns = _timer_overhead_ns()
    counts: dict[str, int] = {}
    for type_name in tape.types:
        counts[type_name] = counts.get(type_name, 0) + 1
    samples: dict[str, list[float]] = {type_name: [] for type_name in counts}
    for _ in range(repetitions):
        session = _primed_session(tape)
        receive = session.receive_frame
        totals = dict.fromkeys(counts, 0)
        gc.collect()
        for data, type_name in zip(tape.frames, tape.types, strict=True):
            started = clock()
            receive(data, _START_NS)
            totals[type_name] += clock() - started
        for type_name, total in totals.items():
            samples[type_name].append(total / counts[type_name] - overhead_ns)
    return {type_name: statistics.median(values) for type_name, values in samples.items()}


def run_micro(settings: MicroSettings, *, tape: FrameTape | None = None) -> MicroFigures:
    """Build the tape (unless given) and time decode, decode + normalize and the session."""
    tape = tape or build_tape(settings)
    reps = settings.repetitions
    frames = tape.frames
    by_type_frames: dict[str, list[bytes]] = {}
    for data, type_name in zip(frames, tape.types, strict=True):
        by_type_frames.setdefault(type_name, []).append(data)
    session_by_type = _session_ns_by_type(tape, reps)
    by_type = []
    for type_name, typed in sorted(by_type_frames.items(), key=lambda item: -len(item[1])):
        decode_ns = statistics.median(_time_decode(typed, reps))
        normalize_ns = statistics.median(_time_decode_normalize(typed, reps)) - decode_ns
        by_type.append(
            TypeFigures(
                type_name=type_name,
                frames=len(typed),
                share=len(typed) / len(frames),
                decode_us=decode_ns / NS_PER_US,
                normalize_us=normalize_ns / NS_PER_US,
                session_us=session_by_type[type_name] / NS_PER_US,
            )
        )
    return MicroFigures(
        frames=len(frames),
        repetitions=reps,
        mean_frame_bytes=sum(map(len, frames)) / len(frames),
        decode=_stage(_time_decode(frames, reps)),
        decode_normalize=_stage(_time_decode_normalize(frames, reps)),
        session=_stage(_time_session(tape, reps)),
        by_type=tuple(by_type),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ssmd.bench.micro", description="Decode + normalize CPU µs per frame."
    )
    parser.add_argument("--frames", type=int, default=MicroSettings.frames)
    parser.add_argument("--repetitions", type=int, default=MicroSettings.repetitions)
    parser.add_argument("--markets", type=int, default=MicroSettings.markets)
    parser.add_argument(
        "--mix",
        default=None,
        help="event weights as `ssmd exchange --mix` takes them (default: the bench's mix)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    from ssmd.bench.settings import BENCH_MIX  # settings imports this module

    args = build_parser().parse_args(argv)
    mix = BENCH_MIX if args.mix is None else parse_event_mix(args.mix)
    settings = MicroSettings(
        frames=args.frames, repetitions=args.repetitions, markets=args.markets, mix=mix
    )
    print("\n".join(render_micro(run_micro(settings))), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
