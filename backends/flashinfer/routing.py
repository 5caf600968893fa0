"""flashinfer.fused_moe.fused_topk_deepseek (DeepSeek-V3 NoAuxTc routing) as a router backend.

Signature read in site-packages/flashinfer/fused_moe/fused_routing_dsv3.py (0.7.2.post1):
fused_topk_deepseek(scores [T, E] (logits, bf16/fp16/fp32), bias [E] (same dtype), n_group, topk_group, topk,
routed_scaling_factor, topk_values [T, k] (scores' dtype, written), topk_indices [T, k] int32 (written),
launch_with_pdl=True, routing_replay_out=None, *, backend="default"). Kernel: sigmoid(scores) + bias chooses,
group score = sum of the top-2 biased scores, topk_group groups, topk experts from them; weights =
sigmoid / sum * routed_scaling_factor, fp32 inside. Limits: n_group > 1: topk <= 8, E/n_group <= 32,
E/n_group * topk_group <= 128; n_group == 1: E <= 384. Arch: @supported_compute_capability([89, 90, 100, 103,
107, 120, 121]). It is judged by the property template (routes_like_reference: ids as sets where ties allow,
weights by reference/errmodel/routing.py); the sigmoid is 0.5 * tanhf(0.5 x) + 0.5 in noAuxTcKernels.cu,
accurate in absolute terms, which is how the routing error model charges act_fn_rel.
"""
from __future__ import annotations

import torch
from moecheck.backends.base import Capability, Limitation
from moecheck.backends.flashinfer import common as C

SPY = f"{C.FUSED_MOE}:fused_topk_deepseek"


class TopkDeepseek(C.FlashInferBackend):
    def route(self, prepared, p):
        spec = p.router
        logits = p.router_logits.contiguous()
        bias = (p.router_bias if p.router_bias is not None else torch.zeros(p.experts, device=p.device)).to(logits.dtype)
        vals = torch.empty(p.tokens, spec.top_k, dtype=logits.dtype, device=logits.device)
        idx = torch.empty(p.tokens, spec.top_k, dtype=torch.int32, device=logits.device)
        C.call(C.fused_moe(), "fused_topk_deepseek", logits, bias.contiguous(), spec.n_group, spec.topk_group,
               spec.top_k, spec.routed_scaling_factor, vals, idx)
        return vals, idx


TOPK_DEEPSEEK = TopkDeepseek(
    name="flashinfer_topk_deepseek", description="fused_topk_deepseek: DeepSeek-V3 grouped, bias-corrected top-k",
    capability=Capability(
        formats=frozenset({"bf16"}), archs=frozenset({(8, 9), (9, 0), (10, 0), (10, 3), (10, 7), (12, 0), (12, 1)}),
        kind="router", routers=frozenset({"deepseek_v3"}), max_top_k=8, requires=C.REQUIRES,
        limitations=(C.UNVERIFIED, Limitation(
            "n_group > 1: top_k <= 8, E/n_group <= 32, E/n_group * topk_group <= 128; n_group == 1: E <= 384",
            "https://github.com/flashinfer-ai/flashinfer/blob/main/flashinfer/fused_moe/fused_routing_dsv3.py"))),
    spies=(SPY,))

BACKENDS = [TOPK_DEEPSEEK]


def inputs(tokens: int, experts: int, seed: int, dtype=torch.float32, device="cuda") -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits (std 2) and a small correction bias (std 1e-2), as DeepSeek-V3 checkpoints have them."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(tokens, experts, generator=g) * 2).to(dtype)
    bias = (torch.randn(experts, generator=g) * 0.01).to(dtype)
    return logits.to(device), bias.to(device)
