"""Where a transformers eager MoE block rounds, so the reference can mirror it and bound the difference.

HF's eager experts loop (e.g. Qwen3MoeExperts.forward) runs in the model dtype: the GEMM1 output,
act_fn(gate) before the multiply by up, the activation output and the GEMM2 output are stored in
it (gpt-oss also stores each GEMM before adding its bias), the router weight multiplies the
expert output in it (Qwen/OLMoE cast the weights to the model dtype first; Mixtral/DeepSeek keep
fp32 weights and cast the product), and `index_add_` sums the k expert outputs in it. The
reference with HF eager rounding stores at the same points; its error model then bounds the
remaining differences (accumulation order, the activation's own evaluation).
Families with shared experts add the shared output to the routed one in the model dtype, in both
HF and moecheck: one rounding each, i.e. at most 2u |out| apart on top of the routed bound.
In float32 every rounding point is a no-op and the bound is the fp32 accumulation-order slack.
"""
from __future__ import annotations

import torch
from moecheck.backends.problem import MoEProblem
from moecheck.e2e.families import Family
from moecheck.reference.errmodel.budget import unit_roundoff
from moecheck.reference.errmodel.table import budget_for
from moecheck.reference.moe import Rounding


def hf_eager_rounding(dtype: torch.dtype) -> Rounding:
    narrow = None if dtype == torch.float32 else dtype
    return Rounding(gemm1_out=narrow, act_out=narrow, gemm2_out=narrow, topk_weights=narrow, topk_sum=dtype,
                    pre_bias=narrow, act_gate=narrow)


def hf_block_bound(problem: MoEProblem, family: Family, hf_out: torch.Tensor) -> torch.Tensor:
    """Allowed |moecheck block - HF eager block| per element [T, H] for the routing in `problem`."""
    dtype = problem.hidden_states.dtype
    ref = problem.reference(hf_eager_rounding(dtype), budget_for(problem.fmt.name))
    bound = ref.bound
    if family.shared is not None:
        bound = bound + 2 * unit_roundoff(dtype) * hf_out.float().abs().reshape(bound.shape)
    return bound
