"""Request signing (PROTOCOL.md §2) and private-key loading, with real generated RSA keys."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ssmd.auth import (
    HEADER_KEY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    WS_PATH,
    Credentials,
    load_private_key_env,
    load_private_key_file,
    load_private_key_pem,
    load_public_key_pem,
    message_to_sign,
    public_key_pem,
    sign,
    signed_headers,
    verify,
)
from ssmd.errors import AuthError, KeyLoadError

TS_MS = 1703123456789
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def pem_of(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, *, pkcs8: bool) -> bytes:
    fmt = (
        serialization.PrivateFormat.PKCS8
        if pkcs8
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def body_lines(pem: bytes) -> list[str]:
    """The base64 lines of a PEM (everything but the BEGIN/END armour and headers)."""
    return [
        line
        for line in pem.decode().splitlines()
        if line and not line.startswith("-----") and ":" not in line
    ]


def assert_no_key_material(error: BaseException, pem: bytes) -> None:
    text = f"{error} {error!r}"
    assert "-----BEGIN" not in text
    for line in body_lines(pem):
        assert line not in text
        assert line[:16] not in text


def same_key(a: rsa.RSAPrivateKey, b: rsa.RSAPrivateKey) -> bool:
    return a.private_numbers() == b.private_numbers()


# -- §2.2 message and §2.3 signature ---------------------------------------------------------


def test_message_to_sign_is_timestamp_method_path_without_query() -> None:
    assert message_to_sign(TS_MS, "GET", WS_PATH) == b"1703123456789GET/trade-api/ws/v2"
    assert (
        message_to_sign(TS_MS, "get", "/trade-api/v2/portfolio/orders?limit=5")
        == b"1703123456789GET/trade-api/v2/portfolio/orders"
    )
    assert message_to_sign(TS_MS, "post", "/trade-api/v2/x") == b"1703123456789POST/trade-api/v2/x"


def test_sign_verify_round_trip(rsa_key: rsa.RSAPrivateKey) -> None:
    signature = sign(rsa_key, TS_MS, "GET", WS_PATH)
    raw = base64.b64decode(signature, validate=True)  # standard alphabet with padding
    assert len(raw) == 256
    assert verify(rsa_key.public_key(), signature, TS_MS, "GET", WS_PATH)
    # PSS is randomized: two signatures differ and both verify.
    again = sign(rsa_key, TS_MS, "GET", WS_PATH)
    assert again != signature
    assert verify(rsa_key.public_key(), again, TS_MS, "GET", WS_PATH)


def test_signature_is_pss_sha256_with_32_byte_salt(rsa_key: rsa.RSAPrivateKey) -> None:
    signature = base64.b64decode(sign(rsa_key, TS_MS, "GET", WS_PATH))
    # cryptography itself verifies with the exact §2.3 parameters (raises if they differ).
    rsa_key.public_key().verify(
        signature, b"1703123456789GET/trade-api/ws/v2", PSS, hashes.SHA256()
    )


def test_query_string_does_not_change_the_signature_check(rsa_key: rsa.RSAPrivateKey) -> None:
    signature = sign(rsa_key, TS_MS, "GET", "/trade-api/v2/markets?limit=5")
    assert verify(rsa_key.public_key(), signature, TS_MS, "GET", "/trade-api/v2/markets")


def test_signed_headers_carry_key_timestamp_and_valid_signature(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    headers = signed_headers("a952bcbe-ec3b-4b5b-b8f9-11dae589608c", rsa_key, TS_MS, "GET", WS_PATH)
    assert set(headers) == {HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE}
    assert headers[HEADER_KEY] == "a952bcbe-ec3b-4b5b-b8f9-11dae589608c"
    assert headers[HEADER_TIMESTAMP] == "1703123456789"
    assert verify(rsa_key.public_key(), headers[HEADER_SIGNATURE], TS_MS, "GET", WS_PATH)


# -- §2.4: what verify must reject ------------------------------------------------------------


def test_verify_rejects_pkcs1v15_signature(rsa_key: rsa.RSAPrivateKey) -> None:
    raw = rsa_key.sign(message_to_sign(TS_MS, "GET", WS_PATH), padding.PKCS1v15(), hashes.SHA256())
    assert not verify(rsa_key.public_key(), base64.b64encode(raw).decode(), TS_MS, "GET", WS_PATH)


def test_verify_rejects_timestamp_in_seconds(rsa_key: rsa.RSAPrivateKey) -> None:
    seconds = TS_MS // 1000
    signature = sign(rsa_key, seconds, "GET", WS_PATH)
    assert not verify(rsa_key.public_key(), signature, TS_MS, "GET", WS_PATH)


def test_verify_rejects_path_signed_with_query_string(rsa_key: rsa.RSAPrivateKey) -> None:
    wrong_message = f"{TS_MS}GET/trade-api/v2/markets?limit=5".encode()
    raw = rsa_key.sign(wrong_message, PSS, hashes.SHA256())
    signature = base64.b64encode(raw).decode()
    assert not verify(rsa_key.public_key(), signature, TS_MS, "GET", "/trade-api/v2/markets")


@pytest.mark.parametrize("signed_path", ["/trade-api/v2", "/ws", "/trade-api/ws/v2/", "/"])
def test_verify_rejects_wrong_path(rsa_key: rsa.RSAPrivateKey, signed_path: str) -> None:
    signature = sign(rsa_key, TS_MS, "GET", signed_path)
    assert not verify(rsa_key.public_key(), signature, TS_MS, "GET", WS_PATH)


def test_verify_rejects_wrong_method(rsa_key: rsa.RSAPrivateKey) -> None:
    signature = sign(rsa_key, TS_MS, "POST", WS_PATH)
    assert not verify(rsa_key.public_key(), signature, TS_MS, "GET", WS_PATH)


def test_verify_rejects_wrong_key(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    signature = sign(other_rsa_key, TS_MS, "GET", WS_PATH)
    assert not verify(rsa_key.public_key(), signature, TS_MS, "GET", WS_PATH)


def test_verify_rejects_base64url_without_padding(rsa_key: rsa.RSAPrivateKey) -> None:
    standard = sign(rsa_key, TS_MS, "GET", WS_PATH)
    raw = base64.b64decode(standard)
    url_safe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert not verify(rsa_key.public_key(), url_safe, TS_MS, "GET", WS_PATH)
    assert verify(rsa_key.public_key(), standard, TS_MS, "GET", WS_PATH)


def test_verify_rejects_garbage_signature(rsa_key: rsa.RSAPrivateKey) -> None:
    assert not verify(rsa_key.public_key(), "not base64!", TS_MS, "GET", WS_PATH)
    assert not verify(rsa_key.public_key(), "", TS_MS, "GET", WS_PATH)


# -- key loading -------------------------------------------------------------------------------


@pytest.mark.parametrize("pkcs8", [False, True], ids=["pkcs1", "pkcs8"])
def test_load_private_key_from_file(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, pkcs8: bool
) -> None:
    pem = pem_of(rsa_key, pkcs8=pkcs8)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY" if pkcs8 else b"-----BEGIN RSA PRIVATE KEY")
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    loaded = load_private_key_file(path)
    assert same_key(loaded, rsa_key)
    assert verify(rsa_key.public_key(), sign(loaded, TS_MS, "GET", WS_PATH), TS_MS, "GET", WS_PATH)


@pytest.mark.parametrize("pkcs8", [False, True], ids=["pkcs1", "pkcs8"])
def test_load_private_key_from_env(
    monkeypatch: pytest.MonkeyPatch, rsa_key: rsa.RSAPrivateKey, pkcs8: bool
) -> None:
    monkeypatch.setenv("SSMD_TEST_PRIVATE_KEY", pem_of(rsa_key, pkcs8=pkcs8).decode())
    loaded = load_private_key_env("SSMD_TEST_PRIVATE_KEY")
    assert same_key(loaded, rsa_key)


def test_public_key_pem_round_trip(rsa_key: rsa.RSAPrivateKey) -> None:
    public = load_public_key_pem(public_key_pem(rsa_key), source="test")
    assert public.public_numbers() == rsa_key.public_key().public_numbers()
    assert verify(public, sign(rsa_key, TS_MS, "GET", WS_PATH), TS_MS, "GET", WS_PATH)


def test_non_pem_file_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "key.txt"
    path.write_text("this is not a key\n")
    with pytest.raises(KeyLoadError) as info:
        load_private_key_file(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    assert "not a PEM" in str(info.value)


def test_corrupt_pem_body_is_rejected_without_echoing_it(tmp_path: Path) -> None:
    pem = (
        b"-----BEGIN RSA PRIVATE KEY-----\n"
        b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n"
        b"-----END RSA PRIVATE KEY-----\n"
    )
    path = tmp_path / "corrupt.pem"
    path.write_bytes(pem)
    with pytest.raises(KeyLoadError) as info:
        load_private_key_file(path)
    assert str(path) in str(info.value)
    assert_no_key_material(info.value, pem)


@pytest.mark.parametrize("pkcs8", [False, True], ids=["pkcs1", "pkcs8"])
def test_passphrase_protected_key_is_rejected(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, pkcs8: bool
) -> None:
    fmt = (
        serialization.PrivateFormat.PKCS8
        if pkcs8
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, fmt, serialization.BestAvailableEncryption(b"hunter2")
    )
    path = tmp_path / "encrypted.pem"
    path.write_bytes(pem)
    with pytest.raises(KeyLoadError) as info:
        load_private_key_file(path)
    assert str(path) in str(info.value)
    assert "passphrase" in str(info.value)
    assert_no_key_material(info.value, pem)


def test_ec_key_is_rejected(tmp_path: Path) -> None:
    pem = pem_of(ec.generate_private_key(ec.SECP256R1()), pkcs8=True)
    path = tmp_path / "ec.pem"
    path.write_bytes(pem)
    with pytest.raises(KeyLoadError) as info:
        load_private_key_file(path)
    assert str(path) in str(info.value)
    assert "RSA" in str(info.value)
    assert_no_key_material(info.value, pem)


def test_missing_key_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "absent.pem"
    with pytest.raises(KeyLoadError) as info:
        load_private_key_file(path)
    assert info.value.source == str(path)
    assert "cannot read" in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_unset_env_var_is_rejected(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("SSMD_TEST_ABSENT_KEY", raising=False)
    else:
        monkeypatch.setenv("SSMD_TEST_ABSENT_KEY", value)
    with pytest.raises(KeyLoadError) as info:
        load_private_key_env("SSMD_TEST_ABSENT_KEY")
    assert "SSMD_TEST_ABSENT_KEY" in info.value.source
    assert "not set" in str(info.value)


def test_bad_key_in_env_var_names_the_variable_not_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pem = pem_of(ec.generate_private_key(ec.SECP256R1()), pkcs8=False)
    monkeypatch.setenv("SSMD_TEST_EC_KEY", pem.decode())
    with pytest.raises(KeyLoadError) as info:
        load_private_key_env("SSMD_TEST_EC_KEY")
    assert "SSMD_TEST_EC_KEY" in str(info.value)
    assert_no_key_material(info.value, pem)


def test_key_load_error_is_an_auth_error() -> None:
    with pytest.raises(AuthError):
        load_private_key_pem(b"nope", source="inline test")


# -- Credentials -------------------------------------------------------------------------------


def test_credentials_repr_hides_the_key(rsa_key: rsa.RSAPrivateKey) -> None:
    credentials = Credentials(key_id="a952bcbe-ec3b-4b5b-b8f9-11dae589608c", private_key=rsa_key)
    pem = pem_of(rsa_key, pkcs8=True)
    for text in (repr(credentials), str(credentials), f"{credentials}"):
        assert "a952bcbe-ec3b-4b5b-b8f9-11dae589608c" in text
        assert "<redacted>" in text
        assert "RSAPrivateKey" not in text
        for line in body_lines(pem)[:3]:
            assert line not in text


def test_credentials_headers_sign_the_websocket_path(rsa_key: rsa.RSAPrivateKey) -> None:
    credentials = Credentials(key_id="key-1", private_key=rsa_key)
    headers = credentials.headers(TS_MS)
    assert headers[HEADER_KEY] == "key-1"
    assert headers[HEADER_TIMESTAMP] == str(TS_MS)
    assert verify(rsa_key.public_key(), headers[HEADER_SIGNATURE], TS_MS, "GET", WS_PATH)
