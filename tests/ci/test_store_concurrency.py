"""Many writer processes at once, and a writer killed mid-transaction."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
from collections import Counter

from moecheck.ci.results.store import ResultStore
from moecheck.tests.ci import workers
from moecheck.tests.ci.factories import case

N_WORKERS, N_ROWS = 16, 1000
BATCHES = (1, 7, 50)  # one row per transaction (worst case for locking) and multi-row adds


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.sqlite")  # not created yet: the workers race to create it
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(N_WORKERS)
    procs = [ctx.Process(target=workers.write_rows, args=(path, w, N_ROWS, BATCHES[w % len(BATCHES)], barrier))
             for w in range(N_WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * N_WORKERS

    store = ResultStore(path, create=False)
    runs = store.runs()
    assert len(runs) == N_WORKERS
    rows = Counter()
    for run in runs:
        cases = store.cases(run.run_id)
        assert len(cases) == N_ROWS
        rows.update((c.backend, c.property) for c in cases)
    assert len(rows) == N_WORKERS * N_ROWS and set(rows.values()) == {1}  # every row exactly once
    assert {r.status for r in runs} == {"finished"}


def test_killed_writer_leaves_consistent_store(tmp_path):
    path = str(tmp_path / "s.sqlite")
    committed, uncommitted = 50, 500
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=workers.die_mid_transaction, args=(path, committed, uncommitted, send))
    proc.start()
    assert recv.poll(60), "writer never reached its open transaction"
    run_id = recv.recv()
    assert ResultStore(path, create=False).run(run_id).status == "running"  # owner alive
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL

    store = ResultStore(path, create=False)
    assert store.run(run_id).status == "interrupted"
    cases = store.cases(run_id)
    assert len(cases) == committed and {c.verdict for c in cases} == {"pass"}
    # the dead writer's lock is gone: new writes go through
    rid = store.start_run(profile="after", command="test")
    store.add_cases(rid, [case("b", "f", "p", "pass")])
    store.finish_run(rid)
    assert store.run(rid).status == "finished"
    assert integrity(path) == "ok"


def integrity(path: str) -> str:
    return sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0]


def _add_one(store: ResultStore, run_id: str) -> None:
    store.add_cases(run_id, [case("child", "f", "p", "pass")])


def test_store_used_across_fork(tmp_path):
    # a forked child must open its own connection, and must not break the parent's
    store = ResultStore(tmp_path / "s.sqlite")
    rid = store.start_run(profile="fork", command="test")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_add_one, args=(store, rid)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    store.add_cases(rid, [case("parent", "f", "p", "pass")])
    assert store.counts(rid) == {"pass": len(procs) + 1}
