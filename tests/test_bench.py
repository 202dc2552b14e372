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

from ssmd.bench.harness import Bench
from ssmd.bench.measure import (
    LatencyFigures,
    LineCounter,
    MicroFigures,
    ProcReadError,
    Sample,
    StageFigures,
    TypeFigures,
    latency_figures,
    parse_proc_stat_cpu_ticks,
    parse_proc_status_kb,
    percentile,
    read_cpu_ticks,
    read_peak_rss_kb,
    window_figures,
)
from ssmd.bench.micro import MicroSettings, build_tape, run_micro
from ssmd.bench.references import naive_record, subscribe_commands
from ssmd.bench.report import (
    BenchReport,
    Pipeline,
    RunPurpose,
    RunResult,
    Sink,
    render_json,
    render_micro,
    render_table,
    targets,
)
from ssmd.bench.settings import BENCH_MIX, QUICK, ssmd_environment
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

    def run(
        pipeline: Pipeline, sink: Sink, fps: int, us: float, sim_us: float | None = None
    ) -> RunResult:
        window = window_figures(Sample(0.0, 0, 0), Sample(1.0, fps, round(fps * us / 10_000)))
        return RunResult(
            pipeline,
            sink,
            RunPurpose.THROUGHPUT,
            1000,
            None,
            window=window,
            peak_rss_kb=71_680,
            simulator_cpu_us_per_frame=sim_us,
        )

    report.runs += [
        run(Pipeline.SSMD, Sink.JETSTREAM, 20_000, 20.0, 6.5),
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


def test_picows_is_compared_with_ssmd_and_each_reference_and_has_its_own_target_rows() -> None:
    report = _report()
    window = window_figures(Sample(0.0, 0, 0), Sample(1.0, 25_000, round(25_000 * 8.0 / 10_000)))
    picows = RunResult(
        Pipeline.SSMD_PICOWS, Sink.JETSTREAM, RunPurpose.THROUGHPUT, 1000, None, window=window
    )
    report.runs.append(picows)
    ratios = report.ratios()
    assert ratios["ssmd-picows/ssmd jetstream frames/s"] == pytest.approx(1.25)
    assert ratios["ssmd-picows/ssmd jetstream cpu-bound"] == pytest.approx(2.5)
    assert ratios["ssmd-picows/ceiling jetstream frames/s"] == pytest.approx(1.0)
    assert ratios["ssmd-picows/ceiling jetstream cpu-bound"] == pytest.approx(1.25)
    assert ratios["ssmd-picows/naive jetstream frames/s"] == pytest.approx(12.5)
    got = {target.target: (target.measured, target.met) for target in targets(report)}
    assert got["ssmd-picows >= 0.9 x the ceiling loop to acked JetStream"] == (
        "1.00 by frames/s, 1.25 by CPU per frame",
        True,
    )
    assert got["ssmd-picows >= 10 x the naive pipeline"] == (
        "12.50 by frames/s, 12.50 by CPU per frame",
        True,
    )
    assert got["ssmd >= 0.9 x the ceiling loop to acked JetStream"][1] is False
    # Without a picows run there are no picows rows (the test above lists every target).
    assert not any(t.target.startswith("ssmd-picows") for t in targets(_report()))


def test_table_shows_every_figure() -> None:
    table = render_table(_report())
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| ")
    ]
    # pipeline, sink, frames/s, CPU µs/frame, CPU-bound frames/s, CPU cores, peak RSS MB,
    # simulator µs/frame
    assert ["ssmd", "jetstream", "20,000", "20.0", "50,000", "0.40", "70.0", "6.5"] in rows
    assert ["ceiling", "jetstream", "25,000", "10.0", "100,000", "0.25", "70.0", "-"] in rows
    assert ["naive", "file", "failed: boom", "", "", "", "", ""] in rows
    # pipeline, offered, achieved, p50, p99, p99.9, max (ms), samples
    assert ["ssmd", "5,000", "5,000", "2.00", "4.00", "4.00", "4.00", "3"] in rows
    assert ["1,000", "70.0", "20,000"] in rows  # ssmd's peak RSS table
    assert "ssmd/naive jetstream frames/s" in table
    assert "- the simulator is the limit" in table


def _micro(decode_normalize_us: float) -> MicroFigures:
    stage = StageFigures(best_us=decode_normalize_us - 0.1, median_us=decode_normalize_us)
    return MicroFigures(
        frames=1000,
        repetitions=3,
        mean_frame_bytes=320.0,
        decode=StageFigures(0.5, 0.55),
        decode_normalize=stage,
        session=StageFigures(3.5, 3.6),
        by_type=(TypeFigures("orderbook_delta", 600, 0.6, 0.4, 1.2, 2.8),),
    )


def test_targets_say_what_was_met_and_what_was_not_measured() -> None:
    report = _report()
    report.micro = _micro(2.4)
    got = {target.target: (target.measured, target.met) for target in targets(report)}
    assert got == {
        "ssmd >= 0.9 x the ceiling loop to acked JetStream": (
            "0.80 by frames/s, 0.50 by CPU per frame",
            False,
        ),
        "ssmd >= 10 x the naive pipeline": ("10.00 by frames/s, 5.00 by CPU per frame", True),
        "p99 frame -> JetStream < 5 ms at 5,000 frames/s": ("4.00 ms (p99.9 4.00 ms)", True),
        "peak RSS < 150 MB with 10,000 markets": ("-", None),
        "decode + normalize <= 2 µs per frame on the mix": (
            "2.40 µs (decode alone 0.55; with the session's seq, book and dedupe work 3.60)",
            False,
        ),
    }
    table = render_table(report)
    assert "| decode + normalize <= 2 µs per frame on the mix   | 2.40 µs" in table
    assert "| peak RSS < 150 MB with 10,000 markets             | -" in table
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    assert ["decode + normalize", "2.30", "2.40"] in rows  # the micro-bench's stages
    assert ["orderbook_delta", "60.0", "0.40", "1.20", "2.80"] in rows  # and its wire types


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
    assert document["runs"][0]["simulator_cpu_us_per_frame"] == 6.5
    assert document["micro"] is None  # not measured in this report
    assert [t["met"] for t in document["targets"]] == [False, True, True, None, None]


def test_micro_bench_builds_the_mix_with_the_simulator_and_times_every_stage() -> None:
    settings = MicroSettings(frames=3_000, repetitions=1, markets=30, mix=BENCH_MIX)
    tape = build_tape(settings)
    assert tape.frames == build_tape(settings).frames  # seeded: the same frames every time
    assert len(tape.frames) == len(tape.types) == 3_000
    figures = run_micro(settings, tape=tape)
    assert (figures.frames, figures.repetitions) == (3_000, 1)
    by_type = {t.type_name: t for t in figures.by_type}
    assert set(by_type) == {"orderbook_delta", "ticker", "trade", "orderbook_snapshot"}
    assert sum(t.frames for t in figures.by_type) == 3_000
    assert by_type["orderbook_delta"].share == pytest.approx(0.6, abs=0.05)
    assert by_type["orderbook_snapshot"].share == pytest.approx(0.05, abs=0.02)
    for stage in (figures.decode, figures.decode_normalize, figures.session):
        assert 0 < stage.best_us <= stage.median_us
    assert all(t.decode_us > 0 and t.session_us > 0 for t in figures.by_type)
    assert render_micro(figures)[0].startswith("Decode + normalize in process")


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
        micro=MicroSettings(frames=500, repetitions=1, markets=20, mix=BENCH_MIX),
        blast_events=300,
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
        assert run.simulator_cpu_us_per_frame is not None
    for run in report.runs[3:]:
        assert run.latency is not None
        assert run.latency.samples > 0
    assert report.micro is not None
    assert report.micro.frames == 500
    assert report.settings["simulator_mix"] == "delta=50,ticker=25,trade=10,snapshot=5"
    table = render_table(report)
    assert "ssmd/ceiling jetstream frames/s" in table
    assert "Targets (issue 7):" in table
