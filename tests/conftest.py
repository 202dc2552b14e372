"""Shared test fixtures: real RSA keys, the captures directory, PEM files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from nats.js import api as js_api

from ssmd.auth import generate_private_key
from ssmd.natsserver import NatsServer
from ssmd.records import Record

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO.parent / "shared" / "kalshi" / "captures"


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    """One real 2048-bit key per test session (generation costs ~100 ms)."""
    return generate_private_key()


@pytest.fixture(scope="session")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return generate_private_key()


@pytest.fixture
def captures_dir() -> Path:
    assert CAPTURES.is_dir(), f"captures not found at {CAPTURES}"
    return CAPTURES


def write_pem(path: Path, key: rsa.RSAPrivateKey, *, pkcs8: bool = False) -> Path:
    fmt = (
        serialization.PrivateFormat.PKCS8
        if pkcs8
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    )
    return path


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A real nats-server with JetStream on a free port (`-p -1`), store in tmp, torn down."""
    server = NatsServer(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@dataclass
class Stored:
    """One message as JetStream stored it."""

    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes


async def read_stream(url: str, stream: str, subject: str) -> list[Stored]:
    """Every message of `stream` on `subject` (a filter, e.g. `prefix.>`), in stream order (an
    ephemeral pull consumer, 1,000 a fetch)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=1)  # API calls: short, so callers can retry quickly
        info = await js.stream_info(stream)
        total = info.state.messages
        config = js_api.ConsumerConfig(
            ack_policy=js_api.AckPolicy.NONE, deliver_policy=js_api.DeliverPolicy.ALL
        )
        sub = await js.pull_subscribe(subject, stream=stream, config=config)
        stored: list[Stored] = []
        while len(stored) < total:
            for msg in await sub.fetch(batch=min(1000, total - len(stored)), timeout=5):
                seq = msg.metadata.sequence.stream
                stored.append(Stored(seq, msg.subject, dict(msg.headers or {}), msg.data))
        return stored
    finally:
        await nc.close()


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until true; fail naming `what` after `timeout_s` (never a pass)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def drained(sink: asyncio.Queue[Record | None]) -> list[Record]:
    """Everything queued in a client's sink now, in order (the end marker None never is)."""
    records: list[Record] = []
    while not sink.empty():
        record = sink.get_nowait()
        assert record is not None
        records.append(record)
    return records


PROXY_NAMES = ("http", "https", "ws", "wss", "socks", "all", "no")


def set_proxy_environment(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Exactly `values` (e.g. HTTP_PROXY=...) and no other proxy variable, whatever the
    environment pytest runs in."""
    for name in PROXY_NAMES:
        monkeypatch.delenv(f"{name}_proxy", raising=False)
        monkeypatch.delenv(f"{name.upper()}_PROXY", raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)  # getproxies() then skips HTTP_PROXY
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and every process it starts) reaches 127.0.0.1 directly, whatever proxy the
    developer's shell names, unless the test sets one."""
    set_proxy_environment(monkeypatch)
