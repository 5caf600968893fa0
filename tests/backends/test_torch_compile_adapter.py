"""torch_compile's dense adapter, run eagerly on the CPU (its compiled form is CUDA-only): the rows a
per-tensor activation scale sees are the routed ones, whatever their weights."""
from __future__ import annotations

import pytest
from moecheck.backends import registry
from moecheck.backends import torch_compile as tc
from moecheck.properties.case import Case, build
from moecheck.properties.checks import _compare, _reference

# found on the H200 (docs/findings/h200-2026-12-03/s24-run1): "one_expert" routing gives the other slots
# weights of 1e-43, which CUDA's atomicAdd flushes to 0, and the adapter then dropped those rows from
# the intermediate's per-tensor FP8 scale; a weight of exactly 0 is the same case on any device
CASES = [Case(backend="torch_compile", format=f, tokens=3, hidden=4, inter=2, experts=5, top_k=3, routing="one_expert",
              renormalize=False, activation="gelu", seed=s) for f in ("fp8_tensor", "fp8_e5m2_tensor") for s in range(3)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.format}-{c.seed}")
def test_a_routed_slot_of_weight_zero_still_counts_in_the_scale(monkeypatch, case):
    b = registry.load_all()["torch_compile"]
    calls = []
    monkeypatch.setattr(tc, "_compiled", lambda *a: calls.append(1) or tc.dense_moe(*a))  # eager, spied
    p = build(case)
    w = p.topk_weights.clone()
    w[:, 1:] = 0.0  # what the GPU saw after the flush
    p = p.with_(topk_weights=w)
    c = _compare(b, p, b.run(b.prepare(p), p), _reference(b, p))
    assert calls and c.passed, c.summary()
