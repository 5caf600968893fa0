"""TRT-LLM-gen MoE (flashinfer.fused_moe.trtllm_*_routed_moe): SM100-class kernels, pre-routed entry points.

Signatures read in site-packages/flashinfer/fused_moe/core.py (0.7.2.post1):
  trtllm_bf16_routed_moe(topk_ids, hidden_states, gemm1_weights, gemm2_weights, num_experts, top_k, n_group,
      topk_group, intermediate_size, local_expert_offset, local_num_experts, routed_scaling_factor=None,
      routing_method_type=0, use_shuffled_weight=True, weight_layout=BlockMajorK, do_finalize=True, ...,
      activation_type=Swiglu, ..., output=None)
  trtllm_fp8_block_scale_routed_moe(topk_ids, routing_bias, hidden_states, hidden_states_scale [H/128, T],
      gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, ..., use_shuffled_weight=False,
      weight_layout=0, ..., output=None, ...)
  trtllm_fp8_per_tensor_scale_routed_moe(topk_ids, routing_bias, hidden_states, gemm1_weights,
      output1_scales_scalar, output1_scales_gate_scalar, gemm2_weights, output2_scales_scalar, ...,
      use_routing_scales_on_input, ..., output=None)
topk_ids is passed as the (int32 ids, fp32 weights) pair (RoutingInputMode.UnpackedPrecomputed,
core.py _split_precomputed_routing). Weight preparation follows tests/moe/trtllm_gen_fused_moe_utils.py
(BF16Moe, FP8PerTensorMoe): [up | gate] rows, gated-activation row reorder, shuffleMatrixA with
epilogue_tile_m = 128, BlockMajorK with 128-byte blocks for bf16; the scale products of FP8PerTensorMoe
translated from its quant-direction globals to moecheck's dequant scales (a1, a2, per-expert weight scale).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from moecheck.backends.base import Capability, Limitation
from moecheck.backends.flashinfer import common as C
from moecheck.backends.flashinfer import layouts as L
from moecheck.backends.problem import MoEProblem
from moecheck.reference.errors import require
from moecheck.reference.moe import ACT, Rounding
from moecheck.reference.qtensor import QTensor
from moecheck.reference.quantize import quantize

EPILOGUE_TILE_M = 128  # tests/moe/trtllm_gen_fused_moe_utils.py: "FIXME: this depends on the kernel internals"
BLOCK_K_BYTES = 128
BLOCK_MAJOR_K = 2  # flashinfer/tllm_enums.py WeightLayout.BlockMajorK


def fc1_perm(p: MoEProblem) -> torch.Tensor:
    """problem layout -> [up | gate] -> gated-activation reorder -> shuffleMatrixA (one row permutation)."""
    rows = p.w13.shape[1]
    perm = L.to_up_gate(rows, p.activation)
    if p.activation.gated:
        perm = perm[L.reorder_gated_act(rows)]
    return perm[L.shuffle_a(rows, EPILOGUE_TILE_M)]


def fc2_perm(p: MoEProblem) -> torch.Tensor:
    return L.shuffle_a(p.w2.shape[1], EPILOGUE_TILE_M)


def _rows(w, perm):
    return L.permute_qtensor_rows(w, perm) if isinstance(w, QTensor) else L.permute_rows(w, perm)


def _layout_bf16(p):
    dt = p.hidden_states.dtype
    f1, f2 = _rows(p.w13, fc1_perm(p)).to(dt), _rows(p.w2, fc2_perm(p)).to(dt)
    return dict(fc1=L.to_block_major_k(L.as_bytes(f1), BLOCK_K_BYTES).view(dt),
                fc2=L.to_block_major_k(L.as_bytes(f2), BLOCK_K_BYTES).view(dt))


def _layout_fp8_tensor(p):
    q1, q2 = _rows(p.w13, fc1_perm(p)), _rows(p.w2, fc2_perm(p))
    E = q1.shape[0]
    return dict(fc1=q1.codes.contiguous(), fc2=q2.codes.contiguous(), s1=q1.scales.reshape(E).float(),
                s2=q2.scales.reshape(E).float())


def _layout_fp8_block(p):  # MajorK, unshuffled (use_shuffled_weight=False, weight_layout=0 defaults)
    q1 = L.permute_qtensor_rows(p.w13, L.to_up_gate(p.w13.shape[1], p.activation))
    return dict(fc1=q1.codes.contiguous(), fc2=p.w2.codes.contiguous(), s1=q1.scales.float().contiguous(),
                s2=p.w2.scales.float().contiguous())


def _common(p):
    return dict(num_experts=p.experts, top_k=p.top_k, n_group=None, topk_group=None, intermediate_size=p.inter,
                local_expert_offset=0, local_num_experts=p.experts, routed_scaling_factor=None)


def _call_bf16(fm, w, p, routing, out):
    return C.call(fm, "trtllm_bf16_routed_moe", routing, p.hidden_states.contiguous(), w["fc1"], w["fc2"], **_common(p),
                                     use_shuffled_weight=True, weight_layout=BLOCK_MAJOR_K,
                                     activation_type=int(C.activation_type(p)), output=out)


def _call_fp8_block(fm, w, p, routing, out):
    q = quantize(p.hidden_states, p.fmt.act)  # DeepSeek 1x128 groups, fp32 scales [T, H/128]
    return C.call(fm, "trtllm_fp8_block_scale_routed_moe", routing, None, q.codes, q.scales.float().t().contiguous(), w["fc1"], w["s1"],
                                                w["fc2"], w["s2"], **_common(p), output=out,
                                                activation_type=int(C.activation_type(p)))


def _call_fp8_tensor(fm, w, p, routing, out):
    a1, a2 = p.a1_scale.float().reshape(()), p.a2_scale.float().reshape(())
    xq = quantize(p.hidden_states, p.fmt.act, a1).codes
    gated = p.activation.gated
    scale_c1 = w["s1"] * a1 / a2 if gated else torch.full_like(w["s1"], 1.0) / a2
    return C.call(fm, "trtllm_fp8_per_tensor_scale_routed_moe", routing, None, xq, w["fc1"], scale_c1, w["s1"] * a1, w["fc2"],
                                                     w["s2"] * a2, **_common(p), use_routing_scales_on_input=False,
                                                     activation_type=int(C.activation_type(p)), output=out)


@dataclass(frozen=True)
class Recipe:
    layout: Callable
    call: Callable


RECIPES = {"bf16": Recipe(_layout_bf16, _call_bf16), "fp8_block": Recipe(_layout_fp8_block, _call_fp8_block),
           "fp8_tensor": Recipe(_layout_fp8_tensor, _call_fp8_tensor)}


@dataclass
class TrtllmGenMoE(C.FlashInferBackend):
    recipe: str = "bf16"

    def layout(self, p: MoEProblem) -> dict:
        require(p.fmt.name in self.capability.formats, f"{self.name} has no weight recipe for format {p.fmt.name}")
        require(p.expert_map is None, "trtllm-gen MoE shards experts by local_expert_offset ranges, not by an expert_map")
        require(p.lora is None and not p.apply_router_weight_on_input and p.w13_bias is None,
                f"{self.name} adapter passes no LoRA, bias or router-weight-on-input")
        return RECIPES[self.recipe].layout(p)

    def prepare(self, p: MoEProblem) -> dict:
        return self.layout(p)

    def run(self, w: dict, p: MoEProblem, out=None) -> torch.Tensor:
        routing = (p.topk_ids.to(torch.int32).contiguous(), p.topk_weights.float().contiguous())
        res = RECIPES[self.recipe].call(C.fused_moe(), w, p, routing, out)
        return C.first_output(res, out)


_SM100 = frozenset({(10, 0), (10, 3)})  # jit/fused_moe.py gen_trtllm_gen_fused_moe_sm100_module: sm100a/sm103a cubins
_NEEDS = Limitation("TRT-LLM-gen kernels exist for SM100/SM103 only (module fused_moe_trtllm_sm100); not runnable on "
                    "the project's H100, never run", "https://github.com/flashinfer-ai/flashinfer/blob/main/flashinfer/jit/fused_moe.py")
_WEIGHTS = Limitation("routing weights passed as fp32 (UnpackedPrecomputed); whether the kernel rounds them to "
                      "bf16 before the combine is unverified (the record claims it does)")
_LINK = "https://github.com/flashinfer-ai/flashinfer/blob/main/tests/moe/trtllm_gen_fused_moe_utils.py"


# unread: where trtllm-gen rounds, and whether it takes the fp32 routing weights as bf16. The record claims
# all of it (an unclaimed rounding would fail a correct kernel; a claimed one only widens the bound)
_ROUNDING = Rounding(gemm1_out=ACT, act_out=ACT, gemm2_out=ACT, topk_weights=ACT)


def _cap(formats, rounding, acts, align):
    return Capability(formats=frozenset(formats), archs=_SM100, activations=frozenset(acts), out_buffer=True,
                      hidden_align=align, inter_align=align, rounding=rounding, requires=C.REQUIRES,
                      limitations=(C.UNVERIFIED, _NEEDS, _WEIGHTS, Limitation("layouts per the upstream test helpers", _LINK)),
                      verified=(), deterministic=False)


BACKENDS = [
    TrtllmGenMoE(name="flashinfer_trtllm_bf16", recipe="bf16", spies=(f"{C.FUSED_MOE}:trtllm_bf16_routed_moe",),
                 description="trtllm_bf16_routed_moe: bf16, shuffled BlockMajorK weights",
                 capability=_cap({"bf16"}, _ROUNDING, {"silu", "silu_up_gate", "relu2"}, 128)),
    TrtllmGenMoE(name="flashinfer_trtllm_fp8_block", recipe="fp8_block",
                 spies=(f"{C.FUSED_MOE}:trtllm_fp8_block_scale_routed_moe",),
                 description="trtllm_fp8_block_scale_routed_moe: DeepSeek FP8 (128x128 weights, 1x128 activations)",
                 capability=_cap({"fp8_block"}, _ROUNDING, {"silu", "silu_up_gate"}, 128)),
    TrtllmGenMoE(name="flashinfer_trtllm_fp8_tensor", recipe="fp8_tensor",
                 spies=(f"{C.FUSED_MOE}:trtllm_fp8_per_tensor_scale_routed_moe",),
                 description="trtllm_fp8_per_tensor_scale_routed_moe: FP8 per-tensor, calibrated activation scales",
                 capability=_cap({"fp8_tensor_static"}, _ROUNDING, {"silu", "silu_up_gate", "relu2"}, 128)),
    TrtllmGenMoE(name="flashinfer_trtllm_fp4", recipe="bf16", spies=(f"{C.FUSED_MOE}:trtllm_fp4_block_scale_routed_moe",),
                 not_wired=("not wired: the trtllm-gen FP4 weight/scale shuffles (shuffle_matrix_sf_a after the gated "
                            "reorder, 128x4 interleave per expert, gemm1 bias/alpha layout) are not written"),
                 description="trtllm_fp4_block_scale_routed_moe: NVFP4 / MXFP4 weights",
                 capability=_cap({"nvfp4"}, _ROUNDING, {"silu"}, 128)),
]
