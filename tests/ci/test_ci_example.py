"""ci/github/nightly-sharded.yml stays runnable: every moecheck command in it parses with this moecheck,
and its shard matrix covers 1..SHARDS."""
from __future__ import annotations

import re
import shlex

import pytest
from moecheck.ci.cli import parser
from moecheck.tests.checkout import IS_CHECKOUT, NOT_A_CHECKOUT, ROOT

yaml = pytest.importorskip("yaml")
pytestmark = pytest.mark.skipif(not IS_CHECKOUT, reason=NOT_A_CHECKOUT)
WORKFLOW = ROOT / "ci" / "github" / "nightly-sharded.yml"


def _commands(doc: dict) -> list[list[str]]:
    out = []
    for job in doc["jobs"].values():
        for step in job["steps"]:
            script = re.sub(r"\$\{\{[^}]*\}\}", "X", step.get("run", ""))  # ${{ matrix.shard }} and friends
            for line in script.splitlines():
                for part in line.split("&&"):
                    if part.strip().startswith("moecheck "):
                        out.append(shlex.split(part.replace("X/X", "1/4")))
    return out


def test_every_moecheck_command_of_the_example_parses():
    doc = yaml.safe_load(WORKFLOW.read_text())
    cmds = _commands(doc)
    assert {c[1] for c in cmds} == {"durations", "run", "merge", "history", "dashboard"}
    for argv in cmds:
        args = parser().parse_args(argv[1:])  # SystemExit (usage error) fails the test
        assert callable(args.fn)
    (run,) = [c for c in cmds if c[1] == "run"]
    assert {"--shard", "--run-id", "--durations", "--store"} <= set(run)


def test_the_matrix_covers_every_shard():
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert doc["jobs"]["shard"]["strategy"]["matrix"]["shard"] == list(range(1, int(doc["env"]["SHARDS"]) + 1))
    assert doc["jobs"]["merge"]["needs"] == "shard" and doc["jobs"]["merge"]["if"] == "always()"
