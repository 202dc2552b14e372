"""Transports: where normalized records go (the Transport protocol, files, NATS JetStream)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ssmd.config import FileTransportSettings, NatsTransportSettings, TransportSettings
from ssmd.transport.base import Transport, TransportStats
from ssmd.transport.files import FileTransport, FileTransportError, read_records
from ssmd.transport.nats import NatsTransport
from ssmd.transport.nats_core import NatsTransportError


def build_transport(
    settings: TransportSettings,
    *,
    clock_s: Callable[[], float] = time.time,
    nats_servers: Sequence[str] | None = None,
) -> Transport:
    """The transport described by the config's `transport` section (not yet started).

    `nats_servers` overrides transport.servers (the managed nats-server's URL).
    """
    if isinstance(settings, NatsTransportSettings):
        return NatsTransport(settings, servers=nats_servers)
    if isinstance(settings, FileTransportSettings):
        return FileTransport(
            settings.dir,
            rotate_max_bytes=settings.rotate_max_bytes,
            rotate_interval_s=settings.rotate_interval_s,
            clock_s=clock_s,
        )
    raise TypeError(f"unsupported transport settings {type(settings).__name__}")


__all__ = [
    "FileTransport",
    "FileTransportError",
    "NatsTransport",
    "NatsTransportError",
    "Transport",
    "TransportStats",
    "build_transport",
    "read_records",
]
