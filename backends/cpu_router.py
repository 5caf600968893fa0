"""cpu_router: every router kind written again, plainly, so routing properties run in CPU-only CI.

Independent of reference/routing.py on purpose: torch.topk instead of a stable sort (ties break as
torch likes), groups masked with -inf through scatter, one branch per kind. cpu_loop uses the same
function when it is asked to route itself.
"""
from __future__ import annotations

import torch
from moecheck.backends.base import Backend, Capability
from moecheck.backends.problem import MoEProblem
from moecheck.reference.routing import ROUTER_KINDS, RouterSpec  # noqa: F401  (cpu_loop claims them all)


def route_logits(logits: torch.Tensor, spec: RouterSpec, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    x = logits.float()
    k = spec.top_k
    if spec.kind == "softmax_topk":
        w, ids = torch.topk(torch.softmax(x, -1), k, dim=-1)
    elif spec.kind in ("topk_softmax", "gpt_oss"):
        v, ids = torch.topk(x, k, dim=-1)
        w = torch.softmax(v, -1)
    elif spec.kind == "sigmoid_topk":
        w, ids = torch.topk(torch.sigmoid(x), k, dim=-1)
    elif spec.kind == "llama4":
        v, ids = torch.topk(x, k, dim=-1)
        w = torch.sigmoid(v)
    else:  # deepseek_v3
        s = torch.sigmoid(x)
        c = s + (0 if bias is None else bias.float())
        t, e = c.shape
        g = c.view(t, spec.n_group, -1)
        gs = g.topk(min(2, g.shape[-1]), dim=-1).values.sum(-1)
        keep = torch.zeros_like(gs).scatter_(1, gs.topk(spec.topk_group, dim=-1).indices, 1.0).bool()
        c = g.masked_fill(~keep[..., None], float("-inf")).view(t, e)
        ids = c.topk(k, dim=-1).indices
        w = s.gather(1, ids)
    if spec.renormalize or spec.kind == "deepseek_v3":
        w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)  # 0/0 when all underflow
    return w * spec.routed_scaling_factor, ids


class CpuRouter(Backend):
    def route(self, prepared, p: MoEProblem):
        return route_logits(p.router_logits, p.router, p.router_bias)


BACKENDS = [
    CpuRouter(
        name="cpu_router", description="every router kind in plain torch (topk, softmax/sigmoid, groups)",
        capability=Capability(formats=frozenset({"bf16"}), devices=frozenset({"cpu"}), kind="router",
                              routers=frozenset(ROUTER_KINDS), verified=("CPU torch 2.13.0",)),
        spies=("moecheck.backends.cpu_router:route_logits",)),
]
