"""The case generators: gen 1 rebuilds recorded cases bit for bit; gen 2 (the stream) is the same bits
wherever it is made, and is random enough to stand in for randn."""
from __future__ import annotations

import math
import os

import pytest
import torch
from moecheck.backends import registry
from moecheck.properties import rng
from moecheck.properties.case import Case, build, digest
from moecheck.properties.strategies import cases

CUDA = torch.cuda.is_available()
NO_CUDA = "needs CUDA: a stream made on the GPU must equal the one made on the CPU"


# digests of builds made before the stream existed (properties/case.py at ab970a4): a recorded case
# file must keep meaning the same tensors
RECORDED = [
    (Case(format="bf16", tokens=7, hidden=256, inter=256, experts=4, top_k=2), "c93033f41cbf1fd1"),
    (Case(format="fp8_block", values="boundary", tokens=7, hidden=256, inter=256, experts=4, top_k=2, ep_remote=2,
          bias=True, lora_adapters=2), "5dcf032b326eecb8"),
    (Case(format="mxfp4_bf16", values="outliers", tokens=7, hidden=256, inter=256, experts=4, top_k=2), "2c814276aa80377b"),
]


@pytest.mark.parametrize("case, recorded", RECORDED, ids=[c.format for c, _ in RECORDED])
def test_gen1_rebuilds_recorded_cases_bit_for_bit(case, recorded):
    assert digest(build(case)) == recorded


def test_the_stream_does_not_depend_on_chunking(monkeypatch):
    whole = rng.Stream(7).randn(3, 1000)
    monkeypatch.setattr(rng, "CHUNK", 97)
    assert torch.equal(rng.Stream(7).randn(3, 1000), whole)


def test_draws_and_seeds_are_independent():
    s = rng.Stream(1)
    a, b = s.randn(4096), s.randn(4096)
    c = rng.Stream(2).randn(4096)
    for x, y in ((a, b), (a, c)):
        r = torch.corrcoef(torch.stack([x, y]))[0, 1].item()
        assert abs(r) < 5 / math.sqrt(4096), r  # 5 standard errors of a correlation of independent draws
    assert torch.equal(rng.Stream(1).randn(4096), a)


def test_normals_have_randn_moments():
    n = 1 << 18
    x = rng.Stream(3).randn(n).double()
    se = 1 / math.sqrt(n)
    assert abs(x.mean().item()) < 5 * se
    assert abs(x.var().item() - 1) < 5 * math.sqrt(2) * se  # var of a sample variance: 2/n for a normal; less here
    assert x.abs().max().item() <= math.sqrt(12)  # Irwin-Hall of four: bounded


def test_each_value_is_one_correctly_rounded_product():
    """Integer bits, then one fp32 multiply: what IEEE makes the same on every device."""
    s = rng.Stream(11)
    got = s.randn(10000)
    bits = rng.Stream(11)._bits(10000, 2, "cpu")
    exact = ((bits & 0xFFFF).sum(1) + (bits >> 16).sum(1) - 2 * 0xFFFF).double()
    sd = torch.tensor(math.sqrt(12.0 / (65536.0**2 - 1)) / 2, dtype=torch.float32).double()
    assert torch.equal(got, (exact * sd).float())


def test_helpers_stay_in_range():
    s = rng.Stream(5)
    u, m = s.rand(10000), s.magnitudes(10000)
    assert 0 <= u.min() and u.max() < 1
    assert 0.25 <= m.min() and m.max() < 4
    assert sorted(s.randperm(50).tolist()) == list(range(50))
    i = s.randint(-1, 3, (1000,))
    assert set(i.tolist()) == {-1, 0, 1, 2}


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_a_gen2_case_is_the_same_built_on_the_gpu():
    c = Case(format="fp8_block", values="boundary", tokens=33, hidden=384, inter=256, experts=6, top_k=2, gen=2, bias=True)
    assert digest(build(c, "cuda")) == digest(build(c, "cpu"))


def test_gpu_draws_use_the_stream_cpu_draws_torch():
    b = registry.load_all()["cpu_loop"]
    assert cases(b, "bf16", "matches_reference", "cuda").example().gen == 2
    assert cases(b, "bf16", "matches_reference", "cpu").example().gen == 1


_INTERPRETED = """
import torch
from moecheck.properties import rng, rng_triton
keys = set()
for seed in (0, 1, 2, 3, 2**31 + 5, 2**40 + 77):
    for n in (1, 1000, 4097):
        s = rng.Stream(seed)
        key = s._next_key()
        keys.add(key >= 2**31)
        out = torch.empty(n)
        rng_triton.randn_into(out, key, rng.SD)
        assert torch.equal(out, rng.Stream(seed).randn(n)), (seed, n)
assert keys == {True, False}, keys  # hash keys on both sides of 2^31 (signed vs unsigned arguments)
"""


def test_the_triton_stream_is_the_torch_stream():
    """The kernel CUDA draws with, run by Triton's interpreter on the CPU."""
    pytest.importorskip("triton", reason="Triton is not installed: the kernel's equality is checked on CUDA only")
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
