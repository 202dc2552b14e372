"""End to end through a real JetStream: `ssmd-connector` (subprocess) ← simulator → nats-server.

Every record the simulator's own log says was sent must be in the stream exactly once, in order,
on the right subject, with the right headers — also across a NATS restart and a SIGTERM burst.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.exchange.server import ExchangeSimulator
from ssmd.natsserver import NatsServer
from ssmd.records import Record, RecordBase, Status, StatusEvent, record_kind
from ssmd.subjects import SubjectMapper, msg_id_for

from .conftest import read_stream as read_any_stream
from .conftest import write_pem
from .test_connector_e2e import (
    KEY_ID,
    expected_records,
    spawn_connector,
    wait_until,
    without_receive_time,
    write_connector_env,
)

pytestmark = pytest.mark.integration

PREFIX = "ssmd.e2e.kalshi"
STREAM = "SSMD_E2E_KALSHI"


def write_nats_env(
    tmp_path: Path, *, url: str, key_file: Path, nats_url: str, markets: list[str]
) -> Path:
    return write_connector_env(
        tmp_path,
        name="e2e",
        url=url,
        key_file=key_file,
        markets=markets,
        transport=(
            f"  kind: nats\n  servers: [{nats_url}]\n  max_pending_acks: 256\n"
            "  ack_timeout_s: 2\n  reconnect_max_s: 0.5\n"
        ),
        runtime="  queue_size: 1000\n",
    )


class StoredMessage(msgspec.Struct):
    subject: str
    headers: dict[str, str]
    record: Record


async def read_stream(nats_url: str) -> list[StoredMessage]:
    """Every message in the stream, in stream order, its payload decoded."""
    decoder = msgspec.json.Decoder(Record)
    return [
        StoredMessage(subject=m.subject, headers=m.headers, record=decoder.decode(m.data))
        for m in await read_any_stream(nats_url, STREAM, f"{PREFIX}.>")
    ]


def assert_stream_matches(stored: list[StoredMessage], sent: list[bytes]) -> None:
    """The stream holds exactly what the simulator sent: per kind, same records, same order."""
    mapper = SubjectMapper(PREFIX)
    ids = [m.headers.get("Nats-Msg-Id") for m in stored]
    assert len(ids) == len(set(ids)), "a record is stored twice"
    got: dict[str, list[RecordBase]] = {}
    for message in stored:
        record = message.record
        kind = record_kind(record)
        assert message.subject == mapper.subject_for(record)
        assert message.headers["Ssmd-Kind"] == kind
        assert message.headers["Nats-Msg-Id"] == msg_id_for(record)
        assert message.headers["Content-Type"] == "application/json"
        if kind != "status":
            assert message.headers["Ssmd-Market"] == record.market
        got.setdefault(kind, []).append(record)
    statuses = got.pop("status")
    assert not [s for s in statuses if isinstance(s, Status) and s.event is StatusEvent.GAP]
    expected = expected_records(sent)
    assert set(got) == set(expected)
    for kind, records in expected.items():
        assert len(got[kind]) == len(records), kind
        assert without_receive_time(got[kind]) == without_receive_time(records), kind


async def run_and_stop(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    nats_server: NatsServer,
    *,
    rate_hz: float,
    frames: int,
    restart_nats: bool = False,
) -> list[bytes]:
    key_file = write_pem(tmp_path / "kalshi.pem", rsa_key)
    async with ExchangeSimulator(
        public_keys={KEY_ID: rsa_key.public_key()}, market_count=8, rate_hz=rate_hz, seed=5
    ) as sim:
        env = write_nats_env(
            tmp_path,
            url=sim.url,
            key_file=key_file,
            nats_url=nats_server.url,
            markets=list(sim.markets),
        )
        proc = await spawn_connector(env)
        try:
            await wait_until(lambda: len(sim.sent) >= frames // 2, 60, f"{frames // 2} frames")
            if restart_nats:
                await nats_server.kill()
                await asyncio.sleep(1.0)  # the outage: the connector must hold and push back
                await nats_server.restart()
            await wait_until(lambda: len(sim.sent) >= frames, 60, f"{frames} frames")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()[-4000:]
        return [f.data for f in sim.sent]


async def test_every_simulated_record_is_in_the_stream_exactly_once_in_order(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, nats_server: NatsServer
) -> None:
    sent = await run_and_stop(tmp_path, rsa_key, nats_server, rate_hz=2000.0, frames=2000)
    assert_stream_matches(await read_stream(nats_server.url), sent)


async def test_nats_restart_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, nats_server: NatsServer
) -> None:
    sent = await run_and_stop(
        tmp_path, rsa_key, nats_server, rate_hz=2000.0, frames=4000, restart_nats=True
    )
    assert_stream_matches(await read_stream(nats_server.url), sent)


async def test_sigterm_during_a_burst_exits_0_after_the_last_ack(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, nats_server: NatsServer
) -> None:
    """The simulator sends flat out; SIGTERM lands mid-burst; nothing sent may be missing."""
    sent = await run_and_stop(tmp_path, rsa_key, nats_server, rate_hz=0.0, frames=5000)
    assert_stream_matches(await read_stream(nats_server.url), sent)
