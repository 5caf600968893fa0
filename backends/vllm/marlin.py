"""vLLM's Marlin MoE (`fused_marlin_moe`): W4A16 GPTQ / AWQ, MXFP4 x bf16, FP8 weight-only.

vLLM 0.24.0 source read for this file:
  - `fused_moe/experts/marlin_moe.py: fused_marlin_moe(hidden_states, w1, w2, bias1, bias2, w1_scale,
    w2_scale, topk_weights, topk_ids, quant_type_id, apply_router_weight_on_input=False,
    global_num_experts=-1, activation=SILU, ..., expert_map=None, ..., w1_zeros=None, w2_zeros=None,
    workspace=None, ..., is_k_full=True, output=None, input_dtype=None, ...)`: `output=` is a caller
    buffer (`torch.sum(moe_output, dim=1, out=output)`), hence out_buffer. quant types: uint4b8
    (GPTQ sym), uint4 (AWQ zero points), float4_e2m1f (MXFP4), float8_e4m3fn (FP8). Both GEMMs go
    through `ops.moe_wna16_marlin_gemm` (use_atomic_add=False); GEMM outputs and the activation are
    stored in the activation dtype; router weights multiply GEMM2 (mul_topk_weights).
  - Weight preparation is vLLM's own (ops and helpers, called here in prepare): GPTQ
    `ops.gptq_marlin_moe_repack` + `marlin_moe_permute_scales` (`fused_moe/oracle/int_wna16.py`
    `_process_weights_marlin`), AWQ `ops.awq_marlin_moe_repack` + `moe_awq_to_marlin_zero_points`
    (`_process_awq_weights_marlin`), `marlin_utils_fp4.prepare_moe_mxfp4_layer_for_marlin` (pure
    function of the weights), `marlin_utils_fp8.prepare_fp8_moe_layer_for_marlin`.
  - Scales are handed to Marlin in the activation dtype (`marlin_moe_permute_scales` keeps the dtype,
    FP8 does `scales.to(layer.orig_dtype)`): moecheck's fp32 scales are rounded there, which the error
    table charges as `weight_rel` (E8M0 MXFP4 scales are exact in bf16).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Callable

import torch
from moecheck.backends.base import Capability, Limitation
from moecheck.backends.problem import MoEProblem
from moecheck.backends.vllm import layouts as L
from moecheck.backends.vllm.triton_fused import (
    TRITON_ROUNDING,
    VLLM_ACTIVATION,
    VLLM_NUMERICS,
    moe_activation,
    routing_args,
)
from moecheck.backends.vllm.versions import VllmBackend, vmod
from moecheck.reference.errmodel.budget import ErrorBudget
from moecheck.reference.errmodel.table import Loosening
from moecheck.reference.errors import require
from moecheck.reference.moe import ACT

MARLIN = "vllm.model_executor.layers.fused_moe.experts.marlin_moe"
OPS = "vllm._custom_ops"
MARLIN_UTILS = "vllm.model_executor.layers.quantization.utils.marlin_utils"
SCALAR_TYPES = "vllm.scalar_type"


@dataclass
class _Prepared:
    w1: torch.Tensor
    w2: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    z1: torch.Tensor | None
    z2: torch.Tensor | None
    quant_type: str  # vllm.scalar_type.scalar_types attribute


def _no_perm(E: int, device) -> torch.Tensor:
    return torch.empty((E, 0), dtype=torch.int32, device=device)  # no act-order (int_wna16.py)


def _permute_scales(s_nk: torch.Tensor, dt, size_k: int, size_n: int, g: int) -> torch.Tensor:
    """moecheck scales [E, N, K/g] -> GPTQ/AWQ [E, K/g, N] in the activation dtype -> Marlin order."""
    return vmod(MARLIN_UTILS).marlin_moe_permute_scales(s=s_nk.transpose(1, 2).to(dt).contiguous(),
                                                        size_k=size_k, size_n=size_n, group_size=g)


def _gptq_int4(p: MoEProblem) -> _Prepared:
    ops, dt = vmod(OPS), p.hidden_states.dtype
    out = []
    for q in (p.w13, p.w2):
        E, N, K = q.shape
        packed = L.gptq_pack(L.uint4_values(q)).to(p.device)
        out.append((ops.gptq_marlin_moe_repack(packed, _no_perm(E, p.device), K, N, 4),
                    _permute_scales(q.scales, dt, K, N, L.group_size(q))))
    (w1, s1), (w2, s2) = out
    return _Prepared(w1, w2, s1, s2, None, None, "uint4b8")


def _awq_int4_zp(p: MoEProblem) -> _Prepared:
    ops, mu, dt = vmod(OPS), vmod(MARLIN_UTILS), p.hidden_states.dtype
    out = []
    for q in (p.w13, p.w2):
        E, N, K = q.shape
        g = L.group_size(q)
        qw = L.awq_pack(L.uint4_values(q).transpose(1, 2).contiguous())  # [E, K, N//8]
        qz = L.awq_pack(q.zeros.to(torch.int16).transpose(1, 2).contiguous())  # [E, K/g, N//8]
        out.append((ops.awq_marlin_moe_repack(qw, _no_perm(E, p.device), size_k=K, size_n=N, num_bits=4),
                    _permute_scales(q.scales, dt, K, N, g),
                    mu.moe_awq_to_marlin_zero_points(qz, size_k=K // g, size_n=N, num_bits=4)))
    (w1, s1, z1), (w2, s2, z2) = out
    return _Prepared(w1, w2, s1, s2, z1, z2, "uint4")


def _mxfp4(p: MoEProblem) -> _Prepared:
    fp4 = vmod("vllm.model_executor.layers.quantization.utils.marlin_utils_fp4")
    layer = SimpleNamespace(params_dtype=p.hidden_states.dtype)
    w1, w2, s1, s2, _, _ = fp4.prepare_moe_mxfp4_layer_for_marlin(
        layer, p.w13.codes.contiguous(), p.w2.codes.contiguous(), p.w13.scales, p.w2.scales, None, None)
    return _Prepared(w1, w2, s1, s2, None, None, "float4_e2m1f")


def _fp8_weight_only(p: MoEProblem) -> _Prepared:
    fp8 = vmod("vllm.model_executor.layers.quantization.utils.marlin_utils_fp8")
    layer = SimpleNamespace(num_experts=p.experts, hidden_size=p.hidden, intermediate_size_per_partition=p.inter,
                            w13_weight=p.w13.codes, weight_block_size=None, orig_dtype=p.hidden_states.dtype)
    w1, w2, s1, s2 = fp8.prepare_fp8_moe_layer_for_marlin(layer, p.w13.codes, p.w2.codes, p.w13.scales, p.w2.scales)
    return _Prepared(w1, w2, s1, s2, None, None, "float8_e4m3fn")


@dataclass
class VllmMarlin(VllmBackend):
    convert: Callable[[MoEProblem], _Prepared] | None = None

    def prepare(self, p: MoEProblem) -> _Prepared:
        require(p.fmt.name in self.capability.formats, f"{self.name}: no Marlin mapping for format {p.fmt.name}")
        require(p.lora is None and p.w13_bias is None and p.w2_bias is None, f"{self.name}: no LoRA/bias mapping")
        return self.convert(p)

    def run(self, w: _Prepared, p: MoEProblem, out=None) -> torch.Tensor:
        qt = getattr(vmod(SCALAR_TYPES).scalar_types, w.quant_type)
        r = routing_args(p)
        return vmod(MARLIN).fused_marlin_moe(
            p.hidden_states.contiguous(), w.w1, w.w2, None, None, w.s1, w.s2, r["topk_weights"], r["topk_ids"],
            qt.id, apply_router_weight_on_input=p.apply_router_weight_on_input,
            global_num_experts=r["global_num_experts"], activation=moe_activation(p.activation_name),
            expert_map=r["expert_map"], w1_zeros=w.z1, w2_zeros=w.z2, is_k_full=True, output=out)


SPIES = (f"{MARLIN}:fused_marlin_moe", f"{OPS}:moe_wna16_marlin_gemm")
_G = (32, 64, 128)
_DT = frozenset({torch.bfloat16, torch.float16})
_ARCHS = frozenset({(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)})  # Marlin: sm_80+ (mma.sync)
LIM_SCALES = Limitation("scales are rounded to the activation dtype on the way into Marlin (kernel contract)")
LIM_SHAPE = Limitation("Marlin tiles: K multiples of GPTQ_MARLIN_MIN_THREAD_K=128, N of MIN_THREAD_N=64 "
                       "(marlin_utils.verify_marlin_supports_shape); hidden and intermediate both aligned to 128")


# Marlin's GEMM2 epilogue (mul_topk_weights; vLLM's marlin_moe_wna16 kernel template, read 2026-12-03) takes
# the router weight as Dtype::float2num(topk_weights[row]) (rounded to the activation dtype) and multiplies
# the already stored half2 results by it with __hmul2: round(round(o) * round(w)), not the fp32 o * w of
# vLLM's Triton kernel (weighted_store). The k slots are summed by torch.sum(..., dim=1) (experts/marlin_moe.py):
# fp32 accumulator for every k. H200 2026-12-03 with weighted_store: vllm_marlin_mxfp4 failed RMS at 1.1-1.3x
# in 11 of 17 tests (the int4 records' larger weight_rel hid it)
MARLIN_ROUNDING = replace(TRITON_ROUNDING, topk_sum=torch.float32, topk_sum_k=None, weighted_store=False,
                          topk_weights=ACT)

MARLIN_SCALES = (
    Loosening(ErrorBudget(weight_rel=2.0**-7),
              "Marlin takes group scales in the activation dtype (oracle/int_wna16.py, marlin_moe_permute_scales keeps "
              "it) and dequantizes to bf16 before its bf16 MMA (CUDA source not read; implied by the MMA dtype): two "
              "roundings of <= u(bf16) = 2^-8", formats="int4_*"),
    Loosening(ErrorBudget(weight_rel=2.0**-7),
              "Marlin FP8: prepare_fp8_moe_layer_for_marlin does scales.to(layer.orig_dtype) (bf16), and the e4m3 x "
              "scale product is formed in bf16 before the MMA (CUDA source not read): two roundings of <= u(bf16) = 2^-8",
              formats="fp8_w_channel"))


LIM_NONDET = Limitation(
    "not deterministic: H200 2026-12-03, reruns of one case differed in 7 to 48906 elements over 3 reruns, every "
    "format (both moe_wna16_marlin_gemm calls pass use_fp32_reduce=True, experts/marlin_moe.py:158 and :214; "
    "the order of that reduction across thread blocks is the suspect, CUDA source not read)")
LIM_T0 = Limitation("T=0 refused: 'Invalid MNK = [0, N, K]' (marlin_mm, csrc/libtorch_stable/moe/marlin_moe_wna16/"
                    "ops.cu:361; H200 2026-12-03): callers do not launch it without tokens")


def _cap(formats, **kw) -> Capability:
    kw["limitations"] = (*kw.get("limitations", ()), LIM_NONDET, LIM_T0)
    base = dict(dtypes=_DT, deterministic=False, archs=_ARCHS, activations=frozenset(VLLM_ACTIVATION), expert_map=True, out_buffer=True,
                hidden_align=128, inter_align=128, rounding=MARLIN_ROUNDING, requires=("vllm",), numerics=(*VLLM_NUMERICS, *MARLIN_SCALES),
                forwards=frozenset({"weights_on_input"}))
    return Capability(formats=frozenset(formats), **{**base, **kw})


BACKENDS = [
    VllmMarlin(name="vllm_marlin_int4_gptq", convert=_gptq_int4,
               description="fused_marlin_moe W4A16, GPTQ symmetric (uint4b8), groups 32/64/128",
               capability=_cap({f"int4_w_g{g}" for g in _G}, limitations=(LIM_SCALES, LIM_SHAPE)), spies=SPIES),
    VllmMarlin(name="vllm_marlin_int4_awq", convert=_awq_int4_zp,
               description="fused_marlin_moe W4A16 with zero points, AWQ packing (uint4)",
               capability=_cap({f"int4_zp_w_g{g}" for g in _G}, limitations=(LIM_SCALES, LIM_SHAPE)), spies=SPIES),
    VllmMarlin(name="vllm_marlin_mxfp4", convert=_mxfp4,
               description="fused_marlin_moe MXFP4 weights (E8M0 scales) x bf16 activations",
               capability=_cap({"mxfp4_bf16"}, hidden_align=256, limitations=(LIM_SHAPE, Limitation(
                   "hidden padded to 256 for Marlin MXFP4 in vLLM (mxfp4_round_up_hidden_size_and_intermediate_size)"))),
               spies=SPIES),
    VllmMarlin(name="vllm_marlin_fp8", convert=_fp8_weight_only,
               description="fused_marlin_moe FP8 e4m3 per-channel weights x bf16 activations (weight-only)",
               capability=_cap({"fp8_w_channel"}, limitations=(LIM_SCALES, LIM_SHAPE)), spies=SPIES),
]
