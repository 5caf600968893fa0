"""`moecheck merge`: shard stores (or shard report folders) into one store, one run per run id.

Every input is read in full, read-only, before OUT is touched, and OUT is written in one
transaction: a corrupt or conflicting input leaves OUT and every input as they were. Rows are
copied as stored (no decode/encode round trip). Idempotent: a row (all of its columns) is added
only as many times as an input holds it beyond what OUT already holds, so merging a shard twice,
or listing it twice, adds nothing. Runs that share an id must share commit and configuration
(MATCH); their start is the earliest, their end the latest, their status 'finished' only if every
shard finished. A shard still running on this host is refused; one that died is 'interrupted'.
"""
from __future__ import annotations

import json
import socket
import sqlite3
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from moecheck.ci.results.schema import (
    BENCH_COLUMNS,
    CASE_COLUMNS,
    E2E_COLUMNS,
    RUN_COLUMNS,
    SCHEMA_VERSION,
    RunRecord,
)
from moecheck.ci.results.store import ResultStore, _pid_alive
from moecheck.reference.errors import MoecheckError, require

MATCH = ("revision", "profile", "versions", "gpu_name", "driver")  # a run's commit and configuration
RUN_COLS = [c for _, c in RUN_COLUMNS] + ["owner_pid", "last_seen"]
CASE_COLS = [c for _, c in CASE_COLUMNS]
E2E_COLS = [c for _, c in E2E_COLUMNS]
BENCH_COLS = [c for _, c in BENCH_COLUMNS]
JOIN = {"hostname": ",", "command": " ; "}  # merged runs keep every shard's host and command


@dataclass
class Source:
    """One input, as raw rows: runs as dicts, cases, e2e and bench as tuples in CASE_COLS / E2E_COLS /
    BENCH_COLS order."""

    path: Path
    runs: list[dict]
    cases: list[tuple] = field(default_factory=list)
    e2e: list[tuple] = field(default_factory=list)
    bench: list[tuple] = field(default_factory=list)


def _read_rows(path: Path) -> Source:
    uri = f"file:{path.resolve().as_posix()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30)
    except sqlite3.Error as e:
        raise MoecheckError(f"shard {path}: {e}") from None
    try:
        bad = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
        require(not bad, f"shard {path} is corrupt: {bad[0] if bad else ''}")
        has = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
        version = conn.execute("SELECT version FROM schema_version").fetchone()[0] if has else 0
        require(version == SCHEMA_VERSION, f"shard {path} has schema version {version}, this moecheck writes "
                                           f"{SCHEMA_VERSION}: open it once with this moecheck (moecheck history "
                                           f"--store {path}) to migrate, or upgrade moecheck")
        runs = [dict(zip(RUN_COLS, r)) for r in conn.execute(f"SELECT {', '.join(RUN_COLS)} FROM runs ORDER BY rowid")]
        cases = conn.execute(f"SELECT {', '.join(CASE_COLS)} FROM cases ORDER BY id").fetchall()
        e2e = conn.execute(f"SELECT {', '.join(E2E_COLS)} FROM e2e ORDER BY id").fetchall()
        bench = conn.execute(f"SELECT {', '.join(BENCH_COLS)} FROM bench ORDER BY id").fetchall()
    except sqlite3.Error as e:
        raise MoecheckError(f"shard {path}: {str(e).splitlines()[0]}") from None
    finally:
        conn.close()
    return Source(path, runs, cases, e2e, bench)


def _read_folder(path: Path) -> Source:
    """A shard report folder (shard.json + results.jsonl) through a scratch store, so rows are encoded
    exactly as `moecheck run --store` encodes them."""
    from moecheck.ci.results.bridge import case_record
    from moecheck.ci.shard import RUN_FILE

    try:
        rec = json.loads((path / RUN_FILE).read_text())
        lines = (path / "results.jsonl").read_text().splitlines() if (path / "results.jsonl").is_file() else []
        rows = [json.loads(x) for x in lines if x.strip()]
    except (OSError, ValueError) as e:
        raise MoecheckError(f"shard folder {path}: {str(e).splitlines()[0]}") from None
    require(bool(rec.get("run_id")), f"shard folder {path}: {RUN_FILE} names no run id")
    with tempfile.TemporaryDirectory(prefix="moecheck-merge-") as tmp, ResultStore(Path(tmp) / "s.sqlite") as s:
        fields_ = {f: rec.get(f) for f, _ in RUN_COLUMNS if f not in ("status", "finished_at")}
        run_id = s.start_run(RunRecord(**{k: v for k, v in fields_.items() if v is not None}))
        s.add_cases(run_id, [case_record(r) for r in rows])
        s.close()
        src = _read_rows(Path(tmp) / "s.sqlite")
    src.path = path
    src.runs[0].update(status=rec.get("status", "running"), finished_at=rec.get("finished_at"),
                       owner_pid=int(rec.get("pid") or 0), last_seen=rec.get("finished_at") or rec.get("started_at"))
    return src


def read_input(path: str | Path) -> list[Source]:
    """A store file, a shard report folder, or a folder of them (moecheck-report/shard-*)."""
    from moecheck.ci.shard import RUN_FILE

    p = Path(path)
    if p.is_dir():
        if (p / RUN_FILE).is_file():
            return [_read_folder(p)]
        subs = sorted(d for d in p.iterdir() if (d / RUN_FILE).is_file())
        require(bool(subs), f"{p} is neither a results store nor a shard report folder (no {RUN_FILE})")
        return [_read_folder(d) for d in subs]
    require(p.is_file(), f"no shard store or folder at {p}")
    return [_read_rows(p)]


def _status(run: dict, path: Path) -> str:
    """A shard's status as merged: a live owner on this host is refused, a dead 'running' one is interrupted."""
    if run["status"] != "running":
        return run["status"]
    require(not (run["hostname"] == socket.gethostname() and run["owner_pid"] and _pid_alive(run["owner_pid"])),
            f"shard {path}: run {run['run_id']} is still running (pid {run['owner_pid']}); merge after it ends")
    return "interrupted"


def _describe(field_: str, a, b) -> str:
    if field_ == "versions":
        da, db = json.loads(a or "{}"), json.loads(b or "{}")
        diff = sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))
        return "package versions differ (" + ", ".join(f"{k} {da.get(k)} vs {db.get(k)}" for k in diff) + ")"
    return f"{field_} {a!r} vs {b!r}"


def _check_same(rid: str, rows: list[tuple[str, dict]]) -> None:
    (first_where, first), *rest = rows
    for where, r in rest:
        for f in MATCH:
            same = json.loads(r[f] or "{}") == json.loads(first[f] or "{}") if f == "versions" else r[f] == first[f]
            require(same, f"run {rid}: {where} and {first_where} differ, {_describe(f, r[f], first[f])}: "
                          "shards of one run must share commit, profile and environment")


def _combine(rows: list[dict]) -> dict:
    out = dict(rows[0])
    out["started_at"] = min(r["started_at"] for r in rows)
    ends = [r["finished_at"] for r in rows if r["finished_at"]]
    out["finished_at"] = max(ends) if ends else None
    out["status"] = "finished" if all(r["status"] == "finished" for r in rows) else "interrupted"
    out["last_seen"] = max(r["last_seen"] for r in rows)
    out["owner_pid"] = 0  # nobody owns a merged run: it is never 'running'
    for col, sep in JOIN.items():
        parts = {p for r in rows for p in (r[col] or "").split(sep) if p}
        out[col] = sep.join(sorted(parts))
    return out


@dataclass
class ShardStat:
    path: Path
    status: str
    cases: int
    test_s: float  # sum of case durations
    wall_s: float | None


@dataclass
class MergeSummary:
    out: Path
    shards: dict[str, list[ShardStat]]  # run id -> its inputs
    added_cases: int = 0
    added_e2e: int = 0
    added_bench: int = 0
    overlap: dict[str, int] = field(default_factory=dict)  # run id -> keys reported by more than one shard


def _wall(run: dict) -> float | None:
    from datetime import datetime

    if not run["finished_at"]:
        return None
    return (datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(run["started_at"])).total_seconds()


def _add_missing(conn, table: str, cols: list[str], run_ids: list[str], per_source: list[list[tuple]]) -> int:
    """Insert each row as often as the input holding it most often holds it, less what the table holds."""
    marks = ", ".join("?" * len(run_ids))
    have = Counter(conn.execute(f"SELECT {', '.join(cols)} FROM {table} WHERE run_id IN ({marks})", run_ids).fetchall())
    want: Counter = Counter()
    for rows in per_source:
        want |= Counter(rows)  # max, not sum: the same shard given twice is one shard
    new = []
    for row, n in want.items():
        new += [row] * max(0, n - have[row])
    conn.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", new)
    return len(new)


def merge(out: str | Path, inputs: list[str | Path]) -> MergeSummary:
    require(bool(inputs), "give at least one shard store or report folder to merge")
    unique = list(dict.fromkeys(Path(p).resolve() for p in inputs))  # a shard named twice is one shard
    sources = [s for p in unique for s in read_input(p)]  # everything read (and checked) before OUT is opened
    by_run: dict[str, list[tuple[Source, dict]]] = {}
    for src in sources:
        for r in src.runs:
            r["status"] = _status(r, src.path)
            by_run.setdefault(r["run_id"], []).append((src, r))
    for rid, rows in by_run.items():
        _check_same(rid, [(str(s.path), r) for s, r in rows])
    summary = MergeSummary(Path(out), {})
    for rid, rows in by_run.items():
        stats = []
        for src, r in rows:
            mine = [c for c in src.cases if c[0] == rid]
            stats.append(ShardStat(src.path, r["status"], len(mine), sum(c[CASE_COLS.index("duration_s")] or 0.0 for c in mine),
                                   _wall(r)))
        summary.shards[rid] = stats
        keys = Counter(k for src, _ in rows for k in {c[1:4] for c in src.cases if c[0] == rid})
        if len(rows) > 1 and any(n > 1 for n in keys.values()):
            summary.overlap[rid] = sum(n > 1 for n in keys.values())

    def write(conn: sqlite3.Connection) -> None:
        for rid, rows in by_run.items():
            have = conn.execute(f"SELECT {', '.join(RUN_COLS)} FROM runs WHERE run_id = ?", (rid,)).fetchone()
            runs = [r for _, r in rows]
            if have is not None:
                existing = dict(zip(RUN_COLS, have))
                _check_same(rid, [(str(out), existing), *((str(s.path), r) for s, r in rows)])
                runs.insert(0, existing)
            merged = _combine(runs)
            if have is None:
                conn.execute(f"INSERT INTO runs ({', '.join(RUN_COLS)}) VALUES ({', '.join('?' * len(RUN_COLS))})",
                             [merged[c] for c in RUN_COLS])
            else:  # in place: the row keeps its position among runs started at the same time
                conn.execute(f"UPDATE runs SET {', '.join(f'{c} = ?' for c in RUN_COLS[1:])} WHERE run_id = ?",
                             [merged[c] for c in RUN_COLS[1:]] + [rid])
        ids = list(by_run)
        for table, cols, attr in (("cases", CASE_COLS, "cases"), ("e2e", E2E_COLS, "e2e"), ("bench", BENCH_COLS, "bench")):
            mine = [[row for row in getattr(s, attr) if row[0] in by_run] for s in sources]
            setattr(summary, f"added_{attr}", _add_missing(conn, table, cols, ids, mine))

    with ResultStore(out) as store:
        store.transaction(write)
    return summary
