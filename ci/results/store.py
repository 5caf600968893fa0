"""ResultStore: runs, cases, e2e gates and benchmark numbers in one SQLite file, safe for many concurrent writers.

Many pytest-xdist workers and processes append at once: the file is in WAL mode, every write is
one BEGIN IMMEDIATE transaction (all rows of one add land or none do), and a writer waits out
'database is locked' up to `timeout_s`. A run whose process died without finish_run stays
'running' on disk; readers report it as 'interrupted' once its owner process is gone.
"""
from __future__ import annotations

import json
import math
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from moecheck.ci.results.diff import RunDiff, diff_cases
from moecheck.ci.results.environment import environment_fields
from moecheck.ci.results.schema import (
    BENCH_COLUMNS,
    CASE_COLUMNS,
    E2E_COLUMNS,
    FLOAT_FIELDS,
    MIGRATIONS,
    RUN_COLUMNS,
    SCHEMA_VERSION,
    BenchRecord,
    CaseRecord,
    E2ERecord,
    RunRecord,
)
from moecheck.reference.errors import MoecheckError, require

STORE_ENV = "MOECHECK_STORE"
DEFAULT_STORE = "moecheck-results.sqlite"
# a 'running' run owned by another host is presumed dead after this long without a write
STALE_AFTER = timedelta(hours=24)

T = TypeVar("T")
# connections inherited across fork: never closed in the child (closing could checkpoint and delete the
# parent's WAL), never garbage collected either
_INHERITED: list[sqlite3.Connection] = []


def store_path(path: str | os.PathLike | None = None) -> Path:
    """The store file: the argument, else $MOECHECK_STORE, else ./moecheck-results.sqlite."""
    return Path(path or os.environ.get(STORE_ENV) or DEFAULT_STORE).expanduser()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


def _encode(name: str, value):
    # SQLite turns NaN into NULL; a NaN error is a real (and the worst) result, so keep it as text
    if name in FLOAT_FIELDS and isinstance(value, float) and math.isnan(value):
        return "NaN"
    return json.dumps(value, sort_keys=True) if name == "versions" else value


def _decode(name: str, value):
    if name in FLOAT_FIELDS and isinstance(value, str):
        return float(value)
    return json.loads(value) if name == "versions" else value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:  # a killed but unreaped child is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


class ResultStore:
    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = True, timeout_s: float = 120.0):
        """Open (create=True: or create) the store. create=False is for readers: a missing file is
        an error instead of a new empty store."""
        self.path = store_path(path)
        self.timeout_s = timeout_s
        if not create and not self.path.is_file():
            raise MoecheckError(f"no results store at {self.path}")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._create = create
        self._lock = threading.RLock()  # _prepare nests a _write
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._retry(self._prepare)

    # connection and transactions

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid != os.getpid():  # never use a connection across fork
            _INHERITED.append(self._conn)
            self._conn = None
        if self._conn is None:
            mode = "rwc" if self._create else "rw"
            uri = f"file:{self.path.resolve().as_posix()}?mode={mode}"
            self._conn = sqlite3.connect(uri, uri=True, timeout=self.timeout_s, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            self._pid = os.getpid()
        return self._conn

    def _retry(self, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                with self._lock:
                    return fn()
            except sqlite3.OperationalError as e:
                if not _is_busy(e):
                    raise MoecheckError(f"results store {self.path}: {e}") from None
                if time.monotonic() > deadline:
                    raise MoecheckError(f"results store {self.path} stayed locked for {self.timeout_s:g}s") from None
                time.sleep(random.uniform(0.005, 0.05))
            except sqlite3.DatabaseError as e:
                raise MoecheckError(f"results store {self.path}: {e}") from None

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn in one IMMEDIATE transaction, retried whole while the file is locked."""
        def attempt() -> T:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return self._retry(attempt)

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._retry(lambda: self._connection().execute(sql, args).fetchall())

    def _prepare(self) -> None:
        conn = self._connection()
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: commits survive a killed process
        if self._version(conn) != SCHEMA_VERSION:
            self._write(self._migrate)

    def _version(self, conn: sqlite3.Connection) -> int:
        has = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
        row = conn.execute("SELECT version FROM schema_version").fetchone() if has else None
        version = row[0] if row else 0
        require(version <= SCHEMA_VERSION, f"results store {self.path} has schema version {version}, newer than "
                                           f"this moecheck understands ({SCHEMA_VERSION}): upgrade moecheck")
        return version

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = self._version(conn)  # again, under the write lock: another process may have migrated
        for statements in MIGRATIONS[version:]:
            for sql in statements:
                conn.execute(sql)
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # writers

    def start_run(self, record: RunRecord | None = None, **fields_) -> str:
        """Record a new 'running' run and return its id. Without a record the environment
        (versions, GPU, host, revision) is probed; keyword fields override either."""
        require(not {"status", "finished_at"} & set(fields_), "a run starts as 'running'; finish it with finish_run")
        base = record if record is not None else RunRecord(**{**environment_fields(), **fields_})
        run = replace(base, **fields_, status="running", finished_at=None)
        run = replace(run, run_id=run.run_id or str(uuid.uuid4()), started_at=run.started_at or utc_now(),
                      hostname=run.hostname or socket.gethostname())
        cols = [c for _, c in RUN_COLUMNS] + ["owner_pid", "last_seen"]
        values = [_encode(f, getattr(run, f)) for f, _ in RUN_COLUMNS] + [os.getpid(), utc_now()]

        def insert(conn):
            require(not self._has_run(conn, run.run_id), f"run {run.run_id} is already in {self.path}")
            conn.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values)
        self._write(insert)
        return run.run_id

    @staticmethod
    def _has_run(conn: sqlite3.Connection, run_id: str) -> bool:
        return conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None

    def _add(self, table: str, columns, run_id: str, records: Iterable) -> int:
        rows = []
        for r in records:
            require(r.run_id in ("", run_id), f"record belongs to run {r.run_id}, not {run_id}")
            rows.append([run_id if f == "run_id" else _encode(f, getattr(r, f)) for f, _ in columns])
        cols = ", ".join(c for _, c in columns)
        sql = f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(columns))})"

        def insert(conn):
            require(self._has_run(conn, run_id), f"no run {run_id} in {self.path}")
            conn.executemany(sql, rows)
            conn.execute("UPDATE runs SET last_seen = ? WHERE run_id = ?", (utc_now(), run_id))
        self._write(insert)
        return len(rows)

    def add_cases(self, run_id: str, cases: Iterable[CaseRecord]) -> int:
        """Append cases to a run in one transaction; returns how many."""
        return self._add("cases", CASE_COLUMNS, run_id, cases)

    def add_e2e(self, run_id: str, results: Iterable[E2ERecord]) -> int:
        return self._add("e2e", E2E_COLUMNS, run_id, results)

    def add_bench(self, run_id: str, rows: Iterable[BenchRecord]) -> int:
        return self._add("bench", BENCH_COLUMNS, run_id, rows)

    def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """fn(connection) in one IMMEDIATE transaction: all of its writes land or none do (`moecheck merge`)."""
        return self._write(fn)

    def finish_run(self, run_id: str, status: str = "finished") -> None:
        require(status in ("finished", "interrupted"), f"a run finishes as 'finished' or 'interrupted', not {status!r}")

        def update(conn):
            require(self._has_run(conn, run_id), f"no run {run_id} in {self.path}")
            conn.execute("UPDATE runs SET status = ?, finished_at = ?, last_seen = ? WHERE run_id = ?",
                         (status, utc_now(), utc_now(), run_id))
        self._write(update)

    # readers

    def _run_from_row(self, row: tuple) -> RunRecord:
        *values, owner_pid, last_seen = row
        data = {f: _decode(f, v) for (f, _), v in zip(RUN_COLUMNS, values)}
        if data["status"] == "running" and not self._owner_alive(data["hostname"], owner_pid, last_seen):
            data["status"] = "interrupted"
        return RunRecord(**data)

    @staticmethod
    def _owner_alive(hostname: str, pid: int, last_seen: str) -> bool:
        if hostname == socket.gethostname():
            return _pid_alive(pid)
        return datetime.now(timezone.utc) - datetime.fromisoformat(last_seen) < STALE_AFTER

    def _runs(self, where: str = "", args: tuple = (), limit: int | None = None) -> list[RunRecord]:
        cols = ", ".join([c for _, c in RUN_COLUMNS] + ["owner_pid", "last_seen"])
        sql = f"SELECT {cols} FROM runs {where} ORDER BY started_at DESC, rowid DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [self._run_from_row(r) for r in self._read(sql, args)]

    def runs(self) -> list[RunRecord]:
        """All runs, newest first."""
        return self._runs()

    def latest_runs(self, n: int, profile: str | None = None) -> list[RunRecord]:
        """The n most recent runs (of one profile if given), newest first."""
        if profile is None:
            return self._runs(limit=n)
        return self._runs("WHERE profile = ?", (profile,), limit=n)

    def run(self, run_id: str) -> RunRecord:
        found = self._runs("WHERE run_id = ?", (run_id,))
        require(bool(found), f"no run {run_id} in {self.path}")
        return found[0]

    def previous_run(self, run_id: str) -> RunRecord | None:
        """The latest run of the same profile started before this one."""
        cur = self.run(run_id)
        found = self._runs("WHERE profile = ? AND (started_at < ? OR (started_at = ? AND rowid < "
                           "(SELECT rowid FROM runs WHERE run_id = ?)))",
                           (cur.profile, cur.started_at, cur.started_at, run_id), limit=1)
        return found[0] if found else None

    def _records(self, cls, table: str, columns, where: str, args: tuple) -> list:
        cols = ", ".join(c for _, c in columns)
        rows = self._read(f"SELECT {cols} FROM {table} {where} ORDER BY id", args)
        return [cls(**{f: _decode(f, v) for (f, _), v in zip(columns, row)}) for row in rows]

    def cases(self, run_id: str) -> list[CaseRecord]:
        return self._records(CaseRecord, "cases", CASE_COLUMNS, "WHERE run_id = ?", (run_id,))

    def e2e(self, run_id: str | None = None) -> list[E2ERecord]:
        """E2E results of one run, or of all runs when run_id is None."""
        if run_id is None:
            return self._records(E2ERecord, "e2e", E2E_COLUMNS, "", ())
        return self._records(E2ERecord, "e2e", E2E_COLUMNS, "WHERE run_id = ?", (run_id,))

    def bench(self, run_id: str | None = None) -> list[BenchRecord]:
        """Benchmark rows of one run, or of all runs when run_id is None."""
        if run_id is None:
            return self._records(BenchRecord, "bench", BENCH_COLUMNS, "", ())
        return self._records(BenchRecord, "bench", BENCH_COLUMNS, "WHERE run_id = ?", (run_id,))

    def bench_runs(self, n: int) -> list[RunRecord]:
        """The n most recent runs (any profile) that hold benchmark rows, newest first."""
        return self._runs("WHERE run_id IN (SELECT run_id FROM bench)", limit=n)

    def counts(self, run_id: str) -> dict[str, int]:
        """Cases per verdict in one run."""
        return dict(self._read("SELECT verdict, count(*) FROM cases WHERE run_id = ? GROUP BY verdict", (run_id,)))

    def worst_errors(self, run_id: str) -> dict[tuple[str, str], float]:
        """Largest max_norm_err per (backend, format) in one run; NaN (stored as text) sorts above numbers."""
        rows = self._read("SELECT backend, format, max(max_norm_err) FROM cases WHERE run_id = ? AND "
                          "max_norm_err IS NOT NULL GROUP BY backend, format", (run_id,))
        return {(b, f): _decode("max_norm_err", v) for b, f, v in rows}

    def diff(self, prev_run_id: str | None, cur_run_id: str) -> RunDiff:
        """Changes from prev to cur (prev None: everything in cur is new); see moecheck.ci.results.diff."""
        prev = self.cases(prev_run_id) if prev_run_id is not None else []
        return diff_cases(prev_run_id, prev, cur_run_id, self.cases(cur_run_id))

