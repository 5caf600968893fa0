"""Routing backends: the planted routing bugs are caught by drawn examples, the correct router passes,
and the comparison accepts any side of a tie while refusing what no tie explains."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from moecheck.reference.errmodel import budget_for
from moecheck.reference.errmodel.routing import compare_routing
from moecheck.reference.routing import ROUTERS, RouterSpec, route, weights_for

PLUGIN = "moecheck.tests.properties.toy_routers"
BUGS = ("no_renorm", "zero_mask", "dropped_scaling")


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    rep = tmp_path_factory.mktemp("routing") / "report"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MOECHECK_"))}
    env["MOECHECK_PINNED"] = "0"  # drawn examples alone
    cmd = [sys.executable, "-m", "moecheck.ci.cli", "run", "-n", "2", "--profile", "ci", "--plugin", PLUGIN,
           "--backend", "toy_router_*", "--backend", "cpu_router", "--report", str(rep)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert (rep / "results.jsonl").is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    return {r["backend"]: r for r in map(json.loads, (rep / "results.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("name", ["toy_router_ok", "cpu_router"])
def test_a_correct_router_passes(rows, name):
    assert rows[name]["outcome"] == "passed" and rows[name]["property"] == "routes_like_reference", rows[name]


@pytest.mark.parametrize("bug", BUGS)
def test_each_routing_bug_is_caught_and_its_repro_exits_1(rows, bug):
    r = rows[f"toy_router_{bug}"]
    assert r["outcome"] == "failed", r
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    assert subprocess.run(["bash", "-c", r["repro"]], capture_output=True, env=env, timeout=120).returncode == 1


def _budget():
    return budget_for("bf16")


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_the_reference_router_against_itself_passes_and_weights_for_agrees(name):
    spec = ROUTERS[name]
    e = 64 if name == "deepseek_v3" else 16
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(40, e, generator=g) * 2
    bias = torch.randn(e, generator=g) * 0.01 if spec.kind == "deepseek_v3" else None
    w, ids = route(logits, spec, bias)
    assert torch.equal(weights_for(logits, spec, ids, bias), w)
    assert compare_routing(w, ids, logits, spec, bias, _budget()).passed


def test_either_side_of_an_exact_tie_is_right_but_a_worse_expert_is_not():
    spec = RouterSpec("softmax_topk", 1)
    logits = torch.tensor([[1.0, 1.0, 0.0, -1.0]])
    w, ids = route(logits, spec)
    other = torch.tensor([[1 - int(ids[0, 0])]])
    c = compare_routing(weights_for(logits, spec, other), other, logits, spec, None, _budget())
    assert c.passed and c.ambiguous == 1
    worse = torch.tensor([[2]])
    assert not compare_routing(weights_for(logits, spec, worse), worse, logits, spec, None, _budget()).passed


def test_duplicate_or_out_of_range_ids_are_invalid():
    spec = RouterSpec("softmax_topk", 2)
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    w, ids = route(logits, spec)
    dup = ids.clone()
    dup[0, 1] = dup[0, 0]
    assert compare_routing(w, dup, logits, spec, None, _budget()).invalid == 1
    far = ids.clone()
    far[1, 0] = 8
    assert compare_routing(w, far, logits, spec, None, _budget()).invalid == 1
