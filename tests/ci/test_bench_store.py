"""Benchmark numbers in the results store: round trip, schema v2 -> v3, `moecheck bench --store`,
merge and the dashboard's trend (tiny fake rows: the real benchmark is not run here)."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from moecheck.ci import bench as benchmarks
from moecheck.ci.cli import main
from moecheck.ci.results.dashboard import dashboard_html
from moecheck.ci.results.schema import (
    GEMM_RATIO,
    MIGRATIONS,
    SCHEMA_VERSION,
    BenchRecord,
)
from moecheck.ci.results.store import ResultStore
from moecheck.tests.ci.factories import case, populated_store, run_record

GEMM = {"device": "cpu", "E": 16, "K": 2048, "N": 768, "rows": 2048, "grouped_mm_ms": 2.0, "reference_ms": 3.0,
        "ratio": 1.5, "grouped_mm_tflops": 3.2, "reference_fast_path": True}


def fake_result(rate: float = 40.0) -> dict:
    return {"gemm": GEMM, "properties": [
        {"backend": "cpu_loop", "format": "bf16", "property": "matches_reference", "device": "cpu", "examples": 2,
         "examples_per_s": rate},
        {"backend": "cpu_loop", "format": "bf16", "property": "deterministic", "device": "cpu", "examples": 2,
         "examples_per_s": 2 * rate}]}


def test_records_round_trip(tmp_path):
    rows = benchmarks.records(fake_result())
    assert [r.property for r in rows] == [GEMM_RATIO, "matches_reference", "deterministic"]
    assert [r.value for r in rows] == [1.5, 40.0, 80.0]
    with ResultStore(tmp_path / "s.sqlite") as store:
        rid = store.start_run(run_record())
        other = store.start_run(run_record())
        assert store.add_bench(rid, rows) == len(rows)
    with ResultStore(tmp_path / "s.sqlite", create=False) as store:
        assert store.bench(rid) == [replace(r, run_id=rid) for r in rows]
        assert store.bench(other) == [] and len(store.bench()) == len(rows)
        assert [r.run_id for r in store.bench_runs(5)] == [rid]
        assert json.loads(store.bench(rid)[0].detail)["reference_ms"] == 3.0


def test_a_v2_store_is_migrated_and_keeps_its_data(tmp_path):
    path = tmp_path / "v2.sqlite"
    conn = sqlite3.connect(path)
    for step in MIGRATIONS[:2]:
        for sql in step:
            conn.execute(sql)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (2)")
    conn.execute("INSERT INTO runs VALUES ('r1', '2026-01-01T00:00:00+00:00', '2026-01-01T01:00:00+00:00', NULL, '{}', "
                 "NULL, NULL, 'h', 'nightly', 'moecheck run', 'finished', 1, '2026-01-01T01:00:00+00:00')")
    conn.execute("INSERT INTO cases (run_id, backend, format, property, shape, verdict, max_norm_err, rms_err, location, "
                 "duration_s, repro, message, bias, bound) VALUES ('r1', 'b', 'f', 'p', '', 'fail', 3.0, 1.0, '(0, 1)', "
                 "0.5, 'x', 'm', 0.25, 0.5)")
    conn.commit()
    conn.close()
    with ResultStore(path) as store:
        (old,) = store.cases("r1")
        assert (old.max_norm_err, old.bias, old.bound) == (3.0, 0.25, 0.5)
        assert store.bench("r1") == []
        store.add_bench("r1", benchmarks.records(fake_result()))
        assert [b.value for b in store.bench("r1")] == [1.5, 40.0, 80.0]
    assert sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


@pytest.fixture
def fake_measure(monkeypatch):
    monkeypatch.setattr(benchmarks, "measure", lambda n, backends=None, echo=None: fake_result())


def _bench(capsys, tmp_path, *args) -> tuple[int, str, str]:
    rc = main(["bench", "--out", str(tmp_path / "out" / "bench.json"), *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_bench_store_attaches_to_the_newest_run(tmp_path, capsys, fake_measure):
    path = tmp_path / "s.sqlite"
    with ResultStore(path) as store:
        night = store.start_run(run_record(started_at=datetime.now(timezone.utc).isoformat()))
        store.add_cases(night, [case("cpu_loop", "bf16", "matches_reference", "pass", 0.1)])
    rc, out, err = _bench(capsys, tmp_path, "--store", str(path))
    assert rc == 0 and err == "" and f"stored as run {night} (appended to the newest run)" in out
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["gemm"]["ratio"] == 1.5
    with ResultStore(path, create=False) as store:
        assert len(store.runs()) == 1 and len(store.bench(night)) == 3


def test_bench_store_starts_its_own_run_when_none_is_recent_or_asked(tmp_path, capsys, fake_measure):
    path = tmp_path / "s.sqlite"
    with ResultStore(path) as store:
        stale = store.start_run(run_record(started_at=(datetime.now(timezone.utc) - timedelta(days=2)).isoformat()))
    rc, out, _ = _bench(capsys, tmp_path, "--store", str(path))
    assert rc == 0 and "(a new run)" in out  # the newest run is two days old: not tonight's
    rc, out, _ = _bench(capsys, tmp_path, "--store", str(path), "--attach", "new")
    assert rc == 0 and "(a new run)" in out  # although the newest run is now recent
    with ResultStore(path, create=False) as store:
        assert len(store.runs()) == 3 and store.bench(stale) == []
        assert [(r.profile, r.status) for r in store.bench_runs(5)] == [("bench", "finished")] * 2
    rc, out, _ = _bench(capsys, tmp_path, "--store", str(tmp_path / "created.sqlite"), "--attach", "new")
    assert rc == 0 and (tmp_path / "created.sqlite").is_file()  # new may create the store; latest may not


@pytest.mark.parametrize("args, needle", [
    (["--store", "{tmp}/absent.sqlite"], "no results store at"),
    (["--examples", "0"], "--examples must be >= 1"),
])
def test_bench_bad_input_is_one_line_exit_2_before_measuring(tmp_path, capsys, monkeypatch, args, needle):
    def measure(_n, backends=None, echo=None):
        raise AssertionError("bad input must fail before the benchmark runs")
    monkeypatch.setattr(benchmarks, "measure", measure)
    rc, out, err = _bench(capsys, tmp_path, *[a.format(tmp=tmp_path) for a in args])
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "absent.sqlite").exists()


def test_merge_carries_bench_rows_idempotently(tmp_path, capsys):
    shards = []
    for i in range(2):
        with ResultStore(tmp_path / f"s{i}.sqlite") as s:
            rid = s.start_run(run_record(started_at=f"2026-02-01T03:0{i}:00.000+00:00", hostname=f"gpu-{i}"), run_id="night")
            s.add_bench(rid, benchmarks.records(fake_result(10.0 * (i + 1)))[i:i + 2])  # shard 0: gemm + one property
            s.finish_run(rid)
        shards.append(tmp_path / f"s{i}.sqlite")
    out = tmp_path / "m.sqlite"
    assert main(["merge", str(out), *map(str, shards)]) == 0
    assert "4 benchmark rows added" in capsys.readouterr().out
    assert main(["merge", str(out), *map(str, shards), str(shards[0])]) == 0
    assert "0 benchmark rows added" in capsys.readouterr().out
    with ResultStore(out, create=False) as s:
        assert sorted((b.property, b.value) for b in s.bench("night")) == [
            ("deterministic", 40.0), (GEMM_RATIO, 1.5), ("matches_reference", 10.0), ("matches_reference", 20.0)]


def test_dashboard_shows_the_examples_per_s_trend(tmp_path):
    store, ids = populated_store(tmp_path / "s.sqlite")
    assert "No benchmark numbers yet" in dashboard_html(store)
    for rid, rate in zip(ids, (40.0, 42.0, 30.0)):
        store.add_bench(rid, benchmarks.records(fake_result(rate)))
    html = dashboard_html(store)
    section = html[html.index('id="bench"'):html.index('id="history"')]
    row = section[section.index('data-key="cpu_loop / bf16 / matches_reference / cpu"'):]
    row = row[:row.index("</tr>")]
    assert "<td>30</td><td>examples/s</td><td>-29%</td>" in row  # 30 / 42 - 1
    assert row.count("<circle") == len(ids) and f"run {ids[0][:8]}" in row
    assert 'data-key="reference / bf16 / gemm_ratio / cpu"' in section and "reference / grouped_mm time" in section
    assert section.index(GEMM_RATIO) < section.index("matches_reference")  # the GEMM row first
    assert "slowdown" not in section  # no threshold without noise data: the trend only


def test_bench_record_value_is_the_rows_number():
    assert BenchRecord(backend="b", format="f", property="p", device="cpu", examples_per_s=3.0).value == 3.0
    assert BenchRecord(backend="r", format="f", property=GEMM_RATIO, device="cpu", ratio=2.0).value == 2.0


def test_the_real_benchmark_lands_in_the_store(tmp_path, capsys):
    # once for real (a few seconds on CPU): the JSON's keys are the records' fields
    path = tmp_path / "s.sqlite"
    rc, out, _ = _bench(capsys, tmp_path, "--examples", "1", "--store", str(path), "--attach", "new")
    assert rc == 0 and "(a new run)" in out
    with ResultStore(path, create=False) as store:
        rows = store.bench()
    assert rows[0].property == GEMM_RATIO and rows[0].ratio > 0
    assert len(rows) > 1 and all(r.examples == 1 and r.examples_per_s > 0 for r in rows[1:])


def test_bench_measures_only_the_backends_asked_and_prints_each_row_as_it_goes():
    lines: list[str] = []
    rows = benchmarks.examples_per_second(1, ["cpu_router"], echo=lines.append)
    assert rows and {r["backend"] for r in rows} == {"cpu_router"}
    assert len(lines) == len(rows) and all("ex/s" in s and "cpu_router" in s for s in lines)
