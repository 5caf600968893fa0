"""`moecheck bench`: the benchmarks of ci/bench.py, optionally kept in the results store.

    moecheck bench [--out FILE] [--examples N] [--backend PAT ...] [--store FILE] [--attach latest|new]

With --store the rows are appended to the store's newest run if it started within 12 hours (the
nightly's property run, as `moecheck e2e` does), else, or with --attach new, to a run of their own
(profile 'bench'). --attach latest expects the store to exist (the nightly's run made it; a missing
file is a typo); --attach new creates it. The store is checked before the benchmark runs, so bad
input costs no benchmark time. Each row is printed to stderr as it is measured, so a benchmark cut short
keeps what it measured. Exit 0 measured (and stored); 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moecheck.ci.cli.attach import append_to_run
from moecheck.reference.errors import require

DEFAULT_OUT = "moecheck-report/bench.json"


def _open(path: str, attach: str):
    from moecheck.ci.results.store import ResultStore

    return ResultStore(path, create=attach == "new")


def store_rows(path: str, attach: str, rows: list, command: str) -> str:
    """Append rows to the run chosen as `moecheck e2e --attach` chooses; returns that run, described."""
    with _open(path, attach) as store:
        return append_to_run(store, attach, command, "bench", lambda rid: store.add_bench(rid, rows))


def bench(args: argparse.Namespace) -> int:
    from moecheck.ci import bench as benchmarks

    require(args.examples >= 1, f"--examples must be >= 1, got {args.examples}")
    if args.store:
        _open(args.store, args.attach).close()  # a missing or foreign store fails now, not after the benchmark
    names = None
    if args.backend:  # names and patterns checked as `moecheck run` checks them
        from moecheck.backends import registry
        from moecheck.ci.cli.inputs import match

        names = sorted({n for hits in match("backend", args.backend, registry.load_all()).values() for n in hits})
    res = benchmarks.measure(args.examples, names, echo=lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(benchmarks.table(res))
    if args.store:
        where = store_rows(args.store, args.attach, benchmarks.records(res), " ".join(["moecheck", "bench", *sys.argv[1:]]))
        print(f"stored as run {where} in {args.store}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="examples/s per property and the reference GEMM vs torch._grouped_mm")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    p.add_argument("--examples", type=int, default=10, help="examples timed per (backend, property)")
    p.add_argument("--backend", action="append", default=[], metavar="PAT",
                   help="only backends matching PAT (fnmatch; repeatable; default all)")
    p.add_argument("--store", default=None, help="append the numbers to this results store")
    p.add_argument("--attach", choices=("latest", "new"), default="latest",
                   help="store: append to the newest run if it started within 12 h (the nightly's), or start a new one")
    p.set_defaults(fn=bench, func=bench)
