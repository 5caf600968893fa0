"""Which stage of torch_compile's dense MoE differs from eager: each stage compiled alone on eager inputs.

    python -m moecheck.ci.compile_stages CASE.json [CASE.json ...]

For a case where the compiled backend fails and eager passes (a bias toward zero, say), every stage of
backends/torch_compile.py::dense_moe is compiled on its own and fed the eager values of the stage before:
the first stage whose output moves is where Inductor's arithmetic departs. One line per stage: elements
that differ, max |relative difference|, and the mean signed difference toward magnitude (sign(eager) *
(compiled - eager) / |eager|, negative: toward zero), over the elements that differ.
"""
from __future__ import annotations

import sys

import torch
from moecheck.backends import registry
from moecheck.backends import torch_compile as tc
from moecheck.backends.dispatch import scaled_input
from moecheck.properties.case import build
from moecheck.properties.repro import load_case
from moecheck.reference import activations as act_mod
from moecheck.reference.quantize import fake_quantize, quantize

DEV = "cuda"  # tests run the chain on CPU with torch.compile stubbed


def _biases(p, w13):
    """(b13, b2) as the backend passes them: zeros where the case has none."""
    f = lambda t, rows: torch.zeros(p.experts, rows, device=DEV) if t is None else t.float()
    return f(p.w13_bias, w13.shape[1]), f(p.w2_bias, p.hidden)


def _stages(p, w13, w2, routed, dense):
    """(name, fn) in order; each fn's eager output is the next stage's input."""
    act_q, act = p.fmt.act, p.activation
    b13, b2 = _biases(p, w13)

    def requant(y, routed):
        if act_q is None:
            return y
        rows = y[routed.expand_as(y)].view(-1, y.shape[-1])
        yq = torch.zeros_like(y)
        yq[routed.expand_as(y)] = fake_quantize(rows, act_q, p.a2_scale).flatten()
        return yq

    return [
        ("quantize input", lambda x: fake_quantize(x, act_q, p.a1_scale)),
        ("gemm1 + bias", lambda a: torch.einsum("th,enh->etn", a, w13) + b13[:, None, :]),
        ("activation", lambda h: act_mod.apply(h, act)),
        ("re-quantize", lambda y: requant(y, routed)),
        ("gemm2 + bias", lambda y: torch.einsum("eti,ehi->eth", y, w2) + b2[:, None, :]),
        ("weighted sum", lambda o: (o * dense.T[..., None]).sum(0)),
    ]


def _scales_codes(x, spec):
    t = quantize(x, spec)
    return t.scales.float(), t.element_values()


def _diff(name: str, c: torch.Tensor, e: torch.Tensor) -> str:
    c, e = c.double(), e.double()
    d = (c - e) != 0
    n = int(d.sum())
    if not n:
        return f"{name:18s} identical ({e.numel()} elements)"
    rel = ((c - e) / e.abs().clamp(min=1e-300))[d]
    lean = (torch.sign(e[d]) * rel).mean().item()
    return (f"{name:18s} {n} of {e.numel()} differ; max |rel| {rel.abs().max().item():.3g}; "
            f"mean toward magnitude {lean:+.3g}")


def main(argv=None) -> None:
    for _ in run(argv):
        pass


def run(argv=None):
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        raise SystemExit("usage: python -m moecheck.ci.compile_stages CASE.json [CASE.json ...]")
    if DEV == "cuda" and not torch.cuda.is_available():
        raise SystemExit("moecheck compile_stages: needs CUDA (torch_compile runs there only)")
    b = registry.load_all()["torch_compile"]
    for path in paths:
        p = build(load_case(path), DEV)
        w13, w2 = b.prepare(p)
        ids = p.topk_ids.long()
        local = p.expert_map.long()[ids] if p.expert_map is not None else ids
        tw = torch.ones_like(p.topk_weights.float()) if p.apply_router_weight_on_input else p.topk_weights.float()
        slot = torch.where(local >= 0, local, p.experts)
        dense = torch.zeros(p.tokens, p.experts + 1, device=DEV).scatter_add_(1, slot, tw)[:, :p.experts]
        routed = torch.zeros(p.tokens, p.experts + 1, dtype=torch.bool, device=DEV).scatter_(1, slot, True)
        routed = routed[:, :p.experts].T[..., None]
        print(f"== {path.rsplit('/', 1)[-1]}", flush=True)
        v = scaled_input(p).float()
        if p.fmt.act is not None and p.a1_scale is None:  # a dynamic quantizer: its scales, then its codes
            x = scaled_input(p).float()
            (se, ce), (sc, cc) = _scales_codes(x, p.fmt.act), torch.compile(_scales_codes, dynamic=True)(x, p.fmt.act)
            print(_diff("  its scales", sc, se), flush=True)
            print(_diff("  its codes", cc, ce), flush=True)
        for name, fn in _stages(p, w13, w2, routed, dense):
            e = fn(v)
            c = torch.compile(fn, dynamic=True)(v)
            print(_diff(name, c, e), flush=True)
            v = e
        whole = tc._compiled(scaled_input(p).float(), w13, w2, dense.contiguous(), routed[..., 0].T.contiguous(),
                             p.activation, p.fmt.act, p.a1_scale, p.a2_scale,
                             *_biases(p, w13))
        print(_diff("whole, compiled", whole, v), flush=True)
        yield whole, v


if __name__ == "__main__":
    main()
