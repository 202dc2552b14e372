"""Bench results: what one run measured, the whole report, and its two renderings (a table
for the terminal, JSON for files and tools). Pure: no processes, no clocks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from ssmd.bench.measure import LatencyFigures, WindowFigures

KB_PER_MB = 1024


class Pipeline(enum.Enum):
    """Who moved the frames: ssmd itself or one of the two reference pipelines."""

    SSMD = "ssmd"
    SSMD_PICOWS = "ssmd-picows"  # ssmd with exchange.client: picows (the extra ssmd[fast])
    CEILING = "ceiling"  # websockets → msgspec → hand-pipelined JetStream, no normalization
    NAIVE = "naive"  # json.loads → pydantic → one awaited js.publish per record


class Sink(enum.Enum):
    JETSTREAM = "jetstream"
    FILE = "file"


class RunPurpose(enum.Enum):
    THROUGHPUT = "throughput"  # flat out (--rate 0)
    LATENCY = "latency"  # a fixed offered rate, with a measuring consumer
    MEMORY = "memory"  # many markets, for peak RSS


@dataclass(frozen=True)
class RunResult:
    """One pipeline process, one sink, one simulator, one measured window."""

    pipeline: Pipeline
    sink: Sink
    purpose: RunPurpose
    markets: int
    offered_frames_per_s: int | None  # None: as fast as the pipeline takes frames
    window: WindowFigures | None = None
    peak_rss_kb: int | None = None
    latency: LatencyFigures | None = None
    error: str | None = None  # why the run produced no figures

    @property
    def peak_rss_mb(self) -> float | None:
        return None if self.peak_rss_kb is None else self.peak_rss_kb / KB_PER_MB


@dataclass
class BenchReport:
    mode: str  # "quick" or "full"
    started_utc: str
    machine: dict[str, str | int]
    settings: dict[str, float | int | str]
    runs: list[RunResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def find(
        self,
        pipeline: Pipeline,
        sink: Sink,
        purpose: RunPurpose,
        *,
        markets: int | None = None,
        offered: int | None = None,
    ) -> RunResult | None:
        for run in self.runs:
            if (run.pipeline, run.sink, run.purpose) != (pipeline, sink, purpose):
                continue
            if markets is not None and run.markets != markets:
                continue
            if offered is not None and run.offered_frames_per_s != offered:
                continue
            return run
        return None

    def ratios(self) -> dict[str, float | None]:
        """ssmd / reference for throughput per sink and for CPU-bound capacity (1/µs per frame)."""
        out: dict[str, float | None] = {}
        for sink in Sink:
            ours = self.find(Pipeline.SSMD, sink, RunPurpose.THROUGHPUT)
            for ref in (Pipeline.CEILING, Pipeline.NAIVE):
                theirs = self.find(ref, sink, RunPurpose.THROUGHPUT)
                key = f"ssmd/{ref.value} {sink.value}"
                out[f"{key} frames/s"] = _ratio(_fps(ours), _fps(theirs))
                # CPU-bound capacity ratio = their µs per frame / ours.
                out[f"{key} cpu-bound"] = _ratio(_us(theirs), _us(ours))
        picows = self.find(Pipeline.SSMD_PICOWS, Sink.JETSTREAM, RunPurpose.THROUGHPUT)
        if picows is not None:  # the optional client against the default one
            ours = self.find(Pipeline.SSMD, Sink.JETSTREAM, RunPurpose.THROUGHPUT)
            out["ssmd-picows/ssmd jetstream frames/s"] = _ratio(_fps(picows), _fps(ours))
            out["ssmd-picows/ssmd jetstream cpu-bound"] = _ratio(_us(ours), _us(picows))
        return out


def _fps(run: RunResult | None) -> float | None:
    return None if run is None or run.window is None else run.window.frames_per_s


def _us(run: RunResult | None) -> float | None:
    return None if run is None or run.window is None else run.window.cpu_us_per_frame


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _table(headers: list[str], rows: Iterable[list[str]]) -> list[str]:
    """A Markdown table (readable as plain text, pasteable into the README)."""
    body = list(rows)
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)
    ]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in body:
        cells = [
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_table(report: BenchReport) -> str:
    """The human-readable report: throughput, latency, memory, ratios, notes."""
    lines = [
        f"ssmd bench ({report.mode}) {report.started_utc}"
        f" | {report.machine.get('cpus', '?')} CPUs | Python {report.machine.get('python', '?')}"
        f" | load {report.machine.get('loadavg_1m_at_start', '?')}"
        f" → {report.machine.get('loadavg_1m_at_end', '?')}",
        "",
        "Sustained throughput, flat out (simulator --rate 0), "
        f"{report.settings.get('markets', '?')} markets:",
        "",
    ]
    throughput = [r for r in report.runs if r.purpose is RunPurpose.THROUGHPUT]
    lines += _table(
        [
            "pipeline",
            "sink",
            "frames/s",
            "CPU µs/frame",
            "CPU-bound frames/s",
            "CPU cores",
            "peak RSS MB",
        ],
        (
            [
                r.pipeline.value,
                r.sink.value,
                _num(_fps(r)),
                _num(_us(r), 1),
                _num(1_000_000 / us if (us := _us(r)) else None),
                _num(r.window.cpu_utilisation if r.window else None, 2),
                _num(r.peak_rss_mb, 1),
            ]
            if r.error is None
            else [r.pipeline.value, r.sink.value, f"failed: {r.error}", "", "", "", ""]
            for r in throughput
        ),
    )
    latency = [r for r in report.runs if r.purpose is RunPurpose.LATENCY]
    if latency:
        lines += ["", "Frame receive → seen by a JetStream consumer (ms), fixed offered rates:", ""]
        lines += _table(
            [
                "pipeline",
                "offered frames/s",
                "achieved frames/s",
                "p50",
                "p99",
                "p99.9",
                "max",
                "samples",
            ],
            (
                [
                    r.pipeline.value,
                    _num(r.offered_frames_per_s),
                    _num(_fps(r)),
                    *_latency_cells(r.latency),
                ]
                if r.error is None
                else [
                    r.pipeline.value,
                    _num(r.offered_frames_per_s),
                    f"failed: {r.error}",
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
                for r in latency
            ),
        )
    memory = [
        r
        for r in report.runs
        if r.pipeline is Pipeline.SSMD
        and r.sink is Sink.JETSTREAM
        and r.purpose is not RunPurpose.LATENCY
    ]
    if memory:
        lines += [
            "",
            "ssmd peak RSS (VmHWM) with every market subscribed and its book maintained:",
            "",
        ]
        lines += _table(
            ["markets", "peak RSS MB", "frames/s during the run"],
            ([_num(r.markets), _num(r.peak_rss_mb, 1), _num(_fps(r))] for r in memory),
        )
    ratios = report.ratios()
    lines += ["", "Ratios (>1 means ssmd is ahead):", ""]
    lines += _table(["ratio", "value"], ([name, _num(value, 2)] for name, value in ratios.items()))
    if report.notes:
        lines += ["", "Notes:"] + [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def _latency_cells(figures: LatencyFigures | None) -> list[str]:
    if figures is None:
        return ["-", "-", "-", "-", "0"]
    ms = 1_000.0
    return [
        _num(figures.p50_us / ms, 2),
        _num(figures.p99_us / ms, 2),
        _num(figures.p999_us / ms, 2),
        _num(figures.max_us / ms, 2),
        _num(figures.samples),
    ]


def render_json(report: BenchReport) -> bytes:
    """The whole report as indented JSON, with the ratios and derived figures included."""
    document = {
        "mode": report.mode,
        "started_utc": report.started_utc,
        "machine": report.machine,
        "settings": report.settings,
        "runs": [
            {
                **msgspec.to_builtins(run),
                "peak_rss_mb": run.peak_rss_mb,
                "cpu_bound_frames_per_s": (1_000_000 / us if (us := _us(run)) else None),
            }
            for run in report.runs
        ],
        "ratios": report.ratios(),
        "notes": report.notes,
    }
    return msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"
