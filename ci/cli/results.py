"""`moecheck dashboard | history | bisect-run`: subcommands over the results store.

register(subparsers) adds them to moecheck's argparse CLI; each sets a handler taking the parsed
args and returning the exit code, as both `fn` (what moecheck.ci.cli dispatches on) and `func`.
dashboard/history: errors are one line on stderr and exit 2, never a traceback. bisect-run speaks git bisect's codes instead (see results/bisect.py),
including for its own usage errors, since 2 would mean "bad commit" to git bisect.
"""
from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
from pathlib import Path
from typing import Callable

from moecheck.ci.results.bisect import (
    ABORT,
    SKIP,
    BisectStep,
    bisect_step,
    one_line,
    validate_case_file,
)

USAGE_ERROR = 2
DEFAULT_DASHBOARD = "moecheck-dashboard.html"


def _fail(command: str, message: object, code: int) -> int:
    print(f"moecheck {command}: error: {one_line(message)}", file=sys.stderr)
    return code


def _guarded(command: str, code: int) -> Callable:
    """Turn any exception into one stderr line and `code`: users see the reason, not a traceback."""
    def wrap(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(handler)
        def run(args: argparse.Namespace) -> int:
            try:
                return handler(args)
            except KeyboardInterrupt:
                return _fail(command, "interrupted", code)
            except Exception as e:  # MoecheckError, sqlite3.Error, OSError, and bugs alike
                return _fail(command, e, code)
        return run
    return wrap


@_guarded("dashboard", USAGE_ERROR)
def dashboard(args: argparse.Namespace) -> int:
    from moecheck.ci.results.dashboard import render_dashboard
    from moecheck.ci.results.store import ResultStore

    with ResultStore(args.store, create=False) as store:
        out = render_dashboard(store, args.out, profile=args.profile, max_runs=args.runs)
    print(out)
    return 0


@_guarded("history", USAGE_ERROR)
def history(args: argparse.Namespace) -> int:
    from moecheck.ci.results.store import ResultStore

    with ResultStore(args.store, create=False) as store:
        runs = store.latest_runs(args.n, args.profile)
        rows = [("started", "run", "status", "profile", "revision", "pass", "fail", "error", "skip", "gpu")]
        for r in runs:
            n = store.counts(r.run_id)
            rows.append((r.started_at[:19], r.run_id[:8], r.status, r.profile or "-", (r.revision or "-")[:12],
                         *(str(n.get(v, 0)) for v in ("pass", "fail", "error", "skip")), r.gpu_name or "-"))
    if not runs:
        print(f"no runs in {store.path}")
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _record_step(store_arg: str, case_path: str, case: dict, step: BisectStep) -> None:
    """Best effort: a bisect verdict stands even if the store cannot be written."""
    from moecheck.ci.results.bridge import shape_of
    from moecheck.ci.results.schema import VERDICTS, CaseRecord
    from moecheck.ci.results.store import ResultStore

    verdict = step.verdict if step.verdict in VERDICTS else "skip"
    record = CaseRecord(
        backend=str(case.get("backend", "unknown")), format=str(case.get("format", "unknown")),
        property=str(case.get("property", "unknown")), shape=shape_of(case), verdict=verdict,
        repro=f"moecheck repro {shlex.quote(str(Path(case_path).resolve()))}", message=step.message,
        case_json=json.dumps(case, sort_keys=True),
    )
    try:
        with ResultStore(store_arg) as store:
            run_id = store.start_run(profile="bisect")
            store.add_cases(run_id, [record])
            store.finish_run(run_id)
    except Exception as e:
        print(f"moecheck bisect-run: warning: result not recorded: {one_line(e)}", file=sys.stderr)


def _plugin_problem(mod: str) -> tuple[int, str]:
    """(exit code, why) for a --plugin that does not load; (0, "") if it does. No such module is a
    typo (abort the bisect); one that exists but fails to import cannot be tested here (skip)."""
    import importlib.util

    from moecheck.ci.cli import inputs

    try:
        found = importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:  # no parent package
        found = False
    except Exception:  # a parent package that fails to import: load_plugins says why
        found = True
    if not found:
        return ABORT, f"cannot load plugin {mod!r}: ModuleNotFoundError: No module named {mod!r}"
    try:
        inputs.load_plugins([mod])
    except Exception as e:
        return SKIP, str(e)
    return 0, ""


@_guarded("bisect-run", ABORT)
def bisect_run(args: argparse.Namespace) -> int:
    try:
        case = validate_case_file(args.case)  # before anything else: a bad case must abort, not skip
    except Exception as e:
        return _fail("bisect-run", e, ABORT)
    try:
        from moecheck.properties.repro import replay_file
    except Exception as e:  # this checkout/environment cannot replay at all: skip the commit
        return _fail("bisect-run", f"cannot import moecheck.properties.repro.replay_file: {e}", SKIP)
    for mod in args.plugin:  # here, before the replay's child would list it as unavailable (a skip)
        code, why = _plugin_problem(mod)
        if why:
            return _fail("bisect-run", why, code)
    step = bisect_step(lambda path: replay_file(path, tuple(args.plugin)), args.case)
    print(f"moecheck bisect-run: {step.verdict} (exit {step.code}): {step.message}", file=sys.stderr)
    if args.store:
        _record_step(args.store, args.case, case, step)
    return step.code


def _abort_on_usage_error(parser: argparse.ArgumentParser) -> None:
    def error(message: str):
        print(f"moecheck bisect-run: error: {one_line(message)}", file=sys.stderr)
        sys.exit(ABORT)
    parser.error = error  # type: ignore[method-assign]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dashboard", help="write the static HTML dashboard of a results store")
    p.add_argument("--store", help="results store (default: $MOECHECK_STORE or ./moecheck-results.sqlite)")
    p.add_argument("--out", default=DEFAULT_DASHBOARD, help=f"HTML file to write (default: {DEFAULT_DASHBOARD})")
    p.add_argument("--profile", help="show runs of this profile (default: the latest run's)")
    p.add_argument("--runs", type=int, default=30, help="runs in the trend plots (default: 30)")
    p.set_defaults(func=dashboard, fn=dashboard)

    p = subparsers.add_parser("history", help="table of the latest runs in a results store")
    p.add_argument("--store", help="results store (default: $MOECHECK_STORE or ./moecheck-results.sqlite)")
    p.add_argument("-n", type=int, default=20, help="how many runs (default: 20)")
    p.add_argument("--profile", help="only runs of this profile")
    p.set_defaults(func=history, fn=history)

    p = subparsers.add_parser(
        "bisect-run", help="replay one case for `git bisect run`: exit 0 good, 1 bad, 125 skip, 128 abort",
        description="Exit codes: 0 pass (good), 1 fail (bad), 125 cannot test at this commit (skip), "
                    "128 the case file is missing or malformed (aborts git bisect).")
    p.add_argument("case", metavar="CASE", help="case JSON file (keep it outside the tree being bisected)")
    p.add_argument("--store", default=None, help="also record each step as a 'bisect' run in this store")
    p.add_argument("--plugin", action="append", default=[], help="module defining the case's backend (repeatable)")
    p.set_defaults(func=bisect_run, fn=bisect_run)
    _abort_on_usage_error(p)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry for these subcommands (tests, or before moecheck.ci.cli wires them in)."""
    parser = argparse.ArgumentParser(prog="moecheck")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
