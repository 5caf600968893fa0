"""One failing property end to end: one case file (the shrunk one, not one per shrink step), the same
case in results.jsonl, the repro, the store and the dashboard; `moecheck report` keeps the real wall time."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html import unescape

import pytest
from moecheck.ci.cli import main
from moecheck.ci.results.dashboard import render_dashboard
from moecheck.ci.results.store import ResultStore
from moecheck.properties.case import Case

PLUGIN = "moecheck.tests.ci.failing_plugin"


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("failing")
    env = dict(os.environ, MOECHECK_PROFILE="dev")
    env.pop("PYTEST_XDIST_WORKER", None)
    done = subprocess.run([sys.executable, "-m", "moecheck.ci.cli", "run", "-n", "0", "--plugin", PLUGIN,
                           "--backend", "toy_renorm_bug", "--property", "matches_reference", "--report", str(d / "rep"),
                           "--store", str(d / "s.sqlite")], capture_output=True, text=True, env=env, cwd=d, timeout=600)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    (row,) = [json.loads(x) for x in (d / "rep" / "results.jsonl").read_text().splitlines()]
    return d, row, done.stdout


def test_one_case_file_per_failure_and_it_is_the_reported_case(failed_run):
    d, row, _ = failed_run
    files = sorted((d / "rep" / "cases").iterdir())
    assert len(files) == 1, files  # the shrunk case only, not one per shrink step
    case = Case.from_json(files[0].read_text())
    assert row["outcome"] == "failed" and files[0].name in row["case_file"]
    assert Case.from_json(row["worst_case"]) == case
    repro_json = re.search(r"--case '(.*)'$", row["repro"]).group(1)
    assert Case.from_json(repro_json) == case
    assert row["bound"] is not None and row["where"] is not None


def test_store_and_dashboard_show_that_same_case_with_its_numbers(failed_run):
    d, row, _ = failed_run
    with ResultStore(d / "s.sqlite", create=False) as store:
        (rec,) = store.cases(store.runs()[0].run_id)
        html = render_dashboard(store, d / "dash.html").read_text(encoding="utf-8")
    assert Case.from_json(rec.case_json) == Case.from_json(row["worst_case"])
    assert (rec.max_norm_err, rec.rms_err, rec.bias, rec.bound) == (row["max_norm_err"], row["rms_norm_err"], row["bias"], row["bound"])
    changes = html[html.index('id="changes"'):html.index('id="e2e"')]
    (repro,) = re.findall(r'<code class="repro">(.*?)</code>', changes)
    assert unescape(repro) == row["repro"]
    assert f"bound {rec.bound:.4g}" in changes and f"at <code>{rec.where}</code>" in changes


def test_report_prints_the_runs_real_wall_time(failed_run, capsys):
    d, _, stdout = failed_run
    rep = d / "rep"
    wall = json.loads((rep / "run.json").read_text())["wall_s"]
    line = f"wall time {wall:.0f} s"
    assert line in stdout
    assert main(["report", str(rep)]) == 1
    assert line in capsys.readouterr().out and (rep / "summary.txt").read_text().splitlines()[-1] == line


def test_report_without_run_json_sums_the_tests(failed_run, tmp_path, capsys):
    _, row, _ = failed_run
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**row, "duration_s": 100.0}) + "\n")
    main(["report", str(tmp_path)])
    total = row["duration_s"] + 100.0
    assert f"wall time {total:.0f} s (interrupted: no run.json" in capsys.readouterr().out
