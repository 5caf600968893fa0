"""The reference MoE (sort-by-expert, grouped fp32 GEMMs) against a dense float64 per-token oracle.

The oracle (tests/reference/errmodel/dense.py) shares only the trusted pieces with the reference: the
quantizer, QTensor.dequantize and activations.apply. Everything else — dispatch, expert_map,
biases, gate/up layouts, Llama4 input weighting, the per-tensor re-quantization of all routed rows,
the weighted top-k sum — is re-derived with loops. The two are compared through the error model:
the reference runs with a budget and the oracle is judged like any other implementation.

Most scenarios feed fp32 hidden states: the output is then not rounded to bf16 and the bound is a
few fp32 ulps of the GEMMs, so a wrong term shows; the "native" scenarios use the format's own
activation dtype (bf16/fp16) as a kernel would see it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from moecheck.reference.errmodel import budget_for, compare
from moecheck.reference.formats import FORMATS
from moecheck.reference.moe import ACT_EVERYWHERE, Rounding, fused_experts
from moecheck.reference.routing import RouterSpec
from moecheck.reference.spec import ScaleRule
from moecheck.tests.reference.errmodel.dense import (  # noqa: F401 (autouse)
    make_problem,
    one_torch_thread,
    run_oracle,
)

ORACLE = "oracle_f64"  # judged by the baseline budget: the table has no entry that loosens it


@dataclass(frozen=True)
class Scenario:
    name: str
    act: str = "silu"
    native: bool = False  # hidden states in fmt.act_dtype (else fp32)
    opts: dict = field(default_factory=dict)  # make_problem keyword arguments
    rounding: Rounding = Rounding()


SCENARIOS = [
    Scenario("silu_native", native=True),
    Scenario("silu_f32"),
    Scenario("swigluoai_interleaved_bias", "swigluoai", opts=dict(bias=True)),
    Scenario("relu2_ungated_bias", "relu2", opts=dict(bias=True)),
    Scenario("silu_up_gate", "silu_up_gate"),
    Scenario("gelu_native_bf16_rounding", "gelu", native=True, rounding=ACT_EVERYWHERE),
    Scenario("expert_map", opts=dict(remote=3, k=3, bias=True)),
    Scenario("llama4_on_input_native", native=True,
             opts=dict(k=1, router=RouterSpec("llama4", 1, apply_weights_to_input=True))),
    Scenario("llama4_on_input_f32", opts=dict(k=1, router=RouterSpec("llama4", 1, apply_weights_to_input=True))),
    Scenario("empty_experts", opts=dict(E=6, k=2, dead_experts=(0, 2, 5))),
    Scenario("topk_E", opts=dict(E=3, k=3, T=7)),
    Scenario("T1", opts=dict(T=1, k=2)),
    Scenario("T0", opts=dict(T=0)),
]


def _problem(fmt, sc: Scenario, seed=0):
    p = make_problem(fmt, sc.act, seed=seed, x_dtype=None if sc.native else torch.float32, **sc.opts)
    router = sc.opts.get("router")
    if router is not None and router.apply_weights_to_input:
        p["apply_router_weight_on_input"] = True
    return p


def _check(p, rounding=Rounding(), **oracle_opts):
    fmt = p["fmt"]
    ref = fused_experts(**p, rounding=rounding, budget=budget_for(fmt.name))
    got = run_oracle(p, **oracle_opts).to(ref.out.dtype)
    return compare(got, ref.out, ref.bound), ref


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
def test_reference_matches_dense_oracle(fmt_name, sc):
    fmt = FORMATS[fmt_name]
    p = _problem(fmt, sc)
    c, ref = _check(p, sc.rounding)
    assert c.passed, f"{fmt_name}/{sc.name}: {c.summary()}"
    assert ref.out.shape == p["hidden_states"].shape and ref.out.dtype == p["hidden_states"].dtype
    assert bool(torch.isfinite(ref.bound).all())


def test_scenarios_are_what_they_say():
    """The routing of each scenario really has the structure it is named after."""
    fmt = FORMATS["bf16"]
    by = {s.name: _problem(fmt, s) for s in SCENARIOS}
    used = lambda p: set(p["topk_ids"].flatten().tolist())  # noqa: E731
    assert used(by["empty_experts"]).isdisjoint({0, 2, 5}) and len(used(by["empty_experts"])) <= 3
    assert by["topk_E"]["topk_ids"].shape[1] == by["topk_E"]["w13"].shape[0]
    emap = by["expert_map"]["expert_map"]
    remote = set(torch.nonzero(emap < 0).flatten().tolist())
    assert len(remote) == 3 and remote & used(by["expert_map"])  # some routed slots are remote
    assert by["T0"]["hidden_states"].shape[0] == 0 and by["T1"]["hidden_states"].shape[0] == 1
    assert by["llama4_on_input_f32"]["apply_router_weight_on_input"]


@pytest.mark.parametrize("fmt_name", ["bf16", "fp8_tensor", "mxfp4_mxfp8", "nvfp4", "int4_zp_w_g32"])
def test_remote_experts_contribute_nothing(fmt_name):
    """Tokens whose every slot is remote get exactly zero (biases included); the rest exactly equal
    the result of dropping the remote slots' weights to zero."""
    fmt = FORMATS[fmt_name]
    p = make_problem(fmt, "silu", T=10, E=2, k=2, remote=4, bias=True, seed=3)
    emap = p["expert_map"]
    local_ids = torch.nonzero(emap >= 0).flatten()
    ids = p["topk_ids"].clone()
    ids[0] = torch.nonzero(emap < 0).flatten()[:2]  # token 0: both slots remote
    ids[1] = local_ids  # token 1: both local
    p["topk_ids"] = ids
    out = fused_experts(**p).out
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert bool((out[1] != 0).any())


@pytest.mark.parametrize("fmt_name", ["fp8_tensor", "fp8_tensor_static", "int8_w8a8", "nvfp4"])
def test_whole_tensor_activation_scales_see_all_rows(fmt_name):
    """The oracle quantizes the stacked intermediate of all routed rows; quantizing each row on
    its own (a per-token kernel) must not pass for per-tensor formats — so the test can tell."""
    fmt = FORMATS[fmt_name]
    p = make_problem(fmt, "silu", T=12, seed=1, x_dtype=torch.float32)
    ref = fused_experts(**p, budget=budget_for(fmt.name))
    one = [run_oracle({**p, "hidden_states": p["hidden_states"][t:t + 1], "topk_weights": p["topk_weights"][t:t + 1],
                       "topk_ids": p["topk_ids"][t:t + 1]}) for t in range(12)]
    per_token = torch.cat(one).float()
    c = compare(per_token, ref.out, ref.bound)
    whole_tensor = fmt.act.block == (None, None) or fmt.act.rule == ScaleRule.NVFP4  # NVFP4: global scale
    if whole_tensor and not fmt.act.static:
        assert not c.passed, c.summary()
    else:  # per-row scales and static scales do not depend on the other tokens
        assert c.passed, c.summary()


def _drop_bias(p):
    return {**p, "w13_bias": torch.zeros_like(p["w13_bias"])}, {}


def _swap_order(p):
    from moecheck.reference.activations import ACTIVATIONS

    return {**p, "activation": ACTIVATIONS["silu_up_gate"]}, {}


def _ignore_map(p):
    q = dict(p)
    q["expert_map"] = p["expert_map"].clamp(min=0)  # remote experts computed by local expert 0
    return q, {}


def _weights_half_ulp(p):
    return {**p, "topk_weights": p["topk_weights"] * (1 + 2.0**-10)}, {}


def _slot_weight_swapped(p):
    return {**p, "topk_weights": p["topk_weights"].flip(1)}, {}


PLANTS = {"bias13_dropped": _drop_bias, "gate_up_swapped": _swap_order, "expert_map_ignored": _ignore_map,
          "router_weight_rel_2^-10": _weights_half_ulp, "slot_weights_swapped": _slot_weight_swapped}


@pytest.mark.parametrize("plant", sorted(PLANTS))
@pytest.mark.parametrize("fmt_name", ["bf16", "fp8_block", "mxfp4_bf16", "nvfp4", "int4_zp_w_g64"])
def test_oracle_comparison_catches_planted_bugs(fmt_name, plant):
    fmt = FORMATS[fmt_name]
    p = make_problem(fmt, "silu", T=16, k=3, remote=2, bias=True, seed=5, x_dtype=torch.float32)
    ref = fused_experts(**p, budget=budget_for(fmt.name))
    bad, opts = PLANTS[plant](p)
    c = compare(run_oracle(bad, **opts).float(), ref.out, ref.bound)
    assert not c.passed, f"{fmt_name}/{plant} not detected: {c.summary()}"
