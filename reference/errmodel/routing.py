"""How far a correct router may be from the reference router, and the comparison that uses it.

A kernel evaluates the scores (softmax, sigmoid) with its own exp/tanh: each score may be off by
`act_fn_rel` (absolute, as scores are <= 1; relative for raw logits). So:
  - ids: where the reference's choice has a margin above that slack at every cut it makes (deepseek_v3:
    the group cut and the expert cut), the kernel must choose the same set. Inside the slack (a tie, or
    a near one) any choice whose scores are as good, within the slack, is correct: ids as sets where
    ties allow, never "anything goes" (a wrong group, a duplicate, an expert out of range still fail).
  - weights: compared with the reference's weights for the ids the kernel chose (reference/routing.py
    weights_for), within what the score slack makes of them through renormalization and the routed
    scaling factor, plus the kernel's own storage of the weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from moecheck.reference.errmodel.budget import ErrorBudget, unit_roundoff
from moecheck.reference.routing import (
    RouterSpec,
    choice_scores,
    group_scores,
    route,
    weights_for,
)

_TRANSFORMED = ("softmax_topk", "sigmoid_topk", "deepseek_v3")  # kinds whose choice score is exp/sigmoid of a logit


@dataclass(frozen=True)
class RoutingComparison:
    passed: bool
    tokens: int
    ambiguous: int  # tokens whose reference choice is inside the slack at some cut
    id_mismatch: int
    invalid: int  # rows with duplicate or out-of-range ids, or the wrong shape
    max_norm_err: float  # worst |weight - reference weight for those ids| / bound
    rms_norm_err: float
    first: str = ""
    where: tuple[int, ...] | None = None

    def summary(self) -> str:
        head = (f"routing over {self.tokens} tokens: {self.invalid} invalid rows, {self.id_mismatch} expert sets "
                f"differ, max normalized weight error {self.max_norm_err:.3g} (rms {self.rms_norm_err:.3g}), "
                f"{self.ambiguous} near-tie tokens judged as ties")
        return head + (f"; first: {self.first}" if self.first else "")


def score_slack(scores: torch.Tensor, spec: RouterSpec, budget: ErrorBudget) -> torch.Tensor:
    """Per element, how far a correct kernel's choice score may be from ours."""
    if spec.kind in _TRANSFORMED:
        return torch.full_like(scores, budget.z * budget.act_fn_rel)
    return budget.z * budget.act_fn_rel * scores.abs()


def ambiguous_tokens(logits: torch.Tensor, spec: RouterSpec, bias: torch.Tensor | None, budget: ErrorBudget) -> torch.Tensor:
    """[T] bool: the reference's choice is within the slack of another at some cut."""
    s = choice_scores(logits, spec, bias)
    t, e = s.shape
    slack = float(score_slack(s, spec, budget).max()) if s.numel() else 0.0
    amb = torch.zeros(t, dtype=torch.bool, device=s.device)
    if spec.kind == "deepseek_v3" and spec.topk_group < spec.n_group:
        g = torch.sort(group_scores(s, spec), dim=-1, descending=True).values
        amb |= g[:, spec.topk_group - 1] - g[:, spec.topk_group] <= 4 * slack  # two scores on each side
    if spec.kind == "deepseek_v3":
        keep = _kept_groups(s, spec, relax=0.0)
        s = s.masked_fill(~keep, float("-inf"))
    if spec.top_k < e:
        v = torch.sort(s, dim=-1, descending=True).values
        amb |= (v[:, spec.top_k - 1] - v[:, spec.top_k]) <= 2 * slack
    return amb


def _kept_groups(s: torch.Tensor, spec: RouterSpec, relax: float) -> torch.Tensor:
    """[T, E] bool: experts in a group whose score is within `relax` of the topk_group-th best."""
    t, e = s.shape
    gs = group_scores(s, spec)
    cut = torch.sort(gs, dim=-1, descending=True).values[:, spec.topk_group - 1:spec.topk_group]
    keep = gs >= cut - relax
    return keep.repeat_interleave(e // spec.n_group, dim=1)


def compare_routing(got_w: torch.Tensor, got_ids: torch.Tensor, logits: torch.Tensor, spec: RouterSpec,
                    bias: torch.Tensor | None, budget: ErrorBudget) -> RoutingComparison:
    logits = logits.float().cpu()
    bias = None if bias is None else bias.float().cpu()
    t, e, k = logits.shape[0], logits.shape[1], spec.top_k
    if tuple(got_ids.shape) != (t, k) or tuple(got_w.shape) != (t, k):
        return RoutingComparison(False, t, 0, 0, t, float("inf"), float("inf"),
                                 f"shapes ids {list(got_ids.shape)} weights {list(got_w.shape)}, expected [{t}, {k}]")
    ids = got_ids.long().cpu()
    w = got_w.float().cpu()
    in_range = ((ids >= 0) & (ids < e)).all(-1)
    distinct = torch.sort(ids, -1).values.diff(dim=-1).ne(0).all(-1) if k > 1 else torch.ones(t, dtype=torch.bool)
    valid = in_range & distinct
    safe = torch.where(valid[:, None], ids, torch.arange(k).expand(t, k))
    ref_w, ref_ids = route(logits, spec, bias)
    s = choice_scores(logits, spec, bias)
    slack = score_slack(s, spec, budget)
    amb = ambiguous_tokens(logits, spec, bias, budget)
    same = torch.sort(safe, -1).values.eq(torch.sort(ref_ids, -1).values).all(-1)
    # a near tie: the chosen experts' scores must be as good as the reference's, within the slack
    pool = s if spec.kind != "deepseek_v3" else s.masked_fill(~_kept_groups(s, spec, 4 * float(slack.max())), float("-inf"))
    as_good = (pool.gather(1, safe).sum(-1) >= s.gather(1, ref_ids).sum(-1) - 2 * k * slack.max(-1).values)
    ids_ok = valid & (same | (amb & as_good))
    want = weights_for(logits, spec, safe, bias)
    # the sum a renormalization divides by: small sums (many experts, flat scores) amplify each score's slack
    base = {"softmax_topk": torch.softmax(logits, -1), "sigmoid_topk": torch.sigmoid(logits),
            "llama4": torch.sigmoid(logits), "deepseek_v3": torch.sigmoid(logits)}.get(spec.kind)
    S = base.gather(1, safe).sum(-1, keepdim=True) if base is not None else torch.ones(t, 1)
    renorm = spec.renormalize or spec.kind in ("deepseek_v3", "topk_softmax", "gpt_oss")
    f = abs(spec.routed_scaling_factor)
    eps = budget.act_fn_rel
    spread = (k + 1) / S.clamp_min(torch.finfo(torch.float32).tiny) if renorm else torch.ones_like(S)
    bound = budget.z * (f * eps * spread + unit_roundoff(got_w.dtype) * want.abs()) + torch.finfo(torch.float32).tiny
    norm = ((w - want).abs() / bound).masked_fill(~ids_ok[:, None], 0.0)
    norm = torch.where(torch.isfinite(w), norm, torch.full_like(norm, float("inf")))
    mx = float(norm.max()) if norm.numel() else 0.0
    rms = float(norm.pow(2).mean().sqrt()) if norm.numel() else 0.0
    bad = ~ids_ok | (norm > 1).any(-1)
    first, where = "", None
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        where = (i,)
        first = (f"token {i}: got ids {ids[i].tolist()} weights {[round(v, 6) for v in w[i].tolist()]}, want ids "
                 f"{ref_ids[i].tolist()} weights {[round(v, 6) for v in ref_w[i].tolist()]}"
                 + (" (a near tie)" if bool(amb[i]) else ""))
    return RoutingComparison(not bool(bad.any()), t, int(amb.sum()), int((valid & ~ids_ok).sum()), int((~valid).sum()),
                             mx, rms, first, where)
