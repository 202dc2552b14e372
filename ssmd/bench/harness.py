"""The bench's processes and windows: one nats-server for the whole bench, and per run a fresh
`ssmd exchange` simulator and one pipeline process (ssmd-connector or a reference pipeline),
measured over a window after warm-up, then stopped. Every child is killed on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import yaml
from cryptography.hazmat.primitives import serialization
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api as js_api

from ssmd.auth import generate_private_key, public_key_pem
from ssmd.bench.measure import (
    CLOCK_TICKS_PER_S,
    US_PER_S,
    LineCounter,
    ProcReadError,
    Sample,
    latency_figures,
    read_cpu_ticks,
    read_peak_rss_kb,
    window_figures,
)
from ssmd.bench.micro import run_micro
from ssmd.bench.references import HEADER_RECEIVE_TS_NS
from ssmd.bench.report import BenchReport, Pipeline, RunPurpose, RunResult, Sink
from ssmd.bench.settings import (
    FRAMES_PER_EVENT,
    KEY_ID_ENV,
    KEY_PEM_ENV,
    SIM_SEED,
    BenchSettings,
    ssmd_environment,
)
from ssmd.errors import SsmdError
from ssmd.exchange.market import MarketGenerator
from ssmd.natsserver import NatsServer, free_port

_POLL_S = 0.05


class BenchRunError(SsmdError):
    """A run could not be measured (a process died, nothing arrived in time)."""


class _ReceiveTs(msgspec.Struct):
    receive_ts_ns: int = 0


class LatencyConsumer:
    """An ordered JetStream push consumer from the stream's new messages: per message,
    now minus the record's receive_ts_ns (a header for the ceiling loop, which sends raw frames)."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.latencies_ns: list[int] = []
        self._clock_ns = clock_ns
        self._decode = msgspec.json.Decoder(_ReceiveTs).decode
        self._sub: Any = None

    async def start(self, nc: Client, subject: str) -> None:
        js = nc.jetstream()
        self._sub = await js.subscribe(
            subject,
            ordered_consumer=True,
            deliver_policy=js_api.DeliverPolicy.NEW,
            cb=self._receive,
        )

    async def _receive(self, msg: Msg) -> None:
        now_ns = self._clock_ns()
        headers = msg.headers
        stamp = headers.get(HEADER_RECEIVE_TS_NS) if headers else None
        try:
            receive_ts_ns = int(stamp) if stamp else self._decode(msg.data).receive_ts_ns
        except (ValueError, msgspec.DecodeError):
            return
        if receive_ts_ns:
            self.latencies_ns.append(now_ns - receive_ts_ns)

    async def stop(self) -> list[int]:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        return self.latencies_ns


@dataclass
class _Children:
    """Every process the bench started, so that none outlives it."""

    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    def kill_all(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()


def _python_command(module_call: str) -> list[str]:
    """Run an ssmd entry point with this Python, whatever its console scripts are called."""
    return [sys.executable, "-c", f"import sys; from {module_call} as main; sys.exit(main())"]


class Bench:
    """Runs every measurement of one `make bench` and collects the report."""

    @property
    def children_running(self) -> int:
        """Processes started and not yet reaped (0 after run())."""
        return sum(1 for process in self._children.processes if process.returncode is None)

    def __init__(
        self, settings: BenchSettings, workdir: Path, *, say: Callable[[str], None] = print
    ) -> None:
        self.settings = settings
        self.workdir = workdir
        self._say = say
        self._children = _Children()
        self._index = 0
        self._key_id = f"bench-{uuid.uuid4()}"
        self._key_pem = b""
        self._public_key_path = workdir / "bench-key.pub.pem"
        self._private_key_path = workdir / "bench-key.pem"
        self._nc: Client | None = None
        self._nats: NatsServer | None = None
        self.report = BenchReport(
            mode=settings.mode,
            started_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            machine={
                "cpus": os.cpu_count() or 0,
                "python": platform.python_version(),
                "platform": platform.platform(),
                # Other work on the machine competes for the same cores: say how much there was.
                "loadavg_1m_at_start": f"{os.getloadavg()[0]:.2f}",
            },
            settings={
                "markets": settings.markets,
                "warmup_s": settings.warmup_s,
                "window_s": settings.window_s,
                "frames_per_event": round(FRAMES_PER_EVENT, 4),
                "simulator_seed": SIM_SEED,
                "simulator_mix": settings.mix_spec,
                "simulator_blast_events": settings.blast_events,
            },
        )

    # -- the whole bench ------------------------------------------------------------------------

    async def run(self) -> BenchReport:
        self.workdir.mkdir(parents=True, exist_ok=True)
        key = generate_private_key()
        self._key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        self._private_key_path.write_bytes(self._key_pem)
        self._public_key_path.write_bytes(public_key_pem(key.public_key()))
        micro = self.settings.micro
        if micro is not None:  # first, alone: nothing else of the bench runs meanwhile
            self._say(f"bench: decode + normalize in process, {micro.frames:,} frames ...")
            started_s = time.monotonic()
            self.report.micro = run_micro(micro)
            figures = self.report.micro
            self._say(
                f"bench:   decode + normalize {figures.decode_normalize.median_us:.2f} µs/frame,"
                f" session {figures.session.median_us:.2f} ({time.monotonic() - started_s:.1f} s)"
            )
        self._nats = NatsServer(self.workdir / "nats", port=0)
        try:
            await self._nats.start()
            self._nc = await nats.connect(self._nats.url, name="ssmd-bench")
            await self._run_all()
            self.report.machine["loadavg_1m_at_end"] = f"{os.getloadavg()[0]:.2f}"
        finally:
            self._children.kill_all()
            if self._nc is not None:
                with contextlib.suppress(nats.errors.Error):
                    await self._nc.close()
            await self._nats.stop()
        return self.report

    async def _run_all(self) -> None:
        markets = self.settings.markets
        for sink in self.settings.sinks:
            for pipeline in self.settings.pipelines_for(sink):
                await self._run(pipeline, sink, RunPurpose.THROUGHPUT, markets, None)
        for offered in self.settings.latency_frames_per_s:
            for pipeline in self.settings.pipelines_for(Sink.JETSTREAM):
                await self._run(pipeline, Sink.JETSTREAM, RunPurpose.LATENCY, markets, offered)
        for count in self.settings.memory_markets:
            await self._run(Pipeline.SSMD, Sink.JETSTREAM, RunPurpose.MEMORY, count, None)

    async def _run(
        self,
        pipeline: Pipeline,
        sink: Sink,
        purpose: RunPurpose,
        markets: int,
        offered: int | None,
    ) -> None:
        label = f"{pipeline.value} → {sink.value}, {purpose.value}, {markets} markets" + (
            f", {offered} frames/s offered" if offered else ", flat out"
        )
        self._say(f"bench: {label} ...")
        started_s = time.monotonic()
        try:
            result = await self._measure(pipeline, sink, purpose, markets, offered)
        except (BenchRunError, ProcReadError, OSError, nats.errors.Error) as exc:
            result = RunResult(pipeline, sink, purpose, markets, offered, error=str(exc)[:200])
        self.report.runs.append(result)
        figures = result.window
        summary = (
            f"{figures.frames_per_s:,.0f} frames/s, {figures.cpu_us_per_frame or 0:.1f} µs/frame"
            if figures
            else f"failed: {result.error}"
        )
        self._say(f"bench:   {summary} ({time.monotonic() - started_s:.1f} s)")

    # -- one run ----------------------------------------------------------------------------------

    async def _measure(
        self,
        pipeline: Pipeline,
        sink: Sink,
        purpose: RunPurpose,
        markets: int,
        offered: int | None,
    ) -> RunResult:
        assert self._nc is not None
        self._index += 1
        run_dir = self.workdir / f"run-{self._index}"
        run_dir.mkdir(parents=True, exist_ok=True)
        stream = f"BENCH_{self._index}"
        prefix = f"bench.r{self._index}"
        jsm = self._nc.jsm()
        if sink is Sink.JETSTREAM:
            await jsm.add_stream(
                js_api.StreamConfig(
                    name=stream,
                    subjects=[f"{prefix}.>"],
                    storage=js_api.StorageType.FILE,
                    duplicate_window=120,
                )
            )
        rate_events = 0.0 if offered is None else offered / FRAMES_PER_EVENT
        tickers = MarketGenerator(markets, SIM_SEED).tickers
        markets_file = run_dir / "markets.txt"
        markets_file.write_text("\n".join(tickers) + "\n")
        consumer: LatencyConsumer | None = None
        try:
            url, simulator = await self._start_simulator(run_dir, markets, rate_events)
            process = await self._start_pipeline(
                pipeline, sink, run_dir, url, tickers, markets_file, prefix, stream
            )
            try:
                counter = self._counter(sink, stream, run_dir / "records")
                # In blast mode the data starts once the simulator built its tapes: past the
                # subscribe snapshots (one record per market, a few status records).
                flowing = 2 * markets if offered is None and self.settings.blast_events else 0
                await self._wait_for(counter, flowing, process, run_dir)
                await asyncio.sleep(self.settings.warmup_s)
                if purpose is RunPurpose.LATENCY:
                    consumer = LatencyConsumer()
                    await consumer.start(self._nc, f"{prefix}.>")
                start = await self._sample(counter, process)
                simulator_ticks = read_cpu_ticks(simulator.pid)
                await asyncio.sleep(self.settings.window_s)
                end = await self._sample(counter, process)
                simulator_ticks = read_cpu_ticks(simulator.pid) - simulator_ticks
                latencies = await consumer.stop() if consumer is not None else []
                peak_rss_kb = read_peak_rss_kb(process.pid)
            finally:
                await self._stop(process)
        finally:
            await self._stop_simulators()
            if sink is Sink.JETSTREAM:
                with contextlib.suppress(nats.errors.Error):
                    await jsm.delete_stream(stream)
            shutil.rmtree(run_dir, ignore_errors=True)
        frames = end.frames - start.frames
        return RunResult(
            pipeline,
            sink,
            purpose,
            markets,
            offered,
            window=window_figures(start, end),
            peak_rss_kb=peak_rss_kb,
            latency=latency_figures(latencies),
            simulator_cpu_us_per_frame=(
                simulator_ticks / CLOCK_TICKS_PER_S * US_PER_S / frames if frames > 0 else None
            ),
        )

    def _counter(self, sink: Sink, stream: str, records_dir: Path) -> Callable[[], Awaitable[int]]:
        if sink is Sink.FILE:
            lines = LineCounter(records_dir)

            async def count_lines() -> int:
                return lines.count()

            return count_lines
        assert self._nc is not None
        jsm = self._nc.jsm()

        async def count_messages() -> int:
            info = await jsm.stream_info(stream)
            return int(info.state.messages)

        return count_messages

    async def _sample(
        self, counter: Callable[[], Awaitable[int]], process: asyncio.subprocess.Process
    ) -> Sample:
        frames = await counter()
        return Sample(time.monotonic(), frames, read_cpu_ticks(process.pid))

    async def _wait_for(
        self,
        counter: Callable[[], Awaitable[int]],
        beyond: int,
        process: asyncio.subprocess.Process,
        run_dir: Path,
    ) -> None:
        """Until more than `beyond` records reached the sink."""
        deadline = time.monotonic() + self.settings.start_timeout_s
        while await counter() <= beyond:
            if process.returncode is not None:
                log_tail = _tail(run_dir / "pipeline.log")
                raise BenchRunError(f"the pipeline exited with {process.returncode}: {log_tail}")
            if time.monotonic() > deadline:
                raise BenchRunError(
                    f"not {beyond + 1} records at the sink in {self.settings.start_timeout_s} s"
                )
            await asyncio.sleep(_POLL_S)

    # -- processes --------------------------------------------------------------------------------

    async def _spawn(
        self, command: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env={**os.environ, **(env or {})},
            )
        self._children.processes.append(process)
        return process

    async def _start_simulator(
        self, run_dir: Path, markets: int, rate_events: float
    ) -> tuple[str, asyncio.subprocess.Process]:
        """`ssmd exchange` with the bench's mix; flat out (rate 0) in blast mode. Returns its
        URL once it accepts connections, and its process."""
        port = free_port()
        blast = self.settings.blast_events if rate_events == 0 else 0
        command = [
            *_python_command("ssmd.cli import toolbox_main"),
            "exchange",
            "--port",
            str(port),
            "--markets",
            str(markets),
            "--rate",
            f"{rate_events:.3f}",
            "--seed",
            str(SIM_SEED),
            "--public-key",
            f"{self._key_id}={self._public_key_path}",
            "--mix",
            self.settings.mix_spec,
            *(["--blast", str(blast)] if blast else []),
        ]
        process = await self._spawn(command, run_dir / "exchange.log")
        deadline = time.monotonic() + self.settings.start_timeout_s
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if process.returncode is not None or time.monotonic() > deadline:
                    raise BenchRunError(
                        f"the simulator did not start: {_tail(run_dir / 'exchange.log')}"
                    ) from None
                await asyncio.sleep(_POLL_S)
                continue
            writer.close()
            return f"ws://127.0.0.1:{port}/trade-api/ws/v2", process

    async def _start_pipeline(
        self,
        pipeline: Pipeline,
        sink: Sink,
        run_dir: Path,
        url: str,
        tickers: list[str],
        markets_file: Path,
        prefix: str,
        stream: str,
    ) -> asyncio.subprocess.Process:
        assert self._nats is not None
        records_dir = run_dir / "records"
        log_path = run_dir / "pipeline.log"
        if pipeline in (Pipeline.SSMD, Pipeline.SSMD_PICOWS):
            env_path = run_dir / "bench-env.yaml"
            environment = ssmd_environment(
                url, tickers, sink, self._nats.url, prefix, stream, records_dir
            )
            if pipeline is Pipeline.SSMD_PICOWS:
                environment["exchange"]["client"] = "picows"
            env_path.write_text(yaml.safe_dump(environment, sort_keys=False))
            command = [*_python_command("ssmd.cli import connector_main"), "--env", str(env_path)]
            env = {KEY_ID_ENV: self._key_id, KEY_PEM_ENV: self._key_pem.decode()}
            return await self._spawn(command, log_path, env)
        command = [
            sys.executable,
            "-m",
            "ssmd.bench.references",
            pipeline.value,
            "--url",
            url,
            "--key-id",
            self._key_id,
            "--key-file",
            str(self._private_key_path),
            "--markets-file",
            str(markets_file),
            "--sink",
            sink.value,
            "--nats",
            self._nats.url,
            "--prefix",
            prefix,
            "--dir",
            str(records_dir),
        ]
        return await self._spawn(command, log_path)

    async def _stop(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.settings.stop_timeout_s)
            except TimeoutError:
                process.kill()
                await process.wait()
        self._children.processes.remove(process)

    async def _stop_simulators(self) -> None:
        for process in list(self._children.processes):
            await self._stop(process)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
