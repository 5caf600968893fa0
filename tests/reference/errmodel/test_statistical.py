"""The RMS and bias verdicts: blind spots of the max bound, caught; correct kernels, passed.

A precision loss spread over every element stays under the max bound. Planted here on realistic
sizes (K in the thousands, top-4): one extra bf16 rounding of the top-k sum, and each expert's
output rounded to bf16 before the weighted sum where the record says fp32; both must fail the RMS
verdict while passing the max one. A truncating output cast (round toward zero) has a sign and must
fail the bias verdict, at any size. The reference computed another way (tests/reference/errmodel/
test_meta.py, WAYS) passes all three; here also at the realistic size.
"""
from __future__ import annotations

import pytest
import torch
from moecheck.reference.errmodel import budget_for, compare
from moecheck.reference.errmodel.compare import bernstein
from moecheck.reference.formats import FORMATS
from moecheck.reference.moe import ACT, Rounding, fused_experts
from moecheck.tests.reference.errmodel.dense import (  # noqa: F401 (autouse)
    make_problem,
    one_torch_thread,
    run_oracle,
)

DECLARED = Rounding(gemm1_out=ACT, act_out=ACT)  # the example plugin's record: fp32 expert output and top-k sum
REALISTIC = dict(T=96, H=1024, I=512, E=8, k=4)


def _judged(p, declared: Rounding, got: torch.Tensor):
    budget = budget_for("bf16")
    ref = fused_experts(**p, rounding=declared, budget=budget)
    return compare(got, ref.out, ref.bound, ref.expected_var, budget)


@pytest.fixture(scope="module")
def problem():
    return make_problem(FORMATS["bf16"], "silu", seed=5, **REALISTIC)


@pytest.mark.parametrize("planted", [Rounding(gemm1_out=ACT, act_out=ACT, topk_sum=torch.bfloat16),
                                     Rounding(gemm1_out=ACT, act_out=ACT, gemm2_out=torch.bfloat16)],
                         ids=["topk_sum_bf16", "expert_out_bf16"])
def test_an_extra_rounding_of_an_accumulated_sum_fails_rms_not_max(problem, planted):
    got = fused_experts(**problem, rounding=planted).out
    c = _judged(problem, DECLARED, got)
    assert c.max_norm_err <= 1.0 and c.failed == ("rms",), c.summary()


def test_a_truncating_output_cast_fails_the_bias_verdict(problem):
    ref32 = fused_experts(**{**problem, "hidden_states": problem["hidden_states"]}, rounding=DECLARED)
    exact = run_oracle(problem, acc=torch.float32).float()
    truncated = (exact.contiguous().view(torch.int32) & ~0xFFFF).view(torch.float32).to(ref32.out.dtype)
    c = _judged(problem, DECLARED, truncated)
    assert "bias" in c.failed and c.bias < 0, c.summary()


@pytest.mark.parametrize("way", ["f64_then_cast", "f32_k_split_2"])
def test_the_reference_computed_another_way_passes_all_three_at_the_realistic_size(problem, way):
    opts = {"f64_then_cast": dict(acc=torch.float64), "f32_k_split_2": dict(acc=torch.float32, k_split=2)}[way]
    c = _judged(problem, Rounding(), run_oracle(problem, **opts).to(problem["hidden_states"].dtype))
    assert c.passed, c.summary()


def test_bernstein_allowance_shrinks_with_n_and_grows_with_variance():
    assert bernstein(10_000, 0.01, 1e-9) < bernstein(100, 0.01, 1e-9)
    assert bernstein(10_000, 0.01, 1e-9) < bernstein(10_000, 0.1, 1e-9)


@pytest.mark.parametrize("fmt", ["bf16", "fp8_token_channel", "int4_zp_w_g128"])
def test_the_expected_difference_survives_tiny_values(fmt):
    """At inputs of 2^-100 (the strategies' "tiny") the expected squared difference is ~1e-62: held in
    fp32 it flushed to 0, so the RMS verdict allowed only its chance term and failed correct kernels
    (H100 torch_scaled_grouped_mm, H200 vllm_triton_int4_w4a16 padded cases). Scaling the input by a
    power of two must leave each element's expected difference relative to its bound where it was."""
    budget = budget_for(fmt)
    p = make_problem(FORMATS[fmt], "swigluoai", seed=3, T=8, E=4, k=2)  # (up + 1) keeps the output ~2^-100
    normal = fused_experts(**p, budget=budget)
    tiny = fused_experts(**dict(p, hidden_states=p["hidden_states"] * 2.0**-100), budget=budget)
    assert tiny.expected_var.dtype == torch.float64
    lives = normal.expected_var > 0
    assert bool(lives.any()) and bool((tiny.expected_var[lives] > 0).all())
