"""Routers: token logits [T, E] -> (weights [T, k] float32, expert ids [T, k] int64).

Each router kind is a small function in a table; `route` validates, runs it in float32 whatever the
input dtype, then applies the two steps every kind shares: optional renormalization (the k weights
divided by their sum) and `routed_scaling_factor`. Semantics follow the Hugging Face transformers
models named in ROUTERS (Mixtral/Qwen2-MoE/Qwen3-MoE/OLMoE, DeepSeek-V3, Llama 4, gpt-oss).

Ties are deterministic: every top-k here is a stable descending sort, so among equal scores the
lower expert (or group) index wins. torch.topk promises no order among ties, and GPU kernels each
pick their own, so a case whose scores tie at the k-th place is ambiguous for a kernel comparison;
this reference at least gives one fixed answer. Output columns are in descending selection-score
order (the score the choice was made on: e.g. biased scores for deepseek_v3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from moecheck.reference.errors import require

_GROUPED = "deepseek_v3"


@dataclass(frozen=True)
class RouterSpec:
    kind: str  # a key of _KINDS: softmax_topk, topk_softmax, deepseek_v3, llama4, gpt_oss, sigmoid_topk
    top_k: int
    renormalize: bool = False  # divide the k weights by their sum (deepseek_v3 always does)
    n_group: int = 1  # deepseek_v3 grouped top-k: experts split into n_group contiguous groups
    topk_group: int = 1  # ... of which the topk_group best groups are kept
    routed_scaling_factor: float = 1.0  # multiplies the final weights (DeepSeek-V3: 2.5)
    apply_weights_to_input: bool = False  # llama4: weight multiplies the expert INPUT, output summed with weight 1

    def __post_init__(self):
        require(self.kind in _KINDS, f"unknown router kind {self.kind!r}; known: {', '.join(sorted(_KINDS))}")
        require(self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}")
        require(self.n_group >= 1, f"n_group must be >= 1, got {self.n_group}")
        require(1 <= self.topk_group <= self.n_group,
                f"topk_group must be in [1, n_group={self.n_group}], got {self.topk_group}")
        require(self.kind == _GROUPED or (self.n_group, self.topk_group) == (1, 1),
                f"n_group/topk_group apply to {_GROUPED} routing only, got kind {self.kind!r}")


def _topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along the last dim, ties to the lower index (stable sort; torch.topk is not stable)."""
    vals, idx = torch.sort(scores, dim=-1, descending=True, stable=True)
    return vals[..., :k], idx[..., :k]


def _softmax_topk(x, spec, bias):
    # Mixtral / Qwen-MoE / OLMoE: softmax over all E experts, then keep the k largest probabilities
    return _topk(torch.softmax(x, dim=-1), spec.top_k)


def _topk_softmax(x, spec, bias):
    # gpt-oss: choose on the raw logits, softmax over the k chosen only (weights always sum to 1)
    vals, ids = _topk(x, spec.top_k)
    return torch.softmax(vals, dim=-1), ids


def _sigmoid_topk(x, spec, bias):
    return _topk(torch.sigmoid(x), spec.top_k)


def _llama4(x, spec, bias):
    # choose on the logits, not on sigmoid(logits): fp32 sigmoid saturates to 1.0 and would create ties
    vals, ids = _topk(x, spec.top_k)
    return torch.sigmoid(vals), ids


def _deepseek_v3(x, spec, bias):
    """Grouped, bias-corrected top-k: the bias steers the choice only, weights use unbiased scores."""
    t, e = x.shape
    per = e // spec.n_group
    scores = torch.sigmoid(x)
    choice = scores if bias is None else scores + bias
    grouped = choice.reshape(t, spec.n_group, per)
    # group score = sum of its 2 best choice scores (a group of one expert: that expert's score)
    group_score = _topk(grouped, min(2, per))[0].sum(dim=-1)
    keep = torch.zeros(t, spec.n_group, dtype=torch.bool, device=x.device)
    keep.scatter_(1, _topk(group_score, spec.topk_group)[1], True)
    # -inf, not 0.0 (HF masks with 0.0): a kept expert whose biased score is negative must still beat
    # every dropped one. validation guarantees top_k <= experts in the kept groups.
    choice = grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).reshape(t, e)
    ids = _topk(choice, spec.top_k)[1]
    return scores.gather(1, ids), ids


# kind -> (router function, always renormalize)
_KINDS: dict[str, tuple[Callable, bool]] = {
    "softmax_topk": (_softmax_topk, False),
    "topk_softmax": (_topk_softmax, False),
    "gpt_oss": (_topk_softmax, False),
    "sigmoid_topk": (_sigmoid_topk, False),
    "llama4": (_llama4, False),
    # DeepSeek-V3 norm_topk_prob=True, applied for any top_k as in HF and DeepSeek's own code
    _GROUPED: (_deepseek_v3, True),
}


def _check(logits: torch.Tensor, spec: RouterSpec, bias: torch.Tensor | None) -> None:
    require(logits.dim() == 2, f"router logits must be 2-D [T, E], got shape {tuple(logits.shape)}")
    require(logits.is_floating_point(), f"router logits must be a float tensor, got {logits.dtype}")
    e = logits.shape[1]
    require(1 <= spec.top_k <= e, f"top_k must be in [1, E={e}], got {spec.top_k}")
    require(e % spec.n_group == 0, f"E={e} must be divisible by n_group={spec.n_group}")
    kept = spec.topk_group * (e // spec.n_group)
    require(spec.top_k <= kept, f"top_k={spec.top_k} exceeds the {kept} experts in topk_group={spec.topk_group} groups")
    require(not torch.isnan(logits).any(), "router logits must not contain NaN")
    if bias is not None:
        require(spec.kind == _GROUPED, f"correction_bias applies to {_GROUPED} routing only, got kind {spec.kind!r}")
        require(tuple(bias.shape) == (e,), f"correction_bias must have shape [E={e}], got {tuple(bias.shape)}")
        require(bias.is_floating_point(), f"correction_bias must be a float tensor, got {bias.dtype}")
        require(not torch.isnan(bias).any(), "correction_bias must not contain NaN")


def route(logits: torch.Tensor, spec: RouterSpec,
          correction_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] -> (weights [T, top_k] float32, ids [T, top_k] int64), all math in float32.

    `correction_bias` [E] (deepseek_v3 only; None = zeros) is added to the scores used for choosing.
    """
    _check(logits, spec, correction_bias)
    fn, always_norm = _KINDS[spec.kind]
    bias = None if correction_bias is None else correction_bias.to(device=logits.device, dtype=torch.float32)
    weights, ids = fn(logits.float().contiguous(), spec, bias)  # dense: results independent of layout
    if always_norm or spec.renormalize:
        # clamp only guards 0/0 when every chosen score underflowed (HF DeepSeek adds 1e-20 instead)
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    if spec.routed_scaling_factor != 1.0:
        weights = weights * spec.routed_scaling_factor
    return weights.float(), ids.long()


ROUTERS: dict[str, RouterSpec] = {
    "mixtral": RouterSpec("softmax_topk", top_k=2, renormalize=True),  # Mixtral 8x7B / 8x22B
    "qwen3": RouterSpec("softmax_topk", top_k=8, renormalize=True),  # Qwen3-MoE, norm_topk_prob=True
    "qwen2": RouterSpec("softmax_topk", top_k=8),  # Qwen2-57B-A14B, norm_topk_prob=False
    "olmoe": RouterSpec("softmax_topk", top_k=8),  # OLMoE-1B-7B, norm_topk_prob=False
    "deepseek_v3": RouterSpec(_GROUPED, top_k=8, renormalize=True, n_group=8, topk_group=4,
                              routed_scaling_factor=2.5),  # 256 experts, + e_score_correction_bias
    "llama4": RouterSpec("llama4", top_k=1, apply_weights_to_input=True),  # Llama 4 Scout / Maverick
    "gpt_oss": RouterSpec("gpt_oss", top_k=4),  # gpt-oss-20b / -120b
}


def get_router(name: str) -> RouterSpec:
    require(name in ROUTERS, f"unknown router preset {name!r}; known: {', '.join(sorted(ROUTERS))}")
    return ROUTERS[name]


def choice_scores(logits: torch.Tensor, spec: RouterSpec, correction_bias: torch.Tensor | None = None) -> torch.Tensor:
    """[T, E] float32: the score each kind chooses on (before deepseek_v3's group mask)."""
    x = logits.float()
    if spec.kind == "softmax_topk":
        return torch.softmax(x, dim=-1)
    if spec.kind in ("sigmoid_topk", _GROUPED):
        s = torch.sigmoid(x)
        return s if correction_bias is None or spec.kind != _GROUPED else s + correction_bias.to(s.device).float()
    return x  # topk_softmax, gpt_oss, llama4 choose on the raw logits


def group_scores(scores: torch.Tensor, spec: RouterSpec) -> torch.Tensor:
    """[T, n_group]: deepseek_v3's group score, the sum of each group's two best choice scores."""
    t, e = scores.shape
    per = e // spec.n_group
    return _topk(scores.reshape(t, spec.n_group, per), min(2, per))[0].sum(dim=-1)


def weights_for(logits: torch.Tensor, spec: RouterSpec, ids: torch.Tensor,
                correction_bias: torch.Tensor | None = None) -> torch.Tensor:
    """The weights `route` gives experts `ids` [T, k] (any valid choice, e.g. another tie-break)."""
    x = logits.float()
    ids = ids.long().to(x.device)
    if spec.kind == "softmax_topk":
        w = torch.softmax(x, dim=-1).gather(1, ids)
    elif spec.kind in ("topk_softmax", "gpt_oss"):
        w = torch.softmax(x.gather(1, ids), dim=-1)
    else:  # sigmoid_topk, llama4, deepseek_v3: the unbiased sigmoid of the chosen experts
        w = torch.sigmoid(x.gather(1, ids))
    if _KINDS[spec.kind][1] or spec.renormalize:
        w = w / w.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return (w * spec.routed_scaling_factor).float() if spec.routed_scaling_factor != 1.0 else w.float()


ROUTER_KINDS = tuple(_KINDS)
