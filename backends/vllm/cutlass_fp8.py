"""vLLM's CUTLASS grouped-GEMM MoE (FP8, and the NVFP4 one kept as a record for sm_100).

vLLM 0.24.0 (`vllm/model_executor/layers/fused_moe/experts/cutlass_moe.py`): there is no functional
`cutlass_moe_fp8` any more; the kernels are modular experts only, so these adapters run through
`FusedMoEKernel` (modular.py):
  - `CutlassExpertsFp8(moe_config, quant_config)` -> `run_cutlass_moe_fp8`: `moe_permute`,
    `ops.cutlass_moe_mm` (GEMM1 into bf16 `mm1_out`), `apply_moe_activation`, `ops.scaled_fp8_quant`
    (per-tensor or per-token), `ops.cutlass_moe_mm`, `moe_unpermute` (router weights + top-k sum).
    `_supports_quant_scheme`: (static per-channel W, dynamic per-token A), (static per-tensor W,
    dynamic or static per-tensor A). `_supports_current_device`: `cutlass_group_gemm_supported()`
    (sm_90, sm_100). Only gated activations (`assert activation.is_gated`).
  - `CutlassExpertsFp4` -> `run_cutlass_moe_fp4`: sm_100/110/120 families; e2m1 [E, N, K//2] uint8,
    e4m3 block scales (swizzled), `a1_gscale`/`a2_gscale` [E] (quant direction), `g1/g2_alphas`.

`per_block_to_per_tensor=True` (its own backend name) feeds DeepSeek-style 128x128 block-scaled
weights to the per-tensor CUTLASS path after re-quantizing each expert against its largest block scale
(layouts.fp8_block_to_per_tensor), the way block checkpoints are made to fit per-tensor kernels (PR #19843).
The reference keeps the block-scaled weights; the record charges the re-quantization (BLOCK_TO_TENSOR) and
declares the kernel's per-tensor activation quantization (act_quant), so a wrong scale still fails.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from moecheck.backends.base import Capability, Limitation
from moecheck.backends.problem import MoEProblem
from moecheck.backends.vllm import layouts as L
from moecheck.backends.vllm import modular as M
from moecheck.backends.vllm.triton_fused import CONFIG, TRITON_ROUNDING, VLLM_NUMERICS
from moecheck.backends.vllm.versions import VllmBackend, vmod
from moecheck.reference.errmodel.budget import ErrorBudget
from moecheck.reference.errmodel.table import Loosening
from moecheck.reference.errors import require

CUTLASS = "vllm.model_executor.layers.fused_moe.experts.cutlass_moe"
GATED = frozenset({"silu", "gelu", "gelu_tanh", "swigluoai"})  # CutlassExpertsFp8._supports_activation

# format -> (per_act_token_quant, per_out_ch_quant, static activation scales)
FP8_SCHEMES = {
    "fp8_tensor": (False, False, False),
    "fp8_tensor_static": (False, False, True),
    "fp8_token_channel": (True, True, False),
}


@dataclass
class VllmCutlassFp8(VllmBackend):
    per_block_to_per_tensor: bool = False

    def _weights(self, p: MoEProblem):
        if self.per_block_to_per_tensor:
            require(p.fmt.name == "fp8_block", f"{self.name}: per_block_to_per_tensor takes fp8_block, got {p.fmt.name}")
            (c1, s1), (c2, s2) = L.fp8_block_to_per_tensor(p.w13), L.fp8_block_to_per_tensor(p.w2)
            return c1, c2, dict(w1_scale=s1, w2_scale=s2), (False, False, False)
        require(p.fmt.name in FP8_SCHEMES, f"{self.name}: no CUTLASS FP8 scheme for format {p.fmt.name}")
        tok, ch, static = FP8_SCHEMES[p.fmt.name]
        E = p.experts
        if ch:
            s1, s2 = p.w13.scales.float().contiguous(), p.w2.scales.float().contiguous()  # [E, N, 1]
        else:
            s1, s2 = p.w13.scales.reshape(E).float(), p.w2.scales.reshape(E).float()
        kw = dict(w1_scale=s1, w2_scale=s2)
        if static:
            kw.update(a1_scale=p.a1_scale.reshape(1).float(), a2_scale=p.a2_scale.reshape(1).float())
        return p.w13.codes.contiguous(), p.w2.codes.contiguous(), kw, (tok, ch, static)

    def prepare(self, p: MoEProblem) -> M._Prepared:
        require(p.lora is None and p.w13_bias is None and p.w2_bias is None, f"{self.name}: CUTLASS FP8 MoE takes no LoRA/bias")
        w1, w2, kw, (tok, ch, _) = self._weights(p)
        qc = vmod(CONFIG).fp8_w8a8_moe_quant_config(**kw, per_act_token_quant=tok, per_out_ch_quant=ch)
        experts = vmod(CUTLASS).CutlassExpertsFp8(M.moe_config(p), qc)
        return M._Prepared(M.kernel(experts), w1, w2)

    def run(self, w: M._Prepared, p: MoEProblem, out=None) -> torch.Tensor:
        return M.emit(M.apply(w.kernel, w.w1, w.w2, p), out)


@dataclass
class VllmCutlassNvfp4(VllmBackend):
    def prepare(self, p: MoEProblem) -> M._Prepared:
        require(p.fmt.name == "nvfp4", f"{self.name}: takes nvfp4, got {p.fmt.name}")
        require(p.lora is None and p.w13_bias is None, f"{self.name}: no LoRA/bias mapping")
        c1, sb1, wgs1 = L.nvfp4_for_cutlass(p.w13)
        c2, sb2, wgs2 = L.nvfp4_for_cutlass(p.w2)
        # moecheck's static a1/a2 are dequant-direction globals (amax / 2688); the kernel takes 1/that per expert
        a1_gs, a2_gs = ((1.0 / s.float().reshape(())).expand(p.experts).contiguous() for s in (p.a1_scale, p.a2_scale))
        qc = vmod(CONFIG).nvfp4_moe_quant_config(
            g1_alphas=(1.0 / (a1_gs * wgs1)).float(), g2_alphas=(1.0 / (a2_gs * wgs2)).float(),
            a1_gscale=a1_gs.float(), a2_gscale=a2_gs.float(), w1_scale=sb1, w2_scale=sb2)
        experts = vmod(CUTLASS).CutlassExpertsFp4(M.moe_config(p), qc)
        return M._Prepared(M.kernel(experts), c1.contiguous(), c2.contiguous())

    def run(self, w: M._Prepared, p: MoEProblem, out=None) -> torch.Tensor:
        return M.emit(M.apply(w.kernel, w.w1, w.w2, p), out)


_FP8_SPIES = (*M.composition_spies(CUTLASS, "run_cutlass_moe_fp8"), "vllm._custom_ops:cutlass_moe_mm")
_ARCHS_FP8 = frozenset({(9, 0), (10, 0)})  # cutlass_group_gemm_supported(): sm_90 and sm_100
_DT = frozenset({torch.bfloat16, torch.float16})
LIM_ALIGN = Limitation("CUTLASS grouped GEMM: hidden and intermediate sizes multiples of 16 (16-byte fp8 rows)")
LIM_NO_EP = Limitation("expert_map not claimed: CutlassExpertsFp8 zero-fills for EP only in the per-tensor path")


# The per-block -> per-tensor weight conversion (layouts.fp8_block_to_per_tensor) re-rounds each e4m3 weight
# on its expert's coarsest grid: RNE with 3 mantissa bits moves a normal value by at most half a step, 2^-4
# relative; values flushed to e4m3 subnormals move by more relative but are too small to matter in a GEMM.
BLOCK_TO_TENSOR = Loosening(
    ErrorBudget(weight_rel=2.0**-4),
    "block-scaled weights re-quantized per tensor (max block scale): every e4m3 weight re-rounded, <= 2^-4 relative",
    formats="fp8_block")


# run_cutlass_moe_fp8 stores GEMM2 in the output dtype (mm2_out), then moe_unpermute multiplies each slot by its
# fp32 router weight and sums the k slots ("topk weights and reduction are fused in moe_unpermute",
# experts/cutlass_moe.py:260, :423; its kernel accumulates in float): round(o) * w summed in fp32, not the
# Triton kernel's weighted store. H200 2026-12-03: fp16 slots above 65504 before their weight (103da3)
CUTLASS_ROUNDING = replace(TRITON_ROUNDING, weighted_store=False, topk_sum=torch.float32, topk_sum_k=None)


def _cap(formats, archs, numerics=VLLM_NUMERICS, **kw) -> Capability:
    return Capability(formats=frozenset(formats), dtypes=_DT, archs=archs, activations=GATED, hidden_align=16,
                      inter_align=16, min_tokens=M.MIN_TOKENS, rounding=CUTLASS_ROUNDING, requires=("vllm",),
                      numerics=numerics, tiny_values=False, forwards=M.APPLY_FORWARDS, **kw)


BACKENDS = [
    VllmCutlassFp8(
        name="vllm_cutlass_fp8", description="FusedMoEKernel + CutlassExpertsFp8 (per-tensor or per-token x per-channel)",
        capability=_cap(FP8_SCHEMES, _ARCHS_FP8, limitations=(LIM_ALIGN, LIM_NO_EP), verified=(
            "H200 sm_90, vLLM 0.24.0 (2026-12-03): fp8_tensor, fp8_tensor_static, fp8_token_channel: 15-16 of 17 "
            "properties pass with 20 examples (IEEE reference, max + rms + bias verdicts); T=0 raises 'CUDA error: "
            "invalid argument' and fp8_token_channel padded_equals_unpadded gave 12 non-finite outputs at fp16 outliers "
            "(docs/findings/h200-2026-12-03/open, untriaged)",)), spies=_FP8_SPIES),
    VllmCutlassFp8(
        name="vllm_cutlass_fp8_block_to_tensor", per_block_to_per_tensor=True,
        description="CutlassExpertsFp8 fed fp8_block weights re-quantized to one scale per expert (max block scale), "
                    "dynamic per-tensor activations",
        # the per-tensor kernel quantizes activations per tensor (dynamic), not per 1x128 group: mirrored
        capability=_cap({"fp8_block"}, _ARCHS_FP8, act_quant="fp8_tensor",
                        numerics=(*VLLM_NUMERICS, BLOCK_TO_TENSOR), limitations=(LIM_ALIGN, LIM_NO_EP, Limitation(
            "the conversion re-rounds every block whose scale is below the expert's maximum (charged as "
            "BLOCK_TO_TENSOR) and the kernel quantizes activations per tensor, not per 1x128 group (the "
            "reference mirrors that: act_quant). Measured on CPU: the conversion alone is 1.15 to 1.8x the "
            "fp8_block bound without the term, the H200 miss of 2026-12-02 (1.15 to 1.26x)")), verified=(
            "H200 sm_90, vLLM 0.24.0 (2026-12-03): with the BLOCK_TO_TENSOR term, 16 of 17 properties pass with 20 "
            "examples (matches_reference worst 0.47 of the bound; rms and bias judged); T=0 raises 'CUDA error: "
            "invalid argument' (docs/findings/h200-2026-12-03/open)",)),
        spies=_FP8_SPIES),
    VllmCutlassNvfp4(
        name="vllm_cutlass_nvfp4", description="FusedMoEKernel + CutlassExpertsFp4 (NVFP4 weights and activations)",
        capability=_cap({"nvfp4"}, frozenset({(10, 0)}), limitations=(Limitation(
            "CutlassExpertsFp4._supports_current_device: sm_100/110/120 families; not runnable on sm_90 (H100)"),
            Limitation("static activation globals only (format nvfp4: a1/a2 as checkpoints calibrate them); "
                       "nvfp4_dynamic is not a mode of this kernel"))),
        spies=(*M.composition_spies(CUTLASS, "run_cutlass_moe_fp4"), "vllm._custom_ops:cutlass_fp4_moe_mm")),
]
