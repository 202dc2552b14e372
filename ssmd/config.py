"""Environment configuration: the YAML schema (pydantic v2), loading, and credential resolution.

`load_environment("local")` reads `environments/local.yaml`; any problem is a ConfigError that
names the file, the dotted field (`subscription.channels.2`) and what to do about it.
"""

from __future__ import annotations

import enum
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ssmd.auth import Credentials, load_private_key_env, load_private_key_file
from ssmd.errors import ConfigError
from ssmd.logs import LogFormat, LogLevel
from ssmd.messages import Channel
from ssmd.subjects import encode_token

ENVIRONMENTS_DIRNAME = "environments"
_RULE = "ssmd_rule"  # pydantic error type of our own cross-field rules; ctx carries fix/field
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENVIRONMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_INLINE_SECRET_KEY = re.compile(
    r"password|passwd|secret|token|private_key|pem|api_secret|signature", re.IGNORECASE
)
_INLINE_SECRET_FIX = (
    "never put secrets in configuration files: give credentials.private_key_file (path to the"
    " PEM file) or credentials.private_key_env (name of an environment variable holding the PEM)"
)
_NO_ECHO_KEY = re.compile(r"key|secret|password|token", re.IGNORECASE)


def _rule(message: str, *, fix: str, field: str = "") -> PydanticCustomError:
    return PydanticCustomError(_RULE, message, {"fix": fix, "field": field})


def _absolute_path(value: Path) -> Path:
    """Relative paths resolve against the current working directory, at load time."""
    path = value.expanduser()
    return path if path.is_absolute() else Path.cwd() / path


_CwdPath = Annotated[Path, AfterValidator(_absolute_path)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulatorSettings(_Section):
    """Run the local exchange simulator in-process instead of connecting to Kalshi."""

    markets: int = Field(default=20, ge=1)
    rate_hz: float = Field(default=200.0, ge=0)  # 0 = as fast as possible
    seed: int = 1


class ExchangeSettings(_Section):
    ws_url: str | None = None
    simulator: SimulatorSettings | None = None
    open_timeout_s: float = Field(default=10.0, gt=0)
    ping_interval_s: float = Field(default=10.0, gt=0)

    @field_validator("ws_url")
    @classmethod
    def _ws_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("ws://", "wss://")):
            raise _rule(
                "ws_url must be a ws:// or wss:// URL",
                fix="e.g. wss://external-api-ws.kalshi.com/trade-api/ws/v2 (PROTOCOL.md §1)",
            )
        return value

    @model_validator(mode="after")
    def _one_target(self) -> ExchangeSettings:
        if (self.ws_url is None) == (self.simulator is None):
            state = "both are set" if self.ws_url else "neither is set"
            raise _rule(
                f"set exactly one of ws_url (Kalshi) or simulator (local) ({state})",
                field="simulator" if self.ws_url else "ws_url",
                fix="ws_url: wss://external-api-ws.kalshi.com/trade-api/ws/v2, or simulator: {}",
            )
        return self


class CredentialsSettings(_Section):
    """Where the API key id and the RSA private key come from (never the secrets themselves)."""

    key_id: str | None = Field(default=None, min_length=1)
    key_id_env: str | None = None
    private_key_file: _CwdPath | None = None
    private_key_env: str | None = None

    @field_validator("key_id_env", "private_key_env")
    @classmethod
    def _env_var_name(cls, value: str | None) -> str | None:
        if value is not None and _ENV_NAME.fullmatch(value) is None:
            raise _rule(
                "not an environment variable name",
                fix="give the NAME of the variable (letters, digits, _), e.g. KALSHI_PRIVATE_KEY,"
                " not its value",
            )
        return value

    @field_validator("private_key_file", mode="before")
    @classmethod
    def _not_inline_pem(cls, value: object) -> object:
        if isinstance(value, str) and ("-----BEGIN" in value or "\n" in value):
            raise _rule("looks like an inline PEM key, not a path", fix=_INLINE_SECRET_FIX)
        return value

    @model_validator(mode="after")
    def _exactly_one_each(self) -> CredentialsSettings:
        pairs = (("key_id", "key_id_env"), ("private_key_file", "private_key_env"))
        for first, second in pairs:
            has_first = getattr(self, first) is not None
            has_second = getattr(self, second) is not None
            if has_first == has_second:
                state = "both are set" if has_first else "neither is set"
                raise _rule(
                    f"set exactly one of {first} or {second} ({state})",
                    field=second if has_first else first,
                    fix=f"keep exactly one of credentials.{first} / credentials.{second}",
                )
        return self


class SubscriptionSettings(_Section):
    channels: tuple[Channel, ...] = Field(default=tuple(Channel), min_length=1)
    markets: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    use_yes_price: bool = True  # sent explicitly on every orderbook subscribe (§7.1.4)

    @field_validator("channels", "markets")
    @classmethod
    def _no_duplicates(cls, values: tuple[Any, ...]) -> tuple[Any, ...]:
        seen: set[Any] = set()
        for index, value in enumerate(values):
            if value in seen:
                raise _rule("listed twice", field=str(index), fix="remove the duplicate list entry")
            seen.add(value)
        return values


class FileTransportSettings(_Section):
    kind: Literal["file"] = "file"
    dir: _CwdPath = Path("var/records")
    rotate_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    rotate_interval_s: float = Field(default=3600.0, gt=0)


class NatsPayload(enum.Enum):
    """How records are encoded in NATS messages (header Content-Type says which)."""

    JSON = "json"
    MSGPACK = "msgpack"


class StreamStorage(enum.Enum):
    FILE = "file"
    MEMORY = "memory"


class StreamDiscard(enum.Enum):
    """What JetStream does when the stream is at its limits: drop the oldest or refuse new."""

    OLD = "old"
    NEW = "new"


class Overflow(enum.Enum):
    """What publish() does when max_pending_acks records await their ack."""

    BLOCK = "block"  # wait: backpressure reaches the exchange reader
    DROP = "drop"  # drop the record, count it, publish a `dropped` status record later


_NKEY_SEED = re.compile(r"S[UOA][A-Z2-7]{56}")
_SERVER_SCHEMES = ("nats://", "tls://")
_NATS_SECRETS = ("password", "token", "nkey_seed")


def _nats_inline_secret_fix(key: str) -> str:
    name = key if key in _NATS_SECRETS else "password"
    return (
        f"never put secrets in configuration files: give transport.{name}_env (name of an"
        f" environment variable) or transport.{name}_file (path to a file holding it)"
    )


def _env_var_name(value: str | None) -> str | None:
    if value is not None and (_ENV_NAME.fullmatch(value) is None or _NKEY_SEED.fullmatch(value)):
        raise _rule(
            "not an environment variable name",
            fix="give the NAME of the variable (letters, digits, _), e.g. NATS_PASSWORD,"
            " not its value",
        )
    return value


_EnvName = Annotated[str, AfterValidator(_env_var_name)]


def _null_to_empty(value: object) -> object:
    """`key: null` in YAML means "the default" for fields whose default is resolved later."""
    return "" if value is None else value


class ManagedNatsServerSettings(_Section):
    """ssmd starts a real nats-server itself (the local stack) and publishes to it."""

    port: int = Field(default=4222, ge=0, le=65535)  # 0 = any free port
    store_dir: _CwdPath = Field(default=Path("var/nats"), validate_default=True)


class NatsTlsSettings(_Section):
    ca_file: _CwdPath | None = None
    cert_file: _CwdPath | None = None
    key_file: _CwdPath | None = None

    @property
    def enabled(self) -> bool:
        return any(path is not None for path in (self.ca_file, self.cert_file, self.key_file))

    @model_validator(mode="after")
    def _cert_with_key(self) -> NatsTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            fix = "a client certificate needs both tls.cert_file and tls.key_file"
            raise _rule(f"{missing} is missing", field=missing, fix=fix)
        return self


class NatsStreamSettings(_Section):
    name: str = ""  # "" or null: SSMD_{ENV}_KALSHI, resolved at load time
    create: bool = True  # create when missing; an existing stream is validated, never changed
    storage: StreamStorage = StreamStorage.FILE
    replicas: int = Field(default=1, ge=1, le=5)
    max_age_s: float = Field(default=0.0, ge=0)  # 0 = unlimited
    max_bytes: int = Field(default=-1, ge=-1)  # -1 = unlimited
    duplicate_window_s: float = Field(default=120.0, gt=0)
    discard: StreamDiscard = StreamDiscard.OLD

    _null_is_default = field_validator("name", mode="before")(_null_to_empty)

    @field_validator("name")
    @classmethod
    def _stream_name(cls, value: str) -> str:
        if value and re.search(r"[.*>/\\\s]", value):
            raise _rule(
                "not a valid stream name",
                fix="use letters, digits, - and _ (no '.', '*', '>', '/', spaces)",
            )
        return value


class NatsTransportSettings(_Section):
    """Publish records to a NATS JetStream stream. Secrets come only from env vars or files."""

    kind: Literal["nats"] = "nats"
    servers: tuple[str, ...] = ()
    managed_server: ManagedNatsServerSettings | None = None
    connection_name: str = ""  # "" or null: "ssmd-{environment name}", resolved at load time
    user: str | None = Field(default=None, min_length=1)
    password_env: _EnvName | None = None
    password_file: _CwdPath | None = None
    token_env: _EnvName | None = None
    token_file: _CwdPath | None = None
    nkey_seed_env: _EnvName | None = None
    nkey_seed_file: _CwdPath | None = None
    creds_file: _CwdPath | None = None
    tls: NatsTlsSettings = NatsTlsSettings()
    subject_prefix: str = ""  # "" or null: "ssmd.{environment name}.kalshi", resolved at load
    payload: NatsPayload = NatsPayload.JSON
    stream: NatsStreamSettings = NatsStreamSettings()
    max_pending_acks: int = Field(default=4096, ge=1)
    ack_timeout_s: float = Field(default=5.0, gt=0)
    reconnect_min_s: float = Field(default=0.1, gt=0)
    reconnect_max_s: float = Field(default=5.0, gt=0)
    overflow: Overflow = Overflow.BLOCK

    _source: str = PrivateAttr(default="<in-memory settings>")

    @property
    def source(self) -> str:
        """The configuration file these settings came from (for error messages)."""
        return self._source

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_take_defaults(cls, data: object) -> object:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (k in ("tls", "stream") and v is None)}
        return data

    @field_validator("servers")
    @classmethod
    def _server_urls(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for index, url in enumerate(values):
            if not url.startswith(_SERVER_SCHEMES):
                fix = "e.g. nats://127.0.0.1:4222 (or tls://host:4222)"
                raise _rule("a server must be a nats:// or tls:// URL", field=str(index), fix=fix)
            if "@" in url.split("://", 1)[1].split("/", 1)[0]:
                fix = _nats_inline_secret_fix("password")
                raise _rule("credentials in a server URL", field=str(index), fix=fix)
        return values

    _null_is_default = field_validator("connection_name", "subject_prefix", mode="before")(
        _null_to_empty
    )

    @field_validator("subject_prefix")
    @classmethod
    def _subject_prefix(cls, value: str) -> str:
        if value and any(
            not token or token in ("*", ">") or re.search(r"[\s*>]", token)
            for token in value.split(".")
        ):
            raise _rule(
                "not a literal NATS subject",
                fix="use dot-separated tokens without spaces or wildcards, e.g. ssmd.prod.kalshi",
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NatsTransportSettings:
        if not self.servers and self.managed_server is None:
            fix = "add servers: [nats://127.0.0.1:4222], or managed_server: {} for a local server"
            raise _rule("no NATS server to connect to", field="servers", fix=fix)
        if self.servers and self.managed_server is not None:
            fix = "keep servers (an existing NATS) or managed_server (ssmd starts one), not both"
            raise _rule("both servers and managed_server are set", field="servers", fix=fix)
        if self.reconnect_max_s < self.reconnect_min_s:
            fix = f"use a number >= reconnect_min_s ({self.reconnect_min_s})"
            raise _rule("is below reconnect_min_s", field="reconnect_max_s", fix=fix)
        for name in _NATS_SECRETS:
            if getattr(self, f"{name}_env") is not None and getattr(self, f"{name}_file"):
                fix = f"keep exactly one of transport.{name}_env / transport.{name}_file"
                raise _rule(f"set one of {name}_env or {name}_file", field=f"{name}_file", fix=fix)
        has_password = self.password_env is not None or self.password_file is not None
        if (self.user is not None) != has_password:
            field_name = "password_env" if self.user is not None else "user"
            fix = "user needs password_env or password_file, and a password needs user"
            raise _rule("user and password go together", field=field_name, fix=fix)
        return self._one_auth_method()

    def _one_auth_method(self) -> NatsTransportSettings:
        chosen = [
            name
            for name, present in (
                ("user", self.user is not None),
                ("token", self.token_env is not None or self.token_file is not None),
                ("nkey_seed", self.nkey_seed_env is not None or self.nkey_seed_file is not None),
                ("creds_file", self.creds_file is not None),
            )
            if present
        ]
        if len(chosen) > 1:
            fix = "keep one of user+password, token_env/token_file, nkey_seed_env/_file, creds_file"
            message = f"choose one authentication method (got {' and '.join(chosen)})"
            raise _rule(message, field=chosen[1], fix=fix)
        return self

    def resolved(self, environment: str) -> NatsTransportSettings:
        """These settings with the defaults that depend on the environment name filled in."""
        token = environment or "default"
        stream = self.stream
        if not stream.name:
            name = re.sub(r"[^A-Za-z0-9]", "_", token).upper()
            stream = stream.model_copy(update={"name": f"SSMD_{name}_KALSHI"})
        return self.model_copy(
            update={
                "connection_name": self.connection_name or f"ssmd-{token}",
                "subject_prefix": self.subject_prefix or f"ssmd.{encode_token(token)}.kalshi",
                "stream": stream,
            }
        )


# A discriminated union on `kind`.
TransportSettings = Annotated[
    Union[FileTransportSettings, NatsTransportSettings],  # noqa: UP007
    Field(discriminator="kind"),
]


class RuntimeSettings(_Section):
    queue_size: int = Field(default=10_000, ge=1)
    summary_interval_s: float = Field(default=5.0, ge=0)  # 0 disables the periodic summary
    shutdown_timeout_s: float = Field(default=30.0, gt=0)


class LogSettings(_Section):
    level: LogLevel = LogLevel.INFO  # SSMD_LOG_LEVEL overrides it (ssmd.logs)
    format: LogFormat = LogFormat.AUTO


class Settings(_Section):
    """One environment. Build it with load_environment(); `source` is the file it came from."""

    name: str = ""
    exchange: ExchangeSettings
    credentials: CredentialsSettings | None = None
    subscription: SubscriptionSettings = SubscriptionSettings()
    transport: TransportSettings = FileTransportSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    log: LogSettings = LogSettings()

    _source: str = PrivateAttr(default="<in-memory settings>")

    @property
    def source(self) -> str:
        return self._source

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_take_defaults(cls, data: object) -> object:
        # `runtime:` with every child commented out (YAML null) means the defaults.
        if isinstance(data, dict):
            optional = ("subscription", "transport", "runtime", "log")
            return {k: v for k, v in data.items() if not (k in optional and v is None)}
        return data

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
            raise _rule("a real exchange needs credentials", field="credentials", fix=fix)
        if not self.subscription.markets:  # "all markets" exists only with the simulator
            fix = "list exchange tickers, e.g. markets: [KXBTCD-26AUG2017-T73749.99]"
            message = "a real exchange needs at least one market (empty = all, simulator only)"
            raise _rule(message, field="subscription.markets", fix=fix)
        return self


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def environment_dirs(environments_dir: Path | None = None) -> list[Path]:
    """Where names are looked up: the given directory, else `./environments` then the
    `environments/` directory next to the package in a repo checkout."""
    if environments_dir is not None:
        return [environments_dir]
    repo = Path(__file__).resolve().parent.parent / ENVIRONMENTS_DIRNAME
    return list(dict.fromkeys([Path.cwd() / ENVIRONMENTS_DIRNAME, repo]))


def available_environments(environments_dir: Path | None = None) -> list[str]:
    dirs = environment_dirs(environments_dir)
    return sorted({path.stem for directory in dirs for path in directory.glob("*.yaml")})


def _environment_path(name_or_path: str, environments_dir: Path | None) -> Path:
    # A name has no path separator and no .yaml suffix; anything else is a path.
    if name_or_path.endswith((".yaml", ".yml")) or not _ENVIRONMENT_NAME.fullmatch(name_or_path):
        return Path(name_or_path)
    candidates = [
        directory / f"{name_or_path}.yaml" for directory in environment_dirs(environments_dir)
    ]
    return next((path for path in candidates if path.is_file()), candidates[0])


def load_environment(name_or_path: str, *, environments_dir: Path | None = None) -> Settings:
    """Load and validate an environment by name (`local`) or by path (`conf/x.yaml`).

    A name resolves to `<environments_dir>/<name>.yaml`; without environments_dir, to
    `./environments/<name>.yaml` if it exists, else to the repo checkout's `environments/`.
    Relative paths inside the YAML (credentials.private_key_file, transport.dir) resolve
    against the current working directory at load time, and are stored absolute.
    Raises ConfigError(message, source=file, field=dotted.path, fix=...) on any problem.
    """
    path = _environment_path(name_or_path, environments_dir)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        names = ", ".join(available_environments(environments_dir)) or "(none)"
        raise ConfigError(
            "configuration file not found",
            source=source,
            fix=f"use an environment name ({names}) or a path to a YAML file",
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"cannot read the configuration file ({reason})",
            source=source,
            fix="check the path and its permissions",
        ) from exc
    data = _parse_yaml(text, source)
    data.setdefault("name", path.stem)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, source) from exc
    settings._source = source
    if isinstance(settings.transport, NatsTransportSettings):
        settings.transport._source = source
    return settings


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            f"YAML syntax error at {where}{problem}",
            source=source,
            fix=f"fix the YAML near {where.rstrip(': ') or 'the reported place'}",
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError("YAML syntax error", source=source, fix="fix the YAML syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            "the file must hold a mapping of top-level keys",
            source=source,
            fix=f"allowed top-level keys: {', '.join(Settings.model_fields)}",
        )
    return data


def _unwrap_models(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel classes an annotation can hold (through Optional, unions and tuples)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap_models(get_args(annotation)[0])
    if origin in (Union, types.UnionType, tuple, list):
        return [model for arg in get_args(annotation) for model in _unwrap_models(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _tagged_member(models: list[type[BaseModel]], tag: object) -> type[BaseModel] | None:
    for model in models:
        kind = model.model_fields.get("kind")
        if kind is not None and tag in get_args(kind.annotation):
            return model
    return None


def _locate(
    loc: tuple[int | str, ...],
) -> tuple[list[str], type[BaseModel] | None, list[type[BaseModel]]]:
    """Dotted path parts for `loc` (union tags dropped), the model holding the last part, and
    the models the last part itself can be (for "expected a mapping" and "missing kind")."""
    parts: list[str] = []
    models: list[type[BaseModel]] = [Settings]
    holder: type[BaseModel] | None = None
    for item in loc:
        found = next((m for m in models if isinstance(item, str) and item in m.model_fields), None)
        if found is not None:
            holder = found
            parts.append(str(item))
            models = _unwrap_models(found.model_fields[str(item)].annotation)
            continue
        member = _tagged_member(models, item)
        if member is not None:  # a discriminated-union tag: not part of the YAML path
            models = [member]
            continue
        holder = models[0] if models else None
        parts.append(str(item))
        models = []
    return parts, holder, models


def _tags(models: list[type[BaseModel]]) -> str:
    kinds = [model.model_fields.get("kind") for model in models]
    return ", ".join(str(tag) for kind in kinds if kind for tag in get_args(kind.annotation))


def _config_error(exc: ValidationError, source: str) -> ConfigError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    parts, holder, targets = _locate(tuple(first["loc"]))
    ctx: dict[str, Any] = dict(first.get("ctx") or {})
    kind = first["type"]
    if kind == _RULE:
        extra = str(ctx.get("field", ""))
        field = ".".join([*parts, extra] if extra else parts)
        message, fix = first["msg"], str(ctx.get("fix", ""))
    else:
        field = ".".join(parts)
        message, fix = _describe_problem(kind, first, parts, holder, targets, ctx)
    if len(errors) > 1:
        message += f" (+{len(errors) - 1} more)"
    return ConfigError(message, source=source, field=field, fix=fix)


_CMP = {
    "greater_than_equal": ">=",
    "greater_than": ">",
    "less_than_equal": "<=",
    "less_than": "<",
}
# What a wrong-type error should have been, by the first word of pydantic's error type.
_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a non-empty string",
    "tuple": "a YAML list, e.g. [a, b]",
    "list": "a YAML list, e.g. [a, b]",
    "path": "a file system path",
    "too": "a non-empty value",
}


def _describe_problem(
    kind: str,
    error: Any,
    parts: list[str],
    holder: type[BaseModel] | None,
    targets: list[type[BaseModel]],
    ctx: dict[str, Any],
) -> tuple[str, str]:
    key = parts[-1] if parts else ""
    allowed_keys = ", ".join(holder.model_fields) if holder is not None else ""
    own_keys = ", ".join(key for model in targets for key in model.model_fields)
    if kind == "extra_forbidden":
        if holder is NatsTransportSettings and (
            key in _NATS_SECRETS or _INLINE_SECRET_KEY.search(key)
        ):
            return f"inline secret {key!r} is not allowed", _nats_inline_secret_fix(key)
        if _INLINE_SECRET_KEY.search(key):
            return f"inline secret {key!r} is not allowed", _INLINE_SECRET_FIX
        return f"unknown key {key!r}", f"allowed keys here: {allowed_keys}"
    if kind == "missing":
        return "required key is missing", f"add {key!r}"
    if kind == "union_tag_not_found":
        return "missing 'kind'", f"add kind: one of {_tags(targets)}"
    if kind == "union_tag_invalid":
        return f"unknown kind {ctx.get('tag')!r}", f"use one of {_tags(targets)}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "expected a mapping of keys", f"allowed keys here: {own_keys}"
    if kind in ("enum", "literal_error"):
        return f"{_echo(error, key)}is not allowed", f"use one of {ctx.get('expected', '')}"
    if kind in _CMP:
        bound = next(iter(ctx.values()), "")  # ctx is {"ge": 0} and the like
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"{_echo(error, key)}is out of range", f"use a number {_CMP[kind]} {bound}"
    expected = _EXPECTED.get(kind.split("_")[0])
    if expected is not None:
        return f"{_echo(error, key)}has the wrong type or value", f"use {expected}"
    return str(error["msg"]), "see environments/local.yaml for a valid example"


def _echo(error: Any, key: str) -> str:
    """`'value' ` for short scalar inputs of harmless keys, else "" (never echo secrets)."""
    value = error.get("input")
    text = repr(value) if isinstance(value, str | int | float) else ""
    if not text or len(text) > 60 or "\n" in text or _NO_ECHO_KEY.search(key):
        return "value "
    return f"{text} "


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


@dataclass(frozen=True)
class NatsSecrets:
    """NATS secrets read from their env vars or files (repr never shows them)."""

    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_seed: str | None = field(default=None, repr=False)


def _read_secret(
    env_name: str | None, path: Path | None, *, key: str, what: str, source: str
) -> str | None:
    if env_name is not None:
        value = os.environ.get(env_name, "").strip()
        if not value:
            raise ConfigError(
                f"environment variable {env_name} is not set or empty",
                source=source,
                field=f"transport.{key}_env",
                fix=f"export {env_name}=<{what}>",
            )
        return value
    if path is None:
        return None
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"cannot read {path} ({reason})",
            source=source,
            field=f"transport.{key}_file",
            fix=f"check that {path} exists, holds {what} and is readable",
        ) from exc
    if not value:
        raise ConfigError(
            f"{path} is empty",
            source=source,
            field=f"transport.{key}_file",
            fix=f"put {what} in {path}",
        )
    return value


def resolve_nats_secrets(settings: Settings | NatsTransportSettings) -> NatsSecrets:
    """Read the NATS password, token or nkey seed from the env var or file the config names.

    Raises ConfigError naming the variable or file (never the value) when it is unusable.
    """
    transport = settings.transport if isinstance(settings, Settings) else settings
    if not isinstance(transport, NatsTransportSettings):
        return NatsSecrets()
    source = transport.source
    if isinstance(settings, Settings):
        source = settings.source
    return NatsSecrets(
        password=_read_secret(
            transport.password_env,
            transport.password_file,
            key="password",
            what="the NATS password",
            source=source,
        ),
        token=_read_secret(
            transport.token_env,
            transport.token_file,
            key="token",
            what="the NATS token",
            source=source,
        ),
        nkey_seed=_read_secret(
            transport.nkey_seed_env,
            transport.nkey_seed_file,
            key="nkey_seed",
            what="the NATS nkey seed (SU...)",
            source=source,
        ),
    )


def describe(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain JSON-able data, without any secret value.

    Only env var names and file paths appear for credentials; an inline key id is shortened.
    """
    data = settings.model_dump(mode="json")
    credentials = data.get("credentials")
    if isinstance(credentials, dict) and credentials.get("key_id"):
        credentials["key_id"] = str(credentials["key_id"])[:4] + "…"
    return {"source": settings.source, **data}
