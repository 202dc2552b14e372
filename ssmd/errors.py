"""The one error hierarchy of ssmd, grouped by who must react.

ConfigError: the operator fixes a file or an environment variable. AuthError: the operator
fixes credentials. ProtocolError: the exchange said something we cannot use. TransportError:
the sink (files, NATS) failed. Expected conditions (a sequence gap, an unknown frame type) are
events, not exceptions. Messages never include secret material.
"""

from __future__ import annotations


class SsmdError(Exception):
    """Root of every error ssmd raises on purpose."""


class ConfigError(SsmdError):
    """A configuration file or value is wrong; `source` and `field` say where, `fix` says how."""

    def __init__(self, message: str, *, source: str, field: str = "", fix: str = "") -> None:
        self.message = message
        self.source = source
        self.field = field
        self.fix = fix
        where = f"{source}: {field}" if field else source
        text = f"{where}: {message}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class AuthError(SsmdError):
    """Credentials are missing, unreadable or refused."""


class KeyLoadError(AuthError):
    """A private key could not be loaded. `source` names the file or env var, never the key."""

    def __init__(self, message: str, *, source: str) -> None:
        self.source = source
        self.message = message
        super().__init__(f"{source}: {message}")


class HandshakeRejected(AuthError):
    """The exchange refused the WebSocket upgrade (HTTP 401/403 or another non-101 status)."""

    def __init__(self, status_code: int, url: str, body: str = "") -> None:
        self.status_code = status_code
        self.url = url
        self.body = body
        hint = ""
        if status_code == 401:
            hint = (
                " (check the API key id and private key belong together and to this environment,"
                " and that the clock is synced)"
            )
        super().__init__(f"{url}: handshake rejected with HTTP {status_code}{hint}")


class ExchangeUnavailable(SsmdError):
    """The exchange could not be reached or dropped the connection; retrying may help."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{url}: {reason}")


class ProtocolError(SsmdError):
    """The exchange sent something ssmd cannot act on."""


class FrameDecodeError(ProtocolError):
    """One frame could not be decoded. `reason` is short and stable; `type_name` if it had one."""

    def __init__(self, reason: str, *, detail: str = "", type_name: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.type_name = type_name
        super().__init__(f"{reason}: {detail}" if detail else reason)


class TransportError(SsmdError):
    """Publishing or flushing records failed."""
