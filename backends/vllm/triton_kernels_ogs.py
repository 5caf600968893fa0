"""triton_kernels `matmul_ogs` MoE as vLLM runs gpt-oss MXFP4 (vendored `vllm.third_party.triton_kernels`).

vLLM 0.24.0 source read for this file:
  - `fused_moe/experts/gpt_oss_triton_kernels_moe.py: triton_kernel_fused_experts(output_tensor,
    hidden_states, w1, w2, routing_data, gather_indx, scatter_indx, topk, activation=SWIGLUOAI,
    quant_config=None, swiglu_alpha=1.702, swiglu_limit=7.0, apply_router_weight_on_input=False,
    global_num_experts=-1, expert_map=None, intermediate_cache=None, a1q_scale=None)`: GEMM1 with the
    swiglu fused on the fp32 accumulator (`FusedActivation(... swiglu_fn ...)`), GEMM2 with
    `scatter_indx` and `gammas` (router weights), the k rows of a token summed by `reduce_grouped`
    ("accumulation is performed in float32", matmul_ogs.py) from a scratchpad in the output dtype.
    Writes `output_tensor` (a caller buffer: out_buffer). Asserts bf16 input, SWIGLUOAI only,
    fp32 biases.
  - `make_routing_data(topk_ids, topk_weights, num_local_experts)`: `topk_weights.to(torch.bfloat16)`
    -> Rounding.topk_weights = bf16.
  - `UnfusedOAITritonExperts` (modular experts, LoRA mixin): GEMM1 output stored bf16, then
    `self.activation` (`torch.ops._C.swigluoai_and_mul(output, input, alpha, limit)`, or
    apply_moe_activation), `routing_data.n_expts_act = 1` so matmul_ogs does not sum the k rows, and
    `ops.moe_sum` does: the unfused activation and top-k-sum path of the MoE-LoRA PR.
  - `quantization/utils/mxfp4_utils.py: _swizzle_mxfp4(quant_tensor, scale, num_warps=8)` ->
    (triton_kernels Tensor [E, K, N] in the arch's mxfp4 value layout, InFlexData(), swizzled scale),
    then `PrecisionConfig(weight_scale=..., flex_ctx=FlexCtx(rhs_data=...))` (oracle/mxfp4.py) and
    `mxfp4_w4a16_moe_quant_config(w1_scale=pc13, w2_scale=pc2, w1_bias, w2_bias)`.
gpt-oss layout: w13 rows interleave gate (even) and up (odd), which is moecheck's `swigluoai` preset,
so no row reordering is needed (layouts.relayout_gate_up would be the identity).

Weight layout handed to `_swizzle_mxfp4` (checked against vLLM, 2026-12 triage): vLLM registers the
checkpoint tensors as w13_weight [E, 2I, H/2] uint8, w13_weight_scale [E, 2I, H/32] uint8 (E8M0),
w13_bias [E, 2I], w2_weight [E, H, I/2], w2_weight_scale [E, H, I/32], w2_bias [E, H]
(quantization/mxfp4.py `create_weights`), and oracle/mxfp4.py `convert_to_mxfp4_moe_kernel_format`
(TRITON_BACKENDS branch) passes them to `_swizzle_mxfp4` untouched, which transposes both to
[E, K/2, N] / [E, K/32, N] itself ("transpose the tensor so that the quantization axis is on dim1")
before `convert_layout(..., HopperMXValueLayout / HopperMXScaleLayout, mx_axis=1, num_warps=8)`.
moecheck's QTensor is the same: codes [E, N, K/2] with element 2i in the low nibble (OCP order, as
triton_kernels' FP4 unpack reads it), scales [E, N, K/32] uint8 E8M0. So the arrays go in as they are
(tests/backends/test_vllm_ogs.py pins this).

Hopper shape limits, from triton_kernels (vendored v3.5.1; matmul_ogs_details/_matmul_ogs.py and
opt_flags_nvidia.py; line numbers differ between tags):
  - `HopperMXScaleLayout(num_warps=8)` makes `compute_num_warps` return 8, and the kernel's HOPPER_SCALE
    branch asserts `BLOCK_N % (2 * n_warps * 2 * 8) == 0` (256); `compute_block_n` gives 256 only for
    N > 128, else next_power_of_2(N) <= 128. So each GEMM's N must exceed 128: H > 128 (GEMM2) and 2I > 128
    (GEMM1). This is the "CompileTimeAssertionFailure at 168:12" of the H200 run: the three lines moecheck
    kept are the first of Triton's 12-line excerpt (the Blackwell branch's "TODO ... W_TRANSPOSE" comment
    and assert, 11 and 10 lines above); the failing line 11 below them is that BLOCK_N assert, not
    W_TRANSPOSE (always true here: the Hopper value layout stores W with stride(-2) == 1).
  - The Hopper value swizzle interleaves 64 K-elements per 128 stored columns (HopperMXValueLayout
    swizzle_data: k_tile * warp_tile * threads = 32 bytes along K, times 4 from the N fold), while the
    K-tail mask is `offs_w_k < 2 * k` on stored columns: a tail of 32 mod 64 loads half of a group, i.e.
    drops K-elements for half the N rows. H must be a multiple of 64 (vLLM's own test pads the hidden
    size to 64: tests/kernels/moe/test_gpt_oss_triton_kernels.py "the activation padding need to be
    multiple of 64"); I is already (inter_align, and vLLM rounds I up to 64 for this backend).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from moecheck.backends.base import Capability, Limitation
from moecheck.backends.problem import MoEProblem
from moecheck.backends.vllm import modular as M
from moecheck.backends.vllm.triton_fused import (
    CONFIG,
    GATE_STORED,
    MOE_SUM_NARROW_K,
    VLLM_NUMERICS,
    moe_activation,
    routing_args,
)
from moecheck.backends.vllm.versions import VllmBackend, vmod
from moecheck.reference.errors import require
from moecheck.reference.moe import ACT, Rounding

OGS = "vllm.model_executor.layers.fused_moe.experts.gpt_oss_triton_kernels_moe"
MXFP4_UTILS = "vllm.model_executor.layers.quantization.utils.mxfp4_utils"


def _triton_kernels():
    require(vmod("vllm.utils.import_utils").has_triton_kernels(), "triton_kernels not importable (vendored copy missing)")
    return vmod("triton_kernels.matmul_ogs")  # has_triton_kernels() aliases the vendored package in sys.modules


def mxfp4_quant_config(p: MoEProblem):
    """Swizzle both weights with vLLM's helper and wrap them the way oracle/mxfp4.py does."""
    require(p.fmt.name == "mxfp4_bf16", f"matmul_ogs MXFP4 adapter takes mxfp4_bf16, got {p.fmt.name}")
    require(p.lora is None, "LoRA goes through vllm_lora_* backends")
    ogs, mx = _triton_kernels(), vmod(MXFP4_UTILS)
    pcs, ws = [], []
    for q in (p.w13, p.w2):
        # [E, N, K/2] uint8 codes and [E, N, K/32] uint8 E8M0 scales: the checkpoint orientation vLLM passes
        # (oracle/mxfp4.py TRITON_BACKENDS branch); _swizzle_mxfp4 transposes them itself. num_warps: its
        # default 8, what vLLM's non-batched path uses
        w, flex, scale = mx._swizzle_mxfp4(q.codes.contiguous(), q.scales.contiguous())
        ws.append(w)
        pcs.append(ogs.PrecisionConfig(weight_scale=scale, flex_ctx=ogs.FlexCtx(rhs_data=flex)))
    f32 = lambda b: None if b is None else b.float().contiguous()  # noqa: E731
    qc = vmod(CONFIG).mxfp4_w4a16_moe_quant_config(w1_scale=pcs[0], w2_scale=pcs[1], w1_bias=f32(p.w13_bias),
                                                  w2_bias=f32(p.w2_bias))
    return ws[0], ws[1], qc


@dataclass
class _Prepared:
    w1: object
    w2: object
    quant_config: object
    kernel: object = None


@dataclass
class VllmOgsFused(VllmBackend):
    def prepare(self, p: MoEProblem) -> _Prepared:
        return _Prepared(*mxfp4_quant_config(p))

    def run(self, w: _Prepared, p: MoEProblem, out=None) -> torch.Tensor:
        m = vmod(OGS)
        r = routing_args(p)
        routing_data, gather, scatter = m.make_routing_data(r["topk_ids"], r["topk_weights"], p.experts)
        res = out if out is not None else torch.empty_like(p.hidden_states)
        m.triton_kernel_fused_experts(res, p.hidden_states.contiguous(), w.w1, w.w2, routing_data, gather, scatter,
                                      topk=p.top_k, activation=moe_activation(p.activation_name), quant_config=w.quant_config,
                                      apply_router_weight_on_input=p.apply_router_weight_on_input,
                                      global_num_experts=p.experts)
        return res


@dataclass
class VllmOgsUnfused(VllmBackend):
    def prepare(self, p: MoEProblem) -> _Prepared:
        w1, w2, qc = mxfp4_quant_config(p)
        experts = vmod(OGS).UnfusedOAITritonExperts(M.moe_config(p), qc)
        return _Prepared(w1, w2, qc, M.kernel(experts))

    def run(self, w: _Prepared, p: MoEProblem, out=None) -> torch.Tensor:
        return M.emit(M.apply(w.kernel, w.w1, w.w2, p), out)


BF16 = torch.bfloat16
# GEMM2 (both entries) is matmul_ogs with gammas=routing_data.gate_scal: the epilogue does `out *= gammas[:, None]`
# in fp32 and only then `tl.store` in the output dtype (_matmul_ogs.py, after the fused activation), so the
# per-expert store is round(o * w), not round(o) * w: weighted_store. The unfused entry sums with ops.moe_sum
# (k in {2, 3, 4} in bf16, at::sum_out otherwise, as for vllm_triton_*)
FUSED_ROUNDING = Rounding(gemm1_out=None, act_out=ACT, gemm2_out=ACT, topk_weights=BF16, topk_sum=torch.float32,
                          weighted_store=True)
UNFUSED_ROUNDING = Rounding(gemm1_out=ACT, act_out=ACT, gemm2_out=ACT, topk_weights=BF16, topk_sum=ACT,
                            act_gate=ACT, act_gate_kinds=GATE_STORED,  # apply_moe_activation's kernels
                            weighted_store=True, topk_sum_k=MOE_SUM_NARROW_K)
_ARCHS = frozenset({(9, 0), (10, 0)})  # vLLM's triton MXFP4 backend targets Hopper and Blackwell
LIM_HOPPER = Limitation("on sm_90 _swizzle_mxfp4 sets opt_flags split_k=1 (global triton_kernels constraint)")
LIM_BF16 = Limitation("bf16 only: triton_kernel_fused_experts asserts hidden_states.dtype == torch.bfloat16")
# see the module docstring for both: triton_kernels' Hopper MX swizzle, not the adapter
HIDDEN_ALIGN, MIN_HIDDEN, MIN_INTER = 64, 192, 128
LIM_BLOCK_N = Limitation(
    "sm_90: H > 128 and 2I > 128 (hence H >= 192, I >= 128): HOPPER_SCALE asserts BLOCK_N % (2*num_warps*2*8) == 0 "
    "(256 at vLLM's num_warps=8) and opt_flags_nvidia.compute_block_n gives 256 only for N > 128")
LIM_K64 = Limitation(
    "sm_90: H % 64 == 0: the HOPPER_VALUE K-tail mask (offs_w_k < 2k on swizzled columns) splits a 64-element "
    "swizzle group when K % 64 == 32; vLLM's test pads the hidden size to 64")

BACKENDS = [
    VllmOgsFused(
        name="vllm_ogs_mxfp4", description="triton_kernels matmul_ogs (gpt-oss MXFP4): fused swiglu and top-k sum",
        capability=Capability(
            formats=frozenset({"mxfp4_bf16"}), dtypes=frozenset({BF16}), archs=_ARCHS, activations=frozenset({"swigluoai"}),
            bias=True, out_buffer=True, hidden_align=HIDDEN_ALIGN, inter_align=64, min_hidden=MIN_HIDDEN, min_inter=MIN_INTER,
            rounding=FUSED_ROUNDING, requires=("vllm",), numerics=VLLM_NUMERICS,
            deterministic=False, forwards=frozenset({"weights_on_input"}), limitations=(LIM_HOPPER, LIM_BF16, LIM_BLOCK_N, LIM_K64, Limitation(
                "expert_map not claimed: this entry point takes local ids (triton_kernel_moe_forward remaps first)"))),
        spies=(f"{OGS}:triton_kernel_fused_experts", f"{OGS}:matmul_ogs")),
    VllmOgsUnfused(
        name="vllm_ogs_mxfp4_unfused",
        description="FusedMoEKernel + UnfusedOAITritonExperts: matmul_ogs GEMMs, separate activation and moe_sum",
        capability=Capability(
            formats=frozenset({"mxfp4_bf16"}), dtypes=frozenset({BF16}), archs=_ARCHS,
            activations=frozenset({"swigluoai", "silu", "gelu"}), expert_map=True, bias=True, hidden_align=HIDDEN_ALIGN,
            inter_align=64, min_hidden=MIN_HIDDEN, min_inter=MIN_INTER, min_tokens=M.MIN_TOKENS, rounding=UNFUSED_ROUNDING,
            requires=("vllm",), numerics=VLLM_NUMERICS, deterministic=False,
            forwards=M.APPLY_FORWARDS,
            limitations=(LIM_HOPPER, LIM_BF16, LIM_BLOCK_N, LIM_K64, M.LIM_WS)),
        spies=(*M.composition_spies(OGS, "matmul_ogs"), "vllm._custom_ops:moe_sum")),
]
