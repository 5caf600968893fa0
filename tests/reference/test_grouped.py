"""The reference's grouped GEMM: padded bmm and per-expert loop give the same rows, and the choice
between them follows the padding waste. Integer-valued operands make every fp32 sum exact, so the
two paths and a float64 product must agree bit for bit."""
from __future__ import annotations

import pytest
import torch
from moecheck.reference.grouped import (
    PAD_WASTE,
    Groups,
    grouped_apply,
    grouped_mm,
    loop_mm,
)


def _operands(counts, K=24, N=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-8, 9, (sum(counts), K), generator=g).float()
    w = torch.randint(-8, 9, (len(counts), N, K), generator=g).float()
    return a, w


def _exact(a, w, counts):
    e = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return torch.einsum("rk,rnk->rn", a.double(), w.double()[e]).float()


@pytest.mark.parametrize("counts", [[3, 4, 2, 3], [0, 5, 5, 4], [1], [6, 0, 0, 0], [0, 0, 0], [2, 2]])
def test_padded_and_loop_agree_exactly(counts):
    a, w = _operands(counts)
    g = Groups(counts, a.device)
    want = _exact(a, w, counts)
    assert torch.equal(grouped_mm(a, w, g, fast=False), want)
    assert torch.equal(loop_mm(a, w, counts, fast=False), want)


def test_padding_only_where_it_at_most_doubles_the_work():
    assert Groups([3, 4, 2, 3], "cpu").padded  # 4 * 4 <= 2 * 12
    assert not Groups([6, 0, 0, 0], "cpu").padded  # all on one expert: 4 * 6 > 2 * 6
    assert not Groups([5], "cpu").padded and not Groups([0, 0], "cpu").padded
    counts = [10] + [1] * 9
    assert Groups(counts, "cpu").padded == (len(counts) * max(counts) <= PAD_WASTE * sum(counts))


@pytest.mark.parametrize("counts", [[3, 4, 2, 3], [6, 0, 0, 0]])
def test_grouped_apply_matches_per_expert_calls(counts):
    a, w = _operands(counts, seed=1)
    v = a.abs()
    got = grouped_apply(lambda x, y, we: (x * y) @ we.transpose(-1, -2), Groups(counts, a.device), w, a, v)
    assert torch.equal(got, _exact(a * v, w, counts))
