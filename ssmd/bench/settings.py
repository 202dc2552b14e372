"""What one bench measures and how: the quick and full settings, the simulator's event mix
and blast size, and the environment YAML ssmd runs with (pure: no processes, no clocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssmd.bench.micro import MicroSettings
from ssmd.bench.report import Pipeline, Sink
from ssmd.exchange.cli import parse_event_mix

# The mix on the wire: 60 % orderbook_delta, 25 % ticker, 10 % trade, 5 % snapshot.
# One market event is one frame, except a trade, which is a trade frame and the
# orderbook_delta of the liquidity it took: 50 delta events + 10 trade events = 60 % deltas.
BENCH_MIX_SPEC = "delta=50,ticker=25,trade=10,snapshot=5"
BENCH_MIX = parse_event_mix(BENCH_MIX_SPEC)
FRAMES_PER_EVENT = 100 / 90
SIM_SEED = 1
KEY_ID_ENV = "SSMD_BENCH_KEY_ID"
KEY_PEM_ENV = "SSMD_BENCH_PRIVATE_KEY"
_CHANNELS = ["orderbook_delta", "ticker", "trade", "market_lifecycle_v2"]


@dataclass(frozen=True)
class BenchSettings:
    """One bench's runs: windows, offered rates, extra runs, micro-bench, simulator options."""

    mode: str
    warmup_s: float
    window_s: float
    latency_frames_per_s: tuple[int, ...]
    memory_markets: tuple[int, ...]  # extra ssmd-only runs for peak RSS
    markets: int = 1000
    start_timeout_s: float = 60.0  # first frame at the sink (10,000 snapshots take a while)
    stop_timeout_s: float = 20.0  # SIGTERM → exit (ssmd drains and waits for acks), then kill
    pipelines: tuple[Pipeline, ...] = (Pipeline.SSMD, Pipeline.CEILING, Pipeline.NAIVE)
    sinks: tuple[Sink, ...] = tuple(Sink)
    # Run beside ssmd into JetStream only (throughput and latency): e.g. SSMD_PICOWS.
    jetstream_extras: tuple[Pipeline, ...] = ()
    micro: MicroSettings | None = None  # the in-process micro-bench, run first
    mix_spec: str = BENCH_MIX_SPEC  # `ssmd exchange --mix` of every run
    # Flat-out runs: `ssmd exchange --blast N` (N events per connection built once, then
    # looped), so that the simulator is not the bottleneck; 0: every frame generated live, as
    # in the latency runs.
    blast_events: int = 5_000

    def pipelines_for(self, sink: Sink) -> list[Pipeline]:
        """The pipelines measured into `sink`, the extras right after ssmd."""
        out: list[Pipeline] = []
        for pipeline in self.pipelines:
            out.append(pipeline)
            if pipeline is Pipeline.SSMD and sink is Sink.JETSTREAM:
                out += self.jetstream_extras
        return out


QUICK = BenchSettings(
    mode="quick",
    warmup_s=1.0,
    window_s=2.0,
    latency_frames_per_s=(5000,),
    memory_markets=(),
    micro=MicroSettings(frames=50_000, repetitions=3, mix=BENCH_MIX),
)
FULL = BenchSettings(
    mode="full",
    warmup_s=3.0,
    window_s=8.0,
    latency_frames_per_s=(1000, 5000, 20000),
    memory_markets=(10_000,),
    micro=MicroSettings(frames=200_000, repetitions=5, mix=BENCH_MIX),
)


def ssmd_environment(
    url: str,
    tickers: list[str],
    sink: Sink,
    nats_url: str,
    prefix: str,
    stream: str,
    records_dir: Path,
) -> dict[str, Any]:
    """The environment YAML (as a dict) of one ssmd run: defaults except where the bench must
    say where to connect and publish; the key comes from environment variables."""
    transport: dict[str, Any]
    if sink is Sink.FILE:
        transport = {
            "kind": "file",
            "dir": str(records_dir),
            "rotate_max_bytes": 1 << 40,  # no rotation while the bench counts lines
            "rotate_interval_s": 86_400,
        }
    else:
        transport = {
            "kind": "nats",
            "servers": [nats_url],
            "subject_prefix": prefix,
            "stream": {"name": stream},
        }
    return {
        "name": "bench",
        "exchange": {"ws_url": url},
        "credentials": {"key_id_env": KEY_ID_ENV, "private_key_env": KEY_PEM_ENV},
        "subscription": {"channels": _CHANNELS, "markets": tickers, "use_yes_price": True},
        "transport": transport,
        "runtime": {"summary_interval_s": 0},
        "log": {"level": "warning", "format": "json"},
    }
