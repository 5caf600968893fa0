"""flashinfer.fused_moe.cutlass_fused_moe (the TensorRT-LLM CUTLASS MoE), one adapter per format.

Signature read in site-packages/flashinfer/fused_moe/core.py (0.7.2.post1): cutlass_fused_moe(input,
token_selected_experts, token_final_scales, fc1_expert_weights, fc2_expert_weights, output_dtype,
quant_scales, fc1_expert_biases=None, ..., input_sf=None, swiglu_alpha/beta/limit=None, ..., output=None,
use_deepseek_fp8_block_scale=False, use_w4_group_scaling=False, use_mxfp8_act_scaling=False, ...,
activation_type=ActivationType.Swiglu, swizzled_input_sf=True, use_fused_finalize=True, ...). It returns
[output, ...] (a list). quant_scales per recipe follow tests/moe/test_trtllm_cutlass_fused_moe.py
(test_moe_fp8, test_moe_fp8_block_scaling, test_moe_bf16_mxfp4, test_moe_mxfp8_mxfp4, test_moe_nvfp4).

Each recipe is a record: a pure-torch `layout` (CPU-testable: gate/up order, scale swizzle/fold),
the device-only steps FlashInfer's own helpers do (`finish`), the per-call inputs, and the flags.
The adapters always pass use_fused_finalize=False: the documented deterministic finalize (fp32
weighted sum, one rounding); the default fused finalize reduces with atomics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from moecheck.backends.base import Capability, Limitation
from moecheck.backends.flashinfer import common as C
from moecheck.backends.flashinfer import layouts as L
from moecheck.backends.problem import MoEProblem
from moecheck.reference.errmodel.table import FP8_WGMMA
from moecheck.reference.errors import require
from moecheck.reference.qtensor import QTensor
from moecheck.reference.quantize import quantize

SPY = (f"{C.FUSED_MOE}:cutlass_fused_moe",)
_ALL_ARCHS = frozenset({(8, 9), (9, 0), (10, 0), (10, 3), (11, 0), (12, 0), (12, 1)})  # core.py get_cutlass_fused_moe_module
_SM100 = frozenset({(10, 0), (10, 3), (11, 0), (12, 0), (12, 1)})


def _fc1(p: MoEProblem):
    """GEMM1 weights in [up | gate] order (a QTensor keeps its scales with the rows)."""
    perm = L.to_up_gate(p.w13.shape[1], p.activation)
    if isinstance(p.w13, QTensor):
        return L.permute_qtensor_rows(p.w13, perm)
    return L.permute_rows(p.w13, perm)


# ------------------------------------------------------------- layouts (pure torch)

def _layout_bf16(p):
    dt = p.hidden_states.dtype
    return dict(fc1=_fc1(p).to(dt), fc2=p.w2.to(dt).contiguous())


def _layout_fp8_tensor(p):
    q1 = _fc1(p)
    E = q1.shape[0]
    return dict(fc1=q1.codes.contiguous(), fc2=p.w2.codes.contiguous(),
                s1=q1.scales.reshape(E).float(), s2=p.w2.scales.reshape(E).float())


def _layout_fp8_block(p):
    q1 = _fc1(p)
    return dict(fc1=q1.codes.contiguous(), fc2=p.w2.codes.contiguous(),
                s1=q1.scales.float().contiguous(), s2=p.w2.scales.float().contiguous())


def _layout_mxfp4_bf16(p):
    q1 = _fc1(p)
    return dict(fc1=q1.codes.contiguous(), fc2=p.w2.codes.contiguous(),
                s1=L.sm90_mixed_scale_fold(q1.scales.contiguous(), 32),
                s2=L.sm90_mixed_scale_fold(p.w2.scales.contiguous(), 32))


def _layout_nvfp4(p):
    q1 = _fc1(p)
    return dict(fc1=q1.codes.contiguous(), fc2=p.w2.codes.contiguous(),
                s1=L.swizzle_expert_scales(q1.scales.view(torch.uint8)), s2=L.swizzle_expert_scales(p.w2.scales.view(torch.uint8)),
                g1=q1.global_scale.float(), g2=p.w2.global_scale.float())


def _layout_mxfp4_mxfp8(p):
    q1 = _fc1(p)
    return dict(fc1=q1.codes.contiguous(), fc2=p.w2.codes.contiguous(),
                s1=L.swizzle_expert_scales(q1.scales), s2=L.swizzle_expert_scales(p.w2.scales))


# ------------------------------------------------------------- device-only steps (FlashInfer helpers)

def _finish_none(d, p):
    return d


def _finish_sm90_mixed(d, p):
    fm = C.fused_moe()  # SM90 mixed-input GEMM byte interleave: a CUDA op of the fused_moe_90 module
    d = dict(d)
    d["fc1"] = fm.interleave_moe_weights_for_sm90_mixed_gemm(d["fc1"].view(torch.uint8), "fp4")
    d["fc2"] = fm.interleave_moe_weights_for_sm90_mixed_gemm(d["fc2"].view(torch.uint8), "fp4")
    return d


# ------------------------------------------------------------- per-call inputs

def _in_bf16(w, p):
    return p.hidden_states, None, None


def _in_fp8_tensor(w, p):
    a1, a2 = p.a1_scale.float().reshape(()), p.a2_scale.float().reshape(())
    xq = quantize(p.hidden_states, p.fmt.act, a1).codes  # the calibrated input scale, as the caller quantizes
    scales = [w["s1"] * a1, (1.0 / a2).reshape(()), w["s2"] * a2, a1]
    return xq, None, scales


def _in_fp8_block(w, p):
    return p.hidden_states.contiguous(), None, [w["s1"], w["s2"]]


def _in_mxfp4_bf16(w, p):
    return p.hidden_states.contiguous(), None, [w["s1"].view(torch.int32), w["s2"].view(torch.int32)]


def _in_nvfp4(w, p):
    """Input pre-quantized with the calibrated global a1 (as fp4_quantize(x, 1/a1) would), scales 128x4.
    quant_scales (test_moe_nvfp4): [fc1 act global (quant direction) = 1/a1, fc1 block scales, fc1 alpha
    = 1/(act_gs * w_gs) = a1 * g1 per expert, fc2 act global = 1/a2, fc2 block scales, a2 * g2]."""
    a1, a2 = p.a1_scale.float().reshape(()), p.a2_scale.float().reshape(())
    q = quantize(p.hidden_states, p.fmt.act, a1)
    sf = L.swizzle_128x4(q.scales.view(torch.uint8)).reshape(-1, -(-q.scales.shape[-1] // 4) * 4)
    scales = [(1.0 / a1).reshape(()), w["s1"].view(torch.int32), w["g1"] * a1, (1.0 / a2).reshape(()),
              w["s2"].view(torch.int32), w["g2"] * a2]
    return q.codes, sf, scales


def _in_mxfp4_mxfp8(w, p):
    q = quantize(p.hidden_states, p.fmt.act)  # MXFP8 RCEIL input, as mxfp8_quantize(x, True, 32) makes it
    sf = L.swizzle_128x4(q.scales).reshape(-1)
    ones = torch.ones(p.experts, dtype=torch.float32, device=p.device)
    return q.codes, sf, [w["s1"].view(torch.int32), ones, w["s2"].view(torch.int32), ones]


@dataclass(frozen=True)
class Recipe:
    layout: Callable  # (problem) -> dict of tensors, pure torch
    finish: Callable  # (dict, problem) -> dict, FlashInfer's own device-side helpers
    inputs: Callable  # (prepared, problem) -> (input, input_sf, quant_scales)
    flags: tuple = ()  # extra cutlass_fused_moe keyword flags
    fc_view: torch.dtype | None = None  # view of the packed 4-bit weights FlashInfer wants (int64)


RECIPES = {
    "bf16": Recipe(_layout_bf16, _finish_none, _in_bf16),
    "fp8_tensor": Recipe(_layout_fp8_tensor, _finish_none, _in_fp8_tensor),
    "fp8_block": Recipe(_layout_fp8_block, _finish_none, _in_fp8_block, (("use_deepseek_fp8_block_scale", True),)),
    "mxfp4_bf16": Recipe(_layout_mxfp4_bf16, _finish_sm90_mixed, _in_mxfp4_bf16, (("use_w4_group_scaling", True),)),
    "nvfp4": Recipe(_layout_nvfp4, _finish_none, _in_nvfp4, fc_view=torch.int64),
    "mxfp4_mxfp8": Recipe(_layout_mxfp4_mxfp8, _finish_none, _in_mxfp4_mxfp8, (("use_mxfp8_act_scaling", True),),
                          fc_view=torch.int64),
}


@dataclass
class CutlassFusedMoE(C.FlashInferBackend):
    recipe: str = "bf16"

    def layout(self, p: MoEProblem) -> dict:
        """The pure-torch part of prepare (runs on CPU): what FlashInfer's layout contract asks for."""
        require(not self.not_wired, f"{self.name}: {self.not_wired}")
        require(p.fmt.name in self.capability.formats, f"{self.name} has no weight recipe for format {p.fmt.name}")
        require(p.expert_map is None, "cutlass_fused_moe shards experts by ep_size/ep_rank ranges, not by an expert_map")
        require(p.lora is None and not p.apply_router_weight_on_input,
                "cutlass_fused_moe has no MoE-LoRA and no router-weight-on-input path")
        return RECIPES[self.recipe].layout(p)

    def prepare(self, p: MoEProblem) -> dict:
        d = RECIPES[self.recipe].finish(self.layout(p), p)
        if p.w13_bias is not None:  # not claimed by the record; passed on so the audit probes the library
            d["b1"] = p.w13_bias[:, L.to_up_gate(p.w13.shape[1], p.activation).to(p.device)].to(p.hidden_states.dtype)
            d["b2"] = p.w2_bias.to(p.hidden_states.dtype) if p.w2_bias is not None else None
        return d

    def run(self, w: dict, p: MoEProblem, out=None) -> torch.Tensor:
        rec = RECIPES[self.recipe]
        x, input_sf, quant_scales = rec.inputs(w, p)
        fc1, fc2 = w["fc1"], w["fc2"]
        if rec.fc_view is not None:
            fc1, fc2 = fc1.contiguous().view(rec.fc_view), fc2.contiguous().view(rec.fc_view)
        res = C.call(
            C.fused_moe(), "cutlass_fused_moe", x, p.topk_ids.to(torch.int32).contiguous(), p.topk_weights.float().contiguous(), fc1, fc2,
            p.hidden_states.dtype, quant_scales=quant_scales, fc1_expert_biases=w.get("b1"),
            fc2_expert_biases=w.get("b2"), input_sf=input_sf, output=out, activation_type=C.activation_type(p),
            use_fused_finalize=False, **C.swiglu_params(p, p.experts), **dict(rec.flags))
        return C.first_output(res, out)


_ACTS = frozenset({"silu", "silu_up_gate", "swigluoai", "gelu_tanh", "relu2"})
_LINK = "https://github.com/flashinfer-ai/flashinfer/blob/main/tests/moe/test_trtllm_cutlass_fused_moe.py"


def _cap(formats, archs, rounding, acts=_ACTS, dtypes=frozenset({torch.bfloat16}), extra=()):
    # the FP8 CUTLASS grouped GEMM on Hopper is WGMMA with its truncating ~14-bit accumulator (formats fp8*)
    return Capability(formats=frozenset(formats), dtypes=dtypes, archs=frozenset(archs), activations=acts,
                      out_buffer=True, hidden_align=128, inter_align=128, rounding=rounding, numerics=(FP8_WGMMA,),
                      forwards=frozenset({"bias"}),  # prepare passes biases on (fc1/fc2_expert_biases)
                      requires=C.REQUIRES, limitations=(C.UNVERIFIED, *[C.SM90_MOE_LIMIT] * ((9, 0) in archs), *extra),
                      verified=(), deterministic=True)


# where a quantized path rounds to bf16 is not read (docs/rounding.md section 11: "quantized modes
# unverified"): the record claims every bf16 hand-off. Claiming a rounding the kernel does not do only
# widens the bound by that rounding's half ulp; omitting one it does would fail a correct kernel.
_FP8_ROUNDING = C.BF16_ROUNDING

BACKENDS = [
    CutlassFusedMoE(
        name="flashinfer_cutlass_bf16", recipe="bf16", spies=SPY, gates=C.SM90_MOE_GATE,
        description="cutlass_fused_moe, bf16/fp16 weights and activations",
        capability=_cap({"bf16", "fp16"}, _ALL_ARCHS, C.BF16_ROUNDING, dtypes=frozenset({torch.bfloat16, torch.float16}),
                        extra=(Limitation("test_moe uses fp16; bf16 and the gelu_tanh/relu2/gpt-oss paths per the docstring", _LINK),))),
    CutlassFusedMoE(
        name="flashinfer_cutlass_fp8_tensor", recipe="fp8_tensor", spies=SPY, gates=C.SM90_MOE_GATE,
        description="cutlass_fused_moe FP8 e4m3, per-expert weight scales, calibrated (static) activation scales",
        capability=_cap({"fp8_tensor_static"}, _ALL_ARCHS, _FP8_ROUNDING, acts=frozenset({"silu", "silu_up_gate", "relu2"}),
                        extra=(Limitation("the intermediate FP8 scale is static (quant_scales[1] = 1/a2): only the "
                                          "fp8_tensor_static format applies, dynamic fp8_tensor cannot be expressed", _LINK),))),
    CutlassFusedMoE(
        name="flashinfer_cutlass_fp8_block", recipe="fp8_block", spies=SPY, gates=C.SM90_MOE_GATE,
        description="cutlass_fused_moe DeepSeek FP8 (128x128 weight blocks, kernel quantizes activations per 1x128)",
        capability=_cap({"fp8_block"}, {(9, 0)}, C.BF16_ROUNDING, acts=frozenset({"silu", "silu_up_gate"}),
                        extra=(Limitation("use_deepseek_fp8_block_scale raises NotImplementedError off sm_90 "
                                          "('not yet implemented for Blackwell') and needs CUDA >= 12.8",
                                          "https://github.com/flashinfer-ai/flashinfer/blob/main/flashinfer/fused_moe/core.py"),))),
    CutlassFusedMoE(
        name="flashinfer_cutlass_mxfp4_bf16", recipe="mxfp4_bf16", spies=SPY, gates=C.SM90_MOE_GATE,
        description="cutlass_fused_moe W4A16: MXFP4 weights (SM90 mixed-input GEMM) x bf16 activations",
        capability=_cap({"mxfp4_bf16", "mxfp4_bf16_rceil", "mxfp4_bf16_even"}, {(9, 0)}, C.BF16_ROUNDING,
                        acts=frozenset({"silu", "silu_up_gate", "swigluoai"}),
                        extra=(Limitation("test_moe_bf16_mxfp4 is skipped off sm_90 ('BF16xMXFP4 is only supported on "
                                          "SM90'); weights need interleave_moe_weights_for_sm90_mixed_gemm (a CUDA op "
                                          "of fused_moe_90), scales the 64x128 fold", _LINK),))),
    CutlassFusedMoE(
        name="flashinfer_cutlass_mxfp8_mxfp4", recipe="mxfp4_mxfp8", spies=SPY,
        description="cutlass_fused_moe MXFP4 weights x MXFP8 activations (use_mxfp8_act_scaling)",
        capability=_cap({"mxfp4_mxfp8_rceil"}, _SM100, _FP8_ROUNDING,
                        acts=frozenset({"silu", "silu_up_gate", "swigluoai"}),
                        extra=(Limitation("test_moe_mxfp8_mxfp4 runs only on SM100/SM110/SM120; the kernel "
                                          "re-quantizes the intermediate with RCEIL scales, so only mxfp4_mxfp8_rceil", _LINK),))),
    CutlassFusedMoE(
        name="flashinfer_cutlass_nvfp4", recipe="nvfp4", spies=SPY,
        description="cutlass_fused_moe NVFP4 weights and activations (calibrated activation global scales)",
        capability=_cap({"nvfp4"}, _SM100, C.BF16_ROUNDING, acts=frozenset({"silu", "silu_up_gate", "relu2"}),
                        extra=(Limitation("test_moe_nvfp4 is skipped off SM100/SM110/SM120; the input goes in "
                                          "pre-quantized (input_sf, 128x4), the intermediate is quantized by the kernel "
                                          "with the static fc2 global 1/a2", _LINK),))),
    CutlassFusedMoE(
        name="flashinfer_cutlass_w4a8", recipe="bf16", spies=SPY,
        not_wired=("not wired: W4A8 takes static bf16 activation scales (fc31_act_scale, fc2_act_scale, "
                   "alpha); moecheck's w4a8 scales both activations dynamically per tensor"),
        description="cutlass_fused_moe INT4 (group 128) weights x FP8 activations, SM90 mixed-input GEMM",
        capability=_cap({"w4a8"}, {(9, 0)}, _FP8_ROUNDING)),
]
