"""`moecheck dashboard` and `moecheck history`: output, and one-line errors with exit 2."""
from __future__ import annotations

import argparse

import pytest
from moecheck.ci.cli import results as cli
from moecheck.tests.ci.factories import populated_store


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="moecheck")  # as moecheck.ci.cli will: register on its subparsers
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    assert args.fn is args.func  # moecheck.ci.cli dispatches on `fn`
    return args.fn(args)


@pytest.mark.parametrize("command", ["dashboard", "history"])
def test_missing_store_is_exit_2_one_line(tmp_path, capsys, command):
    missing = tmp_path / "nope.sqlite"
    assert run(command, "--store", str(missing)) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"moecheck {command}: error: no results store at {missing}\n"
    assert not missing.exists()


@pytest.mark.parametrize("command", ["dashboard", "history"])
def test_corrupt_store_is_exit_2_one_line(tmp_path, capsys, command):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"garbage" * 1000)
    assert run(command, "--store", str(bad)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_dashboard_prints_output_path(tmp_path, capsys, monkeypatch):
    populated_store(tmp_path / "s.sqlite")
    monkeypatch.setenv("MOECHECK_STORE", str(tmp_path / "s.sqlite"))  # no --store: the env var
    out_file = tmp_path / "site" / "index.html"
    assert run("dashboard", "--out", str(out_file)) == 0
    assert capsys.readouterr().out == f"{out_file}\n"
    assert "Latest status" in out_file.read_text(encoding="utf-8")


def test_history_table(tmp_path, capsys):
    store, ids = populated_store(tmp_path / "s.sqlite")
    assert run("history", "--store", str(tmp_path / "s.sqlite"), "-n", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["started", "run", "status"]
    assert len(lines) == 3 and lines[1].split()[1] == ids[-1][:8] and lines[2].split()[1] == ids[-2][:8]
    assert lines[1].split()[2:9] == ["finished", "nightly", "rev4", "3", "2", "0", "1"]


def test_history_of_empty_store(tmp_path, capsys):
    from moecheck.ci.results.store import ResultStore

    ResultStore(tmp_path / "s.sqlite").close()
    assert run("history", "--store", str(tmp_path / "s.sqlite")) == 0
    assert capsys.readouterr().out.startswith("no runs in")


def test_stages_breaks_an_example_down_and_refuses_unknown_backends(tmp_path):
    """ci/stages.py: per (backend, property) rows whose stages are times inside the checked total."""
    import json as _json

    import pytest as _pytest
    from moecheck.ci import stages

    out = tmp_path / "s.json"
    stages.main(["--backend", "cpu_loop", "--property", "matches_reference", "--examples", "2", "--out", str(out)])
    (row,) = _json.loads(out.read_text())
    assert row["examples"] == 2 and row["verdicts"] == {"pass": 2}
    assert 0 < row["stages_s"]["run"] <= row["check_s"] and 0 < row["stages_s"]["reference"] <= row["check_s"]
    with _pytest.raises(SystemExit, match="unknown backend 'nosuch'"):
        stages.main(["--backend", "nosuch"])
