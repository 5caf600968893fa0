"""`moecheck run --store`: report rows become store rows, the run is opened first and closed after;
--backend/--format/--property select exact names or patterns, never substrings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from moecheck.ci.results import bridge
from moecheck.ci.results.store import ResultStore

ROW = {"backend": "cpu_loop", "format": "bf16", "property": "matches_reference", "max_norm_err": 0.25,
       "worst_case": json.dumps({"tokens": 7, "hidden": 64, "inter": 32, "experts": 4, "top_k": 2}),
       "outcome": "failed", "message": "max normalized error 3", "duration_s": 1.5,
       "repro": "moecheck repro --case '{}'", "nodeid": "x::test_property[cpu_loop-bf16-matches_reference]"}


@pytest.mark.parametrize("outcome, verdict", [("passed", "pass"), ("failed", "fail"), ("skipped", "skip"), ("error", "error")])
def test_case_record_maps_outcomes(outcome, verdict):
    r = bridge.case_record({**ROW, "outcome": outcome})
    assert r.verdict == verdict and r.key == ("cpu_loop", "bf16", "matches_reference")
    assert r.shape == "T=7 H=64 I=32 E=4 k=2" and r.max_norm_err == 0.25 and r.repro == ROW["repro"]


def test_a_row_without_repro_falls_back_to_its_pytest_node():
    r = bridge.case_record({**ROW, "repro": None, "worst_case": None})
    assert r.repro == f"pytest '{ROW['nodeid']}'" and r.shape == ""


def _run(tmp_path, *args):
    env = dict(os.environ, MOECHECK_MAX_EXAMPLES="2", MOECHECK_PROFILE="dev")
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run([sys.executable, "-m", "moecheck.ci.cli", "run", "-n", "0", "--report", str(tmp_path / "rep"), *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_run_with_store_records_every_selected_test(tmp_path):
    store, junit = tmp_path / "s.sqlite", tmp_path / "junit.xml"
    res = _run(tmp_path, "--backend", "cpu_loop", "--format", "bf16", "--property", "matches_reference",
               "--property", "kernel_ran", "--store", str(store), "--require", "--junitxml", str(junit))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]  # --require: cpu_loop runs everywhere
    cases = [c.get("name") for c in ET.parse(junit).iter("testcase")]
    assert "test_property[cpu_loop-bf16-kernel_ran]" in cases and "test_property[cpu_loop-bf16-matches_reference]" in cases
    with ResultStore(store, create=False) as s:
        (run,) = s.runs()
        cases = s.cases(run.run_id)
    assert run.status == "finished" and run.command.startswith("moecheck run")
    # exactly bf16: mxfp4_bf16 contains the string 'bf16' and must not be selected
    assert sorted(c.key for c in cases) == [("cpu_loop", "bf16", "kernel_ran"), ("cpu_loop", "bf16", "matches_reference")]
    assert all(c.verdict == "pass" and c.shape.startswith("T=") for c in cases)


def test_unknown_property_is_one_line_exit_2(tmp_path):
    res = _run(tmp_path, "--property", "matches_refrence")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown property 'matches_refrence'" in res.stderr


def test_unknown_backend_is_usage_error_before_any_work(tmp_path):
    res = _run(tmp_path, "--backend", "no_such_backend")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown backend 'no_such_backend'" in res.stderr
    assert not (tmp_path / "rep").exists()  # nothing claimed, nothing run


def test_known_names_that_select_no_test_are_a_usage_error(tmp_path):
    res = _run(tmp_path, "--backend", "cpu_router", "--format", "nvfp4")  # a router backend has no nvfp4
    assert res.returncode == 2 and "matches no test" in res.stderr and "Traceback" not in res.stdout + res.stderr
