"""How a connector's parts come from Settings: the exchange endpoint (starting the in-process
simulator when configured), the market selection discovery resolves, the reconnect policy and
the managed nats-server."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ssmd.auth import Credentials, generate_private_key
from ssmd.config import NatsTransportSettings, Settings, resolve_credentials
from ssmd.config.selection import SelectionSettings
from ssmd.errors import ConfigError
from ssmd.logs import get_logger
from ssmd.natsserver import NatsServer, NatsServerError
from ssmd.retry import RetryPolicy
from ssmd.selection import Selection

if TYPE_CHECKING:
    from ssmd.exchange.server import ExchangeSimulator

LOCAL_KEY_ID = "local-simulator"

log = get_logger("ssmd.runner")


@dataclass
class Exchange:
    """Where to connect and as whom; `simulator` is set when ssmd runs the exchange itself."""

    url: str
    credentials: Credentials
    markets: tuple[str, ...]
    simulator: ExchangeSimulator | None = None


async def open_exchange(settings: Settings) -> Exchange:
    """Resolve the exchange endpoint; start the in-process simulator when configured."""
    sim_config = settings.exchange.simulator
    if sim_config is None:
        credentials = resolve_credentials(settings)
        if credentials is None or settings.exchange.ws_url is None:
            raise ConfigError(
                "a real exchange needs credentials and exchange.ws_url",
                source=settings.name,
                field="credentials",
            )
        return Exchange(
            url=settings.exchange.ws_url,
            credentials=credentials,
            markets=tuple(settings.subscription.markets),
        )
    # The local stack signs with a throwaway key that only this process's simulator trusts:
    # the real signing path runs, and no credentials are needed.
    credentials = resolve_credentials(settings) or Credentials(LOCAL_KEY_ID, generate_private_key())
    # Imported here: a connector of a real exchange does without the simulator's server side
    # (~1 MB of RSS, measured).
    from ssmd.exchange.server import ExchangeSimulator

    simulator = ExchangeSimulator(
        public_keys={credentials.key_id: credentials.private_key.public_key()},
        market_count=sim_config.markets,
        rate_hz=sim_config.rate_hz,
        seed=sim_config.seed,
        # The in-process simulator serves a long-running stack: keep no send log.
        keep_sent=False,
        backpressure=sim_config.backpressure,
        random_faults=sim_config.faults,
        catalog=sim_config.catalog_spec(),
        churn=sim_config.churn_spec(),
        rest_rate=sim_config.rest_rate(),
        max_markets_per_subscription=sim_config.max_markets_per_subscription,
    )
    await simulator.start()
    # No markets listed: every open market of the simulator, found by discovery (its REST
    # side) and followed as they open and settle, like a selection on the real exchange.
    markets = tuple(settings.subscription.markets)
    return Exchange(
        url=simulator.url, credentials=credentials, markets=markets, simulator=simulator
    )


def market_selection(settings: Settings, exchange: Exchange) -> Selection | None:
    """What discovery resolves, or None when the markets are just the listed tickers."""
    subscription = settings.subscription
    select = subscription.select
    if select is None and subscription.shard is None and subscription.markets:
        return None
    return Selection.from_settings(
        select or SelectionSettings(), tickers=exchange.markets, shard=subscription.shard
    )


def retry_policy(settings: Settings) -> RetryPolicy:
    """The exchange reconnect policy of `exchange.reconnect`, with its own RNG for the jitter."""
    reconnect = settings.exchange.reconnect
    return RetryPolicy(
        base_s=reconnect.base_s,
        cap_s=reconnect.cap_s,
        healthy_after_s=reconnect.healthy_after_s,
        max_auth_retries=reconnect.max_auth_retries,
        rng=random.Random(),
    )


_PORT_IN_USE = "address already in use"


async def start_managed_nats(settings: Settings) -> NatsServer | None:
    """Start the nats-server the environment manages (`transport.managed_server`), if any.

    A taken port is a ConfigError naming `transport.managed_server.port` and the two fixes;
    any other start failure is the NatsServerError (a TransportError) with the server's log.
    """
    transport = settings.transport
    if not isinstance(transport, NatsTransportSettings) or transport.managed_server is None:
        return None
    managed = transport.managed_server
    server = NatsServer(managed.store_dir, port=managed.port)
    try:
        await server.start()
    except NatsServerError as exc:
        if _PORT_IN_USE not in str(exc).lower():
            raise
        raise ConfigError(
            f"cannot start the managed nats-server: port {managed.port} on 127.0.0.1 is already"
            " in use (another nats-server, or another `make run`, is listening there)",
            source=settings.source,
            field="transport.managed_server.port",
            fix="set transport.managed_server.port: 0 to take any free port, or stop the other"
            f" server on port {managed.port}",
        ) from exc
    log.info("nats_server.started", url=server.url, store_dir=str(managed.store_dir))
    return server
