"""The environment schema (pydantic v2): Settings and its non-transport sections (exchange,
reconnect, simulator, credentials, subscription, file transport, runtime, log, ops), plus
resolve_credentials() and describe(). NATS transport settings live in nats.py."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from ssmd.auth import Credentials, load_private_key_env, load_private_key_file
from ssmd.client_events import ClientKind
from ssmd.config.fields import (
    ENV_NAME,
    CwdPath,
    FaultKinds,
    FaultSpec,
    Section,
    drop_null_sections,
    no_duplicates,
    rule,
)
from ssmd.config.nats import NatsTransportSettings
from ssmd.config.recording import RecordingSettings
from ssmd.config.selection import RestRateSettings, SelectionSettings, ShardSettings
from ssmd.config.top import TopSettings
from ssmd.errors import ConfigError
from ssmd.exchange.catalog import MVE_PREFIX
from ssmd.exchange.catalog_spec import CatalogSpec
from ssmd.exchange.churn import ChurnSpec
from ssmd.exchange.outbound import BackpressurePolicy
from ssmd.exchange.schedule import ALL_KINDS
from ssmd.logs import LogFormat, LogLevel
from ssmd.messages import Channel
from ssmd.ratelimit import BASIC_READ_BURST_S
from ssmd.rest import REST_PATH

INLINE_SECRET_FIX = (
    "never put secrets in configuration files: give credentials.private_key_file (path to the"
    " PEM file) or credentials.private_key_env (name of an environment variable holding the PEM)"
)


class ChurnSettings(Section):
    """Markets the simulator creates and retires over time (ssmd.exchange.churn.ChurnSpec): an
    event every create_every_s; its markets open, close, are determined and settled (§7.5)."""

    create_every_s: float = Field(default=60.0, gt=0)
    markets_per_event: int = Field(default=5, ge=1)
    series_ticker: str = Field(default="KXQUICKSETTLE", pattern=r"^[A-Z0-9]+$")
    open_after_s: float = Field(default=10.0, ge=0)
    lifetime_s: float = Field(default=300.0, gt=0)
    determine_after_s: float = Field(default=30.0, ge=0)
    settle_after_s: float = Field(default=60.0, ge=0)
    deactivate_fraction: float = Field(default=0.0, ge=0, le=1)  # paused mid-life
    max_events: int | None = Field(default=None, ge=1)  # None: no end

    @field_validator("series_ticker")
    @classmethod
    def _not_multivariate(cls, value: str) -> str:
        if value.startswith(MVE_PREFIX):
            fix = "multivariate markets have their own lifecycle channel (§7.5): e.g. KXQUICKSETTLE"
            raise rule(f"must not start with {MVE_PREFIX}", fix=fix)
        return value

    def spec(self, seed: int) -> ChurnSpec:
        return ChurnSpec(seed=seed, **self.model_dump())


class SimulatorSettings(Section):
    """Run the local exchange simulator in-process instead of connecting to Kalshi."""

    markets: int = Field(default=20, ge=1)
    rate_hz: float = Field(default=200.0, ge=0)  # 0 = as fast as possible
    seed: int = 1
    fault_kinds: FaultKinds = ALL_KINDS  # what `faults` draws from
    faults: FaultSpec = None  # None: a well-behaved exchange
    backpressure: BackpressurePolicy = BackpressurePolicy.BLOCK  # OVERFLOW: error 25 (§3)
    catalog_markets: int = Field(default=0, ge=0)  # generated markets listed besides `markets`
    churn: ChurnSettings | None = None  # None: no market comes or goes
    rest_tokens_per_s: float | None = Field(default=None, gt=0)  # §9.6 bucket; None: no limit
    max_markets_per_subscription: int | None = Field(default=None, ge=1)  # error 26 past it

    def catalog_spec(self) -> CatalogSpec | None:
        """ExchangeSimulator(catalog=...)."""
        return (
            CatalogSpec(markets=self.catalog_markets, seed=self.seed)
            if self.catalog_markets
            else None
        )

    def churn_spec(self) -> ChurnSpec | None:
        """ExchangeSimulator(churn=...)."""
        return self.churn.spec(self.seed) if self.churn is not None else None

    def rest_rate(self) -> tuple[float, float] | None:
        """ExchangeSimulator(rest_rate=...): (tokens_per_s, capacity), 2 s of budget (§9.6)."""
        rate = self.rest_tokens_per_s
        return (rate, rate * BASIC_READ_BURST_S) if rate is not None else None


class ReconnectSettings(Section):
    """When to reconnect to the exchange (ssmd.retry.RetryPolicy): full-jitter backoff,
    uniform(0, min(cap_s, base_s * 2^attempt)), reset by a connection older than
    healthy_after_s; 401s after a good connection are retried max_auth_retries times."""

    base_s: float = Field(default=0.5, gt=0)
    cap_s: float = Field(default=30.0, gt=0)
    healthy_after_s: float = Field(default=60.0, gt=0)
    max_auth_retries: int = Field(default=3, ge=0)

    @model_validator(mode="after")
    def _cap_above_base(self) -> ReconnectSettings:
        if self.cap_s < self.base_s:
            fix = f"use a number >= base_s ({self.base_s})"
            raise rule("is below base_s", field="cap_s", fix=fix)
        return self


class ExchangeSettings(Section):
    ws_url: str | None = None
    rest_url: str | None = None  # None: ssmd.rest.rest_base_url(ws_url), or the simulator's
    simulator: SimulatorSettings | None = None
    open_timeout_s: float = Field(default=10.0, gt=0)
    ping_interval_s: float = Field(default=10.0, gt=0)
    repair_timeout_s: float = Field(default=10.0, gt=0)  # each book-repair step (§4.3)
    reconnect: ReconnectSettings = ReconnectSettings()
    client: ClientKind = ClientKind.WEBSOCKETS  # picows: the optional extra ssmd[fast]
    rest_rate: RestRateSettings = RestRateSettings()  # §9.6 token bucket for discovery

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_take_defaults(cls, data: object) -> object:
        return drop_null_sections(data, ("reconnect", "rest_rate"))  # a null simulator means "none"

    @field_validator("ws_url")
    @classmethod
    def _ws_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("ws://", "wss://")):
            raise rule(
                "ws_url must be a ws:// or wss:// URL",
                fix="e.g. wss://external-api-ws.kalshi.com/trade-api/ws/v2 (PROTOCOL.md §1)",
            )
        return value

    @field_validator("client")
    @classmethod
    def _client_installed(cls, value: ClientKind) -> ClientKind:
        if value is ClientKind.PICOWS and importlib.util.find_spec("picows") is None:
            raise rule("picows is not installed", fix="pip install 'ssmd[fast]'")
        return value

    @field_validator("rest_url")
    @classmethod
    def _rest_base(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        fix = (
            f"e.g. https://external-api.kalshi.com{REST_PATH} (PROTOCOL.md §1, §9), or null to"
            " derive it from ws_url"
        )
        if "@" in parts.netloc:
            raise rule("credentials in rest_url", fix="REST calls are signed: " + fix)
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.query
            or parts.fragment
            or not parts.path.rstrip("/").endswith(REST_PATH)
        ):
            # §2.2: the signed path starts at the API root, so the base must include it.
            raise rule(f"rest_url must be an http(s):// URL ending in {REST_PATH}", fix=fix)
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_target(self) -> ExchangeSettings:
        if (self.ws_url is None) == (self.simulator is None):
            state = "both are set" if self.ws_url else "neither is set"
            raise rule(
                f"set exactly one of ws_url (Kalshi) or simulator (local) ({state})",
                field="simulator" if self.ws_url else "ws_url",
                fix="ws_url: wss://external-api-ws.kalshi.com/trade-api/ws/v2, or simulator: {}",
            )
        if self.simulator is not None and self.rest_url is not None:
            raise rule(
                "rest_url is for a real exchange: the in-process simulator serves REST itself",
                field="rest_url",
                fix="remove exchange.rest_url (or set it to null)",
            )
        return self


class CredentialsSettings(Section):
    """Where the API key id and the RSA private key come from (never the secrets themselves)."""

    key_id: str | None = Field(default=None, min_length=1)
    key_id_env: str | None = None
    key_id_file: CwdPath | None = None
    private_key_file: CwdPath | None = None
    private_key_env: str | None = None

    @field_validator("key_id_env", "private_key_env")
    @classmethod
    def _env_var_name(cls, value: str | None) -> str | None:
        if value is not None and ENV_NAME.fullmatch(value) is None:
            raise rule(
                "not an environment variable name",
                fix="give the NAME of the variable (letters, digits, _), e.g. KALSHI_PRIVATE_KEY,"
                " not its value",
            )
        return value

    @field_validator("private_key_file", mode="before")
    @classmethod
    def _not_inline_pem(cls, value: object) -> object:
        if isinstance(value, str) and ("-----BEGIN" in value or "\n" in value):
            raise rule("looks like an inline PEM key, not a path", fix=INLINE_SECRET_FIX)
        return value

    @model_validator(mode="after")
    def _exactly_one_each(self) -> CredentialsSettings:
        groups = (("key_id", "key_id_env", "key_id_file"), ("private_key_file", "private_key_env"))
        for names in groups:
            given = [name for name in names if getattr(self, name) is not None]
            if len(given) != 1:
                nobody = "neither is set" if len(names) == 2 else "none is set"
                state = " and ".join(given) + " are set" if given else nobody
                listed = " / ".join(f"credentials.{name}" for name in names)
                raise rule(
                    f"set exactly one of {', '.join(names)} ({state})",
                    field=given[-1] if given else names[0],
                    fix=f"keep exactly one of {listed}",
                )
        return self


def _read_key_id_file(path: Path, *, source: str) -> str:
    """The key id from a file (e.g. one a secret mount or the simulator wrote), stripped."""
    try:
        key_id = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the key id file {path} ({exc.strerror})",
            source=source,
            field="credentials.key_id_file",
            fix="mount or write the file, or use credentials.key_id_env",
        ) from exc
    if not key_id:
        raise ConfigError(
            f"the key id file {path} is empty",
            source=source,
            field="credentials.key_id_file",
            fix="write your Kalshi API key id into it",
        )
    return key_id


class SubscriptionSettings(Section):
    channels: tuple[Channel, ...] = Field(default=tuple(Channel), min_length=1)
    markets: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    use_yes_price: bool = True  # sent explicitly on every orderbook subscribe (§7.1.4)
    # §6.6 error 26: Kalshi caps the markets of one subscription; beyond this many, markets go
    # to another connection (ssmd.placement).
    markets_per_connection: int = Field(default=200, ge=1)
    max_connections: int = Field(default=64, ge=1)
    # Discovery over REST (issue 5): markets chosen by series, event, category, status ...
    select: SelectionSettings | None = None
    shard: ShardSettings | None = None  # this process's part of the selection

    @field_validator("channels", "markets")
    @classmethod
    def _no_duplicates(cls, values: tuple[Any, ...]) -> tuple[Any, ...]:
        return no_duplicates(values)


class FileTransportSettings(Section):
    kind: Literal["file"] = "file"
    dir: CwdPath = Path("var/records")
    rotate_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    rotate_interval_s: float = Field(default=3600.0, gt=0)


# A discriminated union on `kind`.
TransportSettings = Annotated[
    Union[FileTransportSettings, NatsTransportSettings],  # noqa: UP007
    Field(discriminator="kind"),
]


class RuntimeSettings(Section):
    queue_size: int = Field(default=10_000, ge=1)
    summary_interval_s: float = Field(default=5.0, ge=0)  # 0 disables the periodic summary
    shutdown_timeout_s: float = Field(default=30.0, gt=0)


class OpsSettings(Section):
    """The operations HTTP server (ssmd.ops): /metrics, /health, /ready. No address = off."""

    address: str | None = None  # "host:port", e.g. "127.0.0.1:9464"; port 0 = any free port
    stale_after_s: float | None = Field(default=None, gt=0)  # None: 3 x exchange.ping_interval_s

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise rule("must be host:port", fix='e.g. "127.0.0.1:9464", or null to turn it off')
        return value


class LogSettings(Section):
    level: LogLevel = LogLevel.INFO  # SSMD_LOG_LEVEL overrides it (ssmd.logs)
    format: LogFormat = LogFormat.AUTO


class Settings(Section):
    """One environment. Build it with load_environment(); `source` is the file it came from."""

    name: str = ""
    exchange: ExchangeSettings
    credentials: CredentialsSettings | None = None
    subscription: SubscriptionSettings = SubscriptionSettings()
    transport: TransportSettings = FileTransportSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    log: LogSettings = LogSettings()
    ops: OpsSettings = OpsSettings()
    top: TopSettings = TopSettings()
    recording: RecordingSettings | None = None  # None: raw frames are not recorded

    _source: str = PrivateAttr(default="<in-memory settings>")

    @property
    def source(self) -> str:
        return self._source

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_take_defaults(cls, data: object) -> object:
        # `runtime:` with every child commented out (YAML null) means the defaults.
        return drop_null_sections(
            data, ("subscription", "transport", "runtime", "log", "ops", "top")
        )

    @field_validator("transport")
    @classmethod
    def _nats_defaults(cls, value: Any, info: ValidationInfo) -> Any:
        # Defaults that depend on the environment name become concrete strings at load time
        # (`name` is declared before `transport`, so it is validated already).
        if isinstance(value, NatsTransportSettings):
            return value.resolved(str(info.data.get("name", "")))
        return value

    @model_validator(mode="after")
    def _real_exchange_needs(self) -> Settings:
        if self.exchange.simulator is not None:
            return self
        if self.credentials is None:  # the handshake is always signed (PROTOCOL.md §2.5)
            fix = "add credentials: key_id_env + private_key_file or private_key_env"
            raise rule("a real exchange needs credentials", field="credentials", fix=fix)
        if not self.subscription.markets and self.subscription.select is None:
            # Every market of a real exchange is tens of thousands: say which, or select.
            fix = (
                "list exchange tickers, e.g. markets: [KXBTCD-26AUG2017-T73749.99], or choose"
                " them with subscription.select (series, events, categories, status ...)"
            )
            message = "a real exchange needs markets or a selection (empty = all, simulator only)"
            raise rule(message, field="subscription.markets", fix=fix)
        return self


def resolve_credentials(settings: Settings) -> Credentials | None:
    """Load the API key id and private key; None when there is no credentials section.

    Raises ConfigError (key id env var unset) or KeyLoadError (key file/env var unusable);
    both name the file or variable, never its value.
    """
    section = settings.credentials
    if section is None:
        return None
    if section.key_id is not None:
        key_id = section.key_id
    elif section.key_id_file is not None:
        key_id = _read_key_id_file(section.key_id_file, source=settings.source)
    else:
        assert section.key_id_env is not None  # guaranteed by CredentialsSettings
        key_id = os.environ.get(section.key_id_env, "").strip()
        if not key_id:
            raise ConfigError(
                f"environment variable {section.key_id_env} is not set or empty",
                source=settings.source,
                field="credentials.key_id_env",
                fix=f"export {section.key_id_env}=<your Kalshi API key id>",
            )
    if section.private_key_file is not None:
        private_key = load_private_key_file(section.private_key_file)
    else:
        assert section.private_key_env is not None  # guaranteed by CredentialsSettings
        private_key = load_private_key_env(section.private_key_env)
    return Credentials(key_id=key_id, private_key=private_key)


def describe(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain JSON-able data, without any secret value.

    Only env var names and file paths appear for credentials; an inline key id is shortened.
    """
    data = settings.model_dump(mode="json")
    credentials = data.get("credentials")
    if isinstance(credentials, dict) and credentials.get("key_id"):
        credentials["key_id"] = str(credentials["key_id"])[:4] + "…"
    return {"source": settings.source, **data}
