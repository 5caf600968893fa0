"""`moecheck run --store` killed at chosen moments keeps every completed result and leaves no process.

A real run (xdist workers, a slow but correct plugin backend) is sent SIGTERM (to its process, or to
its process group) or SIGKILL once it has finished K tests. Afterwards: every row in results.jsonl is
in the store (committed before the line is written), the run reads as interrupted, and no process of the run is alive.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from moecheck.ci.results.store import ResultStore

PLUGIN = "moecheck.tests.properties.misbehaving"


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # the line being written when the signal came
    return out


def _alive_with(marker: str) -> list[int]:
    """pids whose command line names this run's report folder (moecheck, pytest and its workers do)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if marker in cmd or marker.encode() in env:
            pids.append(int(d.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find leftover processes")
@pytest.mark.parametrize("how,after", [("TERM", 1), ("TERM-group", 4), ("KILL", 4)])
def test_killed_run_keeps_completed_results(tmp_path, how, after):
    rep, store = tmp_path / "report", tmp_path / "s.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MOECHECK_"))}
    cmd = [sys.executable, "-m", "moecheck.ci.cli", "run", "-n", "2", "--profile", "ci", "--plugin", PLUGIN,
           "--backend", "mb_slow", "--format", "bf16", "--report", str(rep), "--store", str(store)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while len(_rows(rep / "results.jsonl")) < after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: make mb_slow slower"
    if how == "TERM-group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGKILL if how == "KILL" else signal.SIGTERM)
    proc.wait(timeout=60)
    gone = time.time() + 20
    while _alive_with(str(rep)) and time.time() < gone:
        time.sleep(0.2)
    assert _alive_with(str(rep)) == [], "processes of the killed run are still alive"
    rows = _rows(rep / "results.jsonl")
    with ResultStore(store, create=False) as s:
        (run,) = s.runs()
        stored = s.cases(run.run_id)
    assert len(rows) >= after
    keys = {(c.backend, c.format, c.property) for c in stored}
    assert {(r["backend"], r["format"], r["property"]) for r in rows} <= keys  # every completed result is stored
    assert len(stored) - len(rows) in (0, 1), (len(stored), len(rows))  # at most the one being written out
    assert run.status == "interrupted"
