"""torch._grouped_mm (bf16/fp16) and torch._scaled_grouped_mm (FP8 row-wise) as MoE backends.

Both run the two expert GEMMs as grouped GEMMs over rows sorted by expert; dispatch, the
activation and the combine are plain torch (backends/dispatch.py). The FP8 adapter quantizes its
own activations per token (amax/448, clamp, cast), as a serving stack would.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from moecheck.backends.base import Backend, Capability, Limitation
from moecheck.backends.dispatch import combine, dispatch, scaled_input
from moecheck.backends.problem import MoEProblem
from moecheck.reference import activations as act_mod
from moecheck.reference.errmodel.table import FP8_WGMMA, TENSOR_CORE_MMA
from moecheck.reference.moe import ACT, Rounding

# the bias is added in torch after the grouped GEMM has stored its result in the activation dtype
_BF16_ROUNDING = Rounding(gemm1_out=ACT, act_out=ACT, gemm2_out=ACT, pre_bias=ACT)
_ACTS = frozenset({"silu", "silu_up_gate", "gelu", "gelu_tanh", "swigluoai", "relu2"})


@dataclass
class _Prepared:
    w13t: torch.Tensor  # [E, H, 2I] (mat_b of the first grouped GEMM)
    w2t: torch.Tensor  # [E, I, H]
    w13_scale: torch.Tensor | None = None  # [E, 2I] fp32 (FP8 per-channel)
    w2_scale: torch.Tensor | None = None  # [E, H]


def _act(h: torch.Tensor, p: MoEProblem) -> torch.Tensor:
    return act_mod.apply(h, p.activation).to(p.hidden_states.dtype)


class GroupedMM(Backend):
    def prepare(self, p: MoEProblem) -> _Prepared:
        dt = p.hidden_states.dtype
        # grouped_mm wants mat_b as [E, K, N]; a transposed view of [E, N, K] keeps K contiguous
        return _Prepared(p.w13.to(dt).transpose(1, 2), p.w2.to(dt).transpose(1, 2))

    def run(self, w: _Prepared, p: MoEProblem, out=None) -> torch.Tensor:
        r = dispatch(p)
        x = scaled_input(p)[r.tok]
        h = torch._grouped_mm(x, w.w13t, offs=r.offs)
        if p.w13_bias is not None:
            h = (h.float() + p.w13_bias.float()[r.expert]).to(h.dtype)
        o = torch._grouped_mm(_act(h, p), w.w2t, offs=r.offs)
        if p.w2_bias is not None:
            o = (o.float() + p.w2_bias.float()[r.expert]).to(o.dtype)
        return combine(o, r, p, out)


def _quant_rows_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-row e4m3: scale = amax/448 (1 for zero rows), clamp before the cast."""
    amax = x.float().abs().amax(-1)
    s = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
    q = (x.float() / s[:, None]).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q, s


class ScaledGroupedMM(Backend):
    def prepare(self, p: MoEProblem) -> _Prepared:
        # reference-quantized per-channel weights: codes [E, N, K] e4m3, scales [E, N, 1] fp32
        return _Prepared(p.w13.codes.transpose(1, 2), p.w2.codes.transpose(1, 2),
                         p.w13.scales[..., 0].float().contiguous(), p.w2.scales[..., 0].float().contiguous())

    def run(self, w: _Prepared, p: MoEProblem, out=None) -> torch.Tensor:
        r = dispatch(p)
        dt = p.hidden_states.dtype
        xq, xs = _quant_rows_fp8(scaled_input(p)[r.tok])
        h = torch._scaled_grouped_mm(xq, w.w13t, xs, w.w13_scale, offs=r.offs, out_dtype=dt)
        yq, ys = _quant_rows_fp8(_act(h, p))
        o = torch._scaled_grouped_mm(yq, w.w2t, ys, w.w2_scale, offs=r.offs, out_dtype=dt)
        return combine(o, r, p, out)


_CUDA_GMM = Limitation("bf16 grouped GEMM is a CUTLASS kernel on sm_90+; other archs use a fallback loop",
                       "https://github.com/pytorch/pytorch/blob/main/aten/src/ATen/native/cuda/GroupedBlas.cpp")

BACKENDS = [
    GroupedMM(
        name="torch_grouped_mm",
        description="torch._grouped_mm for both expert GEMMs (CUTLASS on Hopper; a CPU kernel on CPU)",
        capability=Capability(
            formats=frozenset({"bf16", "fp16"}), dtypes=frozenset({torch.bfloat16, torch.float16}),
            devices=frozenset({"cuda", "cpu"}), activations=_ACTS, expert_map=True, bias=True,
            weights_on_input=True, out_buffer=True,
            hidden_align=8, inter_align=8,  # mat strides must be 16-byte multiples (2-byte elements)
            rounding=_BF16_ROUNDING, limitations=(_CUDA_GMM,), numerics=(TENSOR_CORE_MMA,),
            verified=("CPU torch 2.13.0", "H100 sm_90, torch 2.11 (2026-11-23): bf16, fp16")),
        spies=("torch:_grouped_mm",)),
    ScaledGroupedMM(
        name="torch_scaled_grouped_mm",
        description="torch._scaled_grouped_mm, FP8 e4m3 row-wise (per-token x per-channel) scales",
        capability=Capability(
            formats=frozenset({"fp8_token_channel"}), archs=frozenset({(9, 0), (10, 0)}),
            activations=_ACTS, expert_map=True, weights_on_input=True, out_buffer=True,
            hidden_align=16, inter_align=16,  # fp8 mats: 16-byte strides
            rounding=_BF16_ROUNDING, numerics=(FP8_WGMMA,),  # torch's row-wise FP8 grouped GEMM is WGMMA on Hopper
            limitations=(Limitation("FP8 row-wise grouped GEMM exists only for sm_90 / sm_100",
                                    "https://github.com/pytorch/pytorch/blob/main/aten/src/ATen/native/cuda/Blas.cpp"),)),
        spies=("torch:_scaled_grouped_mm",)),
]
