"""The reference's grouped GEMM: bucketed padded bmms give the per-expert loop's rows, the buckets
bound padding and launches, and equal counts need no copies.

Operands are small integers in float64, so every product and sum is exact in fp32 and float64
alike: any accumulation order gives the same bits, and the bucketed path, the loop and a float64
einsum must agree bit for bit."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moecheck.reference.errmodel.chains import gemm_spread
from moecheck.reference.errmodel.table import budget_for
from moecheck.reference.grouped import (
    CPU_BUCKET_MACS,
    PAD_WASTE,
    Groups,
    buckets,
    grouped_apply,
    grouped_mm,
    loop_mm,
)


def _operands(counts, K=24, N=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-8, 9, (sum(counts), K), generator=g).double()
    w = torch.randint(-8, 9, (len(counts), N, K), generator=g).double()
    return a, w


def _expert_of_row(counts):
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))


def _exact(a, w, counts):
    return torch.einsum("rk,rnk->rn", a.double(), w.double()[_expert_of_row(counts)]).float()


def _zipf(rows, E):
    p = 1.0 / torch.arange(1, E + 1, dtype=torch.float64) ** 0.8
    c = (p / p.sum() * rows).floor().long()
    c[0] += rows - int(c.sum())
    return c[torch.randperm(E, generator=torch.Generator().manual_seed(3))].tolist()


CASES = {
    "mixed": [3, 4, 2, 3],
    "empty_experts": [0, 5, 0, 4, 0],
    "all_on_one": [0, 0, 9, 0],
    "equal": [4, 4, 4],
    "equal_with_empty": [0, 3, 3, 0, 3],
    "one_row_each": [1] * 7,
    "single_expert": [5],
    "no_rows": [0, 0, 0],
    "skewed": _zipf(200, 16),
    "halving": [64, 32, 16, 8, 4, 2, 1, 1],
}


@pytest.fixture(params=["runs", "gather"])
def weight_gather(request, monkeypatch):
    """CPU cuts buckets into runs of consecutive experts; elsewhere their weights are gathered."""
    if request.param == "gather":
        monkeypatch.setattr("moecheck.reference.grouped._runs", lambda b: [b])
    return request.param


# work=None: buckets up to PAD_WASTE; CPU_BUCKET_MACS: one padded row per expert; more: equal counts only
WORKS = [None, CPU_BUCKET_MACS, 1e12]


@pytest.mark.parametrize("work", WORKS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_buckets_match_the_loop_bitwise(name, work, weight_gather):
    counts = CASES[name]
    a, w = _operands(counts)
    want = _exact(a, w, counts)
    assert torch.equal(loop_mm(a, w, counts, fast=False), want)
    got = grouped_mm(a, w, Groups(counts, a.device, work=work), fast=False)
    assert got.dtype == torch.float32 and torch.equal(got, want)


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 40), min_size=1, max_size=24), st.sampled_from(WORKS))
def test_any_counts_match_the_loop_bitwise(weight_gather, counts, work):
    a, w = _operands(counts, K=8, N=3, seed=len(counts))
    assert torch.equal(grouped_mm(a, w, Groups(counts, "cpu", work=work), fast=False), _exact(a, w, counts))


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.integers(0, 5000), min_size=0, max_size=256))
def test_buckets_bound_padding_and_launches(counts):
    got = buckets(counts)
    flat = [e for b in got for e in b]
    assert sorted(flat) == [e for e, c in enumerate(counts) if c]  # every non-empty expert once
    for b in got:
        assert b == sorted(b) and max(counts[e] for e in b) * len(b) <= PAD_WASTE * sum(counts[e] for e in b)
    tops = [max(counts[e] for e in b) for b in got]
    assert all(PAD_WASTE * later < top for top, later in zip(tops, tops[1:]))  # geometric: few buckets
    if counts and max(counts):
        assert len(got) <= math.floor(math.log(max(counts), PAD_WASTE) + 1e-9) + 1
    for b in buckets(counts, join_pad=3):
        assert max(counts[e] for e in b) - min(counts[e] for e in b) <= 3


def test_balanced_routing_is_one_bucket():
    assert len(buckets([30, 34, 29, 33, 32, 31])) == 1
    assert len(Groups([16] * 128, "cpu").buckets) == 1
    assert buckets([0, 0]) == [] and buckets([]) == []


def test_equal_counts_pad_and_unpad_are_views():
    a, _ = _operands([4, 4, 4])
    g = Groups([4, 4, 4], "cpu")
    assert g.view and g.src is None and g.dst is None
    (p,) = g.pad(a)
    assert p.shape == (3, 4, a.shape[1]) and p.data_ptr() == a.data_ptr()
    y = torch.randn(3, 4, 5)
    assert g.unpad([y]).data_ptr() == y.data_ptr()
    g = Groups([0, 3, 3, 0, 3], "cpu")  # runs {1, 2} and {4}: views of the rows, unpad one cat
    assert g.view and g.src is None
    assert all(p.untyped_storage().data_ptr() == a.untyped_storage().data_ptr() for p in g.pad(a[:9]))


def test_buckets_without_padding_are_views_in_row_order():
    counts = [8, 8, 0, 2, 2]
    g = Groups(counts, "cpu", work=CPU_BUCKET_MACS)  # at most one padded row per join: {0, 1} and {3, 4}
    assert [b for b, _ in g.buckets] == [[0, 1], [3, 4]] and g.src is None and g.dst is None
    a, _ = _operands(counts)
    assert [p.data_ptr() for p in g.pad(a)] == [a.data_ptr(), a[16].data_ptr()]


def test_contiguous_buckets_slice_the_weights(weight_gather):
    counts = [8, 8, 7, 1, 1, 0]  # experts 0-2 and 3-4: ranges, so no gather either way
    g = Groups(counts, "cpu")
    w = torch.randn(len(counts), 4, 2)
    assert all(i is None for i in g._w_index)
    assert [we.data_ptr() for we in g.weights(w)] == [w[b[0]].data_ptr() for b, _ in g.buckets]


def _per_expert(fn, counts, w, *xs):
    parts, s = [], 0
    for e, c in enumerate(counts):
        if c:
            parts.append(fn(*(None if x is None else x[s:s + c] for x in xs), w[e]))
            s += c
    return torch.cat(parts)


@pytest.mark.parametrize("name", ["mixed", "all_on_one", "equal", "skewed", "one_row_each"])
def test_grouped_apply_matches_per_expert_calls(name, weight_gather):
    counts = CASES[name]
    a, w = _operands(counts, seed=1)
    fn = lambda x, y, z, we: (x * y) @ we.transpose(-1, -2) + (0 if z is None else 1)  # noqa: E731
    got = grouped_apply(fn, Groups(counts, a.device), w, a, a.abs(), None)
    assert torch.equal(got, _per_expert(fn, counts, w, a, a.abs(), None))


@pytest.mark.parametrize("name", ["mixed", "empty_experts", "skewed", "equal"])
def test_variance_gemms_match_per_expert_calls(name, weight_gather):
    """gemm_spread, as moe._grouped_var calls it, in float64 with exact sums."""
    counts = CASES[name]
    a, w = _operands(counts, seed=2)
    w_sq, v = w.square(), a.abs()
    fn = lambda x, ve, vx, vm, we: gemm_spread(x, ve, vx, vm, we, w.shape[2], budget_for("bf16"))  # noqa: E731
    got = grouped_apply(fn, Groups(counts, a.device), w_sq, a, v, 2 * v, v)
    assert got.dtype == torch.float64 and torch.equal(got, _per_expert(fn, counts, w_sq, a, v, 2 * v, v))


def test_no_rows():
    g = Groups([0, 0], "cpu")
    assert grouped_mm(torch.zeros(0, 4), torch.zeros(2, 3, 4), g, fast=False).shape == (0, 3)
    assert grouped_apply(lambda x, we: x @ we.T, g, torch.zeros(2, 3, 4), torch.zeros(0, 4)).shape == (0, 3)


def test_the_reference_never_takes_the_tensor_core_path_even_with_exact_bf16_operands(monkeypatch):
    """bf16 tensor-core MMA truncates its additions (a bias toward zero seen on the H200): the reference's
    GEMMs are IEEE fp32 even where both operands are exactly bf16 on CUDA (here: _bf16_exact forced)."""
    from moecheck.reference import moe
    from moecheck.reference.activations import ACTIVATIONS
    from moecheck.reference.formats import FORMATS

    seen = []
    real = moe.grouped_mm
    monkeypatch.setattr(moe, "_bf16_exact", lambda t: True)
    monkeypatch.setattr(moe, "grouped_mm", lambda a, w, g, fast: seen.append(fast) or real(a, w, g, fast))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 32, generator=g).to(torch.bfloat16)
    w13 = torch.randn(3, 32, 32, generator=g).to(torch.bfloat16)
    w2 = torch.randn(3, 32, 16, generator=g).to(torch.bfloat16)
    ids = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 1], [1, 2], [2, 0]])
    moe.fused_experts(x, w13, w2, torch.full((6, 2), 0.5), ids, fmt=FORMATS["bf16"], activation=ACTIVATIONS["silu"])
    assert seen == [False, False]
