"""vLLM 0.24 router kernels as router backends (Capability.kind == "router").

Read in the 0.24.0 wheel, vllm/model_executor/layers/fused_moe/router/:
  - fused_topk_router.py: fused_topk(hidden_states, gating_output, topk, renormalize, indices_type=None,
    scoring_func="softmax"|"sigmoid") -> (topk_weights fp32, topk_ids int32, token_expert_indices), through
    the _moe_C topk_softmax / topk_sigmoid CUDA ops. Softmax over all experts (or sigmoid), top-k,
    optional renormalization; no routed scaling factor (the model applies it).
  - grouped_topk_router.py: fused_grouped_topk(hidden_states, gating_output, topk, renormalize,
    e_score_correction_bias, num_expert_group, topk_group, scoring_func, routed_scaling_factor), the fused
    CUDA op grouped_topk that grouped_topk() dispatches to when VLLM_USE_FUSED_MOE_GROUPED_TOPK (default 1),
    num_expert_group <= 32, topk <= 32 and a bias is given: DeepSeek-V3's sigmoid + bias choice, group
    score = sum of the two best, -inf mask, weights from unbiased scores. Called directly here, so the spy
    proves the CUDA op ran rather than the torch fallback.
"""
from __future__ import annotations

import torch
from moecheck.backends.base import Capability, Limitation
from moecheck.backends.vllm.versions import VllmBackend, vmod
from moecheck.reference.errmodel.table import FAST_ACT_FN

ROUTER = "vllm.model_executor.layers.fused_moe.router"
FUSED_TOPK = f"{ROUTER}.fused_topk_router"
GROUPED = f"{ROUTER}.grouped_topk_router"
_SCORING = {"softmax_topk": "softmax", "sigmoid_topk": "sigmoid"}


class FusedTopk(VllmBackend):
    def route(self, prepared, p):
        spec = p.router
        w, ids, _ = vmod(FUSED_TOPK).fused_topk(p.hidden_states, p.router_logits.float().contiguous(), spec.top_k,
                                                spec.renormalize, scoring_func=_SCORING[spec.kind])
        return w, ids


class GroupedTopk(VllmBackend):
    def route(self, prepared, p):
        spec = p.router
        bias = p.router_bias if p.router_bias is not None else torch.zeros(p.experts, device=p.device)
        return vmod(GROUPED).fused_grouped_topk(
            p.hidden_states, p.router_logits.float().contiguous(), spec.top_k, True, bias.float().contiguous(),
            num_expert_group=spec.n_group, topk_group=spec.topk_group, scoring_func="sigmoid",
            routed_scaling_factor=spec.routed_scaling_factor)


_SRC = "https://github.com/vllm-project/vllm/tree/v0.24.0/vllm/model_executor/layers/fused_moe/router"
BACKENDS = [
    FusedTopk(
        name="vllm_fused_topk", description="vLLM fused_topk: softmax or sigmoid top-k (_moe_C topk_softmax/sigmoid)",
        capability=Capability(formats=frozenset({"bf16"}), kind="router", numerics=(FAST_ACT_FN,), routers=frozenset(_SCORING),
                              routed_scaling=False, requires=("vllm",),
                              limitations=(Limitation("no routed scaling factor: vLLM's models apply it after", _SRC),)),
        spies=(f"{FUSED_TOPK}:fused_topk",)),
    GroupedTopk(
        name="vllm_grouped_topk", description="vLLM fused_grouped_topk: DeepSeek-V3 grouped, bias-corrected top-k",
        capability=Capability(formats=frozenset({"bf16"}), kind="router", numerics=(FAST_ACT_FN,), routers=frozenset({"deepseek_v3"}),
                              max_top_k=32, requires=("vllm",),
                              min_group_experts=2,
                              limitations=(Limitation("the fused op takes num_expert_group <= 32, topk <= 32", _SRC), Limitation(
                                  "groups of one expert: the fused op picks wrong experts (H200 2026-12-02: 56 of 64 tokens "
                                  "at E=4, n_group=4; E=8, 16, 256 pass); the torch grouped_topk ranks groups by their top-2 "
                                  "sum, which a group of one cannot give: open finding, docs/findings/h200-2026-12-02"),)),
        spies=(f"{GROUPED}:fused_grouped_topk",)),
]
