"""Every command with bad input, as a user types it: the exit code of ci/cli/exitcodes.py, one line on
stderr naming the problem, no traceback. Also: every option has a help text, README's exit-code table
is the code's, and `moecheck backends` lists the available first in aligned columns.

Each row is one `python -m moecheck.ci.cli` process that stops at the input check, before any suite
runs (a few seconds: torch's import), so the walk stays cheap on a 2-core CI machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
from moecheck.ci.cli import exitcodes, parser
from moecheck.tests.checkout import IS_CHECKOUT, NOT_A_CHECKOUT, ROOT

PLUGINS = "moecheck.tests.ci.plugins"
RAISES = "moecheck.tests.ci.plugin_raises"
USAGE, ABORT, SKIP = exitcodes.USAGE.value, exitcodes.ABORT.value, exitcodes.CANNOT_RUN.value


def moecheck(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MOECHECK_MAX_EXAMPLES="1", MOECHECK_PROFILE="dev")
    for var in ("PYTEST_XDIST_WORKER", "MOECHECK_PLUGINS", "MOECHECK_TRACEBACK"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "moecheck.ci.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=300)


def one_line(res: subprocess.CompletedProcess) -> str:
    """The one stderr line of a usage error; nothing else on stderr, no traceback anywhere."""
    assert "Traceback" not in res.stdout + res.stderr, res.stdout[-2000:] + res.stderr[-2000:]
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "bool.json").write_text('{"renormalize": "no"}\n')
    (d / "cut.json").write_text('{"tokens": ')
    (d / "ok.json").write_text("{}\n")
    return d


RUN = "run", "-n", "0"
ROWS = [  # (argv; {files} is the fixture's folder), exit code, what the one stderr line says
    ([*RUN, "--backend", "cpu_lop"], USAGE, "moecheck run: unknown backend 'cpu_lop' (did you mean cpu_loop?); known: cpu_loop,"),
    ([*RUN, "--format", "bf61"], USAGE, "moecheck run: unknown format 'bf61' (did you mean bf16?); known: bf16,"),
    ([*RUN, "--property", "matches_refrence"], USAGE, "unknown property 'matches_refrence' (did you mean matches_reference"),
    ([*RUN, "--backend", "nosuch_*"], USAGE, "moecheck run: backend pattern 'nosuch_*' matches no known backend; known: "),
    ([*RUN, "--plugin", "nosuchmod", "--backend", "cpu_loop"], USAGE,
     "moecheck run: cannot load plugin 'nosuchmod': ModuleNotFoundError: No module named 'nosuchmod'"),
    ([*RUN, "--plugin", RAISES, "--backend", "cpu_loop"], USAGE,
     f"moecheck run: cannot load plugin '{RAISES}': RuntimeError: this plugin is broken on purpose"),
    ([*RUN, "--plugin", "json"], USAGE, "moecheck run: plugin 'json' imports but registers no backend"),
    ([*RUN, "--require", "--plugin", PLUGINS], USAGE,
     "moecheck run: --require: not available here: never_available_backend_with_a_long_name: test plugin: never available"),
    ([*RUN, "--require", "--plugin", PLUGINS, "--backend", "never_*"], USAGE,
     "--require: not available here: never_*: no match available: never_available_backend_with_a_long_name (test plugin"),
    ([*RUN, "--require"], USAGE, "moecheck run: --require names nothing to require"),
    ([*RUN, "--report", "/proc/nope"], USAGE, "moecheck run: "),
    ([*RUN, "--bogus"], USAGE, "error: unrecognized arguments: --bogus"),
    (["repro", "--case", '{"tokens": true}'], USAGE, "moecheck repro: case field tokens must be an integer, got true"),
    (["repro", "--case", '{"seed": "abc"}'], USAGE, 'moecheck repro: case field seed must be an integer, got "abc"'),
    (["repro", "--case", '{"lora_adapters": -1}'], USAGE, "case field lora_adapters must be an integer >= 0, got -1"),
    (["repro", "--case", '{"property": "nosuch"}'], USAGE, 'case field property must be one of "matches_reference"'),
    (["repro", "--case", '{"renormalize": "no"}'], USAGE, 'case field renormalize must be true or false, got "no"'),
    (["repro", "--case", '{"top_k": 9}'], USAGE, "case field top_k must be an integer in [1, experts=4], got 9"),
    (["repro", "--case", '{"tokenz": 1}'], USAGE, "moecheck repro: unknown case field 'tokenz' (did you mean tokens?)"),
    (["repro", "--case", '{"backend": "cpu_lop"}'], USAGE, "moecheck repro: unknown backend 'cpu_lop' (did you mean cpu_loop?)"),
    (["repro", "{files}/bool.json"], USAGE, "moecheck repro: case file {files}/bool.json: case field renormalize must be"),
    (["repro", "{files}/cut.json"], USAGE, "moecheck repro: case file {files}/cut.json: case is not valid JSON"),
    (["repro", "{files}/missing.json"], USAGE, "moecheck repro: no case file at {files}/missing.json"),
    (["repro", "--plugin", "nosuchmod", "--case", "{}"], USAGE, "moecheck repro: cannot load plugin 'nosuchmod': ModuleNotFoundError"),
    (["repro", "--plugin", RAISES, "--case", "{}"], USAGE, f"moecheck repro: cannot load plugin '{RAISES}': RuntimeError"),
    (["bisect-run", "{files}/bool.json"], ABORT, "case field renormalize must be true or false"),
    (["bisect-run", "{files}/ok.json", "--plugin", "nosuchmod"], ABORT, "cannot load plugin 'nosuchmod': ModuleNotFoundError"),
    (["bisect-run", "{files}/ok.json", "--plugin", RAISES], SKIP, f"cannot load plugin '{RAISES}': RuntimeError"),
    (["backends", "--plugin", "nosuchmod"], USAGE, "moecheck backends: cannot load plugin 'nosuchmod': ModuleNotFoundError"),
    (["audit", "--backend", "cpu_lop"], USAGE, "moecheck audit: unknown backend 'cpu_lop' (did you mean cpu_loop?)"),
    (["report", "{files}/nonexistent"], USAGE, "moecheck report: no results at {files}/nonexistent/results.jsonl"),
    (["dashboard", "--store", "{files}/none.sqlite"], USAGE, "moecheck dashboard: error: no results store at"),
    (["history", "--store", "{files}/none.sqlite"], USAGE, "moecheck history: error: no results store at"),
    (["durations", "--store", "{files}/none.sqlite"], USAGE, "moecheck durations: error: "),
    (["merge", "{files}/out.sqlite", "{files}/none.sqlite"], USAGE, "moecheck merge: error: "),
    (["bench", "--backend", "cpu_lop"], USAGE, "moecheck bench: unknown backend 'cpu_lop' (did you mean cpu_loop?); known: cpu_loop,"),
    (["bench", "--backend", "nosuch_*"], USAGE, "moecheck bench: backend pattern 'nosuch_*' matches no known backend; known: "),
    (["e2e", "--config", "no_such_config"], USAGE, "moecheck e2e: "),
]


@pytest.mark.parametrize("argv, code, says", ROWS, ids=[" ".join(a) for a, _, _ in ROWS])
def test_bad_input_is_one_line_and_its_exit_code(files, argv, code, says):
    res = moecheck(*(a.replace("{files}", str(files)) for a in argv))
    line = one_line(res)
    assert res.returncode == code, (res.returncode, line)
    assert says.replace("{files}", str(files)) in line, line


def test_report_skips_and_counts_cut_lines(files, tmp_path):
    row = {"backend": "cpu_loop", "format": "bf16", "property": "kernel_ran", "outcome": "passed"}
    lines = [json.dumps(row), '{"backend": 5, "format": "bf16", "property": "p", "outcome": "passed"}', "[]", '{"backend": "cpu']
    (tmp_path / "results.jsonl").write_text("\n".join(lines))
    (tmp_path / "run.json").write_text('{"wall_s": ')  # cut too
    (tmp_path / "health.jsonl").write_text('{"ok": true}\n{"ok": fa')
    res = moecheck("report", str(tmp_path))
    assert res.returncode == exitcodes.PASS.value, res.stderr
    assert one_line(res).startswith(f"moecheck report: 3 unreadable line(s) in {tmp_path / 'results.jsonl'} skipped")
    assert "cpu_loop  bf16" in res.stdout and "1 of 1 probes ok" in res.stdout


def test_report_with_nothing_readable_is_usage_error(tmp_path):
    (tmp_path / "results.jsonl").write_text("garbage\n{")
    res = moecheck("report", str(tmp_path))
    assert res.returncode == USAGE and "no readable result in" in one_line(res)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_option_of_every_command_has_help():
    subs = _subparsers()
    assert {"run", "repro", "audit", "report", "backends", "e2e", "dashboard", "history", "bisect-run", "merge",
            "durations"} <= set(subs)
    missing = [f"{name} {a.option_strings or a.dest}" for name, p in subs.items() for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not missing


@pytest.mark.skipif(not IS_CHECKOUT, reason=NOT_A_CHECKOUT)
def test_readme_exit_codes_are_the_code_table():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert "\n".join(table) == exitcodes.markdown()


def test_backends_lists_available_first_in_aligned_columns(capsys):
    from moecheck.ci.cli import main
    from moecheck.tests.ci.plugins import LONG

    assert main(["backends", "--plugin", PLUGINS]) == 0
    lines = capsys.readouterr().out.splitlines()
    status = [line.split()[1] for line in lines[1:]]
    n_ok = status.count("available")
    assert status == ["available"] * n_ok + ["unavailable"] * (len(status) - n_ok) and n_ok >= 1
    for group in (lines[1:1 + n_ok], lines[1 + n_ok:]):
        names = [line.split()[0] for line in group]
        assert names == sorted(names)
    assert any(line.startswith(LONG + " ") for line in lines)
    for col in ("status", "where / why", "formats"):  # every column starts where its header does
        at = lines[0].index(col)
        assert all(line[at - 1] == " " and line[at] != " " for line in lines[1:]), col
    assert main(["backends", "--plugin", PLUGINS, "--available"]) == 0
    shown = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in shown] == [line.split()[0] for line in lines[1:1 + n_ok]]
