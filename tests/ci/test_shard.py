"""`moecheck run --shard I/N`: the split (ci/shard.py), durations from the store, and a real 3-shard
CPU run merged back into one run with the same (backend, format, property) results as one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from moecheck.ci.cli import main
from moecheck.ci.results.durations import durations_from_store
from moecheck.ci.results.store import ResultStore
from moecheck.ci.shard import ShardError, assign, nodeid, parse_shard, weights
from moecheck.tests.ci.factories import case, run_record

IDS = [f"t.py::test[{c}]" for c in "abcdefgh"]


@pytest.mark.parametrize("spec, want", [("1/3", (1, 3)), (" 3 / 3 ", (3, 3)), ("1/1", (1, 1))])
def test_parse_shard(spec, want):
    assert parse_shard(spec) == want


@pytest.mark.parametrize("spec", ["0/3", "4/3", "3", "a/b", "", "1/0", "-1/3"])
def test_bad_shard_spec_is_refused(spec):
    with pytest.raises(ShardError, match="I/N"):
        parse_shard(spec)


def test_every_test_lands_in_exactly_one_shard_and_the_split_is_deterministic():
    durations = {i: float(n) for n, i in enumerate(IDS)}
    for n in (1, 2, 3, 5, 8, 11):
        where = assign(IDS, n, durations)
        assert sorted(where) == sorted(IDS) and set(where.values()) <= set(range(n))
        assert assign(list(reversed(IDS)), n, dict(reversed(list(durations.items())))) == where  # order-free


def test_without_durations_it_is_round_robin_over_sorted_ids():
    shuffled = [IDS[i] for i in (5, 2, 7, 0, 3, 6, 1, 4)]
    where = assign(shuffled, 3, {})
    assert [where[i] for i in sorted(IDS)] == [0, 1, 2, 0, 1, 2, 0, 1]


def test_greedy_longest_first_onto_the_lightest_shard():
    secs = [7.0, 5.0, 4.0, 3.0, 2.0, 2.0, 1.0, 0.5]
    durations = dict(zip(IDS, secs))
    where = assign(IDS, 2, durations)
    loads = [sum(durations[i] for i in IDS if where[i] == j) for j in range(2)]
    # by hand: 7->0, 5->1, 4->1 (9), 3->0 (10), 2->1 (11), 2->0 (12), 1->1 (12), 0.5->0
    assert loads == [12.5, 12.0]
    round_robin = [sum(secs[k] for k in range(j, len(secs), 2)) for j in range(2)]
    assert max(loads) - min(loads) < max(round_robin) - min(round_robin)


def test_unknown_tests_weigh_the_mean_and_names_match_without_the_path():
    w, known = weights(["properties/t.py::test[a]", "x.py::test[zz]"], {"t.py::test[a]": 3.0, "t.py::test[b]": 1.0})
    assert known == 1 and w == {"properties/t.py::test[a]": 3.0, "x.py::test[zz]": 3.0}


def test_store_keys_map_onto_the_templates_node_ids():
    assert nodeid("cpu_loop", "bf16", "kernel_ran") == "test_properties.py::test_property[cpu_loop-bf16-kernel_ran]"
    assert nodeid("vllm_triton_bf16", "-", "-") == "test_properties.py::test_property[vllm_triton_bf16-unavailable]"


def test_durations_are_the_median_of_finished_runs_and_leave_out_the_current_run(tmp_path):
    db = tmp_path / "s.sqlite"
    with ResultStore(db) as s:
        for n, secs in enumerate((1.0, 2.0, 9.0)):
            rid = s.start_run(run_record(started_at=f"2026-01-0{n + 1}T00:00:00.000+00:00"))
            s.add_cases(rid, [case("cpu_loop", "bf16", "kernel_ran", "pass", duration_s=secs)])
            s.finish_run(rid)
        tonight = s.start_run(run_record(started_at="2026-01-09T00:00:00.000+00:00"), run_id="tonight")
        s.add_cases(tonight, [case("cpu_loop", "bf16", "kernel_ran", "pass", duration_s=100.0)])
        s.finish_run(tonight)
    key = nodeid("cpu_loop", "bf16", "kernel_ran")
    assert durations_from_store(db, exclude_run="tonight") == {key: 2.0}
    assert durations_from_store(db, exclude_run="tonight", runs=1) == {key: 9.0}
    assert durations_from_store(db) == {key: 5.5}


def _moecheck(*args, cwd: Path, env_extra: dict | None = None, wait: bool = True):
    env = dict(os.environ, MOECHECK_MAX_EXAMPLES="2", MOECHECK_PROFILE="ci", MOECHECK_REVISION="shard-test",
               OMP_NUM_THREADS="1", **(env_extra or {}))  # 3 processes on 2 cores: no thread oversubscription
    for v in ("PYTEST_XDIST_WORKER", "MOECHECK_RUN_ID", "MOECHECK_STORE"):
        env.pop(v, None)
    p = subprocess.Popen([sys.executable, "-m", "moecheck.ci.cli", *args], cwd=cwd, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return p.communicate(timeout=900) + (p.returncode,) if wait else p


def _results(db: Path) -> tuple[str, set]:
    with ResultStore(db, create=False) as s:
        (run,) = s.runs()
        return run, {(c.key, c.verdict) for c in s.cases(run.run_id)}


# real backends (torch_grouped_mm on CPU) and unavailable ones (one skip each)
SELECT = ("--backend", "torch_grouped_mm", "--backend", "vllm_triton_*")


@pytest.mark.slow
def test_three_shard_processes_merge_into_the_unsharded_runs_results(tmp_path):
    out, _, rc = _moecheck("run", "-n", "0", *SELECT, "--store", "full.sqlite", "--report", "rep-full", cwd=tmp_path)
    assert rc == 0, out[-3000:]
    full_run, full = _results(tmp_path / "full.sqlite")
    assert len(full) >= 10 and {v for _, v in full} == {"pass", "skip"}
    out, _, rc = _moecheck("durations", "--store", "full.sqlite", "--out", "d.json", cwd=tmp_path)
    assert rc == 0 and f"wrote {len(full)} test durations" in out, out
    procs = [_moecheck("run", "-n", "2" if i == 1 else "0", *SELECT, "--shard", f"{i}/3", "--run-id", "night-1",
                       "--durations", "d.json", "--store", f"s{i}.sqlite", "--report", "rep", cwd=tmp_path, wait=False)
             for i in (1, 2, 3)]  # at once, as N runners would; shard 1 under xdist (its workers deselect alike)
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(o[-2000:] for o in outs)
    plans = [json.loads((tmp_path / "rep" / f"shard-{i}-of-3" / "plan.json").read_text()) for i in (1, 2, 3)]
    selected = [set(p["selected"]) for p in plans]
    assert sum(map(len, selected)) == len(set().union(*selected)) == len(full)  # disjoint, and all of them
    assert all(p["known_durations"] == p["collected"] == len(full) for p in plans)
    out, _, rc = _moecheck("merge", "merged.sqlite", "s1.sqlite", "s2.sqlite", "s3.sqlite", cwd=tmp_path)
    assert rc == 0 and "run night-1: 3 input(s)" in out and "balance: busiest" in out, out
    run, merged = _results(tmp_path / "merged.sqlite")
    assert merged == full and run.run_id == "night-1" and run.status == "finished"
    assert run.revision == full_run.revision == "shard-test" and run.command.count("--shard") == 3


@pytest.mark.parametrize("argv, why", [
    (["--shard", "0/3", "--run-id", "n1"], "--shard must be I/N with 1 <= I <= N (e.g. 2/3), got '0/3'"),
    (["--shard", "1/3"], "--shard needs --run-id ID (or MOECHECK_RUN_ID)"),
    (["--shard", "1/3", "--run-id", "bad id!"], "run id must be 1-64 letters"),
    (["--durations", "d.json"], "--durations only means something with --shard I/N"),
    (["--shard", "1/3", "--run-id", "n1", "--durations", "missing.json"], "durations file missing.json"),
])
def test_bad_shard_arguments_are_one_line_exit_2_before_anything_runs(tmp_path, monkeypatch, capsys, argv, why):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MOECHECK_RUN_ID", "")  # unset, and restored after: configure sets it on success
    assert main(["run", "--report", "rep", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err, err
    assert not list((tmp_path / "rep").glob("shard-*/results.jsonl"))


def test_a_store_that_already_holds_the_run_is_refused_with_the_way_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MOECHECK_RUN_ID", "")
    with ResultStore(tmp_path / "s.sqlite") as s:
        s.start_run(run_record(), run_id="n1")
    assert main(["run", "--report", "rep", "--shard", "2/3", "--run-id", "n1", "--store", "s.sqlite"]) == 2
    err = capsys.readouterr().err
    assert "run n1 is already in s.sqlite: give each shard a store of its own" in err and "moecheck merge" in err
