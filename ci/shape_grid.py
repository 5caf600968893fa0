"""Which shapes a backend's library takes: matches_reference over a grid of (T, H, I), ignoring the
record's own alignment, so the record's limits can be stated from what the library did.

    python3 -m moecheck.ci.shape_grid --backend vllm_ogs_mxfp4 --format mxfp4_bf16 \
        --hidden 64,96,128,256 --inter 64,128,192 --tokens 1,16 --out grid.jsonl

Each cell prints one line: verdict (pass / fail / refused / device-error) and the first line of the
message. A device error poisons the CUDA context, so the grid re-runs itself in a fresh process from
the next cell (at most --restarts times): one broken cell never hides the others.
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys

CELL_FIELDS = ("tokens", "hidden", "inter")


def cells(args) -> list[dict]:
    grid = itertools.product(args.tokens, args.hidden, args.inter)
    return [dict(zip(CELL_FIELDS, c)) for c in grid]


def run_cells(args, start: int) -> int:
    """Run cells from `start` in this process; return the index to resume at (len = done)."""
    import torch
    from moecheck.backends.registry import suite
    from moecheck.properties import isolation
    from moecheck.properties.case import Case
    from moecheck.properties.checks import check

    b = suite(tuple(args.plugin))[args.backend]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    todo = cells(args)
    for i in range(start, len(todo)):
        case = Case(backend=args.backend, format=args.format, experts=args.experts, top_k=args.top_k,
                    activation=args.activation, dtype=args.dtype, seed=args.seed, **todo[i])
        try:
            out = check(b, case, device)
            verdict, msg = out.verdict, out.message
            if out.info.get("device_error"):
                verdict = "device-error"
        except Exception as e:  # noqa: BLE001 - the grid records, it does not stop
            verdict = "device-error" if isolation.is_device_error(e) else "error"
            msg = f"{type(e).__name__}: {e}"
        first = (msg.strip().splitlines() or [""])[0][:200]
        row = dict(backend=args.backend, format=args.format, **todo[i], verdict=verdict, message=first)
        print(json.dumps(row), flush=True)
        if verdict == "device-error":
            return i + 1
    return len(todo)


def main(argv=None) -> int:
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", required=True)
    ap.add_argument("--format", required=True)
    ap.add_argument("--tokens", type=ints, default=[1, 16])
    ap.add_argument("--hidden", type=ints, required=True)
    ap.add_argument("--inter", type=ints, required=True)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--activation", default="silu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--plugin", action="append", default=[])
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)  # the child's resume point
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return 0 if run_cells(args, args.start) >= len(cells(args)) else 3
    start, total = 0, len(cells(args))
    for _ in range(args.restarts + 1):
        cmd = [sys.executable, "-m", "moecheck.ci.shape_grid", *(argv if argv is not None else sys.argv[1:]),
               "--child", "--start", str(start)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        rows = [json.loads(s) for s in done.stdout.splitlines() if s.startswith("{")]
        for r in rows:
            print(f"{r['backend']:28s} {r['format']:12s} T={r['tokens']:<4d} H={r['hidden']:<5d} I={r['inter']:<5d} "
                  f"{r['verdict']:12s} {r['message'][:110]}", flush=True)
        start += len(rows)
        if start < total and done.returncode not in (0, 3):  # the process died inside a cell: skip that cell
            tail = (done.stderr.strip().splitlines() or [""])[-1][:150]
            print(f"{args.backend:28s} cell {cells(args)[start]} crashed the process (exit {done.returncode}): {tail}")
            start += 1
        if start >= total:
            break
    return 0 if start >= total else 1


if __name__ == "__main__":
    sys.exit(main())
