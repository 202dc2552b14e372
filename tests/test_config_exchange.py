"""Exchange-side settings: credentials, and the connection-survival settings (REST base, repair
deadline, reconnect backoff, simulator faults and backpressure) from YAML to the runner."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect

from ssmd.assembly import open_exchange, retry_policy
from ssmd.auth import WS_PATH, signed_headers
from ssmd.client_events import ClientKind
from ssmd.config import (
    ReconnectSettings,
    Settings,
    describe,
    load_environment,
    resolve_credentials,
)
from ssmd.errors import ConfigError, KeyLoadError
from ssmd.exchange.outbound import BackpressurePolicy
from ssmd.exchange.schedule import ALL_KINDS, FaultKind, RandomFaults
from ssmd.exchange.server import ExchangeSimulator
from ssmd.retry import RetryPolicy
from ssmd.runner import Connector
from ssmd.supervisor import ConnectionPlan

from .conftest import write_pem
from .test_config import REAL_YAML, REPO_ENVIRONMENTS, load_error, pem_of, write


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


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


# -- connection survival: defaults ---------------------------------------------------------

SURVIVAL_YAML = """\
name: chaos
exchange:
  simulator:
    markets: 3
    rate_hz: 50
    faults: random:rate=0.5,seed=7
    fault_kinds: close, abort
    backpressure: overflow
  repair_timeout_s: 2.5
  reconnect: {base_s: 0.05, cap_s: 1, healthy_after_s: 5, max_auth_retries: 50}
transport:
  kind: file
"""


def survival_error(tmp_path: Path, old: str, new: str) -> ConfigError:
    assert old in SURVIVAL_YAML
    return load_error(tmp_path, SURVIVAL_YAML.replace(old, new))


def test_defaults_are_the_behaviour_of_the_components() -> None:
    exchange = Settings.model_validate({"exchange": {"simulator": {}}}).exchange
    policy = RetryPolicy()
    reconnect = exchange.reconnect
    assert (reconnect.base_s, reconnect.cap_s) == (policy.base_s, policy.cap_s)
    assert reconnect.healthy_after_s == policy.healthy_after_s
    assert reconnect.max_auth_retries == policy.max_auth_retries
    plan_defaults = {f.name: f.default for f in dataclasses.fields(ConnectionPlan)}
    assert exchange.repair_timeout_s == plan_defaults["repair_timeout_s"]
    assert exchange.rest_url is None
    simulator = exchange.simulator
    assert simulator is not None
    assert simulator.faults is None
    assert simulator.fault_kinds == ALL_KINDS
    sim_defaults = inspect.signature(ExchangeSimulator).parameters
    assert simulator.backpressure is sim_defaults["backpressure"].default


@pytest.mark.parametrize("name", ["local", "local-files", "sim", "kalshi-dev", "kalshi-prod"])
def test_shipped_environments_keep_the_default_survival_settings(name: str) -> None:
    exchange = load_environment(name, environments_dir=REPO_ENVIRONMENTS).exchange
    assert exchange.reconnect == ReconnectSettings()
    assert exchange.repair_timeout_s == 10
    assert exchange.rest_url is None
    if exchange.simulator is not None:
        assert exchange.simulator.faults is None
        assert exchange.simulator.fault_kinds == ALL_KINDS
        assert exchange.simulator.backpressure is BackpressurePolicy.BLOCK


def test_null_values_and_sections_mean_the_defaults(tmp_path: Path) -> None:
    text = (
        "exchange:\n  simulator:\n    faults: null\n    fault_kinds: null\n"
        "  rest_url: null\n  reconnect:\n"
    )
    exchange = load_environment(str(write(tmp_path, text))).exchange
    assert exchange.reconnect == ReconnectSettings()
    assert exchange.simulator is not None
    assert (exchange.simulator.faults, exchange.simulator.fault_kinds) == (None, ALL_KINDS)


# -- connection survival: values and errors --------------------------------------------------


def test_survival_settings_are_parsed(tmp_path: Path) -> None:
    exchange = load_environment(str(write(tmp_path, SURVIVAL_YAML))).exchange
    assert exchange.repair_timeout_s == 2.5
    assert exchange.reconnect == ReconnectSettings(
        base_s=0.05, cap_s=1, healthy_after_s=5, max_auth_retries=50
    )
    simulator = exchange.simulator
    assert simulator is not None
    kinds = (FaultKind.CLOSE, FaultKind.ABORT)
    assert simulator.fault_kinds == kinds
    assert simulator.faults == RandomFaults(rate_hz=0.5, seed=7, kinds=kinds)
    assert simulator.backpressure is BackpressurePolicy.OVERFLOW


def test_faults_none_and_kinds_as_a_yaml_list(tmp_path: Path) -> None:
    text = SURVIVAL_YAML.replace("random:rate=0.5,seed=7", "none").replace(
        "fault_kinds: close, abort", "fault_kinds: [stall, reject, stall]"
    )
    simulator = load_environment(str(write(tmp_path, text))).exchange.simulator
    assert simulator is not None
    assert simulator.faults is None
    assert simulator.fault_kinds == (FaultKind.STALL, FaultKind.REJECT)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("random", "bad parameter ''"),
        ("random:seed=2", "rate is required"),
        ("random:rate=0", "positive"),
        ("random:rate=1,seed=x", "seed an integer"),
        ("random:rate=1,burst=2", "bad parameter"),
        ("chaos:rate=1", "unknown fault mode"),
        ("None", "unknown fault mode"),
        ("5", "expected a fault schedule"),
        ("{rate: 1}", "expected a fault schedule"),
    ],
)
def test_a_bad_fault_spec_names_the_field_and_the_syntax(
    tmp_path: Path, spec: str, problem: str
) -> None:
    error = survival_error(tmp_path, "random:rate=0.5,seed=7", spec)
    assert error.field == "exchange.simulator.faults"
    assert problem in error.message
    assert "random:rate=FAULTS_PER_S[,seed=N]" in error.fix
    assert "none" in error.fix


@pytest.mark.parametrize(
    ("kinds", "problem"),
    [
        ("close, explode", "unknown fault kind 'explode'"),
        ("''", "no fault kind"),
        ("{close: 1}", "expected all or a list"),
    ],
)
def test_a_bad_fault_kind_lists_the_kinds(tmp_path: Path, kinds: str, problem: str) -> None:
    error = survival_error(tmp_path, "fault_kinds: close, abort", f"fault_kinds: {kinds}")
    assert error.field == "exchange.simulator.fault_kinds"
    assert problem in error.message
    assert error.fix.startswith("use all, or")
    for kind in FaultKind:
        assert kind.value in error.fix


def test_a_bad_backpressure_policy(tmp_path: Path) -> None:
    error = survival_error(tmp_path, "backpressure: overflow", "backpressure: drop")
    assert error.field == "exchange.simulator.backpressure"
    assert "'drop'" in error.message
    assert "block" in error.fix
    assert "overflow" in error.fix


@pytest.mark.parametrize(
    ("reconnect", "field", "words"),
    [
        ("{base_s: 2, cap_s: 1}", "exchange.reconnect.cap_s", "below base_s"),
        ("{base_s: 0}", "exchange.reconnect.base_s", "> 0"),
        ("{healthy_after_s: -1}", "exchange.reconnect.healthy_after_s", "> 0"),
        ("{max_auth_retries: -1}", "exchange.reconnect.max_auth_retries", ">= 0"),
        ("{max_auth_retries: 1.5}", "exchange.reconnect.max_auth_retries", "integer"),
        ("{jitter: 1}", "exchange.reconnect.jitter", "base_s, cap_s, healthy_after_s"),
        ("fast", "exchange.reconnect", "base_s, cap_s, healthy_after_s, max_auth_retries"),
    ],
)
def test_bad_reconnect_settings(tmp_path: Path, reconnect: str, field: str, words: str) -> None:
    old = "{base_s: 0.05, cap_s: 1, healthy_after_s: 5, max_auth_retries: 50}"
    error = survival_error(tmp_path, old, reconnect)
    assert error.field == field
    assert words in error.message or words in error.fix


def test_repair_timeout_must_be_positive(tmp_path: Path) -> None:
    error = survival_error(tmp_path, "repair_timeout_s: 2.5", "repair_timeout_s: 0")
    assert error.field == "exchange.repair_timeout_s"
    assert error.fix == "use a number > 0"


def test_rest_url_of_a_real_exchange(tmp_path: Path) -> None:
    url = "https://external-api.demo.kalshi.co/trade-api/v2/"
    text = REAL_YAML.replace("credentials:", f"  rest_url: {url}\ncredentials:")
    exchange = load_environment(str(write(tmp_path, text))).exchange
    assert exchange.rest_url == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "wss://external-api.kalshi.com/trade-api/v2",
        "https://external-api.kalshi.com",
        "https://external-api.kalshi.com/trade-api/v2?x=1",
        "https:///trade-api/v2",
    ],
)
def test_a_bad_rest_url_says_what_it_should_be(tmp_path: Path, url: str) -> None:
    text = REAL_YAML.replace("credentials:", f"  rest_url: '{url}'\ncredentials:")
    error = load_error(tmp_path, text)
    assert error.field == "exchange.rest_url"
    assert "/trade-api/v2" in error.message
    assert "https://external-api.kalshi.com/trade-api/v2" in error.fix


def test_credentials_in_the_rest_url_are_not_echoed(tmp_path: Path) -> None:
    url = "https://bob:s3cr3t@external-api.kalshi.com/trade-api/v2"
    error = load_error(
        tmp_path, REAL_YAML.replace("credentials:", f"  rest_url: {url}\ncredentials:")
    )
    assert error.field == "exchange.rest_url"
    assert "credentials" in error.message
    assert "s3cr3t" not in str(error)


def test_rest_url_is_refused_with_the_in_process_simulator(tmp_path: Path) -> None:
    url = "https://external-api.kalshi.com/trade-api/v2"
    error = survival_error(
        tmp_path, "  repair_timeout_s:", f"  rest_url: {url}\n  repair_timeout_s:"
    )
    assert error.field == "exchange.rest_url"
    assert "simulator" in error.message


def test_describe_writes_the_fault_settings_as_they_are_written(tmp_path: Path) -> None:
    settings = load_environment(str(write(tmp_path, SURVIVAL_YAML)))
    simulator = describe(settings)["exchange"]["simulator"]
    assert simulator["faults"] == "random:rate=0.5,seed=7"
    assert simulator["fault_kinds"] == "close,abort"
    assert simulator["backpressure"] == "overflow"
    # What describe() shows loads back to the same settings.
    exchange = settings.model_dump(mode="json")["exchange"]
    assert Settings.model_validate({"exchange": exchange}).exchange == settings.exchange
    defaults = describe(Settings.model_validate({"exchange": {"simulator": {}}}))
    assert defaults["exchange"]["simulator"]["faults"] == "none"
    assert defaults["exchange"]["simulator"]["fault_kinds"] == "all"


# -- the runner's wiring -----------------------------------------------------------------------


def test_the_retry_policy_comes_from_exchange_reconnect(tmp_path: Path) -> None:
    policy = retry_policy(load_environment(str(write(tmp_path, SURVIVAL_YAML))))
    assert (policy.base_s, policy.cap_s, policy.healthy_after_s) == (0.05, 1, 5)
    assert policy.max_auth_retries == 50
    assert policy.attempt == 0
    assert all(0 <= policy.backoff_s() <= 0.05 for _ in range(100))


async def test_the_in_process_simulator_injects_the_configured_faults(tmp_path: Path) -> None:
    text = SURVIVAL_YAML.replace("rate=0.5", "rate=200").replace("close, abort", "close")
    exchange = await open_exchange(load_environment(str(write(tmp_path, text))))
    assert exchange.simulator is not None
    try:
        credentials = exchange.credentials
        headers = signed_headers(
            credentials.key_id, credentials.private_key, time.time_ns() // 1_000_000, "GET", WS_PATH
        )
        async with connect(exchange.url, additional_headers=headers, ping_interval=None) as ws:
            async with asyncio.timeout(10):  # a guard: the first close comes within milliseconds
                await ws.wait_closed()
            assert ws.close_code in (1001, 1011)
            assert ws.close_reason.startswith("injected fault: close")
    finally:
        await exchange.simulator.stop()


async def test_the_connector_plans_with_the_configured_repair_timeout(tmp_path: Path) -> None:
    connector = Connector(load_environment(str(write(tmp_path, SURVIVAL_YAML))))
    stop = asyncio.Event()
    stop.set()  # build everything, connect nothing, drain and close
    assert await connector.run(stop) == 0
    assert connector.supervisor is not None
    assert connector.supervisor.plan.repair_timeout_s == 2.5


async def test_the_connector_plans_with_the_configured_client(tmp_path: Path) -> None:
    text = SURVIVAL_YAML.replace(
        "  repair_timeout_s: 2.5\n", "  repair_timeout_s: 2.5\n  client: picows\n"
    )
    connector = Connector(load_environment(str(write(tmp_path, text))))
    stop = asyncio.Event()
    stop.set()  # build everything, connect nothing, drain and close
    assert await connector.run(stop) == 0
    assert connector.supervisor is not None
    assert connector.supervisor.plan.client is ClientKind.PICOWS


KEY_ID_FILE_YAML = """\
exchange:
  ws_url: wss://example.test/trade-api/ws/v2
credentials:
  key_id_file: {key_id_file}
  private_key_file: {key_file}
subscription:
  markets: [KXA-1]
transport:
  kind: file
"""


def test_key_id_from_a_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    key_file = write_pem(tmp_path / "k.pem", rsa_key)
    (tmp_path / "key.id").write_text("  0b5c2a47-file-key\n")
    text = KEY_ID_FILE_YAML.format(key_id_file=tmp_path / "key.id", key_file=key_file)
    credentials = resolve_credentials(load_environment(str(write(tmp_path, text))))
    assert credentials is not None
    assert credentials.key_id == "0b5c2a47-file-key"


@pytest.mark.parametrize(("content", "message"), [(None, "cannot read"), ("  \n", "is empty")])
def test_key_id_file_missing_or_empty_names_the_field(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, content: str | None, message: str
) -> None:
    key_file = write_pem(tmp_path / "k.pem", rsa_key)
    if content is not None:
        (tmp_path / "key.id").write_text(content)
    text = KEY_ID_FILE_YAML.format(key_id_file=tmp_path / "key.id", key_file=key_file)
    with pytest.raises(ConfigError) as info:
        resolve_credentials(load_environment(str(write(tmp_path, text))))
    assert info.value.field == "credentials.key_id_file"
    assert message in info.value.message
    assert str(tmp_path / "key.id") in str(info.value)


def test_key_id_sources_are_exclusive(tmp_path: Path) -> None:
    text = KEY_ID_FILE_YAML.format(key_id_file=tmp_path / "key.id", key_file=tmp_path / "k.pem")
    text = text.replace("credentials:\n", "credentials:\n  key_id_env: KALSHI_API_KEY_ID\n")
    error = load_error(tmp_path, text)
    assert "exactly one of key_id, key_id_env, key_id_file" in error.message
    assert "key_id_env and key_id_file are set" in error.message
