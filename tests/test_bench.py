"""The bench harness (ssmd.bench): /proc parsing, window and percentile arithmetic, line
counting, the table and JSON renderings, the reference pipelines' pure parts, the environment
it writes for ssmd, and one tiny end-to-end run with real processes. No timing assertions."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from ssmd.bench.harness import QUICK, Bench, ssmd_environment
from ssmd.bench.measure import (
    LatencyFigures,
    LineCounter,
    ProcReadError,
    Sample,
    latency_figures,
    parse_proc_stat_cpu_ticks,
    parse_proc_status_kb,
    percentile,
    read_cpu_ticks,
    read_peak_rss_kb,
    window_figures,
)
from ssmd.bench.references import naive_record, subscribe_commands
from ssmd.bench.report import (
    BenchReport,
    Pipeline,
    RunPurpose,
    RunResult,
    Sink,
    render_json,
    render_table,
)
from ssmd.config import NatsTransportSettings, load_environment

# A /proc/PID/stat line whose command name holds a space and a ')' (fields counted from the
# last ')'): utime=1234 (field 14), stime=56 (field 15).
STAT = "4242 (python (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 56 0 0 20 0 3 0 100 0 0"


def test_proc_stat_cpu_ticks_are_utime_plus_stime_even_with_odd_command_names() -> None:
    assert parse_proc_stat_cpu_ticks(STAT) == 1234 + 56
    with pytest.raises(ProcReadError):
        parse_proc_stat_cpu_ticks("4242 no parens here")
    assert read_cpu_ticks(os.getpid()) >= 0


def test_proc_status_peak_rss() -> None:
    text = "Name:\tpython\nVmPeak:\t  300000 kB\nVmHWM:\t   70656 kB\nVmRSS:\t   60000 kB\n"
    assert parse_proc_status_kb(text, "VmHWM") == 70656
    assert parse_proc_status_kb(text, "VmRSS") == 60000
    with pytest.raises(ProcReadError):
        parse_proc_status_kb(text, "VmSwap")
    assert read_peak_rss_kb(os.getpid()) > 1000  # this interpreter: more than a megabyte


def test_window_figures_rate_and_cpu_per_frame() -> None:
    figures = window_figures(
        Sample(time_s=10.0, frames=1_000, cpu_ticks=500),
        Sample(time_s=12.0, frames=21_000, cpu_ticks=540),
        ticks_per_s=100,
    )
    assert figures.frames == 20_000
    assert figures.frames_per_s == 10_000
    assert figures.cpu_s == pytest.approx(0.4)
    assert figures.cpu_us_per_frame == pytest.approx(20.0)
    assert figures.cpu_utilisation == pytest.approx(0.2)
    idle = window_figures(Sample(0.0, 5, 0), Sample(1.0, 5, 0), ticks_per_s=100)
    assert idle.cpu_us_per_frame is None
    with pytest.raises(ValueError, match="empty window"):
        window_figures(Sample(1.0, 0, 0), Sample(1.0, 0, 0))


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 1001))
    assert percentile(values, 0.5) == 500
    assert percentile(values, 0.99) == 990
    assert percentile(values, 0.999) == 999
    assert percentile(values, 1.0) == 1000
    assert percentile(values, 0.0) == 1
    assert percentile([7], 0.999) == 7
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match="fraction"):
        percentile(values, 1.5)


def test_latency_figures_in_microseconds_from_unsorted_ns() -> None:
    latencies_ns = [(i % 100 + 1) * 1_000 for i in range(1000)]  # 1..100 µs, ten of each
    figures = latency_figures(latencies_ns)
    assert figures == LatencyFigures(
        samples=1000, p50_us=50.0, p99_us=99.0, p999_us=100.0, max_us=100.0
    )
    assert latency_figures([]) is None


def test_line_counter_counts_whole_lines_incrementally(tmp_path: Path) -> None:
    counter = LineCounter(tmp_path / "records")
    assert counter.count() == 0  # no directory yet
    kind_dir = tmp_path / "records" / "trade"
    kind_dir.mkdir(parents=True)
    part = kind_dir / "trade-1.part"
    part.write_bytes(b'{"a":1}\n{"a":2}\n{"a"')
    (kind_dir / "ignored.txt").write_bytes(b"x\ny\n")
    assert counter.count() == 2
    with part.open("ab") as handle:
        handle.write(b':3}\n{"a":4}\n')
    (kind_dir / "trade-0.jsonl").write_bytes(b"1\n2\n3\n")
    assert counter.count() == 2 + 2 + 3


def _report() -> BenchReport:
    report = BenchReport(
        mode="quick",
        started_utc="2026-01-01T00:00:00Z",
        machine={"cpus": 2, "python": "3.11.7"},
        settings={"markets": 1000},
    )

    def run(pipeline: Pipeline, sink: Sink, fps: int, us: float) -> RunResult:
        window = window_figures(Sample(0.0, 0, 0), Sample(1.0, fps, round(fps * us / 10_000)))
        return RunResult(
            pipeline, sink, RunPurpose.THROUGHPUT, 1000, None, window=window, peak_rss_kb=71_680
        )

    report.runs += [
        run(Pipeline.SSMD, Sink.JETSTREAM, 20_000, 20.0),
        run(Pipeline.CEILING, Sink.JETSTREAM, 25_000, 10.0),
        run(Pipeline.NAIVE, Sink.JETSTREAM, 2_000, 100.0),
        RunResult(
            Pipeline.SSMD,
            Sink.JETSTREAM,
            RunPurpose.LATENCY,
            1000,
            5000,
            window=window_figures(Sample(0.0, 0, 0), Sample(2.0, 10_000, 10)),
            latency=latency_figures([1_000_000, 2_000_000, 4_000_000]),
        ),
        RunResult(Pipeline.NAIVE, Sink.FILE, RunPurpose.THROUGHPUT, 1000, None, error="boom"),
    ]
    report.notes.append("the simulator is the limit")
    return report


def test_ratios_compare_ssmd_with_each_reference() -> None:
    ratios = _report().ratios()
    assert ratios["ssmd/ceiling jetstream frames/s"] == pytest.approx(0.8)
    assert ratios["ssmd/naive jetstream frames/s"] == pytest.approx(10.0)
    assert ratios["ssmd/ceiling jetstream cpu-bound"] == pytest.approx(0.5)
    assert ratios["ssmd/naive jetstream cpu-bound"] == pytest.approx(5.0)
    assert ratios["ssmd/naive file frames/s"] is None  # no ssmd file run, a failed naive one


def test_table_shows_every_figure() -> None:
    table = render_table(_report())
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| ")
    ]
    # pipeline, sink, frames/s, CPU µs/frame, CPU-bound frames/s, CPU cores, peak RSS MB
    assert ["ssmd", "jetstream", "20,000", "20.0", "50,000", "0.40", "70.0"] in rows
    assert ["naive", "file", "failed: boom", "", "", "", ""] in rows
    # pipeline, offered, achieved, p50, p99, p99.9, max (ms), samples
    assert ["ssmd", "5,000", "5,000", "2.00", "4.00", "4.00", "4.00", "3"] in rows
    assert ["1,000", "70.0", "20,000"] in rows  # ssmd's peak RSS table
    assert "ssmd/naive jetstream frames/s" in table
    assert "- the simulator is the limit" in table


def test_json_has_runs_ratios_and_derived_figures() -> None:
    document = json.loads(render_json(_report()))
    assert document["mode"] == "quick"
    first = document["runs"][0]
    assert first["pipeline"] == "ssmd"
    assert first["sink"] == "jetstream"
    assert first["window"]["frames_per_s"] == 20_000
    assert first["cpu_bound_frames_per_s"] == pytest.approx(50_000)
    assert first["peak_rss_mb"] == pytest.approx(70.0)
    assert document["runs"][3]["latency"]["p99_us"] == 4_000.0
    assert document["runs"][4]["error"] == "boom"
    assert document["ratios"]["ssmd/naive jetstream frames/s"] == pytest.approx(10.0)


def test_reference_subscribes_match_ssmds() -> None:
    commands = [json.loads(text) for text in subscribe_commands(["A", "B.1"])]
    assert [c["params"]["channels"] for c in commands] == [
        ["orderbook_delta"],
        ["ticker"],
        ["trade"],
        ["market_lifecycle_v2"],
    ]
    assert [c["id"] for c in commands] == [1, 2, 3, 4]
    assert commands[0]["params"] == {
        "channels": ["orderbook_delta"],
        "market_tickers": ["A", "B.1"],
        "use_yes_price": True,
    }
    assert "market_tickers" not in commands[3]["params"]


def test_naive_record_of_a_delta_and_of_control_frames() -> None:
    frame = {
        "type": "orderbook_delta",
        "sid": 1,
        "seq": 7,
        "msg": {
            "market_ticker": "KXSIM-26NOV21-T0001",
            "price_dollars": "0.1730",
            "delta_fp": "-100.00",
            "side": "no",
        },
    }
    record = naive_record(frame, 123)
    assert record is not None
    assert record.kind == "book_delta"
    assert record.market == "KXSIM-26NOV21-T0001"
    assert str(record.price) == "0.1730"
    assert str(record.size) == "-100.00"
    assert json.loads(record.model_dump_json())["receive_ts_ns"] == 123
    assert naive_record({"type": "subscribed", "id": 1, "msg": {"sid": 1}}, 1) is None


def test_ssmd_environment_is_a_valid_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = ssmd_environment(
        "ws://127.0.0.1:9/trade-api/ws/v2",
        ["KXSIM-26NOV21-T0000"],
        Sink.JETSTREAM,
        "nats://127.0.0.1:4999",
        "bench.r1",
        "BENCH_1",
        tmp_path / "records",
    )
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(document))
    settings = load_environment(str(path))
    assert isinstance(settings.transport, NatsTransportSettings)
    assert settings.transport.subject_prefix == "bench.r1"
    assert settings.transport.stream.name == "BENCH_1"
    assert settings.subscription.markets == ("KXSIM-26NOV21-T0000",) or list(
        settings.subscription.markets
    ) == ["KXSIM-26NOV21-T0000"]
    assert settings.credentials is not None
    assert settings.credentials.private_key_env == "SSMD_BENCH_PRIVATE_KEY"


async def test_tiny_bench_measures_every_pipeline_and_leaves_no_process(tmp_path: Path) -> None:
    settings = replace(
        QUICK,
        markets=20,
        warmup_s=0.2,
        window_s=0.6,
        latency_frames_per_s=(500,),
        sinks=(Sink.JETSTREAM,),
        stop_timeout_s=10.0,
    )
    bench = Bench(settings, tmp_path / "bench", say=lambda line: None)
    report = await bench.run()
    assert bench.children_running == 0
    assert [(r.pipeline, r.purpose) for r in report.runs] == [
        (Pipeline.SSMD, RunPurpose.THROUGHPUT),
        (Pipeline.CEILING, RunPurpose.THROUGHPUT),
        (Pipeline.NAIVE, RunPurpose.THROUGHPUT),
        (Pipeline.SSMD, RunPurpose.LATENCY),
        (Pipeline.CEILING, RunPurpose.LATENCY),
        (Pipeline.NAIVE, RunPurpose.LATENCY),
    ]
    for run in report.runs:
        assert run.error is None, run
        assert run.window is not None
        assert run.window.frames > 0
        assert run.peak_rss_kb is not None
        assert run.peak_rss_kb > 10_000
    for run in report.runs[3:]:
        assert run.latency is not None
        assert run.latency.samples > 0
    assert "ssmd/ceiling jetstream frames/s" in render_table(report)
