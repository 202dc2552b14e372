"""`python -m ssmd.bench [--quick] [--json PATH]`: run the bench, print the table, write JSON."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from ssmd.bench.harness import Bench
from ssmd.bench.report import BenchReport, Pipeline, render_json, render_table
from ssmd.bench.settings import FULL, QUICK

DEFAULT_JSON = Path("var/bench/latest.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ssmd.bench",
        description="Measure ssmd against a ceiling loop and a naive pipeline (issue 7).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short windows, one offered rate, no 10k markets"
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"write the report here ({DEFAULT_JSON})"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep run files here (default: a temporary directory)"
    )
    return parser


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(quick: bool, workdir: Path | None) -> BenchReport:
    settings = QUICK if quick else FULL
    if importlib.util.find_spec("picows") is not None:
        # The optional client (issue 7), beside ssmd into JetStream; skipped without the extra.
        settings = replace(settings, jetstream_extras=(Pipeline.SSMD_PICOWS,))
    else:
        _say("bench: picows is not installed (pip install 'ssmd[fast]'): no ssmd-picows runs")
    try:
        import uvloop  # the loop ssmd runs on: the measuring consumer needs the headroom
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    if workdir is not None:
        return runner(Bench(settings, workdir, say=_say).run())
    with tempfile.TemporaryDirectory(prefix="ssmd-bench-") as temp:
        return runner(Bench(settings, Path(temp), say=_say).run())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run(args.quick, args.workdir)
    print(render_table(report), end="", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(render_json(report))
    print(f"\nJSON: {args.json}")
    failed = [run for run in report.runs if run.error is not None]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
