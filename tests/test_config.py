"""Environment loading: the shipped environments, every error class, describe().

Credentials and the exchange connection-survival settings: test_config_exchange.py; the NATS
transport: test_config_nats.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.config import (
    FileTransportSettings,
    NatsTransportSettings,
    Settings,
    describe,
    load_environment,
    resolve_credentials,
)
from ssmd.errors import ConfigError
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
    select = settings.subscription.select
    assert select is not None
    assert select.series == ("KXBTCD", "KXETHD")
    assert select.closing_within_h == 48


def test_kalshi_prod_environment_targets_the_prod_host() -> None:
    settings = load_environment("kalshi-prod", environments_dir=REPO_ENVIRONMENTS)
    assert settings.exchange.ws_url == "wss://external-api-ws.kalshi.com/trade-api/ws/v2"
    assert settings.credentials is not None
    select = settings.subscription.select
    assert select is not None
    assert select.categories == ("Sports",)
    assert settings.subscription.shard is not None
    assert (settings.subscription.shard.index, settings.subscription.shard.count) == (0, 1)


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
    assert error.fix == (
        "allowed keys here: markets, rate_hz, seed, fault_kinds, faults, backpressure,"
        " catalog_markets, churn, rest_tokens_per_s, max_markets_per_subscription"
    )
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
    assert "needs markets or a selection" in error.message
    assert "subscription.select" in (error.fix or "")
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
    with pytest.raises(ValueError, match="needs markets or a selection"):
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
