"""Token dispatch and combine in plain torch, shared by adapters whose kernels are grouped GEMMs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from moecheck.backends.problem import MoEProblem


@dataclass
class Routed:
    tok: torch.Tensor  # [R] token of each routed row, rows sorted by local expert
    slot: torch.Tensor  # [R] flat (token, k) slot
    expert: torch.Tensor  # [R] local expert id
    offs: torch.Tensor  # [E] int32 cumulative row counts (grouped-GEMM offsets)


def dispatch(p: MoEProblem) -> Routed:
    ids = p.topk_ids.long()
    local = p.expert_map.to(ids.device).long()[ids] if p.expert_map is not None else ids
    flat = local.flatten()
    slots = torch.nonzero(flat >= 0).flatten()
    order = torch.argsort(flat[slots], stable=True)
    slots = slots[order]
    expert = flat[slots]
    counts = torch.bincount(expert, minlength=p.experts)
    return Routed(slots // p.top_k, slots, expert, torch.cumsum(counts, 0).to(torch.int32))


def weighted_sum(o: torch.Tensor, r: Routed, p: MoEProblem) -> torch.Tensor:
    """fp32 [T, H]: the k expert rows of each token times their router weights, summed in slot order
    (vLLM moe_sum order). Rows go to their (token, slot) place first: an index_add_ would sum with
    CUDA atomics in whatever order they land, which broke bitwise reruns on the H200
    (docs/findings/h200-2026-12-01)."""
    T, H, k = p.tokens, p.hidden, p.top_k
    w = p.topk_weights.float().flatten()[r.slot]
    if p.apply_router_weight_on_input:
        w = torch.ones_like(w)
    buf = torch.zeros(T * k, H, device=o.device, dtype=torch.float32)
    buf[r.slot] = o.float() * w[:, None]  # slots are unique: a plain scatter, no accumulation
    buf = buf.view(T, k, H)
    acc = buf[:, 0].clone()
    for j in range(1, k):
        acc += buf[:, j]
    return acc


def combine(o: torch.Tensor, r: Routed, p: MoEProblem, out: torch.Tensor | None) -> torch.Tensor:
    """weighted_sum cast to the activation dtype, into `out` when given."""
    res = weighted_sum(o, r, p).to(p.hidden_states.dtype)
    if out is None:
        return res
    out.copy_(res)
    return out


def scaled_input(p: MoEProblem) -> torch.Tensor:
    """Layer input, multiplied by the router weight first when the router says so (Llama4)."""
    x = p.hidden_states
    if p.apply_router_weight_on_input:
        x = (x.float() * p.topk_weights[:, :1].float()).to(x.dtype)
    return x
