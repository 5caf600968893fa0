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
from moecheck.properties.case import build
from moecheck.properties.repro import load_case
from moecheck.reference import activations as act_mod
from moecheck.reference.quantize import fake_quantize, quantize

DEV = "cuda"  # tests run the chain on CPU with torch.compile stubbed


def _inputs(b, p) -> tuple:
    """The arguments TorchCompile.run hands dense_moe for this case: its own routing, masks and biases."""
    seen = []
    real, tc._compiled = tc._compiled, lambda *a: seen.append(a) or tc.dense_moe(*a)
    try:
        b.run(b.prepare(p), p)
    finally:
        tc._compiled = real
    return seen[0]


def _stages(x, w13, w2, dense_w, routed, act, act_q, a1, a2, b13, b2):
    """(name, fn) in dense_moe's order, on dense_moe's arguments; each fn's eager output feeds the next."""
    routed = routed.T[..., None]

    def requant(y):
        if act_q is None:
            return y
        rows = y[routed.expand_as(y)].view(-1, y.shape[-1])
        yq = torch.zeros_like(y)
        yq[routed.expand_as(y)] = fake_quantize(rows, act_q, a2).flatten()
        return yq

    return [
        ("quantize input", lambda v: fake_quantize(v, act_q, a1)),
        ("gemm1 + bias", lambda a: torch.einsum("th,enh->etn", a, w13) + b13[:, None, :]),
        ("activation", lambda h: act_mod.apply(h, act)),
        ("re-quantize", requant),
        ("gemm2 + bias", lambda y: torch.einsum("eti,ehi->eth", y, w2) + b2[:, None, :]),
        ("weighted sum", lambda o: (o * dense_w.T[..., None]).sum(0)),
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
        args = _inputs(b, p)
        print(f"== {path.rsplit('/', 1)[-1]}", flush=True)
        x, act_q, a1 = args[0], args[6], args[7]
        if act_q is not None and a1 is None:  # a dynamic quantizer: its scales, then its codes
            (se, ce), (sc, cc) = _scales_codes(x, act_q), torch.compile(_scales_codes, dynamic=True)(x, act_q)
            print(_diff("  its scales", sc, se), flush=True)
            print(_diff("  its codes", cc, ce), flush=True)
        v = x
        for name, fn in _stages(*args):
            e = fn(v)
            c = torch.compile(fn, dynamic=True)(v)
            print(_diff(name, c, e), flush=True)
            v = e
        whole = tc._compiled(*args)
        print(_diff("whole, compiled", whole, v), flush=True)
        yield whole, v

if __name__ == "__main__":
    main()
