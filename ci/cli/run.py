"""`moecheck run` (the property suite in pytest, then a table) and `moecheck report DIR`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from fnmatch import fnmatchcase
from pathlib import Path

from moecheck.reference.errors import MoecheckError


SELECT_ENV = {"backend": "MOECHECK_SELECT_BACKENDS", "format": "MOECHECK_SELECT_FORMATS", "property": "MOECHECK_SELECT_PROPERTIES"}


def _select_env(args) -> dict[str, str]:
    """--backend/--format/--property as exact names or fnmatch patterns ('flashinfer_*'), read by
    the property module when it parametrizes: pytest -k would take `bf16` to mean `mxfp4_bf16` too."""
    from moecheck.properties.checks import PROPERTIES

    unknown = [p for p in args.property if not any(fnmatchcase(n, p) for n in PROPERTIES)]
    if unknown:
        raise MoecheckError(f"unknown property {unknown[0]!r}; known: {', '.join(PROPERTIES)}")
    return {env: ",".join(getattr(args, opt)) for opt, env in SELECT_ENV.items() if getattr(args, opt)}


def _run(args) -> int:
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    (report / "results.jsonl").unlink(missing_ok=True)
    env = dict(os.environ, MOECHECK_REPORT_DIR=str(report), PYTHONSAFEPATH="1")  # no cwd on sys.path
    if args.profile:
        env["MOECHECK_PROFILE"] = args.profile
    if args.plugin:
        env["MOECHECK_PLUGINS"] = ",".join([*filter(None, env.get("MOECHECK_PLUGINS", "").split(",")), *args.plugin])
    import moecheck.properties as props

    pkg = Path(props.__file__).resolve().parent
    cmd = [sys.executable, "-m", "pytest", "-p", "moecheck.properties.pytest_plugin", "-p", "no:cacheprovider",
           "--import-mode=importlib", "--confcutdir", str(pkg), "--rootdir", str(pkg), "-q", str(pkg / "test_properties.py")]
    if args.workers != "0":
        cmd += ["-n", args.workers]
    env.update(_select_env(args))
    # --- issue 18: --shard/--run-id/--durations (ci/shard.py); may move the report to this shard's folder ---
    if args.shard or args.run_id or args.durations:
        from moecheck.ci import shard

        cmd, env, report = shard.configure(args, cmd, env, report)
    # --- end issue 18 ---
    run_id = None
    if args.store:  # started first: a killed suite leaves an 'interrupted' run, not nothing
        from moecheck.ci.results import bridge

        run_id = bridge.start_run(args.store, " ".join(["moecheck", *sys.argv[1:]]), env.get("MOECHECK_PROFILE", ""))
    t0 = time.time()
    sel = " ".join(f"{k}={v}" for k, v in _select_env(args).items())
    print("running:", sel, " ".join(cmd[2:]), flush=True)
    try:
        rc = subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        rc = None
    wall = time.time() - t0
    rows = [json.loads(line) for line in (report / "results.jsonl").read_text().splitlines()] if (report / "results.jsonl").exists() else []
    if run_id is not None:
        n = bridge.finish_run(args.store, run_id, rows, interrupted=rc is None or rc == 2)
        print(f"stored {n} results as run {run_id} in {args.store}")
    if not rows:
        print("moecheck run: no property test was executed (nothing selected or collection failed)", file=sys.stderr)
        return 1
    _table(rows, report, wall)
    return 0 if rc == 0 else 1


def _table(rows: list[dict], report: Path, wall: float) -> None:
    cells = defaultdict(lambda: defaultdict(int))
    reasons = {}
    for r in rows:
        key = (r["backend"], r["format"])
        cells[key][r["outcome"]] += 1
        if r["outcome"] == "skipped" and key not in reasons:
            reasons[key] = r.get("message", "")
    lines = [f"{'backend':26s} {'format':22s} pass fail skip  note"]
    for (b, f), c in sorted(cells.items()):
        note = ""
        if c["failed"]:
            bad = [r["property"] for r in rows if (r["backend"], r["format"]) == (b, f) and r["outcome"] == "failed"]
            note = "FAILED: " + ", ".join(bad)
        elif c["skipped"] and not c["passed"]:
            note = reasons.get((b, f), "")[:60]
        lines.append(f"{b:26s} {f:22s} {c['passed']:4d} {c['failed']:4d} {c['skipped']:4d}  {note}")
    text = "\n".join(lines)
    (report / "summary.txt").write_text(text + f"\nwall time {wall:.0f} s\n")
    print("\n" + text)
    print(f"\nwall time {wall:.0f} s; full report: {report / 'results.jsonl'} (summary: {report / 'summary.txt'})")


def _report(args) -> int:
    path = Path(args.dir) / "results.jsonl"
    if not path.is_file():
        raise MoecheckError(f"no results at {path}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    _table(rows, Path(args.dir), 0.0)
    return 1 if any(r["outcome"] == "failed" for r in rows) else 0


def register(sub) -> None:
    p = sub.add_parser("run", help="property suite over every available backend, then a backend x format table")
    p.add_argument("--backend", action="append", default=[])
    p.add_argument("--format", action="append", default=[])
    p.add_argument("--property", action="append", default=[])
    p.add_argument("--profile", choices=["dev", "ci", "gpu", "nightly"], default=None)
    p.add_argument("-n", "--workers", default="auto", help="pytest-xdist workers (0: in one process)")
    p.add_argument("--report", default="moecheck-report")
    p.add_argument("--store", default=None, help="append the results to this SQLite store")
    p.add_argument("--plugin", action="append", default=[])
    p.add_argument("--shard", default=None, metavar="I/N", help="run only shard I of N (1-based), balanced by recorded durations")
    p.add_argument("--run-id", default=None, help="run id in the store (default $MOECHECK_RUN_ID, else fresh); shards share one")
    p.add_argument("--durations", default=None, metavar="FILE",
                   help="with --shard: durations JSON (moecheck durations); default: exported from --store")
    p.set_defaults(fn=_run)
    p = sub.add_parser("report", help="print the backend x format table of a (possibly interrupted) run")
    p.add_argument("dir")
    p.set_defaults(fn=_report)
