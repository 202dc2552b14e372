"""Transports: where normalized records go (the Transport protocol, files; NATS next)."""

from __future__ import annotations

import time
from collections.abc import Callable

from ssmd.config import FileTransportSettings, TransportSettings
from ssmd.transport.base import Transport, TransportStats
from ssmd.transport.files import FileTransport, FileTransportError, read_records


def build_transport(
    settings: TransportSettings, *, clock_s: Callable[[], float] = time.time
) -> Transport:
    """The transport described by the config's `transport` section (not yet started)."""
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
    "Transport",
    "TransportStats",
    "build_transport",
    "read_records",
]
