"""`moecheck e2e` outside a git checkout (git's stderr kept quiet) and under Ctrl-C (a partial table, 130)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers", reason="the e2e gate needs transformers (pip install -e '.[e2e]')")
pytest.importorskip("lm_eval", reason="the e2e gate needs lm-eval (pip install -e '.[e2e]')")
pytest.importorskip("accelerate", reason="lm-eval's HF model needs accelerate (pip install -e '.[e2e]')")

from moecheck.ci.cli.exitcodes import INTERRUPTED  # noqa: E402
from moecheck.tests.e2e.slow_backends import MARKER  # noqa: E402
from moecheck.tests.e2e.test_e2e_cli import _config, random_model_dir  # noqa: E402, F401  (a fixture)

WALL_S = 600


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, random_model_dir):  # noqa: F811
    """reference (completes), then e2e_slow, interrupted by SIGINT once it runs; in a folder git does not know."""
    d = tmp_path_factory.mktemp("not_a_checkout")
    cfg = _config(d, random_model_dir, backends=["reference", "e2e_slow"], n_questions=2)
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(d.parent), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "moecheck.ci.cli", "e2e", "--config", str(cfg), "--out", str(d / "o"),
                             "--plugin", "moecheck.tests.e2e.slow_backends"], cwd=d, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    guard = threading.Timer(WALL_S, proc.kill)
    guard.start()
    err = []
    try:
        for line in proc.stderr:
            err.append(line)
            if MARKER in line:
                proc.send_signal(signal.SIGINT)
        out = proc.stdout.read()
        proc.wait()
    finally:
        guard.cancel()
    return proc.returncode, out, "".join(err), d


def test_outside_a_git_checkout_git_says_nothing_and_one_line_says_commit_unknown(interrupted):
    _, _, err, _ = interrupted
    assert "fatal: not a git repository" not in err
    assert err.count("commit unknown") == 1, err[-3000:]


def test_sigint_prints_the_partial_table_and_exits_130(interrupted):
    rc, out, err, d = interrupted
    assert MARKER in err
    assert rc == INTERRUPTED.value, out[-3000:] + err[-3000:]
    rows = {line.split()[2]: line.split()[3] for line in out.splitlines() if line.startswith("random ")}
    assert rows == {"reference": "pass", "e2e_slow": "interrupted"}, out
    assert "interrupted by SIGINT" in out
    summary = [json.loads(x) for x in (d / "o" / "summary.jsonl").read_text().splitlines()]
    assert [(s["backend"], s["verdict"]) for s in summary] == [("reference", "pass"), ("e2e_slow", "interrupted")]
