"""`moecheck run --shard I/N`: a pytest plugin that keeps one shard of the collected tests.

Loaded as `-p moecheck.ci.shard` (moecheck run adds it only with --shard); reads MOECHECK_SHARD=I/N
(1-based) and MOECHECK_SHARD_DURATIONS (optional JSON {nodeid: seconds}, pytest-split's format).
The split is greedy longest-first onto the lightest shard, as pytest-split's least_duration does:
a test without a recorded duration counts as the mean of the known ones; with no durations at all
every test weighs the same and the split is round-robin over the sorted node ids. It depends only on
the collected ids and the file, so the xdist controller's workers (each collects and deselects
alone) and the N shard processes all agree. Every shard must read the same durations file.

The collecting process writes `plan.json` (what this shard runs and its planned seconds) into the
report folder; the controller writes `shard.json` (the run record, for `moecheck merge DIR`) at
the start and updates it at the end. `configure` is moecheck run's side: arguments to plugin and env.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from moecheck.ci.results.schema import RUN_ID_ENV

SHARD_ENV = "MOECHECK_SHARD"
DURATIONS_ENV = "MOECHECK_SHARD_DURATIONS"
COMMAND_ENV = "MOECHECK_RUN_COMMAND"  # the moecheck command line, for the run record
PLAN_FILE, RUN_FILE = "plan.json", "shard.json"
TEMPLATE = "test_properties.py::test_property"  # node of the property template under `moecheck run`
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
INTERRUPTED = 2  # pytest.ExitCode.INTERRUPTED


class ShardError(ValueError):
    """Bad --shard / durations input; moecheck's CLI turns it into one line and exit 2."""


def parse_shard(spec: str) -> tuple[int, int]:
    """'I/N' -> (I, N), 1 <= I <= N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec or "")
    if not m:
        raise ShardError(f"--shard must be I/N with 1 <= I <= N (e.g. 2/3), got {spec!r}")
    i, n = int(m[1]), int(m[2])
    if not 1 <= i <= n:
        raise ShardError(f"--shard must be I/N with 1 <= I <= N (e.g. 2/3), got {spec!r}")
    return i, n


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.fullmatch(run_id or ""):
        raise ShardError(f"run id must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit), "
                         f"got {run_id!r}")
    return run_id


_KINDS = {"edge": "test_edge", "pinned": "test_pinned"}  # store property "edge:NAME" -> test_edge[B-F-NAME]


def nodeid(backend: str, fmt: str, prop: str) -> str:
    """The template's node id for one store key (properties/test_properties.py's parametrize ids)."""
    if (fmt, prop) == ("-", "-"):
        return f"{TEMPLATE}[{backend}-unavailable]"
    kind, _, name = prop.partition(":")
    if name and kind in _KINDS:
        return f"{TEMPLATE.rsplit('::', 1)[0]}::{_KINDS[kind]}[{backend}-{fmt}-{name}]"
    return f"{TEMPLATE}[{backend}-{fmt}-{prop}]"


def load_durations(path: str | os.PathLike | None) -> dict[str, float]:
    if not path:
        return {}
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ShardError(f"durations file {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in raw.values()):
        raise ShardError(f"durations file {path} must be a JSON object of node id -> seconds >= 0")
    return {str(k): float(v) for k, v in raw.items()}


def _tail(node: str) -> str:
    return node.rsplit("::", 1)[-1]


def weights(ids: list[str], durations: dict[str, float]) -> tuple[dict[str, float], int]:
    """Seconds per id (by node id, else by test name when that is unique in the file) and how many were known."""
    tails: dict[str, float | None] = {}
    for k, v in durations.items():
        tails[_tail(k)] = v if _tail(k) not in tails else None  # ambiguous name: not used
    known = {}
    for i in ids:
        v = durations.get(i, tails.get(_tail(i)))
        if v is not None:
            known[i] = v
    fill = sum(known.values()) / len(known) if known else 1.0
    return {i: known.get(i, fill) for i in ids}, len(known)


def assign(ids: list[str], n: int, durations: dict[str, float]) -> dict[str, int]:
    """Node id -> shard index (0-based): longest first, each onto the lightest shard (lowest index on ties)."""
    w, _ = weights(ids, durations)
    loads = [0.0] * n
    out = {}
    for i in sorted(set(ids), key=lambda x: (-w[x], x)):
        j = min(range(n), key=lambda k: (loads[k], k))
        out[i] = j
        loads[j] += w[i]
    return out


def _write_json(path: Path, data: dict) -> None:
    """Atomically: the N workers of one shard may write the same plan at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _report_dir() -> Path:
    return Path(os.environ.get("MOECHECK_REPORT_DIR", "moecheck-report"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _digest(path: str | None) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path else None


# --- pytest hooks ---

def pytest_configure(config):
    import pytest

    try:  # a usage error is one line in pytest too
        config._moecheck_shard = parse_shard(os.environ.get(SHARD_ENV, ""))
        config._moecheck_durations = load_durations(os.environ.get(DURATIONS_ENV))
    except ShardError as e:
        raise pytest.UsageError(f"{e} ({SHARD_ENV}, {DURATIONS_ENV}; moecheck run --shard sets them)") from None
    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # the controller, or a run without xdist
        from moecheck.ci.results.environment import environment_fields

        i, n = config._moecheck_shard
        env = environment_fields()
        _write_json(_report_dir() / RUN_FILE, {
            **env, "run_id": os.environ.get(RUN_ID_ENV, ""), "shard": f"{i}/{n}", "started_at": _now(),
            "finished_at": None, "status": "running", "pid": os.getpid(), "command": os.environ.get(COMMAND_ENV, env["command"]),
            "durations_sha256": _digest(os.environ.get(DURATIONS_ENV))})


def pytest_collection_modifyitems(session, config, items):
    i, n = config._moecheck_shard
    durations = config._moecheck_durations
    ids = [it.nodeid for it in items]
    where = assign(ids, n, durations)
    keep = [it for it in items if where[it.nodeid] == i - 1]
    drop = [it for it in items if where[it.nodeid] != i - 1]
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
    if os.environ.get("PYTEST_XDIST_WORKER") in (None, "gw0"):  # one writer; the others agree anyway
        w, known = weights(ids, durations)
        per = [0.0] * n
        for x, j in where.items():
            per[j] += w[x]
        _write_json(_report_dir() / PLAN_FILE, {
            "shard": f"{i}/{n}", "collected": len(ids), "selected": sorted(it.nodeid for it in keep),
            "known_durations": known, "planned_s": round(per[i - 1], 3), "planned_per_shard_s": [round(p, 3) for p in per],
            "durations": os.environ.get(DURATIONS_ENV) or None, "durations_sha256": _digest(os.environ.get(DURATIONS_ENV))})


def pytest_report_header(config):
    i, n = config._moecheck_shard
    src = os.environ.get(DURATIONS_ENV) or "none (round-robin over sorted node ids)"
    return f"moecheck shard {i}/{n}; durations: {src}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    plan = _report_dir() / PLAN_FILE
    if plan.is_file():
        p = json.loads(plan.read_text())
        terminalreporter.write_line(
            f"moecheck shard {p['shard']}: {len(p['selected'])} of {p['collected']} tests, planned {p['planned_s']:.1f} s "
            f"(shards: {', '.join(f'{x:.1f}' for x in p['planned_per_shard_s'])} s; "
            f"durations known for {p['known_durations']} of {p['collected']})")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("PYTEST_XDIST_WORKER") is not None:
        return
    path = _report_dir() / RUN_FILE
    if path.is_file():
        rec = json.loads(path.read_text())
        rec.update(finished_at=_now(), status="interrupted" if int(exitstatus) == INTERRUPTED else "finished")
        _write_json(path, rec)


# --- moecheck run's side ---

def configure(args, cmd: list[str], env: dict[str, str], report: Path) -> tuple[list[str], dict[str, str], Path]:
    """--shard/--run-id/--durations to the pytest command, its environment and this shard's report folder.
    Errors are MoecheckError (one line, exit 2)."""
    from moecheck.reference.errors import MoecheckError

    try:
        run_id = args.run_id or os.environ.get(RUN_ID_ENV) or None
        if run_id is not None:
            check_run_id(run_id)
        if not args.shard:
            if args.durations:
                raise ShardError("--durations only means something with --shard I/N")
            if run_id is not None:
                os.environ[RUN_ID_ENV] = env[RUN_ID_ENV] = run_id  # bridge.start_run reads it
            return cmd, env, report
        i, n = parse_shard(args.shard)
        if run_id is None:
            raise ShardError(f"--shard needs --run-id ID (or {RUN_ID_ENV}): the same id on every shard, "
                             "so that `moecheck merge` makes one run of them")
        _not_in_store(args.store, run_id)
        report = report / f"shard-{i}-of-{n}"
        report.mkdir(parents=True, exist_ok=True)
        for stale in ("results.jsonl", PLAN_FILE, RUN_FILE):
            (report / stale).unlink(missing_ok=True)
        durations = _durations_file(args, run_id, report)
    except ShardError as e:
        raise MoecheckError(str(e)) from None
    os.environ[RUN_ID_ENV] = env[RUN_ID_ENV] = run_id  # bridge.start_run reads it
    env.update({SHARD_ENV: f"{i}/{n}", "MOECHECK_REPORT_DIR": str(report),
                COMMAND_ENV: " ".join(["moecheck", *sys.argv[1:]])})
    if durations:
        env[DURATIONS_ENV] = str(durations)
    print(f"shard {i}/{n} of run {run_id}: report {report}, durations {durations or 'none (round-robin)'}", flush=True)
    return [*cmd, "-p", "moecheck.ci.shard"], env, report


def _not_in_store(store: str | None, run_id: str) -> None:
    if not store or not Path(store).is_file():
        return
    from moecheck.ci.results.store import ResultStore

    with ResultStore(store, create=False) as s:
        if any(r.run_id == run_id for r in s.runs()):
            raise ShardError(f"run {run_id} is already in {store}: give each shard a store of its own "
                             "(--store shard-I.sqlite) and combine them with `moecheck merge`")


def _durations_file(args, run_id: str, report: Path) -> Path | None:
    """--durations FILE as given (checked now, not in N workers); else exported from --store (this run's
    own rows left out, so shards that share a store copy plan alike); else None."""
    if args.durations:
        load_durations(args.durations)
        return Path(args.durations).resolve()
    if not args.store or not Path(args.store).is_file():
        return None
    from moecheck.ci.results.durations import export_durations

    out = report / "durations.json"
    n = export_durations(args.store, out, exclude_run=run_id, profile=args.profile or os.environ.get("MOECHECK_PROFILE"))
    return out.resolve() if n else None
