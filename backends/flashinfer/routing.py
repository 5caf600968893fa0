"""flashinfer.fused_moe.fused_topk_deepseek (DeepSeek-V3 NoAuxTc routing) against moecheck.reference.routing.

Signature read in site-packages/flashinfer/fused_moe/fused_routing_dsv3.py (0.7.2.post1):
fused_topk_deepseek(scores [T, E] (logits, bf16/fp16/fp32), bias [E] (same dtype), n_group, topk_group, topk,
routed_scaling_factor, topk_values [T, k] (scores' dtype, written), topk_indices [T, k] int32 (written),
launch_with_pdl=True, routing_replay_out=None, *, backend="default"). Kernel: sigmoid(scores) + bias chooses,
group score = sum of the top-2 biased scores, topk_group groups, topk experts from them; weights =
sigmoid / sum * routed_scaling_factor, fp32 inside. Limits: n_group > 1: topk <= 8, E/n_group <= 32,
E/n_group * topk_group <= 128; n_group == 1: E <= 384. Arch: @supported_compute_capability([89, 90, 100, 103,
107, 120, 121]).

The reference is route(logits, RouterSpec("deepseek_v3", ...), bias). The expert sets must match per token
except where the reference's own choice is within the evaluation tolerance of a tie (at the group cut or the
expert cut); weights are compared slot by slot after sorting by expert id, within the tolerance table's
activation-function budget (the kernel's sigmoid, as an absolute error) for this check's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from moecheck.backends.flashinfer import common as C
from moecheck.reference.errmodel import budget_for
from moecheck.reference.errmodel.budget import unit_roundoff
from moecheck.reference.errors import require
from moecheck.reference.routing import RouterSpec, route

NAME = "flashinfer_routing_dsv3"  # the tolerance-table key of this check
SPY = f"{C.FUSED_MOE}:fused_topk_deepseek"


@dataclass
class RoutingDiff:
    tokens: int
    ambiguous: int = 0  # tokens whose reference choice is within tolerance of a tie (not judged on ids)
    id_mismatch: int = 0
    weight_mismatch: int = 0
    first: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.id_mismatch or self.weight_mismatch)

    def summary(self) -> str:
        return (f"fused_topk_deepseek over {self.tokens} tokens: {self.id_mismatch} expert sets differ, "
                f"{self.weight_mismatch} weights outside tolerance, {self.ambiguous} near-tie tokens not judged on ids"
                + (f"; first: {self.first}" if self.first else ""))


def _margins(logits: torch.Tensor, bias: torch.Tensor, spec: RouterSpec) -> torch.Tensor:
    """Per token, the smallest gap at the two cuts the router makes: the kept groups vs the next group, and
    the k-th vs the (k+1)-th expert among the kept groups. A gap below tolerance makes the choice ambiguous."""
    t, e = logits.shape
    choice = torch.sigmoid(logits.float()) + bias.float()
    per = e // spec.n_group
    grouped = choice.view(t, spec.n_group, per)
    gs = torch.sort(grouped, dim=-1, descending=True).values[..., : min(2, per)].sum(-1)
    gsorted = torch.sort(gs, dim=-1, descending=True).values
    gmargin = (gsorted[:, spec.topk_group - 1] - gsorted[:, spec.topk_group]) if spec.topk_group < spec.n_group else torch.full((t,), float("inf"))
    keep = torch.zeros(t, spec.n_group, dtype=torch.bool)
    keep.scatter_(1, torch.sort(gs, dim=-1, descending=True, stable=True).indices[:, : spec.topk_group], True)
    masked = grouped.masked_fill(~keep[..., None], float("-inf")).view(t, e)
    es = torch.sort(masked, dim=-1, descending=True).values
    emargin = es[:, spec.top_k - 1] - es[:, spec.top_k] if spec.top_k < spec.topk_group * per else torch.full((t,), float("inf"))
    return torch.minimum(gmargin, emargin)


def compare_routing(logits: torch.Tensor, bias: torch.Tensor, spec: RouterSpec) -> RoutingDiff:
    require(spec.kind == "deepseek_v3", f"fused_topk_deepseek implements deepseek_v3 routing, not {spec.kind!r}")
    t = logits.shape[0]
    vals = torch.empty(t, spec.top_k, dtype=logits.dtype, device=logits.device)
    idx = torch.empty(t, spec.top_k, dtype=torch.int32, device=logits.device)
    C.call(C.fused_moe(), "fused_topk_deepseek", logits.contiguous(), bias.to(logits.dtype).contiguous(), spec.n_group,
           spec.topk_group, spec.top_k, spec.routed_scaling_factor, vals, idx)
    ref_w, ref_ids = route(logits.float(), spec, bias.to(logits.dtype).float())
    budget = budget_for(str(logits.dtype).replace("torch.", ""), NAME)
    eps, z = budget.act_fn_rel, budget.z
    # noAuxTcKernels.cu evaluates sigmoid as 0.5 * tanhf(0.5 x) + 0.5: accurate in absolute terms (eps, as
    # sigmoid <= 1), not relative. A group score sums two scores and a cut compares two sums: 4 eps. Inside
    # that gap the reference's choice is a near tie, and an answer on either side of it is correct.
    amb = _margins(logits.cpu(), bias.cpu(), spec) <= z * 4 * eps
    got_ids, got_order = torch.sort(idx.long().cpu(), dim=-1)
    want_ids, want_order = torch.sort(ref_ids.cpu(), dim=-1)
    got_w = vals.float().cpu().gather(1, got_order)
    want_w = ref_w.cpu().gather(1, want_order)
    d = RoutingDiff(t, ambiguous=int(amb.sum()))
    ids_bad = (got_ids != want_ids).any(-1) & ~amb
    d.id_mismatch = int(ids_bad.sum())
    # w_i = f s_i / S: each s off by eps moves w_i by at most f (1 + k) eps / S; plus the store in scores' dtype
    S = torch.sigmoid(logits.float().cpu()).gather(1, want_ids).sum(-1, keepdim=True)
    f = spec.routed_scaling_factor
    w_tol = z * (f * (spec.top_k + 1) * eps / S + unit_roundoff(logits.dtype) * want_w.abs()) + torch.finfo(torch.float32).tiny
    w_bad = ((got_w - want_w).abs() > w_tol).any(-1) & ~(got_ids != want_ids).any(-1)
    d.weight_mismatch = int(w_bad.sum())
    bad = ids_bad | w_bad
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        d.first = (f"token {i}: got ids {got_ids[i].tolist()} weights {[round(v, 6) for v in got_w[i].tolist()]}, "
                   f"want ids {want_ids[i].tolist()} weights {[round(v, 6) for v in want_w[i].tolist()]}")
    return d


def inputs(tokens: int, experts: int, seed: int, dtype=torch.float32, device="cuda") -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits (std 2) and a small correction bias (std 1e-2), as DeepSeek-V3 checkpoints have them."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(tokens, experts, generator=g) * 2).to(dtype)
    bias = (torch.randn(experts, generator=g) * 0.01).to(dtype)
    return logits.to(device), bias.to(device)
