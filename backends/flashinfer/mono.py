"""flashinfer.fused_moe.mono_moe: single-kernel block-FP8 top-k MoE, Hopper, one fixed shape.

Signature read in site-packages/flashinfer/fused_moe/monomoe.py (0.7.2.post1): mono_moe(activations_in bf16 [M, K],
router_logits bf16 [M, E], expert_weights_up fp8 [E, 2N, K] ([gate | up] rows), expert_scales_up fp32
[E, 2N/128, K/128], expert_weights_down fp8 [E, K, N], expert_scales_down fp32 [E, K/128, N/128], top_k,
scoring_func="softmax"|"sigmoid", renormalize=True, out=None, scratchpad=None, interleave_up=True). It is
hard-specialized to E=256, N=512, K=2048, M <= 8, top_k in [1, 8], and checks SM90 through
@supported_compute_capability([90]). The kernel routes itself, so the adapter hands it router logits whose
reference routing (moecheck.reference.routing, softmax_topk) is the case's; the property suite cannot draw
that shape, so the backend is listed unavailable there and checked at that shape by
tests/backends/test_flashinfer_kernels.py. The adapter applies the Pair_Layout itself
(layouts.mono_pair_layout, interleave_up=False); test_flashinfer_quant.py compares it with FlashInfer's
interleave_for_tma_wgmma_up.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from moecheck.backends.base import Capability, Limitation
from moecheck.backends.flashinfer import common as C
from moecheck.backends.flashinfer import layouts as L
from moecheck.backends.problem import MoEProblem
from moecheck.reference.errmodel.table import FP8_WGMMA
from moecheck.reference.errors import require
from moecheck.reference.moe import ACT, Rounding
from moecheck.reference.routing import RouterSpec, route

E, N, K, MAX_TOKENS = 256, 512, 2048, 8
SHAPE_NOTE = f"fixed-shape kernel (E={E}, H={K}, I={N}, T<={MAX_TOKENS}): checked by tests/backends/test_flashinfer_kernels.py"


def logits_for(tokens: int, experts: int, seed: int) -> torch.Tensor:
    """bf16 router logits with all values distinct (multiples of 1/32 below 8): no top-k ties in bf16 or fp32."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(experts, generator=g)[:experts] for _ in range(tokens)]).float().div(32).to(torch.bfloat16)


def routed_problem(p: MoEProblem, seed: int, top_k: int) -> MoEProblem:
    """The same problem, routed from distinct-valued logits by the reference softmax top-k router."""
    logits = logits_for(p.tokens, p.experts, seed).to(p.device)
    w, ids = route(logits.float(), RouterSpec("softmax_topk", top_k, renormalize=True))
    return p.with_(topk_weights=w, topk_ids=ids, router_logits=logits)


@dataclass
class MonoMoE(C.FlashInferBackend):
    def layout(self, p: MoEProblem) -> dict:
        require(p.fmt.name == "fp8_block", f"mono_moe is block-FP8 only, not {p.fmt.name}")
        require((p.experts, p.hidden, p.inter) == (E, K, N) and p.tokens <= MAX_TOKENS,
                f"mono_moe is specialized to E={E}, H={K}, I={N}, T<={MAX_TOKENS}; got {p.summary()}")
        require(p.router_logits is not None, "mono_moe routes itself: the problem needs router_logits (mono.routed_problem)")
        require(p.activation_name in ("silu", "silu_up_gate"), "mono_moe computes SwiGLU only")
        q1 = L.permute_qtensor_rows(p.w13, L.to_gate_up(p.w13.shape[1], p.activation))
        return dict(up=L.permute_rows(q1.codes, L.mono_pair_layout(q1.shape[1])), up_s=q1.scales.float().contiguous(),
                    down=p.w2.codes.contiguous(), down_s=p.w2.scales.float().contiguous())

    def prepare(self, p: MoEProblem) -> dict:
        return self.layout(p)

    def run(self, w: dict, p: MoEProblem, out=None) -> torch.Tensor:
        res = C.call(C.fused_moe(), "mono_moe", p.hidden_states.contiguous(), p.router_logits.to(torch.bfloat16).contiguous(),
                     w["up"], w["up_s"], w["down"], w["down_s"], p.top_k, scoring_func="softmax", renormalize=True,
                     out=out, interleave_up=False)
        return C.first_output(res, out)


MONO = MonoMoE(
    name="flashinfer_mono_moe", spies=(f"{C.FUSED_MOE}:mono_moe",), not_wired=SHAPE_NOTE,
    description="mono_moe: routing + up-projection + SiLU + down-projection + reduction in one SM90 kernel",
    capability=Capability(
        formats=frozenset({"fp8_block"}), archs=frozenset({(9, 0)}), activations=frozenset({"silu"}), out_buffer=True,
        hidden_align=K, inter_align=N, max_tokens=MAX_TOKENS, max_experts=E, max_top_k=8,
        rounding=Rounding(gemm1_out=ACT, act_out=ACT, gemm2_out=ACT, topk_weights=ACT), requires=C.REQUIRES,
        numerics=(FP8_WGMMA,),  # its FP8 block GEMMs are Hopper WGMMA too
        limitations=(C.UNVERIFIED, Limitation(
            "hard-specialized to E=256, N=512, K=2048, M<=8; routing (softmax/sigmoid top-k) happens inside",
            "https://github.com/flashinfer-ai/flashinfer/blob/main/flashinfer/fused_moe/monomoe.py")),
        verified=(), deterministic=False))

BACKENDS = [MONO]

