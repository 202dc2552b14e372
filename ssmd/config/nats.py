"""NATS JetStream transport settings (servers or a managed server, auth, TLS, subjects, stream,
in-flight window) and resolve_nats_secrets(), which reads the secrets they name from env vars or
files. Secrets never appear in the YAML itself."""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, PrivateAttr, field_validator, model_validator

from ssmd.config.fields import (
    ENV_NAME,
    CwdPath,
    Section,
    drop_null_sections,
    null_to_empty,
    rule,
)
from ssmd.errors import ConfigError
from ssmd.subjects import encode_token

if TYPE_CHECKING:
    from ssmd.config.models import Settings


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
NATS_SECRET_KEYS = ("password", "token", "nkey_seed")


def nats_inline_secret_fix(key: str) -> str:
    name = key if key in NATS_SECRET_KEYS else "password"
    return (
        f"never put secrets in configuration files: give transport.{name}_env (name of an"
        f" environment variable) or transport.{name}_file (path to a file holding it)"
    )


def _env_var_name(value: str | None) -> str | None:
    if value is not None and (ENV_NAME.fullmatch(value) is None or _NKEY_SEED.fullmatch(value)):
        raise rule(
            "not an environment variable name",
            fix="give the NAME of the variable (letters, digits, _), e.g. NATS_PASSWORD,"
            " not its value",
        )
    return value


_EnvName = Annotated[str, AfterValidator(_env_var_name)]


class ManagedNatsServerSettings(Section):
    """ssmd starts a real nats-server itself (the local stack) and publishes to it."""

    port: int = Field(default=4222, ge=0, le=65535)  # 0 = any free port
    store_dir: CwdPath = Field(default=Path("var/nats"), validate_default=True)


class NatsTlsSettings(Section):
    ca_file: CwdPath | None = None
    cert_file: CwdPath | None = None
    key_file: CwdPath | None = None

    @property
    def enabled(self) -> bool:
        return any(path is not None for path in (self.ca_file, self.cert_file, self.key_file))

    @model_validator(mode="after")
    def _cert_with_key(self) -> NatsTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            fix = "a client certificate needs both tls.cert_file and tls.key_file"
            raise rule(f"{missing} is missing", field=missing, fix=fix)
        return self


class NatsStreamSettings(Section):
    name: str = ""  # "" or null: SSMD_{ENV}_KALSHI, resolved at load time
    create: bool = True  # create when missing; an existing stream is validated, never changed
    storage: StreamStorage = StreamStorage.FILE
    replicas: int = Field(default=1, ge=1, le=5)
    max_age_s: float = Field(default=0.0, ge=0)  # 0 = unlimited
    max_bytes: int = Field(default=-1, ge=-1)  # -1 = unlimited
    duplicate_window_s: float = Field(default=120.0, gt=0)
    discard: StreamDiscard = StreamDiscard.OLD

    _null_is_default = field_validator("name", mode="before")(null_to_empty)

    @field_validator("name")
    @classmethod
    def _stream_name(cls, value: str) -> str:
        if value and re.search(r"[.*>/\\\s]", value):
            raise rule(
                "not a valid stream name",
                fix="use letters, digits, - and _ (no '.', '*', '>', '/', spaces)",
            )
        return value


class NatsTransportSettings(Section):
    """Publish records to a NATS JetStream stream. Secrets come only from env vars or files."""

    kind: Literal["nats"] = "nats"
    servers: tuple[str, ...] = ()
    managed_server: ManagedNatsServerSettings | None = None
    connection_name: str = ""  # "" or null: "ssmd-{environment name}", resolved at load time
    user: str | None = Field(default=None, min_length=1)
    password_env: _EnvName | None = None
    password_file: CwdPath | None = None
    token_env: _EnvName | None = None
    token_file: CwdPath | None = None
    nkey_seed_env: _EnvName | None = None
    nkey_seed_file: CwdPath | None = None
    creds_file: CwdPath | None = None
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
        return drop_null_sections(data, ("tls", "stream"))

    @field_validator("servers")
    @classmethod
    def _server_urls(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for index, url in enumerate(values):
            if not url.startswith(_SERVER_SCHEMES):
                fix = "e.g. nats://127.0.0.1:4222 (or tls://host:4222)"
                raise rule("a server must be a nats:// or tls:// URL", field=str(index), fix=fix)
            if "@" in url.split("://", 1)[1].split("/", 1)[0]:
                fix = nats_inline_secret_fix("password")
                raise rule("credentials in a server URL", field=str(index), fix=fix)
        return values

    _null_is_default = field_validator("connection_name", "subject_prefix", mode="before")(
        null_to_empty
    )

    @field_validator("subject_prefix")
    @classmethod
    def _subject_prefix(cls, value: str) -> str:
        if value and any(
            not token or token in ("*", ">") or re.search(r"[\s*>]", token)
            for token in value.split(".")
        ):
            raise rule(
                "not a literal NATS subject",
                fix="use dot-separated tokens without spaces or wildcards, e.g. ssmd.prod.kalshi",
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NatsTransportSettings:
        if not self.servers and self.managed_server is None:
            fix = "add servers: [nats://127.0.0.1:4222], or managed_server: {} for a local server"
            raise rule("no NATS server to connect to", field="servers", fix=fix)
        if self.servers and self.managed_server is not None:
            fix = "keep servers (an existing NATS) or managed_server (ssmd starts one), not both"
            raise rule("both servers and managed_server are set", field="servers", fix=fix)
        if self.reconnect_max_s < self.reconnect_min_s:
            fix = f"use a number >= reconnect_min_s ({self.reconnect_min_s})"
            raise rule("is below reconnect_min_s", field="reconnect_max_s", fix=fix)
        for name in NATS_SECRET_KEYS:
            if getattr(self, f"{name}_env") is not None and getattr(self, f"{name}_file"):
                fix = f"keep exactly one of transport.{name}_env / transport.{name}_file"
                raise rule(f"set one of {name}_env or {name}_file", field=f"{name}_file", fix=fix)
        has_password = self.password_env is not None or self.password_file is not None
        if (self.user is not None) != has_password:
            field_name = "password_env" if self.user is not None else "user"
            fix = "user needs password_env or password_file, and a password needs user"
            raise rule("user and password go together", field=field_name, fix=fix)
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
            raise rule(message, field=chosen[1], fix=fix)
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
    # Settings is imported for type checking only (models.py imports this module).
    transport = settings if isinstance(settings, NatsTransportSettings) else settings.transport
    if not isinstance(transport, NatsTransportSettings):
        return NatsSecrets()
    source = settings.source  # the file: the environment's, or the transport settings' own
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
