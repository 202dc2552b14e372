"""`ssmd exchange`: run the local Kalshi exchange simulator until SIGINT/SIGTERM.

Registers RSA public keys (`--public-key KEY_ID=PEM_PATH`) or writes a fresh demo key pair
(`--generate-key DIR`), then serves PROTOCOL.md §10 on ws://HOST:PORT/trade-api/ws/v2, with
optional seeded random faults (`--faults random:rate=0.5,seed=7`, `--fault-kinds`), a larger
market catalog and market churn (`--catalog-markets`, `--churn`), a REST rate limit
(`--rest-rate`) and a per-subscription market cap (`--max-markets-per-subscription`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from ssmd.auth import generate_private_key, load_public_key_pem
from ssmd.errors import ConfigError, SsmdError
from ssmd.exchange.catalog_spec import CatalogSpec
from ssmd.exchange.churn import CHURN_SYNTAX, parse_churn_spec
from ssmd.exchange.market import DEFAULT_MIX, EventMix
from ssmd.exchange.outbound import BackpressurePolicy
from ssmd.exchange.replay_server import add_replay_arguments, replay_exchange_main
from ssmd.exchange.schedule import (
    ALL_KINDS,
    FaultKind,
    RandomFaults,
    parse_fault_kinds,
    parse_fault_spec,
)
from ssmd.exchange.server import ExchangeSimulator
from ssmd.ratelimit import BASIC_READ_BURST_S

log = structlog.get_logger("ssmd.exchange")

DEMO_KEY_FILENAME = "ssmd-demo-key.pem"
DEMO_KEY_ID_FILENAME = "ssmd-demo-key.id"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssmd exchange",
        description=(
            "Run a local Kalshi WebSocket v2 exchange with simulated markets. Clients must sign"
            " the upgrade with a registered key (RSA-PSS, PROTOCOL.md §2)."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="listen port (default 8765)")
    parser.add_argument("--markets", type=int, default=20, help="simulated markets (default 20)")
    parser.add_argument(
        "--rate", type=float, default=200.0, help="market events per second, 0 = flat out"
    )
    parser.add_argument("--seed", type=int, default=1, help="RNG seed (default 1)")
    parser.add_argument(
        "--mix",
        metavar="KIND=WEIGHT,...",
        help="event weights, e.g. delta=50,ticker=25,trade=10,snapshot=5 (kinds: "
        + ", ".join(MIX_KEYS)
        + "; left out: 0; a trade also sends its orderbook_delta; snapshot re-sends one"
        " market's book, a load-mix device). Default: delta=60,ticker=25,trade=10,lifecycle=5",
    )
    parser.add_argument(
        "--blast",
        type=int,
        default=0,
        metavar="N",
        help="bench mode: build each connection's frames for N events once, then send them in"
        " a loop as fast as it reads (seqs and trade ids rewritten; --rate unused)",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=10.0,
        help="seconds between 'heartbeat' pings, 0 = none (default 10, as Kalshi)",
    )
    parser.add_argument(
        "--public-key",
        action="append",
        default=[],
        metavar="KEY_ID=PEM_PATH",
        help="accept this API key id, verified with the RSA public key in PEM_PATH (repeatable)",
    )
    parser.add_argument(
        "--generate-key",
        type=Path,
        metavar="DIR",
        help=f"write a fresh demo private key ({DEMO_KEY_FILENAME}) and its key id"
        f" ({DEMO_KEY_ID_FILENAME}) into DIR and accept it",
    )
    parser.add_argument("--log", type=Path, metavar="PATH", help="append every sent frame here")
    faults = parser.add_argument_group("misbehaviour (PROTOCOL.md §3, §4.3, §6.6)")
    faults.add_argument(
        "--faults",
        default="none",
        metavar="SPEC",
        help="'none' (default) or random:rate=FAULTS_PER_S[,seed=N]: inject faults on every"
        " connection at random (exponential gaps), reproducibly for a given seed",
    )
    faults.add_argument(
        "--fault-kinds",
        metavar="KIND,...",
        help="draw only these kinds: " + ", ".join(kind.value for kind in FaultKind),
    )
    faults.add_argument(
        "--backpressure",
        choices=[policy.value for policy in BackpressurePolicy],
        default=BackpressurePolicy.BLOCK.value,
        help="a slow client: 'block' producing (default) or 'overflow' like Kalshi: error 25"
        " and the subscription dropped",
    )
    faults.add_argument(
        "--outbox-frames",
        type=int,
        default=10_000,
        help="frames queued per connection before backpressure applies (default 10000)",
    )
    faults.add_argument(
        "--overflow-after",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with --backpressure overflow: how long an outbox may stay full (default 1)",
    )
    discovery = parser.add_argument_group("market discovery (PROTOCOL.md §9, §7.5, §6.6)")
    discovery.add_argument(
        "--catalog-markets",
        type=int,
        default=0,
        metavar="N",
        help="also list N generated markets (sports, economics, crypto, politics, a few KXMVE"
        " combos; mostly active, and those stream) on GET /markets, /events, /series",
    )
    discovery.add_argument(
        "--churn", default="none", metavar="SPEC", help=f"market churn: {CHURN_SYNTAX}"
    )
    discovery.add_argument(
        "--rest-rate",
        type=float,
        metavar="TOKENS_PER_S",
        help="REST token bucket refilling TOKENS_PER_S and holding"
        f" {BASIC_READ_BURST_S:g} s of them; 10 tokens a request, HTTP 429 when short"
        " (§9.6; Kalshi's Basic tier is 200). Default: no limit",
    )
    discovery.add_argument(
        "--max-markets-per-subscription",
        type=int,
        metavar="N",
        help="error 26 for a subscribe or add_markets putting more than N markets in one"
        " subscription (Kalshi's cap is unpublished). Default: no cap",
    )
    add_replay_arguments(parser)
    return parser


# `--mix` keys (ssmd exchange) -> EventMix fields; keys left out weigh 0.
MIX_KEYS = {
    "delta": "book_change",
    "ticker": "ticker_change",
    "trade": "trade",
    "lifecycle": "other",
    "snapshot": "snapshot",
}
MIX_SYNTAX = "KIND=WEIGHT,... with KIND in " + ", ".join(MIX_KEYS) + " (left out: 0)"


def parse_event_mix(text: str) -> EventMix:
    """`delta=50,ticker=25,trade=10,snapshot=5` to an EventMix (kinds left out weigh 0). A
    trade event also sends the orderbook_delta of the liquidity it took."""
    weights: dict[str, int] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        field = MIX_KEYS.get(key.strip())
        if not sep or field is None or not value.strip().isdigit() or field in weights:
            raise ConfigError(
                f"bad mix entry {part.strip()!r}",
                source="command line",
                field="--mix",
                fix=f"e.g. delta=50,ticker=25,trade=10,snapshot=5 ({MIX_SYNTAX})",
            )
        weights[field] = int(value)
    if sum(weights.values()) <= 0:
        raise ConfigError(
            "the weights sum to 0", source="command line", field="--mix", fix=MIX_SYNTAX
        )
    return EventMix(**{field: weights.get(field, 0) for field in MIX_KEYS.values()})


def parse_rest_rate(tokens_per_s: float | None) -> tuple[float, float] | None:
    """`--rest-rate` to the simulator's (tokens_per_s, capacity): 2 s of budget (§9.6)."""
    if tokens_per_s is None:
        return None
    if tokens_per_s <= 0:
        raise ConfigError(
            f"must be > 0, got {tokens_per_s:g}", source="command line", field="--rest-rate"
        )
    return tokens_per_s, tokens_per_s * BASIC_READ_BURST_S


def parse_random_faults(spec: str, kinds: str | None) -> RandomFaults | None:
    """`--faults` and `--fault-kinds` to a schedule spec (None: no faults)."""
    return parse_fault_spec(spec, ALL_KINDS if kinds is None else parse_fault_kinds(kinds))


def parse_public_key_arg(text: str) -> tuple[str, RSAPublicKey]:
    """`KEY_ID=PEM_PATH` to (key id, public key); ConfigError/KeyLoadError name the problem."""
    key_id, sep, path_text = text.partition("=")
    if not sep or not key_id or not path_text:
        raise ConfigError(
            f"expected KEY_ID=PEM_PATH, got {text!r}",
            source="command line",
            field="--public-key",
            fix="e.g. --public-key a952bcbe-ec3b-4b5b-b8f9-11dae589608c=./kalshi-pub.pem",
        )
    path = Path(path_text)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path} ({exc.strerror})", source="command line", field="--public-key"
        ) from exc
    return key_id, load_public_key_pem(pem, source=str(path))


def write_demo_key(directory: Path) -> tuple[str, Path, RSAPublicKey]:
    """Create a demo key pair in `directory`: PKCS#1 PEM (mode 0600) + key id file."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        key = generate_private_key()
        key_id = str(uuid.uuid4())
        pem_path = directory / DEMO_KEY_FILENAME
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,  # Kalshi's download format (§2.3)
            serialization.NoEncryption(),
        )
        fd = os.open(pem_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as pem_file:
            pem_file.write(pem)
        (directory / DEMO_KEY_ID_FILENAME).write_text(key_id + "\n")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the demo key into {directory} ({exc.strerror})",
            source="command line",
            field="--generate-key",
        ) from exc
    return key_id, pem_path, key.public_key()


def exchange_main(argv: list[str] | None = None) -> int:
    """Entry point of `ssmd exchange`; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        public_keys = dict(parse_public_key_arg(text) for text in args.public_key)
        demo: tuple[str, Path] | None = None
        if args.generate_key is not None:
            key_id, pem_path, public_key = write_demo_key(args.generate_key)
            public_keys[key_id] = public_key
            demo = (key_id, pem_path)
        if not public_keys:
            raise ConfigError(
                "no API key is accepted",
                source="command line",
                field="--public-key",
                fix="pass --public-key KEY_ID=PEM_PATH or --generate-key DIR",
            )
        if args.replay:  # serve a recording instead of simulated markets
            return replay_exchange_main(args, public_keys)
        simulator = ExchangeSimulator(
            public_keys=public_keys,
            market_count=args.markets,
            rate_hz=args.rate,
            seed=args.seed,
            host=args.host,
            port=args.port,
            ping_interval_s=args.ping_interval,
            log_path=args.log,
            keep_sent=False,  # runs until a signal: do not grow `sent`
            outbox_frames=args.outbox_frames,
            backpressure=BackpressurePolicy(args.backpressure),
            overflow_after_s=args.overflow_after,
            random_faults=parse_random_faults(args.faults, args.fault_kinds),
            catalog=(
                CatalogSpec(markets=args.catalog_markets, seed=args.seed)
                if args.catalog_markets
                else None
            ),
            churn=parse_churn_spec(args.churn, seed=args.seed),
            rest_rate=parse_rest_rate(args.rest_rate),
            max_markets_per_subscription=_positive(
                args.max_markets_per_subscription, "--max-markets-per-subscription"
            ),
            mix=DEFAULT_MIX if args.mix is None else parse_event_mix(args.mix),
            blast_events=_positive(args.blast or None, "--blast"),
        )
        asyncio.run(_serve(simulator, demo))
    except SsmdError as exc:
        print(f"ssmd exchange: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except OSError as exc:  # e.g. the port is taken
        print(f"ssmd exchange: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def _positive(value: int | None, flag: str) -> int | None:
    if value is not None and value < 1:
        raise ConfigError(f"must be >= 1, got {value}", source="command line", field=flag)
    return value


async def _serve(simulator: ExchangeSimulator, demo: tuple[str, Path] | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with simulator:
        if demo is not None:
            key_id, pem_path = demo
            print(
                f"Demo key registered. Point a client at this exchange with:\n"
                f"  export KALSHI_API_KEY_ID={key_id}\n"
                f'  export KALSHI_PRIVATE_KEY="$(cat {pem_path})"\n'
                f"  ws url: {simulator.url}\n"
                f"  rest:   {simulator.rest_url}/markets/trades",
                flush=True,
            )
        await stop.wait()
        log.info("exchange.signal", connections=simulator.connections)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)
