"""git bisect run exit codes: 0 good, 1 bad, 125 skip, 128 abort (never 2: that reads as bad)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types

import pytest
from moecheck.ci.cli import results as cli
from moecheck.ci.results.bisect import ABORT, BAD, GOOD, SKIP, bisect_exit_code
from moecheck.ci.results.store import ResultStore
from moecheck.reference.errors import MoecheckError


@pytest.fixture
def case_file(tmp_path):
    path = tmp_path / "case.json"
    path.write_text(json.dumps({"backend": "flashinfer", "format": "nvfp4", "property": "matches_reference",
                                "tokens": 7, "hidden": 256, "inter": 128, "experts": 8, "top_k": 2, "seed": 3}))
    return path


def fake_replay(verdict: str, message: str = "replayed"):
    calls = []

    def replay(path: str, plugins: tuple[str, ...] = ()) -> tuple[str, str]:
        calls.append(path)
        return verdict, message
    replay.calls = calls
    return replay


@pytest.mark.parametrize("verdict, code", [("pass", GOOD), ("fail", BAD), ("skip", SKIP), ("error", BAD)])
def test_verdict_to_exit_code(case_file, capsys, verdict, code):
    replay = fake_replay(verdict, "max_norm_err 7.5\nat expert 3")
    assert bisect_exit_code(replay, case_file) == code
    assert replay.calls == [str(case_file)]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and verdict in err and "at expert 3" in err  # one line, newline folded


def test_codes_are_what_git_bisect_means():
    assert (GOOD, BAD, SKIP) == (0, 1, 125)
    assert ABORT > 127  # git bisect run aborts on 128..255 instead of marking the commit


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]", b"\xff\xfe\x00"])
def test_malformed_case_aborts_without_replay(tmp_path, capsys, content):
    path = tmp_path / "case.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    replay = fake_replay("fail")
    assert bisect_exit_code(replay, path) == ABORT
    assert replay.calls == [] and capsys.readouterr().err.count("\n") == 1


def test_replay_raising(case_file, capsys):
    def broken_import(path):
        raise ImportError("flashinfer: undefined symbol _ZN5cutlass")

    def rejects_case(path):
        raise MoecheckError("case format 'nvfp9' is unknown")
    assert bisect_exit_code(broken_import, case_file) == SKIP  # nothing learned at this commit
    assert bisect_exit_code(rejects_case, case_file) == ABORT
    assert bisect_exit_code(fake_replay("maybe"), case_file) == ABORT
    assert capsys.readouterr().err.count("\n") == 3


def run_cli(*argv: str) -> int:
    try:
        return cli.main(list(argv))
    except SystemExit as e:  # argparse usage errors
        return e.code


def test_cli_malformed_case(tmp_path, capsys):
    bad = tmp_path / "case.json"
    bad.write_text("{")
    assert run_cli("bisect-run", str(bad)) == ABORT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not valid JSON" in err and "Traceback" not in err
    assert run_cli("bisect-run", str(tmp_path / "missing.json")) == ABORT
    assert "no case file at" in capsys.readouterr().err


def test_cli_usage_error_aborts(capsys):
    assert run_cli("bisect-run") == ABORT  # CASE missing: argparse's usual 2 would mark the commit bad
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_without_replay_module_skips(case_file, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "moecheck.properties.repro", None)  # import fails
    assert run_cli("bisect-run", str(case_file)) == SKIP
    assert "cannot import" in capsys.readouterr().err


@pytest.mark.parametrize("verdict, code", [("pass", GOOD), ("fail", BAD), ("crashed", BAD), ("skip", SKIP)])
def test_cli_with_replay_records_step(case_file, tmp_path, capsys, monkeypatch, verdict, code):
    fake = types.ModuleType("moecheck.properties.repro")
    fake.replay_file = fake_replay(verdict)
    monkeypatch.setitem(sys.modules, "moecheck.properties.repro", fake)
    monkeypatch.setenv("MOECHECK_REVISION", "c0ffee")
    store = tmp_path / "bisect.sqlite"
    assert run_cli("bisect-run", str(case_file), "--store", str(store)) == code
    (run,) = ResultStore(store, create=False).runs()
    (case,) = ResultStore(store, create=False).cases(run.run_id)
    assert (run.profile, run.revision, run.status) == ("bisect", "c0ffee", "finished")
    assert (case.backend, case.format, case.verdict) == ("flashinfer", "nvfp4", verdict)
    assert case.shape == "T=7 H=256 I=128 E=8 k=2" and json.loads(case.case_json)["seed"] == 3
    assert case.repro == f"moecheck repro {case_file.resolve()}"


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_bisect_run_finds_the_bad_commit(tmp_path, case_file):
    """End to end with real git: the replay reads a file whose content changes at commit 5 of 8."""
    repo = tmp_path / "lib"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    for i in range(8):
        (repo / "kernel.txt").write_text("bad" if i >= 5 else "good")
        (repo / "untestable").write_text("1" if i == 3 else "0")
        (repo / "commit").write_text(str(i))
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", f"c{i}"], check=True)
    revs = subprocess.run([*git, "rev-list", "--reverse", "HEAD"], capture_output=True, text=True, check=True)
    revs = revs.stdout.split()
    script = tmp_path / "step.py"
    script.write_text(
        "import pathlib, sys\n"
        "from moecheck.ci.results.bisect import bisect_exit_code\n"
        "def replay(path):\n"
        "    if pathlib.Path('untestable').read_text() == '1':\n"
        "        return 'skip', 'no GPU here'\n"
        "    return ('pass' if pathlib.Path('kernel.txt').read_text() == 'good' else 'fail'), 'checked'\n"
        f"sys.exit(bisect_exit_code(replay, {str(case_file)!r}))\n")
    subprocess.run([*git, "bisect", "start", revs[-1], revs[0]], check=True, capture_output=True)
    out = subprocess.run([*git, "bisect", "run", sys.executable, str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"{revs[5]} is the first bad commit" in out.stdout
