"""`moecheck merge OUT SHARD...`: one run per run id, idempotent, conflicts and corrupt shards refused
in one line with exit 2 and every file left as it was; history and the dashboard see one night."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from moecheck.ci.cli import main
from moecheck.ci.results.dashboard import dashboard_html
from moecheck.ci.results.store import ResultStore
from moecheck.tests.ci.factories import case, run_record

NIGHT = "night-1"
SHARD_CASES = [  # three shards of one night: disjoint keys
    [case("cpu_loop", "bf16", "matches_reference", "pass", 0.1, duration_s=3.0),
     case("cpu_loop", "fp8_block", "matches_reference", "fail", 4.0, duration_s=1.0)],
    [case("cpu_loop", "bf16", "kernel_ran", "pass", 0.0, duration_s=2.5), case("vllm_x", "-", "-", "skip")],
    [case("torch_grouped_mm", "bf16", "deterministic", "pass", 0.0, duration_s=4.0)],
]


def _shard(path: Path, i: int, *, status: str = "finished", **kw) -> Path:
    with ResultStore(path) as s:
        kw.setdefault("hostname", f"gpu-{i}")
        rid = s.start_run(run_record(started_at=f"2026-02-01T03:0{i}:00.000+00:00", **kw), run_id=NIGHT)
        s.add_cases(rid, SHARD_CASES[i])
        if status != "running":
            s.finish_run(rid, status)
    return path


def _shards(tmp_path: Path, **kw) -> list[Path]:
    return [_shard(tmp_path / f"s{i}.sqlite", i, **kw) for i in range(3)]


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _rows(db: Path) -> tuple[list, list]:
    conn = sqlite3.connect(db)
    try:
        return (conn.execute("SELECT * FROM runs ORDER BY run_id").fetchall(),
                conn.execute("SELECT * FROM cases ORDER BY id").fetchall())
    finally:
        conn.close()


def _merge(capsys, out: Path, *shards) -> tuple[int, str, str]:
    rc = main(["merge", str(out), *map(str, shards)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_shards_become_one_run_seen_as_one_by_history_and_the_dashboard(tmp_path, capsys):
    out = tmp_path / "merged.sqlite"
    rc, text, err = _merge(capsys, out, *_shards(tmp_path))
    assert rc == 0 and err == "", err
    assert "5 cases, 0 e2e gates and 0 benchmark rows added" in text and "run night-1: 3 input(s)" in text
    assert "balance: busiest 4.0 s, lightest 2.5 s" in text  # shard test time: 4.0, 2.5 (the skip has 0), 4.0
    with ResultStore(out, create=False) as s:
        (run,) = s.runs()
        got = sorted(c.key for c in s.cases(run.run_id))
        html = dashboard_html(s)
    assert got == sorted(c.key for cs in SHARD_CASES for c in cs)
    assert run.started_at == "2026-02-01T03:00:00.000+00:00" and run.status == "finished"
    assert run.hostname == "gpu-0,gpu-1,gpu-2" and run.revision == "abc123"
    assert main(["history", "--store", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].split()[1:9] == ["night-1", "finished", "nightly", "abc123", "3", "1", "0", "1"]
    for backend in ("cpu_loop", "torch_grouped_mm", "vllm_x"):
        assert f'data-backend="{backend}"' in html
    assert html.count("<code>night-1</code>") == 1  # one row in the runs table


def test_merging_again_or_the_same_shard_twice_changes_nothing(tmp_path, capsys):
    shards, out = _shards(tmp_path), tmp_path / "m.sqlite"
    assert _merge(capsys, out, *shards)[0] == 0
    before = _rows(out)
    rc, text, _ = _merge(capsys, out, shards[1], shards[1], *shards)
    assert rc == 0 and "0 cases, 0 e2e gates and 0 benchmark rows added" in text and _rows(out) == before
    assert "warning" not in text  # a shard named twice is one shard, not an overlap
    fresh = tmp_path / "fresh.sqlite"
    assert _merge(capsys, fresh, shards[0], shards[0])[0] == 0
    assert len(_rows(fresh)[1]) == len(SHARD_CASES[0])


@pytest.mark.parametrize("what, kw, needle", [
    ("commit", {"revision": "def456"}, "revision 'def456' vs 'abc123'"),
    ("profile", {"profile": "dev"}, "profile 'dev' vs 'nightly'"),
])
def test_a_shard_from_another_commit_or_configuration_is_refused_and_nothing_changes(tmp_path, capsys, what, kw, needle):
    shards = _shards(tmp_path)
    odd = _shard(tmp_path / "odd.sqlite", 2, **kw)
    out = tmp_path / "m.sqlite"
    assert _merge(capsys, out, shards[0])[0] == 0
    before, digests = _rows(out), [_digest(p) for p in (*shards, odd)]
    rc, text, err = _merge(capsys, out, shards[1], odd)
    assert rc == 2 and text == "" and err.count("\n") == 1 and err.startswith("moecheck merge: error: run night-1: ")
    assert needle in err and "must share commit, profile and environment" in err
    assert _rows(out) == before and [_digest(p) for p in (*shards, odd)] == digests
    rc, _, err = _merge(capsys, tmp_path / "new.sqlite", shards[0], odd)
    assert rc == 2 and needle in err and not (tmp_path / "new.sqlite").exists()


def test_other_package_versions_are_named(tmp_path, capsys):
    a = _shard(tmp_path / "a.sqlite", 0)
    with ResultStore(tmp_path / "b.sqlite") as s:
        rec = replace(run_record(started_at="2026-02-01T03:01:00.000+00:00"), versions={"python": "3.11", "torch": "2.12"})
        s.finish_run(s.start_run(rec, run_id=NIGHT))
    rc, _, err = _merge(capsys, tmp_path / "m.sqlite", a, tmp_path / "b.sqlite")
    assert rc == 2 and "package versions differ (torch 2.12 vs 2.13)" in err


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_shard_is_one_line_exit_2_and_leaves_every_file_intact(tmp_path, capsys, damage):
    shards, out = _shards(tmp_path), tmp_path / "m.sqlite"
    assert _merge(capsys, out, shards[0])[0] == 0
    bad = tmp_path / "bad.sqlite"
    if damage == "garbage":
        bad.write_bytes(b"this is not a results store " * 200)
    else:
        _shard(bad, 1)
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    before, digests = _rows(out), [_digest(p) for p in (*shards, bad, out)]
    rc, text, err = _merge(capsys, out, shards[1], bad, shards[2])
    assert rc == 2 and text == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("moecheck merge: error: shard ") and str(bad) in err
    assert [_digest(p) for p in (*shards, bad, out)] == digests and _rows(out) == before


def test_an_interrupted_or_dead_shard_makes_the_night_interrupted(tmp_path, capsys):
    a = _shard(tmp_path / "a.sqlite", 0)
    b = _shard(tmp_path / "b.sqlite", 1, status="interrupted")
    out = tmp_path / "m.sqlite"
    assert _merge(capsys, out, a, b)[0] == 0
    with ResultStore(out, create=False) as s:
        assert s.run(NIGHT).status == "interrupted"


def test_a_shard_still_running_here_is_refused(tmp_path, capsys):
    live = _shard(tmp_path / "live.sqlite", 0, status="running", hostname="")  # this host, this (live) process
    rc, _, err = _merge(capsys, tmp_path / "m.sqlite", live)
    assert rc == 2 and f"is still running (pid {os.getpid()})" in err


def test_report_folders_merge_like_stores(tmp_path, capsys):
    rows = [{"backend": "cpu_loop", "format": "bf16", "property": p, "outcome": "passed", "duration_s": 1.0,
             "max_norm_err": 0.1, "worst_case": None, "message": "", "repro": None, "nodeid": f"x[{p}]"}
            for p in ("kernel_ran", "deterministic")]
    for i, row in enumerate(rows, start=1):
        d = tmp_path / "rep" / f"shard-{i}-of-2"
        d.mkdir(parents=True)
        (d / "results.jsonl").write_text(json.dumps(row) + "\n")
        (d / "shard.json").write_text(json.dumps({
            "run_id": NIGHT, "shard": f"{i}/2", "started_at": f"2026-02-01T03:0{i}:00.000+00:00",
            "finished_at": "2026-02-01T04:00:00.000+00:00", "status": "finished", "pid": 1, "revision": "abc",
            "versions": {"torch": "2.13"}, "gpu_name": None, "driver": None, "hostname": f"h{i}", "profile": "ci",
            "command": f"moecheck run --shard {i}/2"}))
    out = tmp_path / "m.sqlite"
    rc, text, err = _merge(capsys, out, tmp_path / "rep")  # the parent: every shard-* folder in it
    assert rc == 0 and "2 cases" in text, err
    with ResultStore(out, create=False) as s:
        (run,) = s.runs()
        assert (run.run_id, run.status, run.profile) == (NIGHT, "finished", "ci")
        assert run.finished_at == "2026-02-01T04:00:00.000+00:00"
        assert sorted(c.property for c in s.cases(NIGHT)) == ["deterministic", "kernel_ran"]
    assert _merge(capsys, out, tmp_path / "rep" / "shard-1-of-2")[1].startswith("merged into")  # one folder; idempotent
    assert len(_rows(out)[1]) == 2


@pytest.mark.parametrize("target, why", [("nope.sqlite", "no shard store or folder at"),
                                         ("emptydir", "neither a results store nor a shard report folder")])
def test_missing_inputs_are_one_line(tmp_path, capsys, target, why):
    (tmp_path / "emptydir").mkdir()
    rc, _, err = _merge(capsys, tmp_path / "m.sqlite", tmp_path / target)
    assert rc == 2 and why in err and err.count("\n") == 1 and not (tmp_path / "m.sqlite").exists()
