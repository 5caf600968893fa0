"""Bad input to fused_experts: a MoecheckError whose one-line message names the broken constraint.

Each case starts from a valid call (checked to run) and breaks one thing; the expected message
fragment is the constraint, so a check that fires for the wrong reason fails the test.
"""
from __future__ import annotations

import pytest
import torch
from moecheck.reference.activations import ACTIVATIONS
from moecheck.reference.errors import MoecheckError
from moecheck.reference.formats import FORMATS
from moecheck.reference.lora import MoELoRA
from moecheck.reference.moe import fused_experts
from moecheck.reference.quantize import quantize
from moecheck.tests.reference.errmodel.dense import one_torch_thread  # noqa: F401 (autouse)

T, H, I, E, K = 4, 64, 32, 4, 2
BF16, SILU = FORMATS["bf16"], ACTIVATIONS["silu"]


def _valid(fmt=BF16, h=H, i=I, act=SILU, **over):
    g = torch.Generator().manual_seed(0)
    rows = 2 * i if act.gated else i
    w13, w2 = torch.randn(E, rows, h, generator=g), torch.randn(E, h, i, generator=g)
    q = (lambda w: quantize(w, fmt.weight)) if fmt.weight is not None else (lambda w: w.bfloat16())
    kw = dict(hidden_states=torch.randn(T, h, generator=g).bfloat16(), w13=q(w13), w2=q(w2),
              topk_weights=torch.rand(T, K, generator=g), topk_ids=torch.randint(0, E, (T, K), generator=g),
              fmt=fmt, activation=act)
    kw.update(over)
    return kw


def _lora(L=2, e=E, h=H, i=I, r=4):
    z = torch.zeros
    return MoELoRA(z(L, e, r, h), z(L, e, i, r), z(L, e, r, h), z(L, e, i, r), z(L, e, r, i), z(L, e, h, r))


def _qt(fmt_name, *shape):
    return quantize(torch.randn(*shape), FORMATS[fmt_name].weight)


BAD = {
    # dtypes
    "x_int": (dict(hidden_states=torch.ones(T, H, dtype=torch.int32)), "hidden_states must be bf16/fp16/fp32"),
    "x_float64": (dict(hidden_states=torch.ones(T, H, dtype=torch.float64)), "hidden_states must be bf16/fp16/fp32"),
    "w13_int": (dict(w13=torch.ones(E, 2 * I, H, dtype=torch.int8)), "plain bf16/fp16/fp32 w13"),
    "w2_fp8_plain": (dict(w2=torch.ones(E, H, I).to(torch.float8_e4m3fn)), "plain bf16/fp16/fp32 w2"),
    "qtensor_for_bf16": (dict(w13=_qt("fp8_tensor", E, 2 * I, H)), "plain bf16/fp16/fp32 w13"),
    "plain_for_mxfp8": (dict(fmt=FORMATS["mxfp8"]), "takes w13 as a QTensor"),
    "qtensor_wrong_spec": (dict(fmt=FORMATS["fp8_tensor"], w13=_qt("mxfp8", E, 2 * I, H), w2=_qt("fp8_tensor", E, H, I)),
                           "takes w13 as a QTensor quantized with its weight spec"),
    "topk_ids_float": (dict(topk_ids=torch.zeros(T, K)), "topk_ids must be an integer tensor"),
    "topk_ids_bool": (dict(topk_ids=torch.zeros(T, K, dtype=torch.bool)), "topk_ids must be an integer tensor"),
    "topk_weights_int": (dict(topk_weights=torch.ones(T, K, dtype=torch.int64)), "topk_weights must be a float tensor"),
    # shapes
    "x_1d": (dict(hidden_states=torch.ones(H).bfloat16()), "hidden_states must be [T, H]"),
    "w13_2d": (dict(w13=torch.ones(2 * I, H).bfloat16()), "w13 must be [E, 2I, H]"),
    "w13_hidden_mismatch": (dict(w13=torch.ones(E, 2 * I, H + 2).bfloat16()), "w13 hidden size 66 != hidden_states hidden size 64"),
    "w2_inter_mismatch": (dict(w2=torch.ones(E, H, I + 1).bfloat16()), "w2 must be [E=4, H=64, I=32]"),
    "w2_expert_mismatch": (dict(w2=torch.ones(E + 1, H, I).bfloat16()), "w2 must be [E=4, H=64, I=32]"),
    "gated_odd_rows": (dict(w13=torch.ones(E, 2 * I + 1, H).bfloat16()), "gated activation needs an even w13 row count"),
    "topk_shape_mismatch": (dict(topk_weights=torch.ones(T, K + 1)), "topk_ids/topk_weights must both be [T=4, k]"),
    "topk_wrong_T": (dict(topk_ids=torch.zeros(T + 1, K, dtype=torch.long), topk_weights=torch.ones(T + 1, K)),
                     "topk_ids/topk_weights must both be [T=4, k]"),
    "w13_bias_shape": (dict(w13_bias=torch.zeros(E, I)), "w13_bias must be [E=4, 64]"),
    "w2_bias_shape": (dict(w2_bias=torch.zeros(E, I)), "w2_bias must be [E=4, H=64]"),
    # zero sizes
    "hidden_zero": (dict(hidden_states=torch.ones(T, 0).bfloat16(), w13=torch.ones(E, 2 * I, 0).bfloat16(),
                         w2=torch.ones(E, 0, I).bfloat16()), "hidden size must be >= 1, got 0"),
    "inter_zero": (dict(w13=torch.ones(E, 0, H).bfloat16(), w2=torch.ones(E, H, 0).bfloat16()), "intermediate size must be >= 1, got 0"),
    "experts_zero": (dict(w13=torch.ones(0, 2 * I, H).bfloat16(), w2=torch.ones(0, H, I).bfloat16()), "at least one expert, got E=0"),
    "top_k_zero": (dict(topk_ids=torch.zeros(T, 0, dtype=torch.long), topk_weights=torch.ones(T, 0)), "top_k must be >= 1, got 0"),
    # routing
    "topk_ids_too_big": (dict(topk_ids=torch.full((T, K), E)), "topk_ids must lie in [0, 4), got [4, 4]"),
    "topk_ids_negative": (dict(topk_ids=torch.full((T, K), -1)), "topk_ids must lie in [0, 4), got [-1, -1]"),
    "topk_ids_past_expert_map": (dict(expert_map=torch.tensor([0, 1, 2, 3, -1, -1]), topk_ids=torch.full((T, K), 6)),
                                 "topk_ids must lie in [0, 6), got [6, 6]"),
    "expert_map_past_local": (dict(expert_map=torch.tensor([0, 1, 2, 4])), "expert_map points past the 4 local experts"),
    "expert_map_below_minus_one": (dict(expert_map=torch.tensor([0, 1, -2, 3])), "expert_map entries must be -1"),
    "expert_map_2d": (dict(expert_map=torch.zeros(2, 2, dtype=torch.long)), "expert_map must be a non-empty 1-D integer tensor"),
    "expert_map_float": (dict(expert_map=torch.zeros(4)), "expert_map must be a non-empty 1-D integer tensor"),
    "on_input_top_k_2": (dict(apply_router_weight_on_input=True), "apply_router_weight_on_input needs top_k == 1"),
    # LoRA
    "token_lora_out_of_range": (dict(lora=_lora(), token_lora=torch.tensor([0, 1, 2, -1])), "token_lora must lie in [-1, 2), got [-1, 2]"),
    "token_lora_shape": (dict(lora=_lora(), token_lora=torch.zeros(T + 1, dtype=torch.long)), "token_lora must be an integer [T=4]"),
    "lora_wrong_experts": (dict(lora=_lora(e=E + 1), token_lora=torch.zeros(T, dtype=torch.long)), "LoRA adapters are for E=5"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_names_the_constraint(name):
    over, fragment = BAD[name]
    kw = _valid()
    kw.update(over)  # after building: "fmt" here swaps the format under already-made weights
    with pytest.raises(MoecheckError) as ei:
        fused_experts(**kw)
    msg = str(ei.value)
    assert fragment in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("fmt_name, h, i, fragment", [
    ("mxfp8", 48, 32, "format mxfp8 needs hidden size divisible by 32, got 48"),
    ("mxfp8", 64, 48, "format mxfp8 needs intermediate size divisible by 32, got 48"),
    ("nvfp4", 40, 32, "format nvfp4 needs hidden size divisible by 16, got 40"),
    ("int4_w_g128", 128, 64, "format int4_w_g128 needs intermediate size divisible by 128, got 64"),
])
def test_k_not_divisible_by_the_block(fmt_name, h, i, fragment):
    """Plain (unquantizable) weights of the right shapes: the size rule fires, not the QTensor rule."""
    fmt = FORMATS[fmt_name]
    g = torch.Generator().manual_seed(1)
    with pytest.raises(MoecheckError, match=fragment):
        fused_experts(torch.randn(T, h, generator=g).bfloat16(), torch.randn(E, 2 * i, h).bfloat16(),
                      torch.randn(E, h, i).bfloat16(), torch.rand(T, K), torch.zeros(T, K, dtype=torch.long),
                      fmt=_unquantized(fmt), activation=SILU)


def _unquantized(fmt):
    """The format's size rule without its weight spec, so plain weights reach check_sizes."""
    from dataclasses import replace

    return replace(fmt, weight=None, act=None)


@pytest.mark.parametrize("fmt_name, over, fragment", [
    ("fp8_tensor_static", {}, "has static activation scales: pass a1_scale and a2_scale"),
    ("fp8_tensor_static", {"a1_scale": torch.tensor(0.01)}, "has static activation scales: pass a1_scale and a2_scale"),
    ("fp8_tensor", {"a1_scale": torch.tensor(0.01), "a2_scale": torch.tensor(0.01)}, "computes its activation scales"),
])
def test_static_scales(fmt_name, over, fragment):
    with pytest.raises(MoecheckError, match=fragment):
        fused_experts(**_valid(FORMATS[fmt_name], **over))


@pytest.mark.parametrize("fmt_name", ["bf16", "fp8_tensor", "mxfp8", "nvfp4", "int4_zp_w_g32"])
def test_the_valid_baseline_runs(fmt_name):
    """Every bad case above is this call with one thing broken (static formats: plus their scales)."""
    fmt = FORMATS[fmt_name]
    sc = dict(a1_scale=torch.tensor(0.01), a2_scale=torch.tensor(0.01)) if fmt.act is not None and fmt.act.static else {}
    out = fused_experts(**_valid(fmt, **sc)).out
    assert out.shape == (T, H) and bool(torch.isfinite(out).all())
    fused_experts(**_valid(fmt, **sc, lora=_lora(), token_lora=torch.tensor([0, 1, -1, 1]),
                           expert_map=torch.tensor([0, -1, 1, 2, 3, -1]), w13_bias=torch.zeros(E, 2 * I),
                           w2_bias=torch.zeros(E, H), topk_ids=torch.tensor([[0, 1], [2, 3], [4, 5], [1, 1]])))
