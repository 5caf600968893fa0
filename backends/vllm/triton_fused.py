"""vLLM's Triton fused MoE (`fused_experts`) with the quantization it dispatches to, one backend per family.

vLLM 0.24.0 source read for this file (`vllm/model_executor/layers/fused_moe/`):
  - `fused_moe.py: fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, activation:
    MoEActivation = SILU, apply_router_weight_on_input=False, global_num_experts=-1, expert_map=None,
    quant_config: FusedMoEQuantConfig | None = None) -> Tensor`: no `inplace`/`output` argument in
    0.24 (the result is a new tensor: `out_hidden_states = torch.empty_like(hidden_states)`), so no
    out_buffer. Quantization is passed only as a FusedMoEQuantConfig built by the helpers in
    `config.py` (`fp8_w8a8_moe_quant_config`, `int8_w8a8_moe_quant_config`,
    `int4_w4a16_moe_quant_config`, `int8_w8a16_moe_quant_config`, `biased_moe_quant_config`).
  - `fused_experts_impl`: `ocp_mx_scheme` raises NotImplementedError ("use
    OCP_MXQuantizationEmulationTritonExperts"): the MX paths are modular only (modular.py).
  - Rounding (`fused_moe_kernel`): fp32 accumulator x scales (+ bias) [x router weight on GEMM2],
    then `accumulator.to(compute_type)` (bf16/fp16) into intermediate_cache1/3;
    `apply_moe_activation` -> `torch.ops._C.silu_and_mul` (silu(gate) rounded to bf16 before the
    multiply, docs/rounding.md section 11); `ops.moe_sum` (top-k 2..4: scalar_t accumulator).
  - WNA16 (`fused_moe_kernel_gptq_awq`, `invoke_fused_moe_wna16_cuda_kernel` -> `ops.moe_wna16_gemm`
    when tokens*k/E <= 6 and 4-bit): layouts in layouts.py; no bias (`assert B_bias is None`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from moecheck.backends.base import Capability, Limitation
from moecheck.backends.problem import MoEProblem
from moecheck.backends.vllm import layouts as L
from moecheck.backends.vllm.versions import VllmBackend, vmod
from moecheck.reference.errmodel.budget import ErrorBudget
from moecheck.reference.errmodel.table import FAST_ACT_FN, TENSOR_CORE_MMA, Loosening
from moecheck.reference.errors import require
from moecheck.reference.moe import ACT, Rounding

FUSED_MOE = "vllm.model_executor.layers.fused_moe.fused_moe"
CONFIG = "vllm.model_executor.layers.fused_moe.config"
ACTIVATION = "vllm.model_executor.layers.fused_moe.activation"

# moecheck activation preset -> vLLM MoEActivation member (activation.py). relu2 is ungated: *_NO_MUL.
VLLM_ACTIVATION = {"silu": "SILU", "gelu": "GELU", "gelu_tanh": "GELU_TANH", "swigluoai": "SWIGLUOAI",
                   "relu2": "RELU2_NO_MUL"}

# bf16 GEMM1 out; silu_and_mul / gelu_and_mul store f(gate) in the activation dtype before the multiply
# (act_gate), swigluoai_and_mul keeps glu in fp32 (csrc/activation_kernels.cu: (T)((up + 1) * glu); the
# H200 run of 2026-12-02 failed RMS on every swigluoai case until the record said so); bf16 activation out; bf16
# per-expert GEMM2 out, stored after the fp32 multiply by the router weight (fused_moe_kernel's
# MUL_ROUTED_WEIGHT epilogue); moe_sum (csrc/moe/moe_align_sum_kernels.cu) adds in the activation dtype
# for k in {2, 3, 4} and falls back to at::sum_out (fp32 accumulator) for every other k
MOE_SUM_NARROW_K = frozenset({2, 3, 4})
GATE_STORED = frozenset({"silu", "gelu", "gelu_tanh"})  # vLLM's act_and_mul kernels that return f(gate) as T
TRITON_ROUNDING = Rounding(gemm1_out=ACT, act_out=ACT, gemm2_out=ACT, topk_sum=ACT, act_gate=ACT,
                           weighted_store=True, topk_sum_k=MOE_SUM_NARROW_K, act_gate_kinds=GATE_STORED)
FP8_ARCHS = frozenset({(8, 9), (9, 0), (10, 0), (12, 0)})  # Triton fp8 tl.dot needs sm_89+

# how vLLM's kernels' arithmetic differs from the baseline budget (reference/errmodel/table.py)
VLLM_FP8_MMA = Loosening(
    ErrorBudget(acc_unit=2.0**-13, acc_biased=True),
    "FP8 MMA accumulation on Hopper: vLLM 0.24 fused_moe_kernel passes acc= to tl.dot for fp8 ('acc used to "
    "enable fp8_fast_accum', fused_moe.py), i.e. WGMMA's ~14-bit truncating accumulator before promotion "
    "(DeepSeek-V3 report sec. 3.3.2); the CUTLASS FP8 grouped GEMM is given the same (its kernel schedule not read)",
    formats="fp8_[bt]*")
WNA16_SCALES = Loosening(
    ErrorBudget(weight_rel=2.0**-7),
    "vLLM WNA16 rounds each weight twice: group scales are taken in the activation dtype (moe_wna16.py "
    "params_dtype; csrc/moe/moe_wna16.cu reads b_scales as bf16/half), and fused_moe_kernel_gptq_awq casts "
    "(q - z) * s to compute_type before tl.dot: two roundings of <= u(bf16) = 2^-8, variance 2u^2/3, covered by "
    "weight_rel >= sqrt(2) u", formats="int[48]_*w_g*")

# every vLLM GPU record: tensor-core MMA; the CUDA activation kernels (silu_and_mul, swigluoai_and_mul) with a
# fast exp, measured on the H200 2026-12-02 (rms 0.092 over a 0.086 bound at I=1 with the exact-exp budget)
VLLM_NUMERICS = (TENSOR_CORE_MMA, FAST_ACT_FN, VLLM_FP8_MMA)

LIM_ROUTER_ON_INPUT = Limitation(
    "apply_router_weight_on_input multiplies the GEMM1 accumulator by the weight (MUL_ROUTED_WEIGHT), "
    "after the input was quantized; moecheck's reference scales the input first: not claimed")
LIM_WNA16_SCALES = Limitation(
    "group scales are handed over in the activation dtype (MoeWNA16Method's params_dtype; the CUDA path "
    "requires it): moecheck's fp32 scales are rounded there, charged as weight_rel in reference/errmodel/table.py")
# the CUDA moe_wna16_gemm (csrc/moe/moe_wna16.cu, read 2026-12-03): (q - z) * s and the products in half2
# arithmetic (__hmul2 / __hfma2 in the activation dtype, chains of 16/bit = 4 fmas per lane, then fp32 across a
# K block), and each K block's sum rounded to the activation dtype and atomicAdd-ed into the zeroed output
# (gridDim.z = K / BLOCK_SIZE_K, BLOCK_SIZE_K >= 128 in get_moe_wna16_block_config)
WNA16_CUDA = Loosening(
    ErrorBudget(weight_rel=3 * 2.0**-8, acc_unit=2.0**-12),
    "the CUDA moe_wna16_gemm (4-bit, group 32/64/128, tokens*k/E <= 6: should_moe_wna16_use_cuda) forms each "
    "weight times its input in bf16/fp16 fmas: per product the scale multiply plus a chain of 4 fma roundings "
    "(on average 2.5 of u^2/3 with random signs) beside WNA16_SCALES' two: 5.5 u^2/3 <= weight_rel^2/3 with "
    "weight_rel = 3u (u = 2^-8, bf16's). Its K-block sums are added in the output dtype: s = K/BLOCK_SIZE_K "
    "adds of a running sum, about u^2 s/2 |out|^2 / 3, which acc_unit^2 K/3 covers for acc_unit = u / sqrt(2 * 128)",
    formats="int4_*")
LIM_WNA16_ATOMIC = Limitation(
    "not deterministic: the CUDA moe_wna16_gemm atomicAdds its K blocks into the output (moe_wna16.cu; "
    "fused_moe.py:1709 zeroes intermediate_cache3 for it): H200 2026-12-03, 4335 and 16564 elements differed "
    "over 3 reruns (int4_w_g32, int4_zp_w_g64)")
LIM_WNA16_G32 = Limitation(
    "group 32 on the CUDA path can be refused: get_moe_wna16_block_config (fused_moe.py:1160-1172) doubles "
    "BLOCK_SIZE_K up to 512 while moe_wna16.cu:317 takes BLOCK_SIZE_K / group_size in {1, 2, 4, 8} (a vLLM "
    "0.24.0 bug; later vLLM clamps block_size_k to 8 * group_size): open finding, docs/findings/h200-2026-12-03")
# what ran where: docs/findings/h200-2026-12-02/README.md
H200_0212 = ("H200 sm_90, vLLM 0.24.0, torch 2.11 (2026-12-02): matches_reference, padded_equals_unpadded and "
             "kernel_ran pass with 20 drawn examples each; T=0 faults (open finding)",)
LIM_PER_TENSOR = Limitation(
    "dynamic per-tensor activation quant multiplies by 1/scale (scaled_fp8_quant); all-zero input gets scale 0",
    "docs/rounding.md section 6")
# an open vLLM finding, not a contract: the record stops claiming EP here so the rest of the format is still
# judged; tests/backends/test_findings.py replays the case until vLLM fixes it (then claim expert_map again)
LIM_EP_SCALE = Limitation(
    "expert map not claimed: with one, the Triton experts' (fused_experts, TritonExperts) dynamic per-tensor scale of the GEMM2 input is taken over "
    "intermediate rows GEMM1 never wrote (_prepare_expert_assignment(ignore_invalid_experts=True) drops remote "
    "slots; intermediate_cache1 is torch.empty): the output depends on stale memory, NaN when it holds NaN",
    "docs/findings/h200-2026-12-02/README.md")
LIM_MOE_SUM = Limitation(
    "ops.moe_sum accumulates top-k 2..4 in the activation dtype; other k use at::sum_out (fp32)",
    "vllm csrc/moe/moe_align_sum_kernels.cu")


def moe_activation(name: str):
    require(name in VLLM_ACTIVATION, f"vLLM fused MoE has no activation for moecheck preset {name!r}")
    return vmod(ACTIVATION).MoEActivation[VLLM_ACTIVATION[name]]


def routing_args(p: MoEProblem) -> dict:
    """topk ids as int32 (vLLM routers' dtype), fp32 weights, EP map as int32."""
    em = None if p.expert_map is None else p.expert_map.to(torch.int32).contiguous()
    return dict(topk_weights=p.topk_weights.float().contiguous(), topk_ids=p.topk_ids.to(torch.int32).contiguous(),
                global_num_experts=p.expert_map.numel() if em is not None else p.experts, expert_map=em)


def _bias(p: MoEProblem) -> dict:
    """fp32 biases: the kernel adds them to its fp32 accumulator whatever their dtype; checkpoints keep
    them in the activation dtype, which would round moecheck's fp32 biases before the comparison."""
    return dict(w1_bias=None if p.w13_bias is None else p.w13_bias.float().contiguous(),
                w2_bias=None if p.w2_bias is None else p.w2_bias.float().contiguous())


# ---- per-format weight conversion and quant-config arguments (records, not branches) ----

def _plain(p):
    dt = p.hidden_states.dtype
    return p.w13.to(dt).contiguous(), p.w2.to(dt).contiguous(), {}


def _fp8_per_expert(p):
    E = p.experts
    return p.w13.codes, p.w2.codes, dict(w1_scale=p.w13.scales.reshape(E).float(), w2_scale=p.w2.scales.reshape(E).float())


def _fp8_static(p):
    w1, w2, kw = _fp8_per_expert(p)
    return w1, w2, dict(kw, a1_scale=p.a1_scale.reshape(1).float(), a2_scale=p.a2_scale.reshape(1).float())


def _per_channel(p):  # weight scales [E, N, 1] fp32: the kernel reads stride(0)/stride(1)
    return p.w13.codes, p.w2.codes, dict(w1_scale=p.w13.scales.float().contiguous(), w2_scale=p.w2.scales.float().contiguous())


def _fp8_block(p):
    w1, w2, kw = _per_channel(p)
    return w1, w2, dict(kw, block_shape=list(p.fmt.weight.block))


def _wna16(code_fn, with_zp: bool):
    def conv(p):
        q13, q2 = p.w13, p.w2
        # scales in the activation dtype, as MoeWNA16Method stores them: the CUDA moe_wna16_gemm reads
        # b_scales.data_ptr<at::BFloat16/Half>() (csrc/moe/moe_wna16.cu) and refuses fp32
        dt = p.hidden_states.dtype
        kw = dict(w1_scale=q13.scales.to(dt).contiguous(), w2_scale=q2.scales.to(dt).contiguous(),
                  block_shape=[0, L.group_size(q13)])
        if with_zp:
            kw.update(w1_zp=L.pack_zeros_along_n(q13.zeros), w2_zp=L.pack_zeros_along_n(q2.zeros))
        return code_fn(q13), code_fn(q2), kw
    return conv


@dataclass(frozen=True)
class QuantPath:
    helper: str | None  # config.py helper that builds the FusedMoEQuantConfig; None = unquantized
    convert: Callable  # MoEProblem -> (w1, w2, helper kwargs)
    extra: dict = field(default_factory=dict)  # fixed helper kwargs
    takes_bias: bool = True


_INT4_SYM = _wna16(lambda q: L.int4_packed_to_uint4b8(q.codes).contiguous(), False)
_INT4_ZP = _wna16(lambda q: q.codes.contiguous(), True)
_INT8_W = _wna16(lambda q: L.int8_to_uint8b128(q.codes).contiguous(), False)

PATHS: dict[str, QuantPath] = {
    "bf16": QuantPath(None, _plain),
    "fp16": QuantPath(None, _plain),
    "fp8_tensor": QuantPath("fp8_w8a8_moe_quant_config", _fp8_per_expert),
    "fp8_tensor_static": QuantPath("fp8_w8a8_moe_quant_config", _fp8_static),
    "fp8_token_channel": QuantPath("fp8_w8a8_moe_quant_config", _per_channel,
                                   dict(per_act_token_quant=True, per_out_ch_quant=True)),
    "fp8_block": QuantPath("fp8_w8a8_moe_quant_config", _fp8_block),
    "int8_w8a8": QuantPath("int8_w8a8_moe_quant_config", _per_channel,
                           dict(a1_scale=None, a2_scale=None, per_act_token_quant=True)),
}
for _g in (32, 64, 128):
    PATHS[f"int4_w_g{_g}"] = QuantPath("int4_w4a16_moe_quant_config", _INT4_SYM, takes_bias=False)
    PATHS[f"int4_zp_w_g{_g}"] = QuantPath("int4_w4a16_moe_quant_config", _INT4_ZP, takes_bias=False)
    PATHS[f"int8_w_g{_g}"] = QuantPath("int8_w8a16_moe_quant_config", _INT8_W, takes_bias=False)


def build_quant_config(p: MoEProblem):
    """(w1, w2, FusedMoEQuantConfig or None) for problem p, through vLLM's own config helpers."""
    require(p.fmt.name in PATHS, f"vLLM Triton fused MoE adapter has no mapping for format {p.fmt.name}")
    path = PATHS[p.fmt.name]
    w1, w2, kw = path.convert(p)
    cfg = vmod(CONFIG)
    bias = _bias(p)
    has_bias = any(v is not None for v in bias.values())
    require(path.takes_bias or not has_bias, f"format {p.fmt.name}: the WNA16 kernels take no bias")
    if path.helper is None:
        return w1, w2, (cfg.biased_moe_quant_config(**bias) if has_bias else None)
    if path.takes_bias:
        kw.update(bias)
    return w1, w2, getattr(cfg, path.helper)(**kw, **path.extra)


@dataclass
class _Prepared:
    w1: torch.Tensor
    w2: torch.Tensor
    quant_config: object


@dataclass
class VllmTritonFused(VllmBackend):
    def prepare(self, p: MoEProblem) -> _Prepared:
        require(p.lora is None, f"{self.name}: fused_experts has no LoRA input (see vllm_lora_triton)")
        return _Prepared(*build_quant_config(p))

    def run(self, w: _Prepared, p: MoEProblem, out=None) -> torch.Tensor:
        fm = vmod(FUSED_MOE)  # called through the module attribute, so the spy sees it
        res = fm.fused_experts(p.hidden_states.contiguous(), w.w1, w.w2, activation=moe_activation(p.activation_name),
                               apply_router_weight_on_input=p.apply_router_weight_on_input,
                               quant_config=w.quant_config, **routing_args(p))
        if out is None:
            return res
        out.copy_(res)
        return out


SPIES = (f"{FUSED_MOE}:fused_experts", f"{FUSED_MOE}:dispatch_fused_moe_kernel", "vllm._custom_ops:moe_sum")
_DT = frozenset({torch.bfloat16, torch.float16})
_ACTS = frozenset(VLLM_ACTIVATION)


def _cap(formats, archs=None, bias=True, acts=_ACTS, limitations=(), expert_map=True, extra_numerics=(), **kw) -> Capability:
    return Capability(formats=frozenset(formats), dtypes=_DT, archs=archs, activations=acts, expert_map=expert_map,
                      bias=bias, rounding=TRITON_ROUNDING, requires=("vllm",),
                      # build_quant_config maps every PATHS format; routing_args passes any expert map
                      forwards=frozenset(PATHS) | {"weights_on_input", "expert_map"},
                      numerics=(*VLLM_NUMERICS, WNA16_SCALES, *extra_numerics),
                      tiny_values=not any(f.startswith(("fp8", "int8_w8a8")) for f in formats),  # scale floors
                      limitations=(LIM_ROUTER_ON_INPUT, LIM_MOE_SUM, *limitations), **kw)


_G = (32, 64, 128)
BACKENDS = [
    VllmTritonFused(name="vllm_triton_bf16", description="vLLM fused_experts, unquantized bf16/fp16 Triton kernel",
                    capability=_cap({"bf16", "fp16"}, verified=H200_0212),
                    spies=SPIES),
    VllmTritonFused(name="vllm_triton_fp8_tensor",
                    description="fused_experts, FP8 e4m3 per-expert weight scale, dynamic per-tensor activations",
                    capability=_cap({"fp8_tensor"}, FP8_ARCHS, expert_map=False, limitations=(LIM_PER_TENSOR, LIM_EP_SCALE)),
                    spies=SPIES),
    VllmTritonFused(name="vllm_triton_fp8_tensor_static",
                    description="fused_experts, FP8 e4m3 per-expert weight scale, static per-tensor activation scales",
                    capability=_cap({"fp8_tensor_static"}, FP8_ARCHS, verified=H200_0212),
                    spies=SPIES),
    VllmTritonFused(name="vllm_triton_fp8_token_channel",
                    description="fused_experts, FP8 per-output-channel weights x dynamic per-token activations",
                    capability=_cap({"fp8_token_channel"}, FP8_ARCHS, limitations=(Limitation(
                        "per-token scale floored at 1/(448*512): rows with amax < 1/512 quantize differently",
                        "docs/rounding.md section 6"),), verified=H200_0212),
                    spies=SPIES),
    VllmTritonFused(name="vllm_triton_fp8_block",
                    description="fused_experts, DeepSeek FP8 128x128 weight blocks x 1x128 activation groups",
                    capability=_cap({"fp8_block"}, FP8_ARCHS, hidden_align=128, inter_align=128, limitations=(Limitation(
                        "hidden and intermediate multiples of 128: per_token_group_quant_fp8 asserts "
                        "x.shape[-1] % group_size == 0 ('the last dimension of `x` ... must be divisible by group_size')",
                        "https://github.com/vllm-project/vllm/blob/v0.24.0/vllm/model_executor/layers/quantization/utils/fp8_utils.py#L595"),
                        Limitation(
                        "activation groups via per_token_group_quant_fp8: scale max(amax, 1e-10)/448; UE8M0 "
                        "(fp8_block_ue8m0) not mapped: its Triton ue8m0 rounding is exp2(ceil(log2)) (docs/rounding.md section 6)"),), verified=H200_0212),
                    spies=SPIES),
    VllmTritonFused(name="vllm_triton_int8_w8a8",
                    description="fused_experts, INT8 per-channel weights x dynamic per-token INT8 activations",
                    capability=_cap({"int8_w8a8"}, verified=H200_0212),
                    spies=SPIES),
    VllmTritonFused(name="vllm_triton_int4_w4a16",
                    description="fused_experts WNA16: INT4 group-quantized weights (uint4b8, or uint4 with zero points)",
                    capability=_cap({f"int4_w_g{g}" for g in _G} | {f"int4_zp_w_g{g}" for g in _G}, bias=False,
                                    hidden_align=2, deterministic=False, extra_numerics=(WNA16_CUDA,),
                                    limitations=(LIM_WNA16_SCALES, LIM_WNA16_ATOMIC, LIM_WNA16_G32, Limitation(
                                        "4-bit with tokens*k/E <= 6 runs the CUDA moe_wna16_gemm instead of the "
                                        "Triton kernel (should_moe_wna16_use_cuda); both read the same layout"))),
                    spies=SPIES),
    VllmTritonFused(name="vllm_triton_int8_w8a16",
                    description="fused_experts WNA16: INT8 group-quantized weights (uint8b128) x bf16 activations",
                    capability=_cap({f"int8_w_g{g}" for g in _G}, bias=False, limitations=(LIM_WNA16_SCALES,)),
                    spies=SPIES),
]
for _b in BACKENDS:
    _b.audit_safe = True  # Triton launches: bad shapes fail Python asserts, not the device
