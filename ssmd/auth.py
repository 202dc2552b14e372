"""Kalshi request signing (PROTOCOL.md §2): RSA-PSS/SHA-256, MGF1-SHA-256, salt = 32 bytes.

Pure: the caller passes the timestamp, so there is no clock here. Keys load from a PEM file or
an environment variable holding the PEM; errors name the source, never the key material.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ssmd.errors import KeyLoadError

WS_PATH = "/trade-api/ws/v2"
HEADER_KEY = "KALSHI-ACCESS-KEY"
HEADER_TIMESTAMP = "KALSHI-ACCESS-TIMESTAMP"
HEADER_SIGNATURE = "KALSHI-ACCESS-SIGNATURE"

# §2.3: salt length = digest length (32 bytes), never MAX_LENGTH.
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def message_to_sign(timestamp_ms: int, method: str, path: str) -> bytes:
    """§2.2: timestamp_ms + METHOD + path, the path without its query string."""
    return f"{timestamp_ms}{method.upper()}{path.split('?', 1)[0]}".encode()


def sign(private_key: rsa.RSAPrivateKey, timestamp_ms: int, method: str, path: str) -> str:
    """Standard-base64 RSA-PSS signature of the §2.2 message."""
    signature = private_key.sign(message_to_sign(timestamp_ms, method, path), _PSS, hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def verify(
    public_key: rsa.RSAPublicKey,
    signature_b64: str,
    timestamp_ms: int,
    method: str,
    path: str,
) -> bool:
    """True when `signature_b64` is a valid §2.3 signature (used by the simulator)."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        public_key.verify(
            signature, message_to_sign(timestamp_ms, method, path), _PSS, hashes.SHA256()
        )
    except InvalidSignature:
        return False
    return True


def signed_headers(
    key_id: str, private_key: rsa.RSAPrivateKey, timestamp_ms: int, method: str, path: str
) -> dict[str, str]:
    """The three KALSHI-ACCESS-* headers (§2.1), signed fresh for this timestamp."""
    return {
        HEADER_KEY: key_id,
        HEADER_TIMESTAMP: str(timestamp_ms),
        HEADER_SIGNATURE: sign(private_key, timestamp_ms, method, path),
    }


def load_private_key_pem(pem: bytes, *, source: str) -> rsa.RSAPrivateKey:
    """Load an unencrypted RSA private key in PKCS#1 or PKCS#8 PEM; `source` names where from."""
    if b"-----BEGIN" not in pem:
        raise KeyLoadError(
            "not a PEM private key (expected '-----BEGIN RSA PRIVATE KEY-----' or"
            " '-----BEGIN PRIVATE KEY-----')",
            source=source,
        )
    if b"ENCRYPTED" in pem:
        raise KeyLoadError(
            "the private key is passphrase-protected; ssmd needs an unencrypted key"
            " (convert with: openssl pkey -in KEY -out KEY.plain)",
            source=source,
        )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError as exc:
        raise KeyLoadError("the private key is passphrase-protected", source=source) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        # The library's message may quote PEM fragments: keep only our own words.
        raise KeyLoadError("could not parse the PEM private key", source=source) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyLoadError(
            f"expected an RSA private key, got {type(key).__name__.lstrip('_')}", source=source
        )
    return key


def load_private_key_file(path: Path) -> rsa.RSAPrivateKey:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise KeyLoadError(f"cannot read the key file ({exc.strerror})", source=str(path)) from exc
    return load_private_key_pem(pem, source=str(path))


def load_private_key_env(name: str) -> rsa.RSAPrivateKey:
    value = os.environ.get(name)
    source = f"environment variable {name}"
    if not value:
        raise KeyLoadError("is not set or empty", source=source)
    return load_private_key_pem(value.encode(), source=source)


def load_public_key_pem(pem: bytes, *, source: str) -> rsa.RSAPublicKey:
    """Load an RSA public key (SubjectPublicKeyInfo or PKCS#1 PEM), for the simulator."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyLoadError("could not parse the PEM public key", source=source) from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyLoadError("expected an RSA public key", source=source)
    return key


def generate_private_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """A fresh RSA key, for the local stack and tests (never for production credentials)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def public_key_pem(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> bytes:
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True, repr=False)
class Credentials:
    """An API key id and its private key. repr never shows the key."""

    key_id: str
    private_key: rsa.RSAPrivateKey

    def headers(
        self, timestamp_ms: int, method: str = "GET", path: str = WS_PATH
    ) -> dict[str, str]:
        return signed_headers(self.key_id, self.private_key, timestamp_ms, method, path)

    def __repr__(self) -> str:
        return f"Credentials(key_id={self.key_id!r}, private_key=<redacted>)"
