"""Router backends with one planted routing bug each, and a correct one (meta-tests of routes_like_reference).

Each is the CPU router (backends/cpu_router.py) with one real-world mistake:
  - toy_router_ok:              correct
  - toy_router_no_renorm:       the top-k weights are not renormalized where the router says so
  - toy_router_zero_mask:       dropped groups are masked with 0, not -inf (HF DeepSeek-V3 does this; a kept
                                expert whose biased score is negative then loses to a dropped one)
  - toy_router_dropped_scaling: the routed scaling factor (DeepSeek-V3: 2.5) is never applied
"""
import torch
from moecheck.backends import Capability, register
from moecheck.backends import cpu_router as R
from moecheck.reference.routing import ROUTER_KINDS


def toy_route(logits, spec, bias, bug):
    if bug == "no_renorm":
        spec = type(spec)(**{**spec.__dict__, "renormalize": False})
        if spec.kind == "deepseek_v3":
            s = torch.sigmoid(logits.float())
            _, ids = R.route_logits(logits, spec, bias)
            return s.gather(1, ids) * spec.routed_scaling_factor, ids
    if bug == "dropped_scaling":
        spec = type(spec)(**{**spec.__dict__, "routed_scaling_factor": 1.0})
    if bug == "zero_mask":
        s = torch.sigmoid(logits.float())
        c = s + bias.float()
        t, e = c.shape
        g = c.view(t, spec.n_group, -1)
        gs = g.topk(min(2, g.shape[-1]), dim=-1).values.sum(-1)
        keep = torch.zeros_like(gs).scatter_(1, gs.topk(spec.topk_group, dim=-1).indices, 1.0)
        ids = (g * keep[..., None]).view(t, e).topk(spec.top_k, dim=-1).indices  # masked with 0
        w = s.gather(1, ids)
        return w / w.sum(-1, keepdim=True) * spec.routed_scaling_factor, ids
    return R.route_logits(logits, spec, bias)


class ToyRouter(R.CpuRouter):
    bug: str = ""

    def route(self, prepared, p):
        return toy_route(p.router_logits, p.router, p.router_bias, self.bug)


def _make(bug: str, routers) -> ToyRouter:
    b = ToyRouter(name=f"toy_router_{bug or 'ok'}", spies=("moecheck.tests.properties.toy_routers:toy_route",),
                  capability=Capability(formats=frozenset({"bf16"}), devices=frozenset({"cpu"}), kind="router",
                                        routers=frozenset(routers)))
    b.bug = bug
    return b


BACKENDS = [_make("", ROUTER_KINDS), _make("no_renorm", {"softmax_topk", "deepseek_v3"}),
            _make("zero_mask", {"deepseek_v3"}), _make("dropped_scaling", {"deepseek_v3"})]
for _b in BACKENDS:
    register(_b)
