"""Environment loading: the shipped environments, every error class, credentials, describe()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.config import (
    FileTransportSettings,
    NatsPayload,
    NatsSecrets,
    NatsTransportSettings,
    Overflow,
    Settings,
    StreamDiscard,
    StreamStorage,
    describe,
    load_environment,
    resolve_credentials,
    resolve_nats_secrets,
)
from ssmd.errors import ConfigError, KeyLoadError
from ssmd.logs import LogFormat, LogLevel
from ssmd.messages import Channel

REPO_ENVIRONMENTS = Path(__file__).resolve().parents[1] / "environments"

SIMULATOR_YAML = """\
exchange:
  simulator:
    markets: 5
    rate_hz: 0
    seed: 7
subscription:
  channels: [orderbook_delta, ticker, trade]
transport:
  kind: file
  dir: out/records
"""

REAL_YAML = """\
name: real
exchange:
  ws_url: wss://external-api-ws.demo.kalshi.co/trade-api/ws/v2
credentials:
  key_id_env: SSMD_TEST_KEY_ID
  private_key_env: SSMD_TEST_PRIVATE_KEY
subscription:
  markets: [KXBTCD-26AUG2017-T73749.99]
"""


def write(tmp_path: Path, text: str, name: str = "env.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_environment(str(path))
    assert info.value.source == str(path)
    return info.value


def pem_of(key: rsa.RSAPrivateKey, *, pkcs8: bool) -> bytes:
    fmt = (
        serialization.PrivateFormat.PKCS8
        if pkcs8
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


# -- the shipped environments --------------------------------------------------------------


def test_local_environment_runs_the_simulator(tmp_path: Path) -> None:
    settings = load_environment("local", environments_dir=REPO_ENVIRONMENTS)
    assert settings.name == "local"
    assert settings.source == str(REPO_ENVIRONMENTS / "local.yaml")
    assert settings.exchange.ws_url is None
    assert settings.exchange.simulator is not None
    assert settings.exchange.simulator.markets == 20
    assert settings.exchange.simulator.rate_hz == 200
    assert settings.credentials is None
    assert resolve_credentials(settings) is None
    assert settings.subscription.channels == tuple(Channel)
    assert settings.subscription.markets == ()
    assert settings.subscription.use_yes_price is True
    # The local stack publishes to a nats-server it starts itself.
    transport = settings.transport
    assert isinstance(transport, NatsTransportSettings)
    assert transport.servers == ()
    assert transport.managed_server is not None
    # Relative paths resolve against the working directory at load time.
    assert transport.managed_server.store_dir == tmp_path / "var" / "nats"
    assert transport.subject_prefix == "ssmd.local.kalshi"
    assert transport.stream.name == "SSMD_LOCAL_KALSHI"
    assert transport.connection_name == "ssmd-local"
    assert settings.log.level is LogLevel.INFO
    assert settings.log.format is LogFormat.AUTO


def test_local_files_environment_writes_files(tmp_path: Path) -> None:
    settings = load_environment("local-files", environments_dir=REPO_ENVIRONMENTS)
    assert settings.exchange.simulator is not None
    assert isinstance(settings.transport, FileTransportSettings)
    assert settings.transport.dir == tmp_path / "var" / "records"


def test_kalshi_dev_environment_targets_the_demo_host() -> None:
    settings = load_environment("kalshi-dev", environments_dir=REPO_ENVIRONMENTS)
    assert settings.name == "kalshi-dev"
    assert settings.exchange.ws_url == "wss://external-api-ws.demo.kalshi.co/trade-api/ws/v2"
    assert settings.exchange.simulator is None
    assert settings.credentials is not None
    assert settings.credentials.key_id_env == "KALSHI_API_KEY_ID"
    assert settings.credentials.private_key_env is not None
    assert len(settings.subscription.markets) >= 1


def test_kalshi_prod_environment_targets_the_prod_host() -> None:
    settings = load_environment("kalshi-prod", environments_dir=REPO_ENVIRONMENTS)
    assert settings.exchange.ws_url == "wss://external-api-ws.kalshi.com/trade-api/ws/v2"
    assert settings.credentials is not None
    assert settings.subscription.markets


def test_environment_names_resolve_in_the_working_directory_first(tmp_path: Path) -> None:
    (tmp_path / "environments").mkdir()
    write(tmp_path / "environments", SIMULATOR_YAML, "mine.yaml")
    settings = load_environment("mine")
    assert settings.name == "mine"  # defaults to the file stem
    assert settings.source.endswith("environments/mine.yaml")


def test_environment_names_fall_back_to_the_repo_checkout(tmp_path: Path) -> None:
    # The working directory (tmp_path) has no environments/ directory.
    assert load_environment("local").source == str(REPO_ENVIRONMENTS / "local.yaml")
    # ... or one without that name.
    (tmp_path / "environments").mkdir()
    write(tmp_path / "environments", SIMULATOR_YAML, "mine.yaml")
    assert load_environment("kalshi-prod").source == str(REPO_ENVIRONMENTS / "kalshi-prod.yaml")


def test_a_working_directory_environment_overrides_the_repo_one(tmp_path: Path) -> None:
    (tmp_path / "environments").mkdir()
    write(tmp_path / "environments", SIMULATOR_YAML, "local.yaml")
    settings = load_environment("local")
    assert settings.source == str(tmp_path / "environments" / "local.yaml")
    assert settings.exchange.simulator is not None
    assert settings.exchange.simulator.markets == 5


def test_missing_name_lists_environments_from_both_places(tmp_path: Path) -> None:
    (tmp_path / "environments").mkdir()
    write(tmp_path / "environments", SIMULATOR_YAML, "mine.yaml")
    with pytest.raises(ConfigError) as info:
        load_environment("nope")
    listed = info.value.fix.split("(", 1)[1].split(")", 1)[0].split(", ")
    assert {"kalshi-dev", "kalshi-prod", "local", "mine"} <= set(listed)
    assert listed == sorted(listed)


def test_path_loading_with_defaults(tmp_path: Path) -> None:
    settings = load_environment(str(write(tmp_path, SIMULATOR_YAML, "sim.yaml")))
    assert settings.name == "sim"
    assert settings.exchange.simulator is not None
    assert settings.exchange.simulator.seed == 7
    assert settings.exchange.simulator.rate_hz == 0
    assert settings.subscription.channels == (
        Channel.ORDERBOOK_DELTA,
        Channel.TICKER,
        Channel.TRADE,
    )
    assert isinstance(settings.transport, FileTransportSettings)
    assert settings.transport.dir == tmp_path / "out" / "records"
    assert settings.runtime.queue_size == 10_000
    assert settings.exchange.open_timeout_s == 10


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_environment(str(write(tmp_path, SIMULATOR_YAML)))
    with pytest.raises(ValueError, match="frozen"):
        settings.name = "other"  # type: ignore[misc]


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    text = SIMULATOR_YAML + "log:\n  level: DEBUG\n  format: json\n"
    settings = load_environment(str(write(tmp_path, text)))
    assert settings.log.level is LogLevel.DEBUG
    assert settings.log.format is LogFormat.JSON


# -- errors ------------------------------------------------------------------------------------


def test_missing_file_lists_the_environments() -> None:
    with pytest.raises(ConfigError) as info:
        load_environment("nope", environments_dir=REPO_ENVIRONMENTS)
    error = info.value
    assert error.source == str(REPO_ENVIRONMENTS / "nope.yaml")
    assert "not found" in error.message
    for name in ("local", "kalshi-dev", "kalshi-prod"):
        assert name in error.fix
        assert name in str(error)


def test_missing_path_lists_the_environments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_environment(str(tmp_path / "absent.yaml"), environments_dir=REPO_ENVIRONMENTS)
    assert "kalshi-prod" in info.value.fix


def test_yaml_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    error = load_error(tmp_path, "exchange:\n  simulator: {}\nsubscription:\n  markets: [a, b\n")
    assert "YAML syntax error" in error.message
    assert "line 5" in error.message or "line 4" in error.message
    assert "column" in error.message


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    error = load_error(tmp_path, SIMULATOR_YAML + "exchange:\n  simulator: {}\n")
    assert "duplicate key 'exchange'" in error.message
    assert "line 11" in error.message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    error = load_error(tmp_path, "- local\n")
    assert "mapping" in error.message
    assert "exchange" in error.fix


def test_unknown_key_names_the_allowed_keys(tmp_path: Path) -> None:
    error = load_error(tmp_path, SIMULATOR_YAML.replace("    seed: 7", "    sead: 7"))
    assert error.field == "exchange.simulator.sead"
    assert "unknown key 'sead'" in error.message
    assert error.fix == "allowed keys here: markets, rate_hz, seed"
    assert "exchange.simulator.sead" in str(error)


def test_unknown_key_in_the_transport_union(tmp_path: Path) -> None:
    error = load_error(tmp_path, SIMULATOR_YAML + "  rotate_bytes: 5\n")
    assert error.field == "transport.rotate_bytes"
    assert "rotate_max_bytes" in error.fix


def test_unknown_top_level_key(tmp_path: Path) -> None:
    error = load_error(tmp_path, SIMULATOR_YAML + "loggging: {}\n")
    assert error.field == "loggging"
    assert "log" in error.fix
    assert "subscription" in error.fix


@pytest.mark.parametrize("key", ["private_key", "password", "api_secret", "token"])
def test_inline_secret_is_rejected_with_the_fix(tmp_path: Path, key: str) -> None:
    secret_value = "-----BEGIN RSA PRIVATE KEY-----MIIEowIBAAKCAQEAsuper"
    text = (
        "exchange:\n  ws_url: wss://x.example/trade-api/ws/v2\n"
        f"credentials:\n  key_id: abc\n  {key}: '{secret_value}'\n"
        "subscription:\n  markets: [M]\n"
    )
    error = load_error(tmp_path, text)
    assert error.field == f"credentials.{key}"
    assert "inline secret" in error.message
    assert "private_key_file" in error.fix
    assert "private_key_env" in error.fix
    assert "MIIEowIBAAKCAQEA" not in str(error)


def test_pem_pasted_into_private_key_file_is_rejected_without_echo(tmp_path: Path) -> None:
    text = REAL_YAML.replace(
        "  private_key_env: SSMD_TEST_PRIVATE_KEY",
        '  private_key_file: "-----BEGIN RSA PRIVATE KEY-----\\nMIIEowIBAAKCAQEAsuper\\n"',
    )
    error = load_error(tmp_path, text)
    assert error.field == "credentials.private_key_file"
    assert "private_key_env" in error.fix
    assert "MIIEowIBAAKCAQEA" not in str(error)


def test_value_pasted_into_an_env_name_is_rejected(tmp_path: Path) -> None:
    text = REAL_YAML.replace("key_id_env: SSMD_TEST_KEY_ID", "key_id_env: a952bcbe-ec3b-4b5b")
    error = load_error(tmp_path, text)
    assert error.field == "credentials.key_id_env"
    assert "NAME" in error.fix
    assert "a952bcbe" not in str(error)


def test_bad_channel_name_says_what_is_allowed(tmp_path: Path) -> None:
    text = SIMULATOR_YAML.replace("[orderbook_delta, ticker, trade]", "[ticker, trade, ticker_v2]")
    error = load_error(tmp_path, text)
    assert error.field == "subscription.channels.2"
    assert "'ticker_v2'" in error.message
    for channel in Channel:
        assert channel.value in error.fix


def test_duplicate_channel_is_rejected(tmp_path: Path) -> None:
    text = SIMULATOR_YAML.replace("[orderbook_delta, ticker, trade]", "[ticker, trade, ticker]")
    error = load_error(tmp_path, text)
    assert error.field == "subscription.channels.2"
    assert "twice" in error.message


def test_bad_type_says_what_is_expected(tmp_path: Path) -> None:
    error = load_error(tmp_path, SIMULATOR_YAML.replace("markets: 5", "markets: lots"))
    assert error.field == "exchange.simulator.markets"
    assert "'lots'" in error.message
    assert "integer" in error.fix


def test_out_of_range_value_gives_the_bound(tmp_path: Path) -> None:
    error = load_error(tmp_path, SIMULATOR_YAML.replace("rate_hz: 0", "rate_hz: -1"))
    assert error.field == "exchange.simulator.rate_hz"
    assert error.fix == "use a number >= 0"


def test_section_that_is_not_a_mapping_lists_its_keys(tmp_path: Path) -> None:
    error = load_error(tmp_path, SIMULATOR_YAML + "log: loud\n")
    assert error.field == "log"
    assert error.fix == "allowed keys here: level, format"


def test_bad_enum_value(tmp_path: Path) -> None:
    error = load_error(tmp_path, SIMULATOR_YAML + "log:\n  format: xml\n")
    assert error.field == "log.format"
    assert "json" in error.fix
    assert "console" in error.fix


def test_unknown_transport_kind(tmp_path: Path) -> None:
    error = load_error(tmp_path, SIMULATOR_YAML.replace("kind: file", "kind: kafka"))
    assert error.field == "transport"
    assert "'kafka'" in error.message
    assert "file" in error.fix


def test_missing_transport_kind(tmp_path: Path) -> None:
    error = load_error(tmp_path, SIMULATOR_YAML.replace("  kind: file\n", ""))
    assert error.field == "transport"
    assert "kind" in error.message
    assert "file" in error.fix


def test_missing_exchange_section(tmp_path: Path) -> None:
    error = load_error(tmp_path, "name: x\n")
    assert error.field == "exchange"
    assert "missing" in error.message


def test_exchange_needs_a_url_or_the_simulator(tmp_path: Path) -> None:
    error = load_error(tmp_path, "exchange:\n  open_timeout_s: 5\n")
    assert error.field == "exchange.ws_url"
    assert "simulator" in error.fix


def test_real_exchange_with_no_markets_is_rejected(tmp_path: Path) -> None:
    error = load_error(tmp_path, REAL_YAML.replace("  markets: [KXBTCD-26AUG2017-T73749.99]", ""))
    assert error.field == "subscription.markets"
    assert "at least one market" in error.message
    assert "simulator only" in error.message
    assert "markets: [" in error.fix


def test_real_exchange_without_credentials_is_rejected(tmp_path: Path) -> None:
    text = REAL_YAML.replace(
        "credentials:\n  key_id_env: SSMD_TEST_KEY_ID\n  private_key_env: SSMD_TEST_PRIVATE_KEY\n",
        "",
    )
    error = load_error(tmp_path, text)
    assert error.field == "credentials"
    assert "key_id_env" in error.fix


def test_key_id_and_key_id_env_are_exclusive(tmp_path: Path) -> None:
    text = REAL_YAML.replace("  key_id_env:", "  key_id: abc\n  key_id_env:")
    error = load_error(tmp_path, text)
    assert error.field == "credentials.key_id_env"
    assert "exactly one" in error.message


def test_a_private_key_source_is_required(tmp_path: Path) -> None:
    text = REAL_YAML.replace("  private_key_env: SSMD_TEST_PRIVATE_KEY\n", "")
    error = load_error(tmp_path, text)
    assert error.field == "credentials.private_key_file"
    assert "neither" in error.message


def test_websocket_url_scheme_is_checked(tmp_path: Path) -> None:
    text = REAL_YAML.replace("wss://external-api-ws", "https://external-api-ws")
    error = load_error(tmp_path, text)
    assert error.field == "exchange.ws_url"
    assert "wss://" in error.fix


def test_config_error_carries_source_field_and_fix(tmp_path: Path) -> None:
    error = load_error(tmp_path, SIMULATOR_YAML.replace("rate_hz: 0", "rate_hz: fast"))
    assert error.source.endswith("env.yaml")
    assert error.field == "exchange.simulator.rate_hz"
    assert error.fix == "use a number"
    assert str(error) == f"{error.source}: {error.field}: {error.message} (fix: {error.fix})"


# -- credentials -------------------------------------------------------------------------------


@pytest.mark.parametrize("pkcs8", [False, True], ids=["pkcs1", "pkcs8"])
def test_credentials_from_a_key_file(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, pkcs8: bool
) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "kalshi.pem").write_bytes(pem_of(rsa_key, pkcs8=pkcs8))
    text = REAL_YAML.replace(
        "  key_id_env: SSMD_TEST_KEY_ID\n  private_key_env: SSMD_TEST_PRIVATE_KEY",
        "  key_id: a952bcbe-ec3b-4b5b-b8f9-11dae589608c\n  private_key_file: keys/kalshi.pem",
    )
    settings = load_environment(str(write(tmp_path, text)))
    assert settings.credentials is not None
    assert settings.credentials.private_key_file == tmp_path / "keys" / "kalshi.pem"
    credentials = resolve_credentials(settings)
    assert credentials is not None
    assert credentials.key_id == "a952bcbe-ec3b-4b5b-b8f9-11dae589608c"
    assert credentials.private_key.private_numbers() == rsa_key.private_numbers()


@pytest.mark.parametrize("pkcs8", [False, True], ids=["pkcs1", "pkcs8"])
def test_credentials_from_env_vars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_key: rsa.RSAPrivateKey, pkcs8: bool
) -> None:
    monkeypatch.setenv("SSMD_TEST_KEY_ID", "key-from-env")
    monkeypatch.setenv("SSMD_TEST_PRIVATE_KEY", pem_of(rsa_key, pkcs8=pkcs8).decode())
    credentials = resolve_credentials(load_environment(str(write(tmp_path, REAL_YAML))))
    assert credentials is not None
    assert credentials.key_id == "key-from-env"
    assert credentials.private_key.private_numbers() == rsa_key.private_numbers()


def test_unset_key_id_env_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSMD_TEST_KEY_ID", raising=False)
    path = write(tmp_path, REAL_YAML)
    with pytest.raises(ConfigError) as info:
        resolve_credentials(load_environment(str(path)))
    assert info.value.source == str(path)
    assert info.value.field == "credentials.key_id_env"
    assert "SSMD_TEST_KEY_ID" in info.value.message
    assert "export SSMD_TEST_KEY_ID" in info.value.fix


def test_unset_private_key_env_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSMD_TEST_KEY_ID", "key-from-env")
    monkeypatch.delenv("SSMD_TEST_PRIVATE_KEY", raising=False)
    with pytest.raises(KeyLoadError) as info:
        resolve_credentials(load_environment(str(write(tmp_path, REAL_YAML))))
    assert "SSMD_TEST_PRIVATE_KEY" in info.value.source
    assert "key-from-env" not in str(info.value)


def test_missing_key_file_names_the_file(tmp_path: Path) -> None:
    text = REAL_YAML.replace(
        "  key_id_env: SSMD_TEST_KEY_ID\n  private_key_env: SSMD_TEST_PRIVATE_KEY",
        "  key_id: k\n  private_key_file: missing.pem",
    )
    with pytest.raises(KeyLoadError) as info:
        resolve_credentials(load_environment(str(write(tmp_path, text))))
    assert info.value.source == str(tmp_path / "missing.pem")


# -- describe ----------------------------------------------------------------------------------


def test_describe_contains_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_key: rsa.RSAPrivateKey
) -> None:
    pem = pem_of(rsa_key, pkcs8=False).decode()
    monkeypatch.setenv("SSMD_TEST_KEY_ID", "a952bcbe-ec3b-4b5b-b8f9-11dae589608c")
    monkeypatch.setenv("SSMD_TEST_PRIVATE_KEY", pem)
    settings = load_environment(str(write(tmp_path, REAL_YAML)))
    assert resolve_credentials(settings) is not None
    summary = describe(settings)
    text = json.dumps(summary)  # plain JSON-able data
    assert summary["source"] == settings.source
    assert summary["name"] == "real"
    assert summary["credentials"]["private_key_env"] == "SSMD_TEST_PRIVATE_KEY"
    assert summary["subscription"]["channels"] == [c.value for c in Channel]
    assert "a952bcbe-ec3b-4b5b-b8f9-11dae589608c" not in text
    assert "PRIVATE KEY-----" not in text
    for line in pem.splitlines()[1:-1]:
        assert line not in text


def test_describe_shortens_an_inline_key_id(tmp_path: Path) -> None:
    text = REAL_YAML.replace("key_id_env: SSMD_TEST_KEY_ID", "key_id: a952bcbe-ec3b-4b5b-b8f9")
    summary = describe(load_environment(str(write(tmp_path, text))))
    assert summary["credentials"]["key_id"] == "a952…"


def test_settings_built_in_code_validate_the_same_rules() -> None:
    with pytest.raises(ValueError, match="at least one market"):
        Settings.model_validate(
            {
                "exchange": {"ws_url": "wss://x.example/trade-api/ws/v2"},
                "credentials": {"key_id": "k", "private_key_env": "K"},
            }
        )
    settings = Settings.model_validate({"exchange": {"simulator": {}}})
    assert settings.source == "<in-memory settings>"
    assert settings.exchange.simulator is not None


def test_empty_sections_take_their_defaults(tmp_path: Path) -> None:
    text = SIMULATOR_YAML.replace(
        "subscription:\n  channels: [orderbook_delta, ticker, trade]\n", ""
    )
    settings = load_environment(str(write(tmp_path, text + "subscription:\nruntime:\nlog:\n")))
    assert settings.subscription.channels == tuple(Channel)
    assert settings.runtime.queue_size == 10_000


# -- the NATS transport ------------------------------------------------------------------------

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
