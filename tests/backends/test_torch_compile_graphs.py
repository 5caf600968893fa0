"""torch_compile must not recompile per size: a new T, H, I or E reuses the graph (dynamic shapes). On
2026-12-03 it recompiled on every new I (an f-string of a size in a `require` message made it a graph
constant) and broke the graph in every quantizer call (`.item()` in FloatCodec.emax): 0.4 examples/s on the
H200. Dynamo alone (backend="eager") on CPU traces the same graphs Inductor would compile."""
import pytest
import torch
from moecheck.backends import torch_compile as tc
from moecheck.properties.case import Case, build

# (T, H, I, E) with no two of T, H, I, 2I, E equal within a case: Dynamo's duck sizing would make such a
# coincidence a guard of the first graph (one recompile, then general), which is not what this checks
SIZES = [(5, 64, 96, 4), (17, 160, 64, 6), (33, 256, 160, 8), (130, 96, 224, 3), (9, 192, 64, 7)]  # MX: I a multiple of 32, two blocks or more


@pytest.mark.parametrize("fmt", ["bf16", "fp8_token_channel", "mxfp4_mxfp8"])
def test_new_sizes_reuse_the_graphs(fmt, monkeypatch):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    f = torch.compile(tc.dense_moe, dynamic=True, backend="eager")
    monkeypatch.setattr(tc, "_compiled", lambda *a: f(*a))
    b = tc.BACKENDS[0]
    seen = []
    for i, (T, H, I, E) in enumerate(SIZES):
        p = build(Case(tokens=T, hidden=H, inter=I, experts=E, top_k=2, seed=i, format=fmt, activation="silu"), "cpu")
        b.run(b.prepare(p), p)
        seen.append(counters["stats"]["unique_graphs"])
    torch._dynamo.reset()
    assert seen[1:] == [seen[0]] * (len(SIZES) - 1), f"graphs after each new size: {seen}"
