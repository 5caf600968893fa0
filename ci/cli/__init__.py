"""The `moecheck` command line: one module per command, each with `register(subparsers)`.

Bad input gives one line on stderr and exit 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from moecheck.ci.cli import audit, backends, durations, e2e, merge, repro, results, run  # noqa: I001
from moecheck.reference.errors import MoecheckError

COMMANDS = (backends, run, repro, audit, results, e2e, merge, durations)  # e2e and results import heavy packages only when run


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="moecheck", description="correctness suite for MoE GPU kernels")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for mod in COMMANDS:
        mod.register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except MoecheckError as e:
        print(f"moecheck {args.cmd}: {e}", file=sys.stderr)
        return 2
