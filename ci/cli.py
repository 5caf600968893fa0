"""`moecheck` command line: backends, run, repro, audit (+ dashboard/history/bisect-run).

Bad input gives one line on stderr and exit 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from fnmatch import fnmatchcase
from pathlib import Path

from moecheck.reference.errors import MoecheckError


def _backends(args) -> int:
    from moecheck.backends import registry

    bs = registry.load_all(tuple(args.plugin))
    w = max([26, *map(len, bs)]) + 1
    print(f"{'backend':{w}s} {'status':12s} {'where / why':44s} formats")
    for name, b in sorted(bs.items()):
        av = b.availability()
        verified = "" if b.capability.verified else "  [not verified on hardware]"
        fm = ",".join(sorted(b.capability.formats)) or "-"
        fm = fm if len(fm) < 70 else fm[:67] + "..."
        print(f"{name:{w}s} {'available' if av.ok else 'unavailable':12s} {av.reason[:44]:44s} {fm}{verified}")
        if args.verbose:
            for v in b.capability.verified:
                print(f"    verified: {v}")
            for lim in b.capability.limitations:
                print(f"    limitation: {lim.text} {lim.link}")
    return 0


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


def _repro(args) -> int:
    from moecheck.properties.repro import main

    return main(args.file, args.case)


def _audit(args) -> int:
    from moecheck.backends import registry
    from moecheck.properties.audit import audit_backend

    bs = registry.load_all(tuple(args.plugin))
    names = args.backend or sorted(bs)
    print(f"{'backend':24s} {'probe':26s} {'outcome':15s} detail")
    worst = 0
    for n in names:
        for r in audit_backend(registry.get(n)):
            print(f"{r.backend:24s} {r.probe:26s} {r.outcome:15s} {r.detail[:100]}")
            worst = max(worst, int(r.outcome in ("silently wrong", "non-finite")))
    return worst


def _report(args) -> int:
    path = Path(args.dir) / "results.jsonl"
    if not path.is_file():
        raise MoecheckError(f"no results at {path}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    _table(rows, Path(args.dir), 0.0)
    return 1 if any(r["outcome"] == "failed" for r in rows) else 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="moecheck", description="correctness suite for MoE GPU kernels")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("backends", help="list backends, available or not, with the reason")
    p.add_argument("--plugin", action="append", default=[], help="module defining extra backends")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=_backends)
    p = sub.add_parser("run", help="property suite over every available backend, then a backend x format table")
    p.add_argument("--backend", action="append", default=[])
    p.add_argument("--format", action="append", default=[])
    p.add_argument("--property", action="append", default=[])
    p.add_argument("--profile", choices=["dev", "ci", "gpu", "nightly"], default=None)
    p.add_argument("-n", "--workers", default="auto", help="pytest-xdist workers (0: in one process)")
    p.add_argument("--report", default="moecheck-report")
    p.add_argument("--store", default=None, help="append the results to this SQLite store")
    p.add_argument("--plugin", action="append", default=[])
    p.set_defaults(fn=_run)
    p = sub.add_parser("repro", help="replay one case: exit 0 pass, 1 fail, 125 cannot run here")
    p.add_argument("file", nargs="?", default=None)
    p.add_argument("--case", default=None, help="the case as JSON")
    p.set_defaults(fn=_repro)
    p = sub.add_parser("report", help="print the backend x format table of a (possibly interrupted) run")
    p.add_argument("dir")
    p.set_defaults(fn=_report)
    p = sub.add_parser("audit", help="try what each record says is unsupported")
    p.add_argument("--backend", action="append", default=[])
    p.add_argument("--plugin", action="append", default=[])
    p.set_defaults(fn=_audit)
    try:
        from moecheck.ci.results import cli as results_cli

        results_cli.register(sub)
    except ImportError:
        pass
    from moecheck.ci import (
        e2e_cli,  # stdlib-only at import: lm-eval is imported when a gate runs
    )

    e2e_cli.register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except MoecheckError as e:
        print(f"moecheck {args.cmd}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
