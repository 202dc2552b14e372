"""ssmd.ops on 127.0.0.1: a real Connector against the simulator with the ops server on a free
port; /metrics agrees with what the simulator sent and JetStream stored, /ready follows the
subscriptions and the NATS link, /health turns 503 when the exchange goes silent."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families

from ssmd.config.loading import load_environment
from ssmd.config.models import OpsSettings, Settings
from ssmd.errors import ConfigError
from ssmd.exchange.faults import Stall, StallMode
from ssmd.exchange.server import ExchangeSimulator
from ssmd.messages import Channel
from ssmd.natsserver import NatsServer
from ssmd.ops import ActivityWatch, parse_address
from ssmd.ops_http import latency_histogram, rest_metrics
from ssmd.runner import Connector
from ssmd.session import KalshiSession
from ssmd.session_events import UNTYPED, SessionStats
from ssmd.transport.nats import NatsTransport
from ssmd.transport.nats_core import LATENCY_BOUNDS_NS, LatencyHistogram

from .conftest import REPO, write_pem

pytestmark = pytest.mark.integration

KEY_ID = "ops-test-key"
POLL_S = 0.05


def connector_settings(
    tmp_path: Path,
    simulator: ExchangeSimulator,
    key: rsa.RSAPrivateKey,
    *,
    transport: dict[str, Any],
    ping_interval_s: float = 10.0,
    stale_after_s: float = 30.0,
) -> Settings:
    return Settings.model_validate(
        {
            "name": "opstest",
            "exchange": {
                "ws_url": simulator.url,
                "rest_url": simulator.rest_url,
                "ping_interval_s": ping_interval_s,
            },
            "credentials": {
                "key_id": KEY_ID,
                "private_key_file": str(write_pem(tmp_path / "key.pem", key)),
            },
            "subscription": {"markets": simulator.markets},
            "transport": transport,
            "runtime": {"summary_interval_s": 0},
            "ops": {"address": "127.0.0.1:0", "stale_after_s": stale_after_s},
        }
    )


@pytest.fixture
async def simulator(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[ExchangeSimulator]:
    sim = ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()}, market_count=4, rate_hz=300, seed=5
    )
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def wait_until(condition: Callable[[], Any], what: str, timeout_s: float = 20.0) -> None:
    """Poll an asynchronous condition (an HTTP endpoint's answer) until it holds."""
    for _ in range(int(timeout_s / POLL_S)):
        if await condition():
            return
        await asyncio.sleep(POLL_S)
    pytest.fail(f"timed out after {timeout_s} s waiting for: {what}")


async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
    """Every sample of /metrics as {'name{label=value}': value}."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def started_ops(connector: Connector, task: asyncio.Task[int]) -> httpx.AsyncClient:
    async with asyncio.timeout(20):
        while connector.ops is None or connector.ops.port == 0:
            assert not task.done(), task
            await asyncio.sleep(POLL_S)
    return httpx.AsyncClient(base_url=connector.ops.url)


def status_of(expected: int, http: httpx.AsyncClient, path: str) -> Callable[[], Any]:
    async def check() -> bool:
        return (await http.get(path)).status_code == expected

    return check


async def test_metrics_agree_with_simulator_and_stream_ready_follows_nats(
    tmp_path: Path,
    simulator: ExchangeSimulator,
    nats_server: NatsServer,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    nats_transport = {"kind": "nats", "servers": [nats_server.url]}
    settings = connector_settings(tmp_path, simulator, rsa_key, transport=nats_transport)
    connector = Connector(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    http = await started_ops(connector, task)
    try:
        await wait_until(status_of(200, http, "/ready"), "ready after subscribing")
        transport = connector.transport
        assert isinstance(transport, NatsTransport)
        ready = await http.get("/ready")
        assert ready.text.startswith(f"ok: {len(Channel)} subscriptions active")
        await wait_until(
            lambda: _gt(http, "ssmd_records_published_total{kind=book_delta}", 50), "deltas"
        )
        # Quiesce: nothing more from the exchange, everything queued is acked.
        await simulator.pause()
        sent = len(simulator.sent)

        async def settled() -> bool:
            metrics = await scrape(http)
            return (
                metrics["ssmd_frames_received_total"] == sent
                and metrics["ssmd_queue_depth"] == 0
                and metrics["ssmd_pending_acks"] == 0
            )

        await wait_until(settled, "every sent frame received and acked")
        metrics = await scrape(http)
        by_type = {
            name.removeprefix("ssmd_frames_received_by_type_total{type=").removesuffix("}"): value
            for name, value in metrics.items()
            if name.startswith("ssmd_frames_received_by_type_total{")
        }
        sent_by_type = Counter(json.loads(frame.data)["type"] for frame in simulator.sent)
        assert by_type == sent_by_type
        assert sum(by_type.values()) == metrics["ssmd_frames_received_total"] == sent
        nc = await nats.connect(nats_server.url)
        try:
            stored = (await nc.jetstream().stream_info(transport.stream_name)).state.messages
        finally:
            await nc.close()
        published = {
            name: value
            for name, value in metrics.items()
            if name.startswith("ssmd_records_published_total")
        }
        assert sum(published.values()) == stored == transport.stats().acked
        assert published["ssmd_records_published_total{kind=status}"] >= 1 + len(Channel)
        assert metrics["ssmd_connection_up{connection=" + connector.supervisor.plan.name + "}"] == 1  # type: ignore[union-attr]
        assert metrics[
            "ssmd_markets_subscribed{connection=" + connector.supervisor.plan.name + "}"  # type: ignore[union-attr]
        ] == len(simulator.markets)
        assert metrics["ssmd_reconnects_total"] == 0
        assert metrics["ssmd_gaps_total"] == 0
        assert metrics["ssmd_dropped_total"] == 0
        assert metrics["ssmd_last_activity_timestamp_seconds"] > 0
        acked = transport.stats().acked
        for histogram in ("ssmd_frame_to_ack_latency_seconds", "ssmd_publish_latency_seconds"):
            buckets = histogram_buckets(metrics, histogram)
            bounds = [bound for bound, _ in buckets]
            assert (bounds[0], bounds[-2], bounds[-1]) == (0.0001, 5.0, float("inf"))
            counts = [count for _, count in buckets]
            assert counts == sorted(counts), histogram  # cumulative: never decreasing
            assert counts[-1] == metrics[f"{histogram}_count"] == acked
            assert 0 < metrics[f"{histogram}_sum"] < counts[-1] * 60
        assert 0 < metrics["ssmd_last_ack_timestamp_seconds"] <= time.time()
        rest = ("ssmd_rest_calls_total", "ssmd_rest_throttled_total", "ssmd_rest_retries_total")
        assert set(rest) <= metrics.keys()
        assert (await http.get("/health")).status_code == 200

        await nats_server.stop()
        await wait_until(status_of(503, http, "/ready"), "not ready without NATS")
        assert "NATS link" in (await http.get("/ready")).text
        await nats_server.start()  # same port and store
        await wait_until(status_of(200, http, "/ready"), "ready again once NATS is back")
    finally:
        stop.set()
        await http.aclose()
        assert await asyncio.wait_for(task, 30) == 0


def histogram_buckets(metrics: dict[str, float], name: str) -> list[tuple[float, float]]:
    """(le, cumulative count) of a scraped histogram, by bound."""
    prefix = f"{name}_bucket{{le="
    return sorted(
        (float(key[len(prefix) : -1]), value)
        for key, value in metrics.items()
        if key.startswith(prefix)
    )


async def _gt(http: httpx.AsyncClient, name: str, value: float) -> bool:
    return (await scrape(http)).get(name, 0) > value


async def test_health_turns_503_when_the_exchange_goes_silent(
    tmp_path: Path, simulator: ExchangeSimulator, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A silent stall (no data, no pings) shorter than our ping interval: the stale window
    (1 s) elapses long before the keepalive (60 s) would notice and reconnect."""
    settings = connector_settings(
        tmp_path,
        simulator,
        rsa_key,
        transport={"kind": "file", "dir": str(tmp_path / "records")},
        ping_interval_s=60.0,
        stale_after_s=1.0,
    )
    connector = Connector(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    http = await started_ops(connector, task)
    try:
        await wait_until(status_of(200, http, "/ready"), "ready")
        assert (await http.get("/health")).status_code == 200
        assert await simulator.inject_fault(Stall(duration_s=60.0, mode=StallMode.SILENT))
        await wait_until(status_of(503, http, "/health"), "stale")
        body = (await http.get("/health")).text
        assert body.startswith("stale: no frame from the exchange for ")
        assert "(limit 1 s)" in body
        assert (await scrape(http))["ssmd_reconnects_total"] == 0
        simulator.end_stall()
        await wait_until(status_of(200, http, "/health"), "healthy once frames flow again")
    finally:
        stop.set()
        await http.aclose()
        assert await asyncio.wait_for(task, 30) == 0


async def test_a_quiet_exchange_that_answers_pings_stays_healthy(
    tmp_path: Path, simulator: ExchangeSimulator, rsa_key: rsa.RSAPrivateKey
) -> None:
    """No data (a pings-only stall), but pongs come back: with the keepalive bound (2 x 0.5 s)
    inside the stale window (1.5 s), the open connection keeps /health at 200."""
    settings = connector_settings(
        tmp_path,
        simulator,
        rsa_key,
        transport={"kind": "file", "dir": str(tmp_path / "records")},
        ping_interval_s=0.5,
        stale_after_s=1.5,
    )
    connector = Connector(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    http = await started_ops(connector, task)
    try:
        await wait_until(status_of(200, http, "/ready"), "ready")
        assert await simulator.inject_fault(Stall(duration_s=60.0, mode=StallMode.PINGS_ONLY))

        async def quiet_but_healthy() -> bool:
            response = await http.get("/health")
            assert response.status_code == 200, response.text
            return response.text.startswith("ok: quiet for ")

        await wait_until(quiet_but_healthy, "quiet and healthy")
        assert (await scrape(http))["ssmd_reconnects_total"] == 0
        simulator.end_stall()
    finally:
        stop.set()
        await http.aclose()
        assert await asyncio.wait_for(task, 30) == 0


def _session(connection_id: str) -> KalshiSession:
    return KalshiSession(
        connection_id=connection_id, channels=[Channel.TRADE], markets=["M"], use_yes_price=True
    )


def test_session_stats_add_up_across_reconnects() -> None:
    total = SessionStats()
    first = _session("c/1")
    first.stats.frames_received = 12
    first.stats.malformed_by_reason["invalid_json"] = 2
    second = _session("c/2")
    second.stats.frames_received = 3
    second.stats.malformed_by_reason["invalid_json"] = 1
    total.add(first.stats)
    total.add(second.stats)
    assert total.frames_received == 15
    assert total.malformed_by_reason == {"invalid_json": 3}


def test_frames_by_type_count_every_frame_once_across_reconnects() -> None:
    """Decoded frames by their type, unsupported and undecodable ones by the type they named
    (or `untyped`): the counts always sum to frames_received, also after SessionStats.add."""
    subscribed = b'{"type":"subscribed","id":1,"msg":{"channel":"trade","sid":1}}'
    trade = (
        b'{"type":"trade","sid":1,"seq":%d,"msg":{"trade_id":"t%d","market_ticker":"M",'
        b'"yes_price_dollars":"0.4000","no_price_dollars":"0.6000","count_fp":"1.00"}}'
    )
    first = _session("c/1")
    for data in (
        subscribed,
        trade % (1, 1),
        trade % (2, 2),
        b'{"type":"fill","sid":9,"msg":{}}',  # a private channel: unsupported
        b'{"type":"trade","sid":1,"seq":3,"msg":{"market_ticker":7}}',  # invalid fields
        b"not json",
        b'{"type":"trade","sid":1,"seq":3,"msg":{"market_ticker":"M","yes_price_dollars":"x",'
        b'"no_price_dollars":"0.6000","count_fp":"1.00"}}',  # decodes, fails to normalize
    ):
        first.receive_frame(data, 1)
    second = _session("c/2")
    second.receive_frame(subscribed, 2)
    second.receive_frame(trade % (1, 3), 2)
    assert first.stats.frames_by_type == {
        "subscribed": 1,
        "trade": 4,
        "fill": 1,
        UNTYPED: 1,
    }
    total = SessionStats()
    total.add(first.stats)
    total.add(second.stats)
    assert total.frames_by_type == {"subscribed": 2, "trade": 5, "fill": 1, UNTYPED: 1}
    assert sum(total.frames_by_type.values()) == total.frames_received == 9


def test_activity_watch_counts_the_start_and_each_change() -> None:
    watch = ActivityWatch(started_s=100.0, started_wall_s=1_700_000_000.0)
    assert watch.idle_s(102.0) == 2.0
    watch.observe(5, 103.0, 1_700_000_003.0)
    watch.observe(5, 107.0, 1_700_000_007.0)  # no new frame: no activity
    assert watch.idle_s(108.0) == 5.0
    assert watch.last_activity_wall_s == 1_700_000_003.0


def test_ops_address_parsing_and_validation(tmp_path: Path) -> None:
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError, match="host:port"):
        parse_address("9464")
    assert OpsSettings().address is None  # off unless configured
    shipped = load_environment(str(REPO / "environments" / "local.yaml"))
    assert shipped.ops.address == "127.0.0.1:9464"
    env = tmp_path / "bad.yaml"
    env.write_text("exchange:\n  simulator: {}\nops:\n  address: localhost\n")
    with pytest.raises(ConfigError) as raised:
        load_environment(str(env))
    assert raised.value.field == "ops.address"
    assert "host:port" in str(raised.value)


async def test_ops_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    try:
        port = taken.sockets[0].getsockname()[1]
        settings = Settings.model_validate(
            {
                "exchange": {"simulator": {}},
                "transport": {"kind": "file", "dir": str(tmp_path / "records")},
                "ops": {"address": f"127.0.0.1:{port}"},
            }
        )
        with pytest.raises(ConfigError) as raised:
            await Connector(settings).run(asyncio.Event())
        assert raised.value.field == "ops.address"
        assert "free port" in str(raised.value.fix)
    finally:
        taken.close()
        await taken.wait_closed()


def test_a_latency_histogram_is_exposed_in_seconds_with_cumulative_buckets() -> None:
    histogram = LatencyHistogram()
    for latency_ns in (50_000, 100_000, 3_000_000, 7_000_000_000):  # 0.05 ms ... 7 s
        histogram.observe(latency_ns)
    family = latency_histogram("test_latency", "A test", histogram.snapshot())
    samples = {
        (sample.name, sample.labels.get("le", "")): sample.value for sample in family.samples
    }
    assert family.name == "ssmd_test_latency_seconds"
    assert family.type == "histogram"
    assert samples[("ssmd_test_latency_seconds_bucket", "0.0001")] == 2  # le 0.1 ms
    assert samples[("ssmd_test_latency_seconds_bucket", "0.0025")] == 2
    assert samples[("ssmd_test_latency_seconds_bucket", "0.005")] == 3
    assert samples[("ssmd_test_latency_seconds_bucket", "5.0")] == 3
    assert samples[("ssmd_test_latency_seconds_bucket", "+Inf")] == 4
    assert samples[("ssmd_test_latency_seconds_count", "")] == 4
    assert samples[("ssmd_test_latency_seconds_sum", "")] == pytest.approx(7.00315)
    bucket_counts = [value for (name, _), value in samples.items() if name.endswith("_bucket")]
    assert len(bucket_counts) == len(LATENCY_BOUNDS_NS) + 1
    assert bucket_counts == sorted(bucket_counts)


def test_rest_counters_come_from_the_rest_stats_mapping() -> None:
    families = {family.name: family for family in rest_metrics({"calls": 9, "throttled": 2})}
    values = {name: family.samples[0].value for name, family in families.items()}
    assert values == {"ssmd_rest_calls": 9, "ssmd_rest_throttled": 2, "ssmd_rest_retries": 0}
    assert all(family.type == "counter" for family in families.values())
    assert [family.samples[0].value for family in rest_metrics({})] == [0, 0, 0]
