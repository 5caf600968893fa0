"""vLLM's modular-kernel composition: prepare/finalize + experts, through `FusedMoEKernel.apply`.

vLLM 0.24.0 (`vllm/model_executor/layers/fused_moe/`):
  - `modular_kernel.py: FusedMoEKernel(prepare_finalize, fused_experts).apply(hidden_states, w1, w2,
    topk_weights, topk_ids, activation, global_num_experts, expert_map, apply_router_weight_on_input)`:
    `output = torch.empty_like(hidden_states)`; the experts write into `fused_out`, a view of the
    shared workspace (`current_workspace_manager().get_simultaneous(...)`, sized by the experts'
    `workspace_shapes`), and `finalize` writes `output`. No caller output buffer.
  - `prepare_finalize/no_dp_ep.py: MoEPrepareAndFinalizeNoDPEPModular`: quantizes the input with the
    experts' quant config; `apply_router_weight_on_input` does `a1 * topk_weights.to(a1.dtype)`.
  - `config.py: FusedMoEConfig(...)`, `FusedMoEParallelConfig.make_no_parallel()`.
  - `vllm/v1/worker/workspace.py: init_workspace_manager(device)` must run before the first apply.

The workspace persists across calls: an experts kernel that leaves part of `fused_out` unwritten would
leak the previous call's numbers into the output. Each run therefore first fills the workspace with
the harness's poison pattern, so the output-contract property sees any unwritten element.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from moecheck.backends.base import Capability, Limitation
from moecheck.backends.poison import pattern_i16
from moecheck.backends.problem import MoEProblem
from moecheck.backends.vllm.triton_fused import (
    CONFIG,
    FP8_ARCHS,
    LIM_EP_SCALE,
    LIM_PER_TENSOR,
    PATHS,
    TRITON_ROUNDING,
    VLLM_ACTIVATION,
    VLLM_NUMERICS,
    build_quant_config,
    moe_activation,
    routing_args,
)
from moecheck.backends.vllm.versions import VllmBackend, vmod
from moecheck.reference.errors import require

MK = "vllm.model_executor.layers.fused_moe.modular_kernel"
NO_DP_EP = "vllm.model_executor.layers.fused_moe.prepare_finalize.no_dp_ep"
WORKSPACE = "vllm.v1.worker.workspace"
TRITON_EXPERTS = "vllm.model_executor.layers.fused_moe.experts.triton_moe"
OCP_MX_EXPERTS = "vllm.model_executor.layers.fused_moe.experts.ocp_mx_emulation_moe"
TRTLLM_FP8 = "vllm.model_executor.layers.fused_moe.experts.trtllm_fp8_moe"
FI_UTILS = "vllm.model_executor.layers.quantization.utils.flashinfer_utils"


def moe_config(p: MoEProblem, *, lora: bool = False, max_tokens: int = 1024):
    """A single-GPU FusedMoEConfig for problem p (no TP/DP/EP parallelism)."""
    cfg = vmod(CONFIG)
    n_global = p.expert_map.numel() if p.expert_map is not None else p.experts
    return cfg.FusedMoEConfig(
        num_experts=n_global, experts_per_token=p.top_k, hidden_dim=p.hidden, intermediate_size=p.inter,
        num_local_experts=p.experts, num_logical_experts=n_global, activation=moe_activation(p.activation_name),
        device=p.device, routing_method=cfg.RoutingMethodType.TopK,
        moe_parallel_config=cfg.FusedMoEParallelConfig.make_no_parallel(), in_dtype=p.hidden_states.dtype,
        max_num_tokens=max(max_tokens, p.tokens), has_bias=p.w13_bias is not None, is_lora_enabled=lora)


def ensure_workspace(device) -> None:
    ws = vmod(WORKSPACE)
    if not ws.is_workspace_manager_initialized():
        ws.init_workspace_manager(torch.device(device))


def poison_workspace(dtype: torch.dtype) -> int:
    """Fill every allocated workspace buffer with the harness's NaN pattern; returns bytes poisoned."""
    mgr = vmod(WORKSPACE).current_workspace_manager()
    pattern = pattern_i16(dtype)
    n = 0
    for buf in getattr(mgr, "_current_workspaces", ()):
        if buf is not None and buf.numel() >= 2:
            even = buf[: buf.numel() // 2 * 2]
            even.view(torch.int16).fill_(pattern)
            n += even.numel()
    return n


def kernel(experts) -> object:
    """FusedMoEKernel(no-DP/EP prepare/finalize, experts)."""
    return vmod(MK).FusedMoEKernel(vmod(NO_DP_EP).MoEPrepareAndFinalizeNoDPEPModular(), experts)


def apply(k, w1, w2, p: MoEProblem) -> torch.Tensor:
    """One FusedMoEKernel.apply on a poisoned workspace (module attribute call: spied)."""
    ensure_workspace(p.device)
    poison_workspace(p.hidden_states.dtype)
    r = routing_args(p)
    return k.apply(p.hidden_states.contiguous(), w1, w2, r["topk_weights"], r["topk_ids"],
                   moe_activation(p.activation_name), r["global_num_experts"], r["expert_map"],
                   p.apply_router_weight_on_input)


# what apply() always hands to FusedMoEKernel.apply, claimed or not (Capability.forwards)
APPLY_FORWARDS = frozenset({"expert_map", "weights_on_input"})


def emit(res: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return res
    out.copy_(res)
    return out


@dataclass
class _Prepared:
    kernel: object
    w1: torch.Tensor
    w2: torch.Tensor


@dataclass
class VllmModularTriton(VllmBackend):
    """TritonExperts (the experts class behind fused_experts) composed through FusedMoEKernel."""

    experts_class: str = "TritonExperts"

    def prepare(self, p: MoEProblem) -> _Prepared:
        require(p.lora is None, f"{self.name}: LoRA goes through vllm_lora_triton")
        w1, w2, qc = build_quant_config(p)
        qc = qc if qc is not None else vmod(CONFIG).FUSED_MOE_UNQUANTIZED_CONFIG
        experts = getattr(vmod(TRITON_EXPERTS), self.experts_class)(moe_config(p), qc)
        return _Prepared(kernel(experts), w1, w2)

    def run(self, w: _Prepared, p: MoEProblem, out=None) -> torch.Tensor:
        return emit(apply(w.kernel, w.w1, w.w2, p), out)


@dataclass
class VllmModularOcpMx(VllmBackend):
    """OCP_MXQuantizationEmulationTritonExperts: MXFP4 weights dequantized on the fly (amd-quark's
    `dq_mxfp4`), then TritonExperts in the activation dtype."""

    def prepare(self, p: MoEProblem) -> _Prepared:
        require(p.fmt.name == "mxfp4_bf16", f"{self.name}: only mxfp4_bf16 is mapped, got {p.fmt.name}")
        require(p.lora is None and p.w13_bias is None, f"{self.name}: no LoRA / bias mapping")
        # amd-quark's default dq_mxfp4 is a HIP kernel; on CUDA only its Triton one runs (read at quark's import)
        os.environ.setdefault("QUARK_MXFP4_IMPL", "triton")
        cfg = vmod(CONFIG)
        qc = cfg.mxfp4_w4a16_moe_quant_config(w1_scale=p.w13.scales, w2_scale=p.w2.scales)
        experts = vmod(OCP_MX_EXPERTS).OCP_MXQuantizationEmulationTritonExperts(moe_config(p), qc)
        return _Prepared(kernel(experts), p.w13.codes.contiguous(), p.w2.codes.contiguous())

    def run(self, w: _Prepared, p: MoEProblem, out=None) -> torch.Tensor:
        return emit(apply(w.kernel, w.w1, w.w2, p), out)


@dataclass
class VllmModularTrtllmFp8(VllmBackend):
    """TrtLlmFp8ExpertsModular (FlashInfer TRT-LLM-gen, DeepSeek FP8 blocks) behind FusedMoEKernel; the
    weights go through vLLM's own `prepare_fp8_moe_layer_for_fi(..., is_trtllm=True)` (W13 -> W31 swap,
    BlockMajorK shuffle, block scales clamped to >= 1e-10)."""

    def prepare(self, p: MoEProblem) -> _Prepared:
        require(p.fmt.name == "fp8_block", f"{self.name}: takes fp8_block, got {p.fmt.name}")
        require(p.lora is None and p.w13_bias is None, f"{self.name}: no LoRA / bias mapping")
        cfg = moe_config(p)
        layer = SimpleNamespace(moe_config=cfg, weight_block_size=list(p.fmt.weight.block),
                                activation=moe_activation(p.activation_name))
        fi = vmod(FI_UTILS)
        # clones: the helper clamps the scales in place, and the problem's tensors belong to the reference
        w1, w2, s1, s2 = fi.prepare_fp8_moe_layer_for_fi(
            layer=layer, w13=p.w13.codes.clone(), w2=p.w2.codes.clone(), w13_scale=p.w13.scales.float().clone(),
            w13_input_scale=None, w2_scale=p.w2.scales.float().clone(), w2_input_scale=None, is_trtllm=True)
        qc = vmod(CONFIG).fp8_w8a8_moe_quant_config(w1_scale=s1, w2_scale=s2, block_shape=list(p.fmt.weight.block))
        return _Prepared(kernel(vmod(TRTLLM_FP8).TrtLlmFp8ExpertsModular(cfg, qc)), w1, w2)

    def run(self, w: _Prepared, p: MoEProblem, out=None) -> torch.Tensor:
        return emit(apply(w.kernel, w.w1, w.w2, p), out)


def composition_spies(experts_module: str, launcher: str) -> tuple[str, ...]:
    """Spies for a FusedMoEKernel run. A spy patches a module attribute, so these are the module-level
    names the composition looks up while it runs: the workspace manager (modular_kernel's own import,
    entered only by FusedMoEKernelModularImpl._allocate_buffers), the experts' kernel launcher in the
    experts module's namespace, and whatever combine it ends with."""
    return (f"{MK}:current_workspace_manager", f"{experts_module}:{launcher}")


# FusedMoEKernelModularImpl._fused_experts: `if M_full == 0: return torch.empty_like(a1q, ...)`: no
# workspace, no experts kernel for an empty batch, so there is nothing a spy could see below one token
MIN_TOKENS = 1
LIM_WS = Limitation("output is a fresh tensor; the experts write a view of vLLM's persistent workspace, "
                    "poisoned before every run by this adapter")
_DT = frozenset({torch.bfloat16, torch.float16})

BACKENDS = [
    *(VllmModularTriton(
        name=name, description=f"FusedMoEKernel(MoEPrepareAndFinalizeNoDPEPModular, TritonExperts): the modular path{what}",
        capability=Capability(
            formats=frozenset(formats), dtypes=_DT, archs=FP8_ARCHS, activations=frozenset(VLLM_ACTIVATION),
            expert_map=ep, bias=True, hidden_align=align, inter_align=align,
            min_tokens=MIN_TOKENS, rounding=TRITON_ROUNDING, requires=("vllm",), numerics=VLLM_NUMERICS, tiny_values=False,
            forwards=APPLY_FORWARDS | frozenset(PATHS),  # build_quant_config maps every PATHS format
            limitations=(LIM_WS, Limitation(
                "archs are the fp8 formats' (Triton fp8 dot, sm_89+); bf16/int8 would also run on sm_80"), *lims)),
        spies=(*composition_spies(TRITON_EXPERTS, "invoke_fused_moe_triton_kernel"), "vllm._custom_ops:moe_sum"))
      # one record per format family where the limits differ: what fp8_block or dynamic fp8_tensor cannot
      # take must not narrow what the others are tested on
      for name, what, formats, ep, align, lims in (
          ("vllm_modular_triton", "", {"bf16", "fp16", "fp8_token_channel", "int8_w8a8"}, True, 1, ()),
          ("vllm_modular_triton_fp8_tensor", ", dynamic per-tensor FP8", {"fp8_tensor"}, False, 1,
           (LIM_PER_TENSOR, LIM_EP_SCALE)),
          ("vllm_modular_triton_fp8_block", ", FP8 128x128 blocks", {"fp8_block"}, True, 128, (Limitation(
              "hidden and intermediate multiples of 128: per_token_group_quant_fp8 asserts the last dimension "
              "divisible by group_size 128 (H200 2026-12-02: 'the last dimension of `x` 2022 must be divisible "
              "by `group_size` 128')"),)),
      )),
    VllmModularOcpMx(
        name="vllm_modular_ocp_mx_emul",
        description="FusedMoEKernel + OCP_MXQuantizationEmulationTritonExperts (MXFP4 weights, bf16 compute)",
        capability=Capability(
            formats=frozenset({"mxfp4_bf16"}), dtypes=_DT, activations=frozenset({"silu", "swigluoai"}),
            min_tokens=MIN_TOKENS, rounding=TRITON_ROUNDING, requires=("vllm", "quark"), forwards=APPLY_FORWARDS, limitations=(LIM_WS, Limitation(
                "needs amd-quark (quark.torch.kernel.mx.dq_mxfp4) for the weight dequantization"), Limitation(
                "0.24.0 sets _quant_dtype only for schemes with quantized activations; weight-only w_mxfp4 may "
                "raise AttributeError on .quant_dtype (read in ocp_mx_emulation_moe.py, not run)"))),
        spies=(*composition_spies(OCP_MX_EXPERTS, "dequant_mxfp4"), f"{TRITON_EXPERTS}:invoke_fused_moe_triton_kernel")),
]
for _b in BACKENDS:
    _b.audit_safe = True
BACKENDS.append(VllmModularTrtllmFp8(
    name="vllm_trtllm_fp8_block",
    description="FusedMoEKernel + TrtLlmFp8ExpertsModular: FlashInfer TRT-LLM-gen FP8 block-scale routed MoE",
    capability=Capability(
        formats=frozenset({"fp8_block"}), dtypes=frozenset({torch.bfloat16}), archs=frozenset({(10, 0), (10, 3)}),
        activations=frozenset({"silu", "relu2"}), hidden_align=128, inter_align=128, min_tokens=MIN_TOKENS,
        rounding=TRITON_ROUNDING, numerics=VLLM_NUMERICS, forwards=APPLY_FORWARDS,
        requires=("vllm", "flashinfer"), limitations=(Limitation(
            "TrtLlmFp8ExpertsBase._supports_current_device: Blackwell family (sm_100/sm_103) with FlashInfer's "
            "TRT-LLM fused MoE; not runnable on sm_90 (H100)"), Limitation(
            "block scales clamped to >= 1e-10 by prepare_fp8_moe_layer_for_fi (moecheck's zero blocks have scale 1)"))),
    spies=(*composition_spies(TRTLLM_FP8, "trtllm_moe_pack_topk_ids_weights"),
           "flashinfer.fused_moe:trtllm_fp8_block_scale_routed_moe")))
