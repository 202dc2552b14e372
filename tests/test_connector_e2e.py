"""End to end on 127.0.0.1: a real `ssmd-connector` process against the simulator, SIGTERM,
and the files compared record for record with what the simulator says it sent."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import nats
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.errors import FrameDecodeError
from ssmd.exchange.server import ExchangeSimulator
from ssmd.messages import (
    ErrorFrame,
    FrameDecoder,
    Ok,
    OrderbookDelta,
    OrderbookSnapshot,
    Subscribed,
    Unsubscribed,
)
from ssmd.natsserver import NatsServer
from ssmd.normalize import normalize
from ssmd.records import Record, RecordBase, Status, StatusEvent, record_kind
from ssmd.transport.files import read_records

from .conftest import CAPTURES, REPO, wait_until, write_pem

BIN = Path(sys.executable).parent
CONNECTOR = str(BIN / "ssmd-connector")
TOOLBOX = str(BIN / "ssmd")
KEY_ID = "0b5c2a47-test-key"

pytestmark = pytest.mark.integration


def write_connector_env(
    tmp_path: Path,
    *,
    name: str,
    url: str,
    key_file: Path,
    markets: list[str],
    transport: str,
    exchange: str = "",
    runtime: str = "",
) -> Path:
    """An environment YAML for a connector subprocess signing with `key_file` (key id from the
    SSMD_TEST_KEY_ID variable). `transport`, `exchange` and `runtime` are extra YAML lines,
    indented two spaces, for those sections."""
    env = tmp_path / f"{name}.yaml"
    env.write_text(
        f"""
name: {name}
exchange:
  ws_url: {url}
{exchange}credentials:
  key_id_env: SSMD_TEST_KEY_ID
  private_key_file: {key_file}
subscription:
  channels: [orderbook_delta, ticker, trade, market_lifecycle_v2]
  markets: {json.dumps(markets)}
  use_yes_price: true
transport:
{transport}runtime:
  summary_interval_s: 0
{runtime}log:
  level: info
  format: json
"""
    )
    return env


def write_env(
    tmp_path: Path, *, url: str, key_file: Path, markets: list[str], records_dir: Path
) -> Path:
    return write_connector_env(
        tmp_path,
        name="e2e",
        url=url,
        key_file=key_file,
        markets=markets,
        transport=f"  kind: file\n  dir: {records_dir}\n",
    )


async def spawn_connector(env: Path) -> asyncio.subprocess.Process:
    """`ssmd-connector --env ENV` as a real subprocess, logs (JSON lines) on its stderr pipe."""
    return await asyncio.create_subprocess_exec(
        CONNECTOR,
        "--env",
        str(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "SSMD_TEST_KEY_ID": KEY_ID},
    )


def expected_records(sent: list[bytes]) -> dict[str, list[RecordBase]]:
    """Normalize the simulator's own log, the independent record of what went on the wire."""
    decoder = FrameDecoder()
    expected: dict[str, list[RecordBase]] = {}
    for data in sent:
        try:
            frame = decoder.decode(data)
        except FrameDecodeError as exc:  # pragma: no cover - the assertion explains
            raise AssertionError(f"simulator sent an undecodable frame: {data!r}") from exc
        if isinstance(frame, Subscribed | Ok | Unsubscribed | ErrorFrame):
            continue
        is_book = isinstance(frame, OrderbookSnapshot | OrderbookDelta)
        record = normalize(frame, 0, no_side_in_yes_price=is_book)  # type: ignore[arg-type]
        expected.setdefault(record_kind(record), []).append(record)
    return expected


def without_receive_time(records: list[RecordBase]) -> list[RecordBase]:
    return [msgspec.structs.replace(r, receive_ts_ns=0) for r in records]


async def test_sigterm_drains_and_files_equal_what_the_simulator_sent(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_file = write_pem(tmp_path / "kalshi.pem", rsa_key)
    records_dir = tmp_path / "records"
    async with ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()}, market_count=8, rate_hz=2000.0, seed=11
    ) as sim:
        env = write_env(
            tmp_path,
            url=sim.url,
            key_file=key_file,
            markets=list(sim.markets),
            records_dir=records_dir,
        )
        proc = await spawn_connector(env)
        try:
            await wait_until(lambda: len(sim.sent) >= 1500, 60, "1500 frames sent")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        log = stderr.decode()
        assert proc.returncode == 0, log
        sent = [f.data for f in sim.sent]

    expected = expected_records(sent)
    got: dict[str, list[RecordBase]] = {}
    for record in read_records(records_dir):
        got.setdefault(record_kind(record), []).append(record)

    statuses = got.pop("status")
    assert all(isinstance(s, Status) for s in statuses)
    events = [s.event for s in statuses if isinstance(s, Status)]
    assert events[0] is StatusEvent.CONNECTED
    assert events.count(StatusEvent.SUBSCRIBED) == 4
    assert events[-1] is StatusEvent.DISCONNECTED
    assert StatusEvent.GAP not in events

    assert set(got) == set(expected)
    assert {"book_snapshot", "book_delta", "ticker", "trade"} <= set(got)
    for kind, records in expected.items():
        assert len(got[kind]) == len(records), kind
        assert without_receive_time(got[kind]) == without_receive_time(records), kind
    # Every record was stamped with a real receive time.
    assert all(r.receive_ts_ns > 1_700_000_000 * 10**9 for rs in got.values() for r in rs)
    # Every log line is JSON with a dotted event name; the key never appears.
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert any(line["event"] == "connector.stopped" for line in lines)
    assert "PRIVATE KEY" not in log


async def test_wrong_key_is_refused_with_401_and_a_clear_error(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    key_file = write_pem(tmp_path / "wrong.pem", other_rsa_key, pkcs8=True)
    async with ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()}, market_count=2, rate_hz=10.0, seed=1
    ) as sim:
        env = write_env(
            tmp_path,
            url=sim.url,
            key_file=key_file,
            markets=list(sim.markets),
            records_dir=tmp_path / "records",
        )
        proc = await spawn_connector(env)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert sim.sent == []
    log = stderr.decode()
    assert proc.returncode == 1, log
    failure = next(
        json.loads(line)
        for line in log.splitlines()
        if line.strip() and json.loads(line)["event"] == "connector.intake_failed"
    )
    assert failure["error_type"] == "HandshakeRejected"
    assert "HTTP 401" in failure["error"]
    assert "PRIVATE KEY" not in log


async def test_local_environment_runs_and_stops_cleanly(tmp_path: Path) -> None:
    """The shipped `local` environment (in-process simulator, managed nats-server, store under
    ./var/nats) from a clean directory: records flow into JetStream, SIGINT, exit 0, and the
    stream holds them. The port is 0 in a copy of local.yaml, so tests never use a fixed port."""
    shipped = (REPO / "environments" / "local.yaml").read_text()
    assert "    port: 4222" in shipped
    # The ops server's fixed port too: any free one in tests.
    assert "address: 127.0.0.1:9464" in shipped
    shipped = shipped.replace("address: 127.0.0.1:9464", "address: 127.0.0.1:0", 1)
    env = tmp_path / "local.yaml"
    env.write_text(shipped.replace("    port: 4222", "    port: 0", 1))
    proc = await asyncio.create_subprocess_exec(
        CONNECTOR,
        "--env",
        str(env),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    log_lines: list[dict[str, object]] = []
    try:
        started = await asyncio.wait_for(
            _read_event(proc.stderr, "nats_server.started", log_lines), 60
        )
        nats_url = str(started["url"])
        assert started["store_dir"] == str(tmp_path / "var" / "nats")
        nc = await nats.connect(nats_url)
        try:
            deltas = await nc.subscribe("ssmd.local.kalshi.book_delta.>")
            await deltas.next_msg(timeout=60)  # records are flowing
        finally:
            await nc.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, rest = await asyncio.wait_for(proc.communicate(), 60)
    log = "\n".join(json.dumps(line) for line in log_lines) + rest.decode()
    assert proc.returncode == 0, log
    assert '"nats_server.stopped"' in log

    # The managed server stopped with the connector: start one on the same store and read.
    async with NatsServer(tmp_path / "var" / "nats") as server:
        nc = await nats.connect(server.url)
        try:
            info = await nc.jetstream().stream_info("SSMD_LOCAL_KALSHI")
        finally:
            await nc.close()
        count = info.state.messages
        assert count > 0
        tail = await asyncio.create_subprocess_exec(
            TOOLBOX, "tail", "--server", server.url, "--from", "all", "--count", str(count),
            "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(tail.communicate(), 60)

        # A second stack on a port that is taken: a clear error naming the field and the fixes.
        env.write_text(shipped.replace("    port: 4222", f"    port: {server.port}", 1))
        clash = await asyncio.create_subprocess_exec(
            CONNECTOR, "--env", str(env), cwd=tmp_path / "var", stderr=subprocess.PIPE,
        )  # fmt: skip
        _, clash_log = await asyncio.wait_for(clash.communicate(), 60)
    assert tail.returncode == 0, stderr.decode()
    assert clash.returncode == 2, clash_log.decode()
    failure = json.loads(clash_log.decode().splitlines()[-1])
    assert failure["event"] == "connector.start_failed"
    assert f"port {server.port} on 127.0.0.1 is already in use" in failure["error"]
    assert "transport.managed_server.port" in failure["error"]
    assert "managed_server.port: 0" in failure["error"]
    decoder = msgspec.json.Decoder(Record)
    records = [decoder.decode(line) for line in stdout.splitlines()]
    assert len(records) == count
    kinds = {record_kind(r) for r in records}
    assert {"status", "book_snapshot", "book_delta"} <= kinds
    events = [r.event for r in records if isinstance(r, Status)]
    assert events[0] is StatusEvent.CONNECTED
    assert events[-1] is StatusEvent.DISCONNECTED  # published during the drain, before close


async def _read_event(
    stream: asyncio.StreamReader, event: str, seen: list[dict[str, object]]
) -> dict[str, object]:
    """Read JSON log lines until one has `event`; every line read is kept in `seen`."""
    while True:
        raw = await stream.readline()
        if not raw:
            raise AssertionError(f"the connector exited before logging {event}: {seen}")
        line = json.loads(raw)
        seen.append(line)
        if line.get("event") == event:
            return line  # type: ignore[no-any-return]


def test_local_files_environment_runs_and_stops_cleanly(tmp_path: Path) -> None:
    """The shipped `local-files` environment (in-process simulator, files under ./var)."""
    proc = subprocess.Popen(
        [CONNECTOR, "--env", str(REPO / "environments" / "local-files.yaml")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        records_dir = tmp_path / "var" / "records"
        deadline = 60.0
        step = 0.1
        while deadline > 0 and not list(records_dir.glob("book_delta/*.part")):
            assert proc.poll() is None, proc.communicate()[1].decode()
            deadline -= step
            time.sleep(step)
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()
    records = read_records(tmp_path / "var" / "records")
    kinds = {record_kind(r) for r in records}
    assert {"status", "book_snapshot", "book_delta"} <= kinds
    assert not list((tmp_path / "var" / "records").rglob("*.part"))


def test_bad_config_exits_2_naming_file_and_field(tmp_path: Path) -> None:
    env = tmp_path / "bad.yaml"
    env.write_text("exchange:\n  simulator: {markets: 2}\nsubscription:\n  channels: [ticker_v2]\n")
    result = subprocess.run(
        [CONNECTOR, "--env", str(env), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert str(env) in result.stderr
    assert "subscription.channels" in result.stderr


def test_check_validates_and_prints_no_secret(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    key_file = write_pem(tmp_path / "k.pem", rsa_key)
    env = write_env(
        tmp_path,
        url="wss://example.invalid/trade-api/ws/v2",
        key_file=key_file,
        markets=["KXA-1"],
        records_dir=tmp_path / "r",
    )
    result = subprocess.run(
        [CONNECTOR, "--env", str(env), "--check"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SSMD_TEST_KEY_ID": KEY_ID},
    )
    assert result.returncode == 0, result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["source"] == str(env)
    assert summary["name"] == "e2e"
    assert summary["credentials"]["private_key_file"] == str(key_file)
    assert summary["credentials"]["key_id_env"] == "SSMD_TEST_KEY_ID"
    assert summary["subscription"]["markets"] == ["KXA-1"]
    body = key_file.read_text().splitlines()[1]
    assert body not in result.stdout + result.stderr


def test_check_refuses_an_unusable_key_naming_the_file(tmp_path: Path) -> None:
    key_file = tmp_path / "k.pem"
    key_file.write_text("not a key\n")
    env = write_env(
        tmp_path,
        url="wss://example.invalid/trade-api/ws/v2",
        key_file=key_file,
        markets=["KXA-1"],
        records_dir=tmp_path / "r",
    )
    result = subprocess.run(
        [CONNECTOR, "--env", str(env), "--check"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SSMD_TEST_KEY_ID": KEY_ID},
    )
    assert result.returncode == 2
    assert str(key_file) in result.stderr
    assert "not a PEM private key" in result.stderr
    assert result.stdout == ""


def test_ssmd_normalize_command_on_a_capture_file() -> None:
    capture = CAPTURES / "Haripratiik__prediction-market-trading-engine__test-kalshi-ws-py.jsonl"
    result = subprocess.run(
        [TOOLBOX, "normalize", str(capture)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["kind"] for r in records] == [
        "book_snapshot",
        "book_delta",
        "ticker",
        "book_snapshot",
    ]
    assert records[0]["yes_bids"] == [[100, 141000]]
    assert records[0]["no_bids"] == [[100, 10000], [200, 250000]]


def test_ssmd_normalize_reports_bad_lines_and_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type":"fill","sid":1,"msg":{}}\nnot json\n')
    result = subprocess.run(
        [TOOLBOX, "normalize", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "line 1" in result.stderr
    assert "fill" in result.stderr
    assert "line 2" in result.stderr


def test_ssmd_schema_lists_every_record_kind() -> None:
    result = subprocess.run([TOOLBOX, "schema"], capture_output=True, text=True, check=True)
    schema = json.loads(result.stdout)
    mapping = schema["discriminator"]["mapping"]
    assert set(mapping) == {
        "trade",
        "ticker",
        "book_snapshot",
        "book_delta",
        "lifecycle",
        "status",
        "top",
    }


async def start_stalled_connector(
    tmp_path: Path, sim: ExchangeSimulator, key_file: Path, extra_yaml: str = ""
) -> asyncio.subprocess.Process:
    """A connector streaming from `sim`, whose exchange then stops reading (a hung close)."""
    env = write_env(
        tmp_path,
        url=sim.url,
        key_file=key_file,
        markets=list(sim.markets),
        records_dir=tmp_path / "records",
    )
    if extra_yaml:
        env.write_text(env.read_text().replace("runtime:\n", f"runtime:\n{extra_yaml}"))
    proc = await spawn_connector(env)
    await wait_until(lambda: len(sim.sent) >= 200, 60, "200 frames sent")
    sim.stall_reading()
    proc.send_signal(signal.SIGTERM)
    return proc


async def test_second_signal_exits_at_once_with_128_plus_signal(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_file = write_pem(tmp_path / "kalshi.pem", rsa_key)
    async with ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()}, market_count=4, rate_hz=500.0, seed=2
    ) as sim:
        proc = await start_stalled_connector(tmp_path, sim, key_file)
        assert proc.stderr is not None
        # The close handshake now hangs: wait until the connector says it is stopping.
        while b"connector.stopping" not in await proc.stderr.readline():
            pass
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 128 + signal.SIGTERM


async def test_stuck_drain_ends_after_shutdown_timeout_with_exit_1(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_file = write_pem(tmp_path / "kalshi.pem", rsa_key)
    async with ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()}, market_count=4, rate_hz=500.0, seed=2
    ) as sim:
        proc = await start_stalled_connector(
            tmp_path, sim, key_file, extra_yaml="  shutdown_timeout_s: 1\n"
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    events = [json.loads(line)["event"] for line in stderr.decode().splitlines() if line.strip()]
    assert "connector.shutdown_timeout" in events
