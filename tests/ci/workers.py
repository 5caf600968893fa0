"""Functions run in spawned processes by the store tests (kept light: no pytest import)."""
from __future__ import annotations

import sqlite3
import time

from moecheck.ci.results.schema import CASE_COLUMNS, CaseRecord, RunRecord
from moecheck.ci.results.store import ResultStore


def write_rows(path: str, worker: int, n_rows: int, batch: int, barrier) -> None:
    """Open the (maybe not yet created) store, start a run, append n_rows in batches."""
    barrier.wait()  # all workers create/open the file at once
    store = ResultStore(path)
    run_id = store.start_run(RunRecord(profile=f"worker{worker}", command="test"))
    for i in range(0, n_rows, batch):
        store.add_cases(run_id, [CaseRecord(backend=f"w{worker}", format="f", property=str(j), verdict="pass")
                                 for j in range(i, min(i + batch, n_rows))])
    store.finish_run(run_id)
    store.close()


def die_mid_transaction(path: str, committed: int, uncommitted: int, ready) -> None:
    """Start a run, commit `committed` cases, then hold a write transaction open until killed."""
    store = ResultStore(path)
    run_id = store.start_run(RunRecord(profile="killed", command="test"))
    store.add_cases(run_id, [CaseRecord(backend="b", format="f", property=str(i), verdict="pass")
                             for i in range(committed)])
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    cols = ", ".join(c for _, c in CASE_COLUMNS)
    row = CaseRecord(run_id=run_id, backend="b", format="f", property="lost", verdict="fail")
    conn.executemany(f"INSERT INTO cases ({cols}) VALUES ({', '.join('?' * len(CASE_COLUMNS))})",
                     [[getattr(row, f) for f, _ in CASE_COLUMNS]] * uncommitted)
    ready.send(run_id)
    time.sleep(600)  # the parent SIGKILLs us here, mid-transaction
