"""Findings never mask each other: one real `moecheck run` over plugin backends that each misbehave once.

The run is a subprocess exactly as a user starts it (xdist workers, the ci profile). Each finding must
be recorded with its message and a repro that, run verbatim in a fresh shell, exits 1; every other
result of the same backend must be there and pass, the drawn examples at the profile's full count.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import settings

PLUGIN = "moecheck.tests.properties.misbehaving"
BACKENDS = ("mb_refuses_t0", "mb_cuda_t0", "mb_segfault", "mb_hang")
TIMEOUT_S = 20  # per example: the hang waits this long; 5 s was too short for a correct example on 2 loaded cores


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    rep = tmp_path_factory.mktemp("isolation") / "report"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MOECHECK_"))}
    cmd = [sys.executable, "-m", "moecheck.ci.cli", "run", "-n", "2", "--profile", "ci", "--plugin", PLUGIN,
           "--timeout", str(TIMEOUT_S), "--report", str(rep), "--format", "bf16",
           *[a for b in BACKENDS for a in ("--backend", b)],
           "--property", "matches_reference", "--property", "edge_contract", "--property", "pinned"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert (rep / "results.jsonl").is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads(line) for line in (rep / "results.jsonl").read_text().splitlines()]
    return res, {(r["backend"], r["property"]): r for r in rows}, rows


def _repro_exit(cmd: str) -> int:
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=120).returncode


def test_every_result_is_present_and_the_run_completes(run):
    res, by, rows = run
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]  # findings: a failed run, not a dead one
    per_backend = 1 + 6 + 5  # matches_reference, six edges, five pinned cases
    assert len(rows) == len(BACKENDS) * per_backend, sorted(by)
    bad = {k for k, r in by.items() if r["outcome"] not in ("passed", "skipped")}
    assert bad == {("mb_refuses_t0", "edge:empty_batch"), ("mb_cuda_t0", "edge:empty_batch"),
                   ("mb_segfault", "pinned:unaligned_30647"), ("mb_hang", "pinned:unaligned_30647")}


def test_a_clean_exception_on_the_empty_batch_is_refused_with_its_message(run):
    r = run[1][("mb_refuses_t0", "edge:empty_batch")]
    assert r["outcome"] == "refused" and "ValueError: num_tokens must be > 0" in r["message"]


def test_a_device_error_on_the_empty_batch_fails_and_the_numerics_still_run_in_full(run):
    by = run[1]
    r = by[("mb_cuda_t0", "edge:empty_batch")]
    assert r["outcome"] == "failed" and "CUDA error: invalid argument" in r["message"]
    assert _repro_exit(r["repro"]) == 1
    num = by[("mb_cuda_t0", "matches_reference")]
    assert num["outcome"] == "passed" and num["examples_run"] == settings.get_profile("ci").max_examples


@pytest.mark.parametrize("backend,what", [("mb_segfault", "Segmentation fault"), ("mb_hang", f"no result after {TIMEOUT_S}")])
def test_a_crash_is_recorded_with_its_case_and_a_repro_that_exits_1(run, backend, what):
    r = run[1][(backend, "pinned:unaligned_30647")]
    assert r["outcome"] == "crashed" and what in r["message"], r
    assert r["worst_case"] and os.path.isfile(r["case_file"])
    assert f"--plugin {PLUGIN}" in r["repro"] and _repro_exit(r["repro"]) == 1
    others = [v for (b, _), v in run[1].items() if b == backend and v is not r]
    assert others and all(v["outcome"] in ("passed", "skipped") for v in others)


def test_the_summary_names_each_finding_with_its_repro(run):
    out = run[0].stdout
    for b in ("mb_cuda_t0", "mb_segfault", "mb_hang"):
        assert any(line.startswith(("FAILED " + b, "CRASHED " + b)) for line in out.splitlines()), out[-3000:]
    assert out.count("  reproduce: moecheck repro --plugin") >= 3
