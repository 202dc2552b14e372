"""NATS transport settings: defaults from the environment name, consistency rules, inline
secrets refused, secrets resolved from env vars and files, describe() without secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssmd.config import (
    NatsPayload,
    NatsSecrets,
    NatsTransportSettings,
    Overflow,
    Settings,
    StreamDiscard,
    StreamStorage,
    describe,
    load_environment,
    resolve_nats_secrets,
)
from ssmd.errors import ConfigError

from .test_config import load_error, write


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


NATS_YAML = """\
name: kalshi-dev
exchange:
  simulator: {}
transport:
  kind: nats
  servers: [nats://127.0.0.1:4222, nats://127.0.0.1:4223]
"""


def nats_settings(tmp_path: Path, extra: str = "", *, base: str = NATS_YAML) -> Settings:
    return load_environment(str(write(tmp_path, base + extra)))


def test_nats_transport_defaults_resolve_from_the_environment_name(tmp_path: Path) -> None:
    settings = nats_settings(tmp_path)
    transport = settings.transport
    assert isinstance(transport, NatsTransportSettings)
    assert transport.servers == ("nats://127.0.0.1:4222", "nats://127.0.0.1:4223")
    assert transport.subject_prefix == "ssmd.kalshi-dev.kalshi"
    assert transport.stream.name == "SSMD_KALSHI_DEV_KALSHI"
    assert transport.connection_name == "ssmd-kalshi-dev"
    assert transport.source == settings.source
    assert transport.managed_server is None
    assert transport.payload is NatsPayload.JSON
    assert transport.overflow is Overflow.BLOCK
    assert transport.stream.storage is StreamStorage.FILE
    assert transport.stream.discard is StreamDiscard.OLD
    assert transport.stream.create is True
    assert transport.stream.replicas == 1
    assert transport.stream.duplicate_window_s == 120
    assert transport.stream.max_bytes == -1
    assert transport.max_pending_acks == 4096
    assert transport.ack_timeout_s == 5
    assert (transport.reconnect_min_s, transport.reconnect_max_s) == (0.1, 5)
    assert not transport.tls.enabled
    assert resolve_nats_secrets(settings) == NatsSecrets()


def test_nats_explicit_names_and_nulls(tmp_path: Path) -> None:
    text = NATS_YAML.replace("name: kalshi-dev\n", "") + (
        "  connection_name: null\n  subject_prefix: md.prod\n  payload: msgpack\n"
        "  overflow: drop\n  stream:\n    name: MD\n    storage: memory\n    replicas: 3\n"
        "    discard: new\n    create: false\n"
    )
    transport = nats_settings(tmp_path, base=text).transport
    assert isinstance(transport, NatsTransportSettings)
    assert transport.connection_name == "ssmd-env"  # the file stem is the environment name
    assert transport.subject_prefix == "md.prod"
    assert transport.stream.name == "MD"
    assert transport.payload is NatsPayload.MSGPACK
    assert transport.overflow is Overflow.DROP
    assert transport.stream.storage is StreamStorage.MEMORY
    assert transport.stream.discard is StreamDiscard.NEW
    assert (transport.stream.replicas, transport.stream.create) == (3, False)


def test_nats_managed_server_needs_no_servers(tmp_path: Path) -> None:
    text = NATS_YAML.replace("  servers: [nats://127.0.0.1:4222, nats://127.0.0.1:4223]\n", "")
    transport = nats_settings(tmp_path, "  managed_server:\n    port: 0\n", base=text).transport
    assert isinstance(transport, NatsTransportSettings)
    assert transport.servers == ()
    assert transport.managed_server is not None
    assert transport.managed_server.port == 0
    assert transport.managed_server.store_dir == tmp_path / "var" / "nats"


def test_nats_without_servers_or_managed_server_is_rejected(tmp_path: Path) -> None:
    text = NATS_YAML.replace("  servers: [nats://127.0.0.1:4222, nats://127.0.0.1:4223]\n", "")
    error = load_error(tmp_path, text)
    assert error.field == "transport.servers"
    assert "no NATS server" in error.message
    assert "managed_server" in error.fix


def test_nats_servers_and_managed_server_are_exclusive(tmp_path: Path) -> None:
    error = load_error(tmp_path, NATS_YAML + "  managed_server: {}\n")
    assert error.field == "transport.servers"
    assert "not both" in error.fix


@pytest.mark.parametrize("key", ["password", "token", "nkey_seed"])
def test_nats_inline_secret_is_rejected_with_the_fix(tmp_path: Path, key: str) -> None:
    error = load_error(tmp_path, NATS_YAML + f"  {key}: s3cr3t-value\n")
    assert error.field == f"transport.{key}"
    assert "inline secret" in error.message
    assert f"transport.{key}_env" in error.fix
    assert f"transport.{key}_file" in error.fix
    assert "s3cr3t-value" not in str(error)


def test_nats_credentials_in_a_server_url_are_rejected(tmp_path: Path) -> None:
    text = NATS_YAML.replace("nats://127.0.0.1:4223", "nats://bob:s3cr3t@127.0.0.1:4223")
    error = load_error(tmp_path, text)
    assert error.field == "transport.servers.1"
    assert "password_env" in error.fix
    assert "s3cr3t" not in str(error)


def test_nats_server_url_scheme_is_checked(tmp_path: Path) -> None:
    error = load_error(tmp_path, NATS_YAML.replace("nats://127.0.0.1:4222", "http://x:4222"))
    assert error.field == "transport.servers.0"
    assert "nats://" in error.fix


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ("  user: bob\n", "transport.password_env", "together"),
        ("  password_env: NATS_PASSWORD\n", "transport.user", "together"),
        (
            "  user: bob\n  password_env: P\n  password_file: p.txt\n",
            "transport.password_file",
            "password_env or password_file",
        ),
        ("  token_env: T\n  token_file: t.txt\n", "transport.token_file", "token_env"),
        ("  token_env: T\n  nkey_seed_env: S\n", "transport.nkey_seed", "authentication"),
        ("  user: bob\n  password_env: P\n  token_env: T\n", "transport.token", "authentication"),
        ("  nkey_seed_file: s.nk\n  creds_file: u.creds\n", "transport.creds_file", "one"),
        ("  tls:\n    cert_file: c.pem\n", "transport.tls.key_file", "missing"),
        ("  reconnect_min_s: 2\n  reconnect_max_s: 1\n", "transport.reconnect_max_s", "below"),
        ("  subject_prefix: ssmd.*.x\n", "transport.subject_prefix", "subject"),
        ("  stream:\n    name: A.B\n", "transport.stream.name", "stream name"),
        ("  max_pending_acks: 0\n", "transport.max_pending_acks", "range"),
        ("  payload: xml\n", "transport.payload", "not allowed"),
    ],
)
def test_nats_inconsistent_settings_are_rejected(
    tmp_path: Path, extra: str, field: str, words: str
) -> None:
    error = load_error(tmp_path, NATS_YAML + extra)
    assert error.field == field
    assert words in error.message or words in error.fix


def test_nats_seed_pasted_into_an_env_name_is_rejected(tmp_path: Path) -> None:
    seed = "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4"
    error = load_error(tmp_path, NATS_YAML + f"  nkey_seed_env: {seed}\n")
    assert error.field == "transport.nkey_seed_env"
    assert "NAME" in error.fix
    assert seed not in str(error)


def test_nats_unknown_kind_lists_both_transports(tmp_path: Path) -> None:
    error = load_error(tmp_path, NATS_YAML.replace("kind: nats", "kind: kafka"))
    assert "file" in error.fix
    assert "nats" in error.fix


def test_nats_secrets_from_env_vars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSMD_TEST_NATS_PASSWORD", " pw-from-env\n")
    settings = nats_settings(tmp_path, "  user: bob\n  password_env: SSMD_TEST_NATS_PASSWORD\n")
    secrets = resolve_nats_secrets(settings)
    assert secrets == NatsSecrets(password="pw-from-env")
    assert "pw-from-env" not in repr(secrets)
    assert isinstance(settings.transport, NatsTransportSettings)
    assert resolve_nats_secrets(settings.transport) == secrets


def test_nats_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "token.txt").write_text("tok-from-file\n")
    settings = nats_settings(tmp_path, "  token_file: token.txt\n")
    assert resolve_nats_secrets(settings) == NatsSecrets(token="tok-from-file")
    (tmp_path / "seed.nk").write_text("SUAseed\n")
    settings = nats_settings(tmp_path, "  nkey_seed_file: seed.nk\n")
    assert resolve_nats_secrets(settings) == NatsSecrets(nkey_seed="SUAseed")


def test_nats_unset_secret_env_names_the_variable_not_a_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSMD_TEST_NATS_TOKEN", raising=False)
    settings = nats_settings(tmp_path, "  token_env: SSMD_TEST_NATS_TOKEN\n")
    with pytest.raises(ConfigError) as info:
        resolve_nats_secrets(settings)
    assert info.value.source == settings.source
    assert info.value.field == "transport.token_env"
    assert "SSMD_TEST_NATS_TOKEN" in info.value.message
    assert "export SSMD_TEST_NATS_TOKEN" in info.value.fix


def test_nats_missing_or_empty_secret_file_names_the_file(tmp_path: Path) -> None:
    settings = nats_settings(tmp_path, "  user: bob\n  password_file: absent.txt\n")
    with pytest.raises(ConfigError) as info:
        resolve_nats_secrets(settings)
    assert info.value.field == "transport.password_file"
    assert str(tmp_path / "absent.txt") in info.value.message
    (tmp_path / "absent.txt").write_text("\n")
    with pytest.raises(ConfigError, match="is empty") as info:
        resolve_nats_secrets(settings)
    assert info.value.field == "transport.password_file"


def test_nats_describe_has_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSMD_TEST_NATS_PASSWORD", "pw-very-secret")
    (tmp_path / "ca.pem").write_text("not read at load time")
    settings = nats_settings(
        tmp_path,
        "  user: bob\n  password_env: SSMD_TEST_NATS_PASSWORD\n  tls:\n    ca_file: ca.pem\n",
    )
    assert resolve_nats_secrets(settings).password == "pw-very-secret"
    summary = describe(settings)
    text = json.dumps(summary)
    assert summary["transport"]["password_env"] == "SSMD_TEST_NATS_PASSWORD"
    assert summary["transport"]["subject_prefix"] == "ssmd.kalshi-dev.kalshi"
    assert summary["transport"]["tls"]["ca_file"] == str(tmp_path / "ca.pem")
    assert "pw-very-secret" not in text


def test_nats_settings_built_in_code_resolve_the_same_defaults() -> None:
    settings = Settings.model_validate(
        {
            "name": "prod-1",
            "exchange": {"simulator": {}},
            "transport": NatsTransportSettings(servers=("nats://n1:4222",)),
        }
    )
    assert isinstance(settings.transport, NatsTransportSettings)
    assert settings.transport.subject_prefix == "ssmd.prod-1.kalshi"
    assert settings.transport.stream.name == "SSMD_PROD_1_KALSHI"
