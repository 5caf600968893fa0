"""ResultStore: round trips, ordering, path resolution, schema versions, missing/foreign files."""
from __future__ import annotations

import math
import sqlite3
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from moecheck.ci.results.schema import SCHEMA_VERSION, CaseRecord, E2ERecord
from moecheck.ci.results.store import STALE_AFTER, ResultStore, store_path
from moecheck.reference.errors import MoecheckError
from moecheck.tests.ci.factories import HOSTILE, case, e2e, populated_store, run_record


def test_round_trip(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    run = run_record(started_at="2026-02-01T00:00:00.000+00:00")
    rid = store.start_run(run)
    cases = [
        case("flashinfer", "nvfp4", "matches_reference", "fail", 7.5, rms_err=0.25, where="expert 1 row 2 col 3",
             duration_s=1.5, message=HOSTILE, case_json='{"seed": 1}'),
        case("triton", "fp8", "routing", "pass", 0.0, rms_err=0.0),
        case("vllm", "mxfp4", "matches_reference", "skip"),
        case("triton", "int4", "matches_reference", "error", math.inf, message="CUDA error"),
    ]
    e2es = [e2e(0.9), E2ERecord(model="m", format="f", backend="b", verdict="skip", per_question_path="/x.jsonl")]
    assert store.add_cases(rid, cases) == len(cases)
    assert store.add_e2e(rid, e2es) == len(e2es)
    store.finish_run(rid)
    store.close()

    again = ResultStore(tmp_path / "s.sqlite", create=False)
    got = again.run(rid)
    assert got.status == "finished" and got.finished_at is not None
    assert replace(got, finished_at=None, status="running") == replace(run, run_id=rid, hostname=got.hostname)
    assert again.cases(rid) == [replace(c, run_id=rid) for c in cases]
    assert again.e2e(rid) == [replace(e, run_id=rid) for e in e2es]
    assert again.counts(rid) == {"fail": 1, "pass": 1, "skip": 1, "error": 1}


def test_nan_error_survives(tmp_path):
    # SQLite would store a bare NaN as NULL, erasing "the kernel returned NaN"
    store = ResultStore(tmp_path / "s.sqlite")
    rid = store.start_run(run_record())
    store.add_cases(rid, [case("b", "f", "p", "fail", math.nan), case("b", "f", "q", "pass", 0.5)])
    got = store.cases(rid)
    assert math.isnan(got[0].max_norm_err) and got[1].max_norm_err == 0.5
    assert math.isnan(store.worst_errors(rid)[("b", "f")])


def test_runs_newest_first_and_previous_by_profile(tmp_path):
    store, ids = populated_store(tmp_path / "s.sqlite")
    assert [r.run_id for r in store.latest_runs(3)] == ids[::-1]
    assert [r.run_id for r in store.runs()][:3] == ids[::-1]
    assert len(store.runs()) == len(ids) + 1
    assert store.latest_runs(5, "dev")[0].profile == "dev"
    assert store.previous_run(ids[-1]).run_id == ids[-2]
    assert store.previous_run(ids[0]) is None  # the older dev run is another profile


def test_start_run_probes_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MOECHECK_REVISION", "deadbeef")
    store = ResultStore(tmp_path / "s.sqlite")
    run = store.run(store.start_run(profile="dev"))
    assert run.revision == "deadbeef" and run.profile == "dev" and run.status == "running"
    assert {"python", "moecheck"} <= set(run.versions) and run.hostname


def test_store_path_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MOECHECK_STORE", raising=False)
    assert store_path().name == "moecheck-results.sqlite"
    monkeypatch.setenv("MOECHECK_STORE", str(tmp_path / "env.sqlite"))
    assert store_path() == tmp_path / "env.sqlite"
    assert store_path(tmp_path / "arg.sqlite") == tmp_path / "arg.sqlite"


def test_missing_store_for_readers(tmp_path):
    with pytest.raises(MoecheckError, match="no results store at"):
        ResultStore(tmp_path / "absent.sqlite", create=False)
    assert not (tmp_path / "absent.sqlite").exists()  # reading never creates the file


def test_not_a_database(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite, just some bytes" * 100)
    with pytest.raises(MoecheckError, match="results store"):
        ResultStore(bad, create=False)


def test_empty_sqlite_file_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE unrelated (x)").connection.close()
    store = ResultStore(path)
    rid = store.start_run(run_record())
    assert store.cases(rid) == []
    version = sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchall()
    assert version == [(SCHEMA_VERSION,)]


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.sqlite"
    ResultStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(MoecheckError, match="newer than this moecheck"):
        ResultStore(path)


def test_bad_input_is_one_line_error(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    with pytest.raises(MoecheckError, match="no run nope"):
        store.add_cases("nope", [case("b", "f", "p", "pass")])
    with pytest.raises(MoecheckError, match="verdict"):
        CaseRecord(backend="b", format="f", property="p", verdict="maybe")
    rid = store.start_run(run_record())
    with pytest.raises(MoecheckError, match="belongs to run"):
        store.add_cases(rid, [replace(case("b", "f", "p", "pass"), run_id="other")])
    with pytest.raises(MoecheckError, match="finishes as"):
        store.finish_run(rid, "running")


def test_running_owned_by_other_host_goes_stale(tmp_path):
    path = tmp_path / "s.sqlite"
    store = ResultStore(path)
    rid = store.start_run(run_record(hostname="elsewhere"))
    assert store.run(rid).status == "running"  # another host, recently active: presumed alive
    old = (datetime.now(timezone.utc) - STALE_AFTER - timedelta(minutes=1)).isoformat()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET last_seen = ? WHERE run_id = ?", (old, rid))
    assert store.run(rid).status == "interrupted"
