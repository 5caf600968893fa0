"""Two `moecheck run` in one directory never mix their results: each gets its own report folder, and
a folder named twice with --report is refused to the second run (exit 2, one line)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from moecheck.ci.results.store import ResultStore


def _start(cwd: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MOECHECK_"))}
    env["MOECHECK_MAX_EXAMPLES"] = "3"
    return subprocess.Popen([sys.executable, "-m", "moecheck.ci.cli", "run", "-n", "1", "--profile", "dev",
                             "--backend", "cpu_loop", "--store", "s.sqlite", *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_in_one_directory_keep_their_own_results(tmp_path):
    a = _start(tmp_path, "--format", "bf16", "--property", "matches_reference")
    b = _start(tmp_path, "--format", "fp16", "--property", "kernel_ran")
    outs = [p.communicate(timeout=600) for p in (a, b)]
    assert [p.returncode for p in (a, b)] == [0, 0], outs
    folders = sorted(p for p in (tmp_path / "moecheck-report").iterdir() if p.is_dir() and not p.is_symlink())
    assert len(folders) == 2
    seen = []
    for f in folders:
        rows = [json.loads(line) for line in (f / "results.jsonl").read_text().splitlines()]
        seen.append({(r["format"], r["property"]) for r in rows})
    assert sorted(seen, key=str) == sorted([{("bf16", "matches_reference")}, {("fp16", "kernel_ran")}], key=str)
    with ResultStore(tmp_path / "s.sqlite", create=False) as s:
        per_run = sorted(({(c.format, c.property) for c in s.cases(r.run_id)} for r in s.runs()), key=str)
    assert per_run == sorted(seen, key=str)


def test_a_report_folder_in_use_is_refused(tmp_path):
    a = _start(tmp_path, "--format", "bf16", "--property", "matches_reference", "--report", "rep")
    try:
        while not (tmp_path / "rep" / ".lock").exists() and a.poll() is None:
            pass
        b = _start(tmp_path, "--format", "fp16", "--report", "rep")
        out, err = b.communicate(timeout=120)
        assert b.returncode == 2 and err.count("\n") == 1 and "in use by another moecheck run" in err, (out, err)
    finally:
        a.communicate(timeout=600)
    assert a.returncode == 0
