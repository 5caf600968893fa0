"""`moecheck durations`: the durations JSON that `moecheck run --shard I/N --durations FILE` balances by.

Export it once, from the store of earlier nights, and give the same file to every shard.
"""
from __future__ import annotations

import argparse
import sys


def durations(args: argparse.Namespace) -> int:
    from moecheck.ci.results.bisect import one_line
    from moecheck.ci.results.durations import export_durations

    if args.runs < 1:
        print(f"moecheck durations: error: --runs must be >= 1, got {args.runs}", file=sys.stderr)
        return 2
    try:
        n = export_durations(args.store, args.out, runs=args.runs, profile=args.profile)
    except Exception as e:  # a missing or corrupt store: one line
        print(f"moecheck durations: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {n} test durations to {args.out}" + ("" if n else " (no finished run: shards split round-robin)"))
    return 0


def register(sub) -> None:
    p = sub.add_parser("durations", help="export test durations from a results store for `moecheck run --shard`")
    p.add_argument("--store", default=None, help="results store (default: $MOECHECK_STORE or ./moecheck-results.sqlite)")
    p.add_argument("--out", default="moecheck-durations.json", help="JSON to write (default: moecheck-durations.json)")
    p.add_argument("--runs", type=int, default=5, help="median over this many latest finished runs (default: 5)")
    p.add_argument("--profile", default=None, help="prefer runs of this profile (default: any)")
    p.set_defaults(fn=durations, func=durations)
