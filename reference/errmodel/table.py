"""The one tolerance table: ErrorBudget entries keyed by (format, backend), merged by max.

Lookup takes every entry whose format and backend patterns match (fnmatch) and merges them with
ErrorBudget.merge, so a specific entry can only loosen a general one, never tighten it silently.
Every loosening says why, next to it. Tests never carry tolerance literals: they call budget_for.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from moecheck.reference.errmodel.budget import ErrorBudget


@dataclass(frozen=True)
class Entry:
    formats: str  # fnmatch pattern over format names
    backends: str  # fnmatch pattern over backend names
    budget: ErrorBudget
    why: str


TABLE: list[Entry] = [
    Entry("*", "*", ErrorBudget(), "baseline: fp32 accumulation, one code step per re-quantization, z=6"),
    Entry("*", "torch_compile*", ErrorBudget(act_fn_rel=2.0**-18),
          "Inductor fuses the activation with its own exp/sigmoid (libdevice fast paths)"),
    Entry("fp8*", "torch_scaled_grouped_mm", ErrorBudget(acc_unit=2.0**-13),
          "Hopper FP8 WGMMA accumulates in a ~14-bit-mantissa register before promotion "
          "(DeepSeek-V3 report, sec. 3.3.2); torch's row-wise FP8 grouped GEMM inherits it"),
    Entry("*", "*lora*", ErrorBudget(lora_rel=2.0**-7),
          "LoRA shrink output is stored in bf16 before the expand GEMM (vLLM punica kernels)"),
    Entry("fp8*", "flashinfer_cutlass_fp8*", ErrorBudget(acc_unit=2.0**-13),
          "FP8 CUTLASS grouped GEMM on Hopper accumulates in WGMMA's ~14-bit-mantissa register before "
          "promotion (DeepSeek-V3 report sec. 3.3.2), as torch's row-wise FP8 grouped GEMM"),
    Entry("fp8_block", "flashinfer_mono_moe", ErrorBudget(acc_unit=2.0**-13),
          "mono_moe's FP8 block GEMMs are Hopper WGMMA too: the same ~14-bit accumulator"),
    Entry("nvfp4*", "flashinfer_fp4_quantize", ErrorBudget(input_rel=2.0**-20),
          "fp4_quantize multiplies by rcp.approx(sb * rcp.approx(global)) (docs/rounding.md sec. 4): a value "
          "within ~2^-20 relative of an E2M1/E4M3 rounding midpoint may round the other way; quant.py accepts "
          "a one-code difference only there"),
    Entry("fp8_[bt]*", "vllm_*", ErrorBudget(acc_unit=2.0**-13),
          "FP8 MMA accumulation on Hopper: vLLM 0.24 fused_moe_kernel passes acc= to tl.dot for fp8 "
          "('acc used to enable fp8_fast_accum', fused_moe.py), i.e. WGMMA's ~14-bit accumulator before "
          "promotion (DeepSeek-V3 report sec. 3.3.2); the CUTLASS FP8 grouped GEMM is given the same "
          "(its kernel schedule not read)"),
    Entry("int[48]_*w_g*", "vllm_triton_int*", ErrorBudget(weight_rel=2.0**-7),
          "vLLM WNA16 rounds each weight twice: group scales are taken in the activation dtype (moe_wna16.py "
          "params_dtype; csrc/moe/moe_wna16.cu reads b_scales as bf16/half), and fused_moe_kernel_gptq_awq casts "
          "(q - z) * s to compute_type before tl.dot: two roundings of <= u(bf16) = 2^-8, variance 2u^2/3, "
          "covered by weight_rel >= sqrt(2) u"),
    Entry("int4_*", "vllm_marlin*", ErrorBudget(weight_rel=2.0**-7),
          "Marlin takes group scales in the activation dtype (oracle/int_wna16.py, marlin_moe_permute_scales keeps "
          "it) and dequantizes to bf16 before its bf16 MMA (CUDA source not read; implied by the MMA dtype): two "
          "roundings of <= u(bf16) = 2^-8"),
    Entry("fp8_w_channel", "vllm_marlin*", ErrorBudget(weight_rel=2.0**-7),
          "Marlin FP8: prepare_fp8_moe_layer_for_marlin does scales.to(layer.orig_dtype) (bf16), and the e4m3 x "
          "scale product is formed in bf16 before the MMA (CUDA source not read): two roundings of <= u(bf16) = 2^-8"),
]


def budget_for(fmt: str, backend: str) -> ErrorBudget:
    out = None
    for e in TABLE:
        if fnmatchcase(fmt, e.formats) and fnmatchcase(backend, e.backends):
            out = e.budget if out is None else out.merge(e.budget)
    return out if out is not None else ErrorBudget()


def reasons_for(fmt: str, backend: str) -> list[str]:
    return [e.why for e in TABLE if fnmatchcase(fmt, e.formats) and fnmatchcase(backend, e.backends)]
