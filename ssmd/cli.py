"""Command-line entry points: `ssmd-connector` (the daemon) and `ssmd` (the toolbox).

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or credentials (the message
names the file, the field and the fix), 128+N after a second signal N.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from ssmd import __version__
from ssmd.config import describe, load_environment, resolve_credentials
from ssmd.errors import AuthError, ConfigError, SsmdError
from ssmd.logs import LogFormat, configure_logging
from ssmd.replay import add_replay_parser

if TYPE_CHECKING:
    from ssmd.config import Settings
    from ssmd.config.selection import RestRateSettings, SelectionSettings, ShardSettings

EXIT_USAGE = 2


def _run_async(main: Coroutine[Any, Any, int]) -> int:
    """The process's one event loop: uvloop when installed, asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


# The daemon allocates a record or two per frame and keeps few cycles (records are gc=False
# structs): the default thresholds run the collector thousands of times a second, ~9 % of CPU
# with 50 ms full passes (measured by the bench). Start-up objects never die: frozen.
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Collect less often, and never again look at what start-up allocated."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def connector_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ssmd-connector",
        description="Stream Kalshi market data into normalized records (see README.md).",
    )
    parser.add_argument(
        "--env",
        default=os.environ.get("SSMD_ENV"),
        help="environment name (environments/NAME.yaml) or a YAML path; default $SSMD_ENV",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration and credentials, print a summary, and exit",
    )
    parser.add_argument("--version", action="version", version=f"ssmd {__version__}")
    args = parser.parse_args(argv)
    if not args.env:
        parser.error("--env is required (or set SSMD_ENV)")
    try:
        settings = load_environment(args.env)
    except ConfigError as exc:
        print(f"ssmd-connector: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log.level, settings.log.format)
    log = structlog.get_logger("ssmd.cli")
    if args.check:
        try:
            resolve_credentials(settings)
        except (ConfigError, AuthError) as exc:
            print(f"ssmd-connector: credentials error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(json.dumps(describe(settings), indent=2, default=str))
        return 0
    from ssmd.runner import EXIT_FAILED, run_connector

    tune_gc()
    try:
        return _run_async(run_connector(settings))
    except (ConfigError, AuthError) as exc:
        log.error("connector.start_failed", error=str(exc), error_type=type(exc).__name__)
        return EXIT_USAGE
    except SsmdError as exc:  # e.g. the managed nats-server or the transport cannot start
        log.error("connector.start_failed", error=str(exc), error_type=type(exc).__name__)
        return EXIT_FAILED


def _normalize_command(args: argparse.Namespace) -> int:
    from ssmd.normalize import run_normalize

    if args.file == "-":
        return run_normalize(
            sys.stdin.buffer,
            sys.stdout.buffer,
            sys.stderr,
            no_side_in_yes_price=args.use_yes_price,
            clock_ns=time.time_ns,
        )
    path = Path(args.file)
    try:
        with path.open("rb") as lines:
            return run_normalize(
                lines,
                sys.stdout.buffer,
                sys.stderr,
                no_side_in_yes_price=args.use_yes_price,
                clock_ns=time.time_ns,
            )
    except OSError as exc:
        print(f"ssmd normalize: {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE


def _schema_command(args: argparse.Namespace) -> int:
    from ssmd.records import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _tail_start(text: str) -> Any:
    from ssmd.tail import parse_start

    try:
        return parse_start(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def _nats_url(text: str) -> str:
    if not text.startswith(("nats://", "tls://", "ws://", "wss://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a nats:// or tls:// URL")
    return text


def _add_tail_parser(commands: Any) -> None:
    from ssmd.records import RECORD_TYPES

    kinds = [str(t.__struct_config__.tag) for t in RECORD_TYPES]
    tail = commands.add_parser(
        "tail",
        help="print records from NATS as they arrive (check that data flows)",
        description=(
            "Subscribe to the records a connector publishes to NATS and print them: one readable"
            " line per record (receive time UTC, kind, market, key fields as decimals, stream"
            " sequence), or the record itself as a JSON line with --json. Follows a JetStream"
            " stream with an ordered consumer when one covers the subject, else a plain"
            " subscription. Exit 0 when records arrived, 1 when --timeout-s passed without one,"
            " 2 for bad options, an unreachable server, or no stream for --from."
        ),
    )
    tail.add_argument(
        "subject",
        nargs="?",
        help="NATS subject (wildcards allowed); default PREFIX.> (every record)",
    )
    tail.add_argument(
        "--env",
        help="take servers, credentials, subject prefix and stream from this environment"
        " (default $SSMD_ENV, else local, unless --server is given)",
    )
    tail.add_argument(
        "--server",
        action="append",
        dest="servers",
        default=[],
        type=_nats_url,
        metavar="URL",
        help="NATS server URL, e.g. nats://127.0.0.1:4222 (repeatable; overrides --env's)",
    )
    tail.add_argument(
        "--prefix",
        help="subject prefix (default: the environment's; with --server only, ssmd.local.kalshi)",
    )
    tail.add_argument("--kind", choices=kinds, help="only this record kind")
    tail.add_argument(
        "--market", metavar="TICKER", help="only this exchange ticker (as Kalshi spells it)"
    )
    mode = tail.add_mutually_exclusive_group()
    mode.add_argument(
        "--core", action="store_true", help="plain subscription: only messages published from now"
    )
    mode.add_argument(
        "--from",
        dest="start",
        type=_tail_start,
        metavar="WHERE",
        help="JetStream start: new (default), all, last, seq:N or time:RFC3339",
    )
    tail.add_argument("--json", action="store_true", help="print each record as one JSON line")
    tail.add_argument("--count", type=_positive_int, metavar="N", help="exit after N records")
    tail.add_argument(
        "--timeout-s",
        type=_positive_seconds,
        metavar="S",
        help="exit after S seconds without a record (code 0 if any arrived, else 1)",
    )
    tail.set_defaults(handler=_tail_command)


def _tail_command(args: argparse.Namespace) -> int:
    from ssmd.tail import TailOptions, run_tail
    from ssmd.tail_format import OutputFormat

    env = args.env
    if env is None and not args.servers:
        env = os.environ.get("SSMD_ENV") or "local"
    options = TailOptions(
        env=env,
        servers=tuple(args.servers),
        subject=args.subject,
        kind=args.kind,
        market=args.market,
        prefix=args.prefix,
        core=args.core,
        start=args.start,
        output=OutputFormat.JSON if args.json else OutputFormat.READABLE,
        count=args.count,
        timeout_s=args.timeout_s,
    )
    try:
        return _run_async(run_tail(options, load=load_environment, out=sys.stdout, err=sys.stderr))
    except KeyboardInterrupt:  # Ctrl-C before the subscription was up
        return 128 + signal.SIGINT


def _add_markets_parser(commands: Any) -> None:
    markets = commands.add_parser(
        "markets",
        help="resolve the environment's market selection over REST and print it",
        description=(
            "Resolve subscription.select (series, events, categories, tags, status, filters,"
            " shard, cap) plus subscription.markets over Kalshi REST (PROTOCOL.md §9), without"
            " opening the WebSocket, and print how many markets it selects, a sample of"
            " tickers and the counts by series. With the in-process simulator, starts it and"
            " asks its REST side. Exit 0 on success, 1 when the exchange fails, 2 for bad"
            " configuration or refused credentials."
        ),
    )
    markets.add_argument(
        "--env",
        default=os.environ.get("SSMD_ENV"),
        help="environment name (environments/NAME.yaml) or a YAML path; default $SSMD_ENV",
    )
    markets.add_argument("--json", action="store_true", help="print one JSON document")
    markets.add_argument(
        "--sample",
        type=_positive_int,
        default=10,
        metavar="N",
        help="how many tickers to show (readable output; --json lists them all)",
    )
    markets.set_defaults(handler=_markets_command)


def _markets_command(args: argparse.Namespace) -> int:
    from ssmd.config.selection import SelectionSettings

    if not args.env:
        print("ssmd markets: --env is required (or set SSMD_ENV)", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = load_environment(args.env)
        run = run_markets(
            settings,
            settings.subscription.select or SelectionSettings(),
            shard=settings.subscription.shard,
            rate=settings.exchange.rest_rate,
            out=sys.stdout,
            as_json=args.json,
            sample=args.sample,
        )
        return _run_async(run)
    except (ConfigError, AuthError) as exc:
        print(f"ssmd markets: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SsmdError as exc:  # the exchange is unreachable or answered something unusable
        print(f"ssmd markets: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def run_markets(
    settings: Settings,
    select: SelectionSettings,
    *,
    shard: ShardSettings | None = None,
    rate: RestRateSettings | None = None,
    out: TextIO,
    as_json: bool = False,
    sample: int = 10,
    clock_ns: Callable[[], int] = time.time_ns,
) -> int:
    """`ssmd markets`: resolve the selection (plus subscription.markets) over REST, starting
    the in-process simulator when the environment uses it, and write the result to `out`."""
    from ssmd.assembly import open_exchange
    from ssmd.config.selection import RestRateSettings
    from ssmd.discovery import CatalogClient, discover
    from ssmd.rest import rest_base_url
    from ssmd.selection import Selection

    selection = Selection.from_settings(select, tickers=settings.subscription.markets, shard=shard)
    exchange = await open_exchange(settings)
    try:
        rest_url = settings.exchange.rest_url or rest_base_url(exchange.url)
        client = CatalogClient.from_settings(
            rest_url, exchange.credentials, rate or RestRateSettings()
        )
        async with client:
            found = await discover(selection, client, clock_ns())
    finally:
        if exchange.simulator is not None:
            await exchange.simulator.stop()
    stats = client.stats
    requests = {"calls": stats.calls, "throttled": stats.throttled, "retried": stats.retried}
    if as_json:
        document = {
            "environment": settings.name,
            "rest_url": rest_url,
            "count": len(found.tickers),
            "tickers": list(found.tickers),
            "by_series": found.by_series,
            "missing_tickers": list(found.missing_tickers),
            "cut_by_cap": found.cut_by_cap,
            "filtered_out": found.filtered_out,
            "queries": list(found.queries),
            "requests": requests,
        }
        out.write(json.dumps(document, indent=2) + "\n")
        return 0
    lines = [
        f"{len(found.tickers)} markets selected in {settings.name} ({rest_url})",
        f"  cut by max_markets: {found.cut_by_cap}, filtered out: {found.filtered_out}",
    ]
    if found.missing_tickers:
        missing = ", ".join(found.missing_tickers)
        lines.append(f"  listed but not found (still subscribed): {missing}")
    shown = found.tickers[:sample]
    more = f" … (+{len(found.tickers) - len(shown)} more)" if len(found.tickers) > sample else ""
    lines.append(f"sample: {', '.join(shown) or '(none)'}{more}")
    lines.append("by series:")
    width = max((len(name) for name in found.by_series), default=0)
    lines += [f"  {name:<{width}}  {count}" for name, count in found.by_series.items()]
    lines.append(
        f"REST: {len(found.queries)} queries, {stats.calls} requests,"
        f" {stats.throttled} throttled (429), {stats.retried} retried"
    )
    out.write("\n".join(lines) + "\n")
    return 0


def toolbox_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="ssmd", description="ssmd toolbox")
    parser.add_argument("--version", action="version", version=f"ssmd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    normalize = commands.add_parser(
        "normalize",
        help="raw Kalshi frames (JSON lines) to normalized records (JSON lines)",
        description=(
            "Read raw Kalshi WebSocket frames, one JSON per line, and write normalized records as"
            " JSON lines to stdout. Bad or unsupported lines are reported on stderr with their"
            " line number; the exit code is 0 only when every line was handled."
        ),
    )
    normalize.add_argument("file", help="input file, or - for stdin")
    normalize.add_argument(
        "--use-yes-price",
        action="store_true",
        help="the frames come from an orderbook subscription made with use_yes_price=true",
    )
    normalize.set_defaults(handler=_normalize_command)

    schema = commands.add_parser("schema", help="print the JSON Schema of every record kind")
    schema.set_defaults(handler=_schema_command)

    _add_tail_parser(commands)
    _add_markets_parser(commands)
    add_replay_parser(commands)

    commands.add_parser(
        "exchange",
        help="run the local Kalshi exchange simulator (ssmd exchange --help)",
        add_help=False,
    )

    if argv[:1] == ["exchange"]:
        from ssmd.exchange.cli import exchange_main

        configure_logging("info", LogFormat.AUTO)
        return exchange_main(argv[1:])
    args = parser.parse_args(argv)
    configure_logging("warning", LogFormat.AUTO)
    result: int = args.handler(args)
    return result
