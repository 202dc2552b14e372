"""Secrets stay secret: a connector process with a real RSA key (given as PEM text in an
environment variable) and a NATS password runs against the simulator and an authenticated
nats-server; neither secret appears in its logs, its metrics, its health answers or anything it
published."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
from pathlib import Path

import httpx
import nats
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.exchange.server import ExchangeSimulator
from ssmd.natsserver import NatsServer

from .conftest import write_pem
from .test_connector_e2e import CONNECTOR, KEY_ID, wait_until

pytestmark = pytest.mark.integration


async def test_neither_the_key_nor_the_nats_password_leaks(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    password = "pw-" + secrets.token_hex(16)
    pem = write_pem(tmp_path / "key.pem", rsa_key).read_text()
    pem_lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    async with (
        NatsServer(tmp_path / "nats", extra_args=["--user", "ssmd", "--pass", password]) as server,
        ExchangeSimulator(
            public_keys={KEY_ID: rsa_key.public_key()}, market_count=4, rate_hz=400.0, seed=5
        ) as sim,
    ):
        env = tmp_path / "secrets.yaml"
        env.write_text(
            f"""
name: secrets
exchange:
  ws_url: {sim.url}
credentials:
  key_id_env: SSMD_TEST_KEY_ID
  private_key_env: SSMD_TEST_PRIVATE_KEY
subscription:
  markets: {json.dumps(sim.markets)}
transport:
  kind: nats
  servers: [{server.url}]
  user: ssmd
  password_env: SSMD_TEST_NATS_PASSWORD
runtime:
  summary_interval_s: 1
ops:
  address: 127.0.0.1:0
log:
  level: debug
  format: json
"""
        )
        proc = await asyncio.create_subprocess_exec(
            CONNECTOR,
            "--env",
            str(env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={
                **os.environ,
                "SSMD_TEST_KEY_ID": KEY_ID,
                "SSMD_TEST_PRIVATE_KEY": pem,
                "SSMD_TEST_NATS_PASSWORD": password,
            },
        )
        assert proc.stderr is not None
        log_lines: list[str] = []
        ops_url = ""
        answers: list[str] = []
        try:
            while not ops_url:
                line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
                assert line, "the connector ended before its ops server started"
                log_lines.append(line)
                if '"ops.started"' in line:
                    ops_url = json.loads(line)["url"]
            await wait_until(lambda: len(sim.sent) >= 800, 30, "800 frames sent")
            async with httpx.AsyncClient(base_url=ops_url) as http:
                for path in ("/metrics", "/health", "/ready"):
                    answers.append((await http.get(path)).text)
        finally:
            proc.send_signal(signal.SIGTERM)
            rest_out, rest_err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, rest_err.decode()[-3000:]
        output = "".join(log_lines) + rest_err.decode() + rest_out.decode()

        nc = await nats.connect(server.url, user="ssmd", password=password)
        try:
            js = nc.jetstream()
            info = await js.stream_info("SSMD_SECRETS_KALSHI")
            published = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                message = await js.get_msg("SSMD_SECRETS_KALSHI", seq)
                published.append((message.data or b"").decode())
                published.append(json.dumps(dict(message.headers or {})))
        finally:
            await nc.close()

    assert info.state.messages > 500
    assert any("ssmd_frames_received_total" in answer for answer in answers)
    everything = {"logs": output, "ops answers": "".join(answers), "records": "".join(published)}
    for where, text in everything.items():
        assert password not in text, f"the NATS password leaked into {where}"
        assert "PRIVATE KEY" not in text, f"a PEM header leaked into {where}"
        leaked = [line for line in pem_lines if line in text]
        assert not leaked, f"key material leaked into {where}"
    # The logs did say what happened, so the absence above is not an empty log.
    events = set(re.findall(r'"event":"([a-z_.]+)"', output))
    assert {"connector.started", "session.subscribed", "connector.stopped"} <= events
