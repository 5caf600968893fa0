"""MoE-LoRA in the reference against explicit per-token math.

Three independent checks:
  - the dense float64 oracle (tests/reference/errmodel/dense.py) adds scaling * B (A x) per token and slot;
  - a token whose adapter is -1 gets exactly the no-LoRA output;
  - each slice alone (the other two zeroed) equals the no-LoRA reference on merged weights
    W' = W + scaling * B A, placed into the gate rows, the up rows or w2 by explicit row indices
    for each layout, so a delta landing in the wrong half (or the wrong interleave phase) shows.
"""
from __future__ import annotations

import pytest
import torch
from moecheck.reference.activations import ACTIVATIONS, ActivationSpec
from moecheck.reference.errmodel import budget_for, compare
from moecheck.reference.formats import FORMATS
from moecheck.reference.lora import MoELoRA
from moecheck.reference.moe import ACT_EVERYWHERE, Rounding, fused_experts
from moecheck.reference.routing import RouterSpec
from moecheck.tests.reference.errmodel.dense import (  # noqa: F401 (autouse)
    make_problem,
    one_torch_thread,
    run_oracle,
)

L, R, SCALING = 3, 4, 0.5
LAYOUTS = {
    "silu": ACTIVATIONS["silu"],
    "silu_up_gate": ACTIVATIONS["silu_up_gate"],
    "swigluoai": ACTIVATIONS["swigluoai"],  # interleaved, gate even
    "swigluoai_up_gate": ActivationSpec("swigluoai", interleaved=True, order="up_gate"),
    "relu2": ACTIVATIONS["relu2"],
}


def _add_lora(p, seed=0, zero=(), adapters=None):
    g = torch.Generator().manual_seed(100 + seed)
    E, H, I = p["w2"].shape[0], p["w2"].shape[1], p["w2"].shape[2]
    T = p["hidden_states"].shape[0]
    mk = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    parts = dict(gate_a=mk(L, E, R, H), gate_b=mk(L, E, I, R), up_a=mk(L, E, R, H), up_b=mk(L, E, I, R),
                 down_a=mk(L, E, R, I), down_b=mk(L, E, H, R))
    for name in zero:
        parts[f"{name}_b"] = torch.zeros_like(parts[f"{name}_b"])
    tl = adapters if adapters is not None else torch.randint(-1, L, (T,), generator=g)
    tl[: min(T, L + 1)] = torch.arange(-1, L)[: min(T, L + 1)]  # every adapter and "none" present
    return {**p, "lora": MoELoRA(**parts, scaling=SCALING), "token_lora": tl}


def _layout_problem(fmt, act_name, **kw):
    p = make_problem(fmt, "silu" if LAYOUTS[act_name].gated else "relu2", **kw)
    p["activation"] = LAYOUTS[act_name]
    return p


@pytest.mark.parametrize("native", [False, True], ids=["f32", "native"])
@pytest.mark.parametrize("act_name", sorted(LAYOUTS))
@pytest.mark.parametrize("fmt_name", ["bf16", "fp8_tensor", "mxfp8", "nvfp4", "int4_w_g32"])
def test_matches_dense_oracle(fmt_name, act_name, native):
    fmt = FORMATS[fmt_name]
    p = _add_lora(_layout_problem(fmt, act_name, T=16, k=2, seed=1, bias=True,
                                  x_dtype=None if native else torch.float32))
    ref = fused_experts(**p, budget=budget_for(fmt.name))
    c = compare(run_oracle(p).to(ref.out.dtype), ref.out, ref.bound)
    assert c.passed, c.summary()
    # and LoRA did something: without it the oracle is far off
    c0 = compare(run_oracle({**p, "lora": None}).to(ref.out.dtype), ref.out, ref.bound)
    assert not c0.passed


@pytest.mark.parametrize("fmt_name", ["bf16", "fp8_tensor", "nvfp4"])
def test_lora_on_weighted_input_and_declared_rounding(fmt_name):
    """Llama4: LoRA reads the router-weighted input. ACT_EVERYWHERE declares a bf16 shrink output."""
    fmt = FORMATS[fmt_name]
    p = make_problem(fmt, "silu", T=12, k=1, seed=2, router=RouterSpec("llama4", 1, apply_weights_to_input=True))
    p = _add_lora({**p, "apply_router_weight_on_input": True})
    for rnd in (Rounding(), ACT_EVERYWHERE):
        ref = fused_experts(**p, rounding=rnd, budget=budget_for(fmt.name))
        c = compare(run_oracle(p).to(ref.out.dtype), ref.out, ref.bound)
        assert c.passed, f"{rnd}: {c.summary()}"


@pytest.mark.parametrize("act_name", sorted(LAYOUTS))
@pytest.mark.parametrize("fmt_name", ["bf16", "fp16", "fp8_token_channel", "mxfp8", "mxfp4_bf16", "int4_zp_w_g32"])
def test_tokens_without_adapter_are_untouched(fmt_name, act_name):
    """Per-row formats: rows of adapter -1 are bit-identical to the no-LoRA run (per-tensor
    activation scales legitimately couple tokens, so they are not in this list)."""
    fmt = FORMATS[fmt_name]
    p = _add_lora(_layout_problem(fmt, act_name, T=16, k=2, seed=3, bias=True))
    with_lora = fused_experts(**p).out
    without = fused_experts(**{**p, "lora": None, "token_lora": None}).out
    none = p["token_lora"] < 0
    assert int(none.sum()) >= 1 and int((~none).sum()) >= 1
    assert torch.equal(with_lora[none], without[none])
    assert not torch.equal(with_lora[~none], without[~none])


def test_all_tokens_without_adapter_equal_no_lora_exactly():
    fmt = FORMATS["fp8_tensor"]  # per-tensor: exact only when no token has an adapter
    p = _add_lora(make_problem(fmt, "silu", T=10, seed=4))
    p["token_lora"] = torch.full_like(p["token_lora"], -1)
    assert torch.equal(fused_experts(**p).out, fused_experts(**{**p, "lora": None, "token_lora": None}).out)


def _rows(act: ActivationSpec, I: int, which: str) -> torch.Tensor:
    """Row indices of the gate or up half of w13 for a layout, written out by hand."""
    first = (which == "gate") == (act.order == "gate_up")
    if act.interleaved:
        return torch.arange(I) * 2 + (0 if first else 1)
    return torch.arange(I) + (0 if first else I)


def _merged(p, slice_, adapter, wrong_half=False):
    """Weights with adapter `adapter`'s `slice_` delta folded in (fp32, unquantized)."""
    lo, act = p["lora"], p["activation"]
    w13, w2 = p["w13"].float().clone(), p["w2"].float().clone()
    I = w2.shape[2]
    for e in range(w13.shape[0]):
        if slice_ == "down":
            w2[e] += lo.scaling * lo.down_b[adapter, e] @ lo.down_a[adapter, e]
            continue
        d = lo.scaling * getattr(lo, f"{slice_}_b")[adapter, e] @ getattr(lo, f"{slice_}_a")[adapter, e]
        if not act.gated:
            w13[e] += d
        else:
            half = slice_ if not wrong_half else {"gate": "up", "up": "gate"}[slice_]
            w13[e, _rows(act, I, half)] += d
    return w13, w2


def _slice_cases():
    for act_name, act in LAYOUTS.items():
        for s in ("gate", "up", "down") if act.gated else ("gate", "down"):
            yield act_name, s


@pytest.mark.parametrize("act_name, slice_", list(_slice_cases()))
def test_each_slice_alone_equals_merged_weights(act_name, slice_):
    fmt = FORMATS["bf16"]
    p = _layout_problem(fmt, act_name, T=16, k=2, seed=5, x_dtype=torch.float32)
    p = {**p, "w13": p["w13"].float(), "w2": p["w2"].float()}
    p = _add_lora(p, seed=5, zero=[s for s in ("gate", "up", "down") if s != slice_])
    out = fused_experts(**p).out
    budget = budget_for(fmt.name)
    for a in range(L):
        rows = p["token_lora"] == a
        w13, w2 = _merged(p, slice_, a)
        merged = fused_experts(**{**p, "w13": w13, "w2": w2, "lora": None, "token_lora": None}, budget=budget)
        c = compare(out[rows], merged.out[rows], merged.bound[rows])
        assert c.passed, f"adapter {a}: {c.summary()}"
        if slice_ != "down" and LAYOUTS[act_name].gated:  # the same delta in the other half is caught
            w13b, _ = _merged(p, slice_, a, wrong_half=True)
            bad = fused_experts(**{**p, "w13": w13b, "lora": None, "token_lora": None}).out
            assert not compare(bad[rows], merged.out[rows], merged.bound[rows]).passed


def test_ungated_ignores_the_up_slice():
    """relu2 has no up half: an up-only LoRA changes nothing, bit for bit."""
    p = _add_lora(make_problem(FORMATS["bf16"], "relu2", T=8, seed=6), zero=("gate", "down"))
    assert torch.equal(fused_experts(**p).out, fused_experts(**{**p, "lora": None, "token_lora": None}).out)
