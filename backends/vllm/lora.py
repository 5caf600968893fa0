"""vLLM's FusedMoE-LoRA Triton kernel, inside the experts it serves, against moecheck's MoE-LoRA.

vLLM 0.24.0 source read for this file:
  - `fused_moe/experts/lora_context.py: MoELoRAContext(w13_lora_a_stacked, w13_lora_b_stacked,
    w2_lora_a_stacked, w2_lora_b_stacked, adapter_enabled, max_loras, top_k, w13_num_slices,
    fully_sharded, tp_rank, tp_size, local_num_experts, punica_wrapper, use_tuned_config, ...)`;
    `LoRAExpertsMixin.set_lora_context` / `apply_w13_lora` / `apply_w2_lora` call
    `punica_wrapper.add_lora_w13(...)` / `add_lora_w2(...)`.
  - `experts/triton_moe.py: TritonExperts.apply`: base GEMM1 into bf16 intermediate_cache1, then the
    w13 LoRA delta (gate and up slices) added on it, activation, GEMM2, then the w2 LoRA delta (times
    the router weight, `mul_routed_weight=True`) added on intermediate_cache3, `ops.moe_sum`. LoRA reads
    the unquantized layer input (`lora_context.original_hidden_states`, stashed by FusedMoEKernel).
  - `lora/punica_wrapper/punica_gpu.py: PunicaWrapperGPU.add_lora_w13 / add_lora_w2 /
    moe_lora_align_block_size / add_lora_fused_moe` -> `vllm.lora.ops.triton_ops.fused_moe_lora`;
    they read only `self.token_mapping_meta` (a `LoRAKernelMeta`, `prepare_tensors(token_lora_mapping)`)
    and `self.lora_config.specialize_active_lora`. This adapter binds those four methods to a small
    holder of exactly that state instead of building a whole LoRA model runner.
  - `lora/layers/fused_moe.py`: stacked buffers [L, E, r, H] / [L, E, I, r] per slice, w2
    [L, E, r, I] / [L, E, H, r]; `adapter_enabled` int [L + 1]; token mapping -1 = no adapter.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, replace
from types import SimpleNamespace

import torch
from moecheck.backends.base import Capability, Limitation
from moecheck.backends.problem import MoEProblem
from moecheck.backends.vllm import layouts as L
from moecheck.backends.vllm import modular as M
from moecheck.backends.vllm.triton_fused import (
    CONFIG,
    PATHS,
    TRITON_ROUNDING,
    VLLM_NUMERICS,
    build_quant_config,
)
from moecheck.backends.vllm.versions import VllmBackend, vmod
from moecheck.reference.errmodel.table import BF16_LORA_SHRINK
from moecheck.reference.errors import require
from moecheck.reference.lora import MoELoRA
from moecheck.reference.moe import ACT

PUNICA_GPU = "vllm.lora.punica_wrapper.punica_gpu"
LORA_META = "vllm.lora.ops.triton_ops.lora_kernel_metadata"
LORA_CTX = "vllm.model_executor.layers.fused_moe.experts.lora_context"
LORA_CONFIGS = "vllm.lora.layers.utils"
_PUNICA_METHODS = ("moe_lora_align_block_size", "add_lora_fused_moe", "add_lora_w13", "add_lora_w2")


class PunicaState:
    """The state PunicaWrapperGPU's MoE-LoRA methods read, with those methods bound to it."""

    def __init__(self, max_loras: int, token_lora: torch.Tensor):
        self.lora_config = SimpleNamespace(specialize_active_lora=False, max_loras=max_loras)
        self.max_loras = max_loras
        self.set_tokens(token_lora)
        cls = vmod(PUNICA_GPU).PunicaWrapperGPU
        for name in _PUNICA_METHODS:
            setattr(self, name, types.MethodType(getattr(cls, name), self))

    def set_tokens(self, token_lora: torch.Tensor) -> None:
        meta = vmod(LORA_META).LoRAKernelMeta.make(self.max_loras, max(token_lora.numel(), 1), token_lora.device)
        meta.prepare_tensors(L.token_lora_mapping(token_lora))
        self.token_mapping_meta = meta


def no_adapter_lora(p: MoEProblem) -> MoELoRA:
    """One all-zero rank-1 adapter slot, used by no token."""
    z = lambda *s: torch.zeros(*s, device=p.device)  # noqa: E731
    E, H, I = p.experts, p.hidden, p.inter
    return MoELoRA(z(1, E, 1, H), z(1, E, I, 1), z(1, E, 1, H), z(1, E, I, 1), z(1, E, 1, I), z(1, E, H, 1))


@dataclass
class _Prepared:
    kernel: object
    w1: torch.Tensor
    w2: torch.Tensor
    punica: PunicaState


@dataclass
class VllmLoraTriton(VllmBackend):
    def prepare(self, p: MoEProblem) -> _Prepared:
        require(p.activation.gated, f"{self.name}: w13 LoRA has gate and up slices; {p.activation_name} is ungated")
        if p.lora is None:  # LoRA enabled, no token with an adapter: the serving case of a base-model batch
            p = p.with_(lora=no_adapter_lora(p), token_lora=torch.full((p.tokens,), -1, dtype=torch.int64, device=p.device))
        require(p.token_lora is not None, f"{self.name}: MoE-LoRA adapters given without token_lora")
        w1, w2, qc = build_quant_config(p)
        qc = qc if qc is not None else vmod(CONFIG).FUSED_MOE_UNQUANTIZED_CONFIG
        experts = vmod(M.TRITON_EXPERTS).TritonExperts(M.moe_config(p, lora=True), qc)
        n = p.lora.num_adapters
        punica = PunicaState(n, p.token_lora)
        ctx = vmod(LORA_CTX).MoELoRAContext(
            **L.lora_stacks(p.lora, p.hidden_states.dtype), adapter_enabled=L.adapter_enabled(n, p.device),
            max_loras=n, top_k=p.top_k, w13_num_slices=2, fully_sharded=False, tp_rank=0, tp_size=1,
            local_num_experts=p.experts, punica_wrapper=punica, use_tuned_config=False)
        experts.set_lora_context(ctx)
        return _Prepared(M.kernel(experts), w1, w2, punica)

    def run(self, w: _Prepared, p: MoEProblem, out=None) -> torch.Tensor:
        tl = p.token_lora if p.token_lora is not None else torch.full((p.tokens,), -1, dtype=torch.int64, device=p.device)
        w.punica.set_tokens(tl)  # the batch may be permuted or cut (properties reuse `prepare`)
        return M.emit(M.apply(w.kernel, w.w1, w.w2, p), out)


# TritonExperts' rounding (weighted GEMM2 store, moe_sum); the shrink output stored in the activation dtype;
# each delta rounded and added onto the stored base output (fused_moe_lora_op: store(prev + acc.to(bf16)));
# the H200 run of 2026-12-02 failed RMS (0.138 over 0.135) while the reference added the deltas in fp32
LORA_ROUNDING = replace(TRITON_ROUNDING, lora_mid=ACT, lora_add=ACT)

BACKENDS = [
    VllmLoraTriton(
        name="vllm_lora_triton",
        description="FusedMoEKernel + TritonExperts with a MoELoRAContext: the FusedMoE-LoRA Triton kernel",
        capability=Capability(
            formats=frozenset({"bf16", "fp16"}), dtypes=frozenset({torch.bfloat16, torch.float16}),
            activations=frozenset({"silu", "gelu", "gelu_tanh"}), lora=True, min_tokens=M.MIN_TOKENS, rounding=LORA_ROUNDING,
            verified=("H200 sm_90, vLLM 0.24.0 (2026-12-02): matches_reference and padded_equals_unpadded pass with 20 examples, bf16 and fp16",
                      "H200 sm_90, vLLM 0.24.0 (2026-12-03): all 17 claimed properties pass with 20 examples, bf16 and fp16, "
                      "under the IEEE reference and the rms/bias verdicts (worst max 0.54, rms 0.067, bias +0.018)"),
            numerics=(*VLLM_NUMERICS, BF16_LORA_SHRINK),
            requires=("vllm",), deterministic=False, forwards=M.APPLY_FORWARDS | frozenset(PATHS) | {"bias"},
            limitations=(M.LIM_WS, Limitation(
                "w13 LoRA delta is added to the already-rounded bf16 GEMM1 output (one more rounding than the "
                "reference's gemm1_out)"), Limitation(
                "gated halves only: the two w13 slices land in the [gate | up] halves; interleaved swigluoai "
                "(gpt-oss) LoRA goes through UnfusedOAITritonExperts, not mapped here"), Limitation(
                "a batch where no token has an adapter never launches fused_moe_lora (no_lora_flag early exit); "
                "the spy proves the LoRA path was entered (config lookup), not that the kernel ran"))),
        spies=(*M.composition_spies(M.TRITON_EXPERTS, "invoke_fused_moe_triton_kernel"),
               f"{LORA_CONFIGS}:try_get_optimal_moe_lora_config")),
]
for _b in BACKENDS:
    _b.audit_safe = True
