"""The suite's power without its pinned cases: drawn examples alone, in the ci profile, catch each
planted bug (tests/properties/planted.py), and the same code without the bug passes.

ci/power.py measures the share of drawn examples that catch each (the table in docs/findings).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from moecheck.tests.properties.planted import PLANTED

PLUGIN = "moecheck.tests.properties.planted"


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    rep = tmp_path_factory.mktemp("power") / "report"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MOECHECK_"))}
    env["MOECHECK_PINNED"] = "0"
    props = sorted({p for _, p, _ in PLANTED})
    cmd = [sys.executable, "-m", "moecheck.ci.cli", "run", "-n", "2", "--profile", "ci", "--plugin", PLUGIN,
           "--backend", "pl_*", "--report", str(rep), *[a for p in props for a in ("--property", p)]]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert (rep / "results.jsonl").is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    return {(r["backend"], r["property"]): r for r in map(json.loads, (rep / "results.jsonl").read_text().splitlines())}


def test_no_pinned_case_ran(rows):
    assert not [k for k in rows if k[1].startswith("pinned:")]


@pytest.mark.parametrize("name,prop", [(b.name, p) for b, p, _ in PLANTED])
def test_each_planted_bug_is_caught_by_drawn_examples(rows, name, prop):
    r = rows[(name, prop)]
    assert r["outcome"] == "failed", r


def test_the_same_code_without_the_bug_passes(rows):
    mine = {k: r for k, r in rows.items() if k[0] == "pl_correct"}
    assert mine and all(r["outcome"] == "passed" for r in mine.values()), mine
