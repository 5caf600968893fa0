"""`moecheck merge OUT SHARD...`: shard stores or report folders into one store (ci/results/merge.py).

Prints, per run id, each shard's cases, summed test time and wall time, and how balanced the shards
were (busiest / mean). Exit 0 merged; 2 bad input (a corrupt or conflicting shard: one line, and
OUT and every shard left as they were).
"""
from __future__ import annotations

import argparse
import sys


def _line(stat) -> str:
    wall = f"{stat.wall_s:.0f} s" if stat.wall_s is not None else "-"
    return f"  {str(stat.path):40s} {stat.cases:5d} cases  tests {stat.test_s:8.1f} s  wall {wall:>7s}  {stat.status}"


def report(summary) -> str:
    lines = [f"merged into {summary.out}: {summary.added_cases} cases, {summary.added_e2e} e2e gates and "
             f"{summary.added_bench} benchmark rows added"]
    for rid, stats in summary.shards.items():
        lines.append(f"run {rid}: {len(stats)} input(s)")
        lines += [_line(s) for s in stats]
        busy = [s.test_s for s in stats if s.cases]
        if len(busy) > 1:
            mean = sum(busy) / len(busy)
            lines.append(f"  balance: busiest {max(busy):.1f} s, lightest {min(busy):.1f} s, mean {mean:.1f} s, "
                         f"busiest/mean {max(busy) / mean if mean else 1.0:.2f}")
        if summary.overlap.get(rid):
            lines.append(f"  warning: {summary.overlap[rid]} (backend, format, property) keys came from more than one "
                         "shard: did every shard read the same durations file?")
    return "\n".join(lines)


def merge(args: argparse.Namespace) -> int:
    from moecheck.ci.results.bisect import one_line
    from moecheck.ci.results.merge import merge as merge_stores

    try:
        summary = merge_stores(args.out, args.shards)
    except KeyboardInterrupt:
        print("moecheck merge: error: interrupted", file=sys.stderr)
        return 2
    except Exception as e:  # MoecheckError, sqlite3.Error, OSError: one line, never a traceback
        print(f"moecheck merge: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(report(summary))
    return 0


def register(sub) -> None:
    p = sub.add_parser("merge", help="combine shard stores or shard report folders into one store, one run per run id")
    p.add_argument("out", metavar="OUT", help="store to merge into (created if missing; may hold earlier nights)")
    p.add_argument("shards", metavar="SHARD", nargs="+", help="shard store files, shard report folders, or their parent")
    p.set_defaults(fn=merge, func=merge)
