"""ci/nightly.sh against a fake `moecheck` that logs its calls."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import moecheck.ci
import pytest

SCRIPT = Path(moecheck.ci.__file__).resolve().parent / "nightly.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")

FAKE = """#!/usr/bin/env bash
echo "$MOECHECK_PROFILE|$MOECHECK_EXAMPLE_DB|$*" >> "$FAKE_LOG"
case "$1" in
  run) exit "${FAKE_RUN_RC:-0}" ;;
  e2e) [ -n "${FAKE_HAS_E2E:-}" ] || exit 2; [ "$2" = --help ] && exit 0; exit "${FAKE_E2E_RC:-0}" ;;
  bench) [ -n "${FAKE_HAS_BENCH:-}" ] || exit 2; [ "$2" = --help ] && exit 0; exit "${FAKE_BENCH_RC:-0}" ;;
  dashboard) exit "${FAKE_DASH_RC:-0}" ;;
esac
"""


def nightly(tmp_path, **env) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "moecheck"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("MOECHECK_")}
    full_env = {**base, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path / "home"),
                "FAKE_LOG": str(log), **env}
    full_env.pop("XDG_CACHE_HOME", None)
    done = subprocess.run(["bash", str(SCRIPT), "--extra"], capture_output=True, text=True, env=full_env, timeout=60)
    return done, log.read_text().splitlines() if log.exists() else []


def test_syntax():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_failing_tests_still_render_dashboard(tmp_path):
    done, calls = nightly(tmp_path, FAKE_RUN_RC="1")
    assert done.returncode == 1
    store = tmp_path / "home" / ".cache" / "moecheck" / "results.sqlite"
    db = tmp_path / "home" / ".cache" / "moecheck" / "hypothesis"
    assert calls[0] == f"nightly|{db}|run --store {store} --extra"
    assert calls[-1] == f"|{db}|dashboard --store {store} --out {store.parent / 'dashboard.html'}"
    assert "skipping e2e gates" in done.stderr and db.is_dir()


def test_e2e_runs_when_available_and_its_failure_counts(tmp_path):
    done, calls = nightly(tmp_path, FAKE_HAS_E2E="1", FAKE_E2E_RC="3", MOECHECK_STORE=str(tmp_path / "s.sqlite"),
                          MOECHECK_EXAMPLE_DB=str(tmp_path / "db"))
    assert done.returncode == 3
    assert [c.split("|")[2].split()[0] for c in calls] == ["run", "bench", "e2e", "e2e", "dashboard"]  # bench: its --help probe
    assert f"|{tmp_path / 'db'}|run --store {tmp_path / 's.sqlite'}" in calls[0]


def test_dashboard_failure_keeps_test_status(tmp_path):
    done, _ = nightly(tmp_path, FAKE_DASH_RC="2")
    assert done.returncode == 0 and "dashboard failed" in done.stderr


def test_bench_runs_after_the_suite_into_the_store_and_its_failure_changes_nothing(tmp_path):
    store = tmp_path / "s.sqlite"
    done, calls = nightly(tmp_path, FAKE_HAS_BENCH="1", FAKE_BENCH_RC="1", MOECHECK_STORE=str(store))
    assert done.returncode == 0 and "benchmark exited 1" in done.stderr
    assert [c.split("|")[2].split()[0] for c in calls] == ["run", "bench", "bench", "e2e", "dashboard"]
    assert calls[2].endswith(f"|bench --store {store} --out {tmp_path / 'bench.json'}")


def test_no_bench_command_is_skipped(tmp_path):
    done, _ = nightly(tmp_path)
    assert done.returncode == 0 and "skipping benchmark" in done.stderr
