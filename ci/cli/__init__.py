"""The `moecheck` command line: one module per command, each with `register(subparsers)`.

Bad input gives one line on stderr and exit 2, never a traceback; exit codes are ci/cli/exitcodes.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from moecheck.ci.cli import (  # noqa: I001
    audit,
    backends,
    bench,
    durations,
    e2e,
    exitcodes,
    merge,
    repro,
    results,
    run,
)
from moecheck.reference.errors import MoecheckError

COMMANDS = (backends, run, repro, audit, results, e2e, merge, durations, bench)  # e2e, results and bench import heavy packages only when run


class _Parser(argparse.ArgumentParser):
    """A usage error as one line, exit 2 (the usage text is --help's); subcommand parsers inherit it."""

    def error(self, message: str):
        self.exit(exitcodes.USAGE.value, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="moecheck", description="correctness suite for MoE GPU kernels",
                                 epilog=exitcodes.epilog())
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
        return exitcodes.USAGE.value
    except KeyboardInterrupt:
        print(f"moecheck {args.cmd}: interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED.value
    except Exception as e:  # a bug of ours: never exit 1, which means "kernel failed"
        if os.environ.get("MOECHECK_TRACEBACK"):
            traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"moecheck {args.cmd}: internal error: {type(e).__name__}: {first} "
              "(rerun with MOECHECK_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return exitcodes.INTERNAL.value
