"""`moecheck run` (the property suite in pytest, then a table) and `moecheck report DIR`."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from moecheck.ci import table
from moecheck.ci.cli import exitcodes
from moecheck.reference.errors import MoecheckError

SELECT_ENV = {"backend": "MOECHECK_SELECT_BACKENDS", "format": "MOECHECK_SELECT_FORMATS", "property": "MOECHECK_SELECT_PROPERTIES"}


def _select_env(args) -> dict[str, str]:
    """--backend/--format/--property as exact names or fnmatch patterns ('flashinfer_*'), read by
    the property module when it parametrizes: pytest -k would take `bf16` to mean `mxfp4_bf16` too."""
    return {env: ",".join(getattr(args, opt)) for opt, env in SELECT_ENV.items() if getattr(args, opt)}


def _check(args) -> None:
    """Before any work: plugins import, every name and pattern is known, --require holds (else exit 2)."""
    from moecheck.backends import registry
    from moecheck.ci.cli import inputs
    from moecheck.properties.checks import PROPERTIES
    from moecheck.reference.formats import FORMATS

    inputs.load_plugins(args.plugin)
    backends = registry.suite(tuple(args.plugin))
    selected = inputs.match("backend", args.backend, backends)
    inputs.match("format", args.format, FORMATS)
    inputs.match("property", args.property, [*PROPERTIES, "pinned"])  # pinned: the pinned cases
    if args.require:
        inputs.require_available(selected, args.plugin, backends)


def _pytest_cmd(args, report: Path) -> tuple[list[str], dict[str, str]]:
    import moecheck.properties as props

    env = dict(os.environ, MOECHECK_REPORT_DIR=str(report), PYTHONSAFEPATH="1")  # no cwd on sys.path
    env.pop("PYTEST_XDIST_WORKER", None)
    if args.profile:
        env["MOECHECK_PROFILE"] = args.profile
    if args.plugin:
        env["MOECHECK_PLUGINS"] = ",".join([*filter(None, env.get("MOECHECK_PLUGINS", "").split(",")), *args.plugin])
    if args.timeout is not None:
        env["MOECHECK_EXAMPLE_TIMEOUT"] = str(args.timeout)
    junit = [f"--junitxml={Path(args.junitxml).resolve()}"] if args.junitxml else []
    env.update(_select_env(args))
    pkg = Path(props.__file__).resolve().parent
    # always through xdist, even for one worker: a crashed or hung kernel takes its worker down, not the run.
    # Default (load) scheduling: with --dist loadgroup a crashed worker hung the run (tests/properties/test_isolation.py
    # ran past 300 s), and crash isolation matters more than one compile per graph and run
    workers = "1" if args.workers == "0" else args.workers
    cmd = [sys.executable, "-m", "pytest", "-p", "moecheck.properties.pytest_plugin", "-p", "moecheck.ci.progress",
           "-p", "no:cacheprovider", "--import-mode=importlib", "--confcutdir", str(pkg), "--rootdir", str(pkg),
           "-q", "-n", workers, "--max-worker-restart", str(MAX_WORKER_RESTARTS), *junit, str(pkg / "test_properties.py")]
    return cmd, env


def _with_store(cmd: list[str], env: dict[str, str], store: str, run_id: str) -> list[str]:
    """Each result committed to the store as its test ends (ci/store_plugin.py)."""
    from moecheck.ci import store_plugin

    env[store_plugin.ENV] = f"{store}::{run_id}"
    return [*cmd[:3], "-p", "moecheck.ci.store_plugin", *cmd[3:]]


MAX_WORKER_RESTARTS = 10_000  # every crash is a finding; the run goes on after each
PYTEST_NO_TESTS = 5  # pytest's exit status when nothing was collected (0 when only empty parameter sets were)


def _run(args) -> int:
    from moecheck.ci import suite_process

    _check(args)
    claimed = suite_process.claim_report_dir(args.report, locked=not args.shard)
    report = claimed.path
    shard_lock = None
    try:
        run_id = None
        command = " ".join(["moecheck", *sys.argv[1:]])
        cmd, env = _pytest_cmd(args, report)
        # --- issue 18: --shard/--run-id/--durations (ci/shard.py); may move the report to this shard's folder ---
        if args.shard or args.run_id or args.durations:
            from moecheck.ci import shard

            cmd, env, report = shard.configure(args, cmd, env, report)
            if args.shard:  # shards share --report: each locks its own shard-I-of-N folder
                shard_lock = suite_process.lock(report)
        # --- end issue 18 ---
        if args.store:  # opened first: a killed suite leaves an 'interrupted' run with what completed
            from moecheck.ci.results import bridge

            run_id = bridge.start_run(args.store, command, args.profile or os.environ.get("MOECHECK_PROFILE", ""))
            cmd = _with_store(cmd, env, args.store, run_id)
        t0 = time.time()
        sel = " ".join(f"{k}={v}" for k, v in _select_env(args).items())
        print(f"running: {sel} report: {report}\n  {' '.join(cmd[2:])}", flush=True)
        done = suite_process.run_suite(cmd, env)
        wall = time.time() - t0
        interrupted = done.returncode is None or done.returncode == 2
        meta = {"command": command, "started": t0, "wall_s": round(wall, 1), "pytest_exit": done.returncode,
                "interrupted": interrupted, "signal": done.signal, "run_id": run_id}
        (report / "run.json").write_text(json.dumps(meta, indent=1) + "\n")
        rows, _ = table.read_rows(report / "results.jsonl") if (report / "results.jsonl").exists() else ([], 0)
        if run_id is not None:
            bridge.close_run(args.store, run_id, interrupted=interrupted)
            print(f"stored {len(rows)} results as run {run_id} in {args.store}" + (" (interrupted)" if interrupted else ""))
        if not rows:
            if interrupted:
                print("moecheck run: interrupted before any test finished", file=sys.stderr)
                return exitcodes.INTERRUPTED.value
            if done.returncode in (0, PYTEST_NO_TESTS):  # known names whose combination selects nothing
                print(f"moecheck run: the selection ({sel or 'everything'}) matches no test: "
                      "see `moecheck backends` for each backend's formats", file=sys.stderr)
                return exitcodes.USAGE.value
            print(f"moecheck run: internal error: pytest exited {done.returncode} without running a test "
                  "(collection failed; see the output above)", file=sys.stderr)
            return exitcodes.INTERNAL.value
        _print(rows, report, meta)
        if interrupted:
            return exitcodes.INTERRUPTED.value
        return exitcodes.FAILED.value if done.returncode or any(r["outcome"] in table.BAD for r in rows) else exitcodes.PASS.value
    finally:
        claimed.release()
        if shard_lock is not None:
            os.close(shard_lock)


def _print(rows: list[dict], report: Path, meta: dict) -> None:
    text = table.render(rows)
    wall = f"wall time {meta['wall_s']:.0f} s" + (f" (interrupted: {meta.get('signal') or 'pytest exit 2'})"
                                                  if meta.get("interrupted") else "")
    (report / "summary.txt").write_text(text + f"\n{wall}\n")
    print("\n" + text)
    for extra in (table.findings(rows), table.health(report)):
        if extra:
            print("\n" + extra)
    print(f"\n{wall}; full report: {report / 'results.jsonl'} (summary: {report / 'summary.txt'})")


def _report(args) -> int:
    report = Path(args.dir)
    path = report / "results.jsonl"
    if not path.is_file():
        raise MoecheckError(f"no results at {path}")
    rows, bad = table.read_rows(path)
    if bad and not rows:
        raise MoecheckError(f"no readable result in {path}: all {bad} line(s) are cut or not result rows")
    if bad:
        print(f"moecheck report: {bad} unreadable line(s) in {path} skipped (a run killed mid-write)", file=sys.stderr)
    meta_path = report / "run.json"
    meta = _meta(meta_path) or {"wall_s": _span(rows), "interrupted": True, "signal": "no run.json: still running or killed"}
    _print(rows, report, meta)
    if args.by_property:
        print("\n" + table.by_property(rows))
    return 1 if any(r["outcome"] in table.BAD for r in rows) else 0


def _meta(path: Path) -> dict | None:
    """run.json, or None if missing or unreadable (written last: a killed run may leave it cut)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("wall_s"), (int, float)) else None


def _span(rows: list[dict]) -> float:
    """Without run.json (a run still going, or killed): at least the summed durations of its tests."""
    return sum(float(r.get("duration_s") or 0) for r in rows)


def register(sub) -> None:
    p = sub.add_parser("run", help="property suite over every available backend, then a backend x format table")
    p.add_argument("--backend", action="append", default=[], metavar="NAME|PATTERN",
                   help="only these backends (repeatable; exact name or fnmatch pattern such as 'vllm_*'); "
                        "an unknown name is an error, an unavailable one a skip (see --require)")
    p.add_argument("--format", action="append", default=[], metavar="NAME|PATTERN",
                   help="only these formats (repeatable; exact: 'bf16' is not 'mxfp4_bf16')")
    p.add_argument("--property", action="append", default=[], metavar="NAME|PATTERN",
                   help="only these properties (repeatable; 'pinned': the pinned cases)")
    p.add_argument("--require", action="store_true",
                   help="every --backend NAME, at least one backend of each --backend PATTERN, and every backend "
                        "of each --plugin must be available here, else exit 2 with why (default: a skip)")
    p.add_argument("--profile", choices=["quick", "dev", "ci", "gpu", "nightly"], default=None,
                   help="Hypothesis profile: how many examples (default: $MOECHECK_PROFILE, else ci under CI, else dev)")
    p.add_argument("-n", "--workers", default="auto", help="pytest-xdist workers (0 means 1: a worker always isolates the run)")
    p.add_argument("--report", default=None, help="report folder (default: a new moecheck-report/<time>-<pid>/, "
                   "linked as moecheck-report/latest); locked while the run lasts")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds one example may take before it is recorded as a hang (default 300; 0: none)")
    p.add_argument("--store", default=None, help="append the results to this SQLite store")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="module defining extra backends (repeatable); one that does not import is exit 2")
    p.add_argument("--junitxml", default=None, metavar="FILE", help="also write a JUnit XML report (pytest's --junitxml)")
    p.add_argument("--shard", default=None, metavar="I/N", help="run only shard I of N (1-based), balanced by recorded durations")
    p.add_argument("--run-id", default=None, help="run id in the store (default $MOECHECK_RUN_ID, else fresh); shards share one")
    p.add_argument("--durations", default=None, metavar="FILE",
                   help="with --shard: durations JSON (moecheck durations); default: exported from --store")
    p.set_defaults(fn=_run)
    p = sub.add_parser("report", help="print the backend x format table of a (possibly interrupted) run")
    p.add_argument("dir", nargs="?", default="moecheck-report/latest", help="report folder (default: the latest run's)")
    p.add_argument("--by-property", action="store_true",
                   help="also a backend x format x property grid (examples run per property, edges and pinned counted)")
    p.set_defaults(fn=_report)
