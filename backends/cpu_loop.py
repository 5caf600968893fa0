"""cpu_loop: a plain per-expert loop in torch, independent of the reference's sort-and-group path.

It exists so the whole machinery (strategies, error model, properties, repro) runs in CPU-only CI
against an implementation that differs from the reference in structure and rounding points: each
expert masks its tokens, stores GEMM1/activation/GEMM2 results in the activation dtype, and the
combine accumulates with index_add. It quantizes its own activations with the reference quantizer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from moecheck.backends import cpu_router
from moecheck.backends.base import Backend, Capability
from moecheck.backends.dispatch import scaled_input
from moecheck.backends.problem import MoEProblem
from moecheck.reference import activations as act_mod
from moecheck.reference.formats import FORMATS
from moecheck.reference.lora import lora_w2_delta, lora_w13_delta
from moecheck.reference.moe import ACT, Rounding
from moecheck.reference.qtensor import QTensor
from moecheck.reference.quantize import quantize

_ROUND = Rounding(gemm1_out=ACT, act_out=ACT, gemm2_out=ACT)


@dataclass
class _W:
    w13: torch.Tensor  # fp32 dequantized
    w2: torch.Tensor


def _fq(x, spec, scale):
    return x.float() if spec is None else quantize(x, spec, scale).dequantize()


class CpuLoop(Backend):
    def prepare(self, p: MoEProblem) -> _W:
        deq = lambda w: w.dequantize() if isinstance(w, QTensor) else w.float()  # noqa: E731
        return _W(deq(p.w13), deq(p.w2))

    def run(self, w: _W, p: MoEProblem, out=None) -> torch.Tensor:
        if p.topk_ids is None:  # asked to route itself: the independent CPU router
            weights, ids = cpu_router.route_logits(p.router_logits, p.router, p.router_bias)
            p = p.with_(topk_weights=weights, topk_ids=ids)
        dt = p.hidden_states.dtype
        xin = scaled_input(p)
        x = _fq(xin, p.fmt.act, p.a1_scale)
        ids = p.topk_ids.long()
        local = p.expert_map.long()[ids] if p.expert_map is not None else ids
        tw = torch.ones_like(p.topk_weights.float()) if p.apply_router_weight_on_input else p.topk_weights.float()
        acc = torch.zeros(p.tokens, p.hidden, dtype=torch.float32, device=x.device)
        # the intermediate of every routed row first (per-tensor scales see all rows at once)
        rows = [(e, *torch.nonzero(local == e, as_tuple=True)) for e in range(p.experts)]
        rows = [(e, t, s) for e, t, s in rows if t.numel()]
        ys = []
        for e, t, _ in rows:
            h = x[t] @ w.w13[e].T
            if p.w13_bias is not None:
                h = h + p.w13_bias[e].float()
            if p.lora is not None and p.token_lora is not None:
                g, u = lora_w13_delta(p.lora, xin[t].float(), torch.full_like(t, e), p.token_lora[t])
                h = h + (act_mod.join_gate_up(g, u, p.activation) if p.activation.gated else g)
            ys.append(act_mod.apply(h.to(dt), p.activation).to(dt))
        if not ys:
            return self._emit(acc.to(dt), out)
        y_all = torch.cat(ys)
        yq = _fq(y_all, p.fmt.act, p.a2_scale)
        start = 0
        for (e, t, s), y in zip(rows, ys):
            n = y.shape[0]
            o = yq[start:start + n] @ w.w2[e].T
            if p.w2_bias is not None:
                o = o + p.w2_bias[e].float()
            if p.lora is not None and p.token_lora is not None:
                o = o + lora_w2_delta(p.lora, y, torch.full_like(t, e), p.token_lora[t])
            acc.index_add_(0, t, o.to(dt).float() * tw[t, s][:, None])
            start += n
        return self._emit(acc.to(dt), out)

    @staticmethod
    def _emit(res, out):
        if out is None:
            return res
        out.copy_(res)
        return out


BACKENDS = [
    CpuLoop(
        name="cpu_loop",
        description="per-expert masked loop in torch (CPU, or CUDA when present); emulates a bf16 kernel",
        capability=Capability(
            formats=frozenset(FORMATS), dtypes=frozenset({torch.bfloat16, torch.float16}),
            devices=frozenset({"cpu"}), activations=frozenset(act_mod.ACTIVATIONS), expert_map=True,
            lora=True, bias=True, weights_on_input=True, out_buffer=True, rounding=_ROUND,
            batch_invariant=False, verified=("CPU torch 2.13.0",), routers=frozenset(cpu_router.ROUTER_KINDS)),
        spies=("moecheck.backends.cpu_loop:_fq",), router_spies=("moecheck.backends.cpu_router:route_logits",)),
]
