"""Environment configuration: the YAML schema (pydantic v2), loading, and credential resolution.

`load_environment("local")` reads `environments/local.yaml`; any problem is a ConfigError that
names the file, the dotted field (`subscription.channels.2`) and what to do about it.
"""

from ssmd.config.loading import (
    ENVIRONMENTS_DIRNAME,
    available_environments,
    environment_dirs,
    load_environment,
)
from ssmd.config.models import (
    CredentialsSettings,
    ExchangeSettings,
    FileTransportSettings,
    LogSettings,
    ReconnectSettings,
    RuntimeSettings,
    Settings,
    SimulatorSettings,
    SubscriptionSettings,
    TransportSettings,
    describe,
    resolve_credentials,
)
from ssmd.config.nats import (
    ManagedNatsServerSettings,
    NatsPayload,
    NatsSecrets,
    NatsStreamSettings,
    NatsTlsSettings,
    NatsTransportSettings,
    Overflow,
    StreamDiscard,
    StreamStorage,
    resolve_nats_secrets,
)

__all__ = [
    "ENVIRONMENTS_DIRNAME",
    "CredentialsSettings",
    "ExchangeSettings",
    "FileTransportSettings",
    "LogSettings",
    "ManagedNatsServerSettings",
    "NatsPayload",
    "NatsSecrets",
    "NatsStreamSettings",
    "NatsTlsSettings",
    "NatsTransportSettings",
    "Overflow",
    "ReconnectSettings",
    "RuntimeSettings",
    "Settings",
    "SimulatorSettings",
    "StreamDiscard",
    "StreamStorage",
    "SubscriptionSettings",
    "TransportSettings",
    "available_environments",
    "describe",
    "environment_dirs",
    "load_environment",
    "resolve_credentials",
    "resolve_nats_secrets",
]
