"""Shared test fixtures: real RSA keys, the captures directory, PEM files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.auth import generate_private_key
from ssmd.natsserver import NatsServer

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
