"""Command-line entry points: `ssmd-connector` (the daemon) and `ssmd` (the toolbox).

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or credentials (the message
names the file, the field and the fix), 128+N after a second signal N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import structlog

from ssmd import __version__
from ssmd.config import describe, load_environment, resolve_credentials
from ssmd.errors import AuthError, ConfigError
from ssmd.logs import LogFormat, configure_logging

EXIT_USAGE = 2


def _run_async(main: Coroutine[Any, Any, int]) -> int:
    """The process's one event loop: uvloop when installed, asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


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
    from ssmd.runner import run_connector

    try:
        return _run_async(run_connector(settings))
    except (ConfigError, AuthError) as exc:
        log.error("connector.start_failed", error=str(exc), error_type=type(exc).__name__)
        return EXIT_USAGE


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
