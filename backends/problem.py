"""MoEProblem: one concrete MoE call, as every backend receives it."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from moecheck.reference.activations import ACTIVATIONS, ActivationSpec
from moecheck.reference.errmodel.budget import ErrorBudget
from moecheck.reference.formats import Format
from moecheck.reference.lora import MoELoRA
from moecheck.reference.moe import MoEResult, Rounding, fused_experts
from moecheck.reference.qtensor import QTensor
from moecheck.reference.routing import RouterSpec


@dataclass
class MoEProblem:
    hidden_states: torch.Tensor  # [T, H]
    topk_weights: torch.Tensor  # [T, k] fp32
    topk_ids: torch.Tensor  # [T, k] int64 global expert ids
    w13: QTensor | torch.Tensor  # [E, 2I, H], quantized by the reference quantizer of `fmt`
    w2: QTensor | torch.Tensor  # [E, H, I]
    fmt: Format
    activation_name: str = "silu"
    expert_map: torch.Tensor | None = None  # [E_global] -> local id or -1
    w13_bias: torch.Tensor | None = None
    w2_bias: torch.Tensor | None = None
    a1_scale: torch.Tensor | None = None  # static activation scales (static formats)
    a2_scale: torch.Tensor | None = None
    apply_router_weight_on_input: bool = False
    lora: MoELoRA | None = None
    token_lora: torch.Tensor | None = None  # [T] adapter id, -1 = none
    router_logits: torch.Tensor | None = None  # [T, E] fp32, for backends that route themselves
    router: RouterSpec | None = None  # the router they must implement (None: topk_ids/weights are given)
    router_bias: torch.Tensor | None = None  # [E] deepseek_v3 e_score_correction_bias

    @property
    def activation(self) -> ActivationSpec:
        return ACTIVATIONS[self.activation_name]

    @property
    def tokens(self) -> int:
        return self.hidden_states.shape[0]

    @property
    def hidden(self) -> int:
        return self.hidden_states.shape[1]

    @property
    def inter(self) -> int:
        return self.w2.shape[2]

    @property
    def experts(self) -> int:
        return self.w13.shape[0]

    @property
    def top_k(self) -> int:
        return self.topk_ids.shape[1] if self.topk_ids is not None else self.router.top_k

    def unrouted(self) -> "MoEProblem":
        """What a backend that routes itself receives: the logits and the router, no ids or weights."""
        return replace(self, topk_ids=None, topk_weights=None)

    @property
    def device(self) -> torch.device:
        return self.hidden_states.device

    def with_(self, **kw) -> "MoEProblem":
        return replace(self, **kw)

    def reference(self, rounding: Rounding = Rounding(), budget: ErrorBudget | None = None) -> MoEResult:
        return fused_experts(
            self.hidden_states, self.w13, self.w2, self.topk_weights, self.topk_ids, fmt=self.fmt,
            activation=self.activation, rounding=rounding, expert_map=self.expert_map, w13_bias=self.w13_bias,
            w2_bias=self.w2_bias, a1_scale=self.a1_scale, a2_scale=self.a2_scale,
            apply_router_weight_on_input=self.apply_router_weight_on_input, lora=self.lora,
            token_lora=self.token_lora, budget=budget)

    def summary(self) -> str:
        ep = f" ep={int((self.expert_map >= 0).sum())}/{self.expert_map.numel()}" if self.expert_map is not None else ""
        return (f"T={self.tokens} H={self.hidden} I={self.inter} E={self.experts} k={self.top_k} "
                f"{self.fmt.name} {self.activation_name} {str(self.hidden_states.dtype).replace('torch.', '')}{ep}")
