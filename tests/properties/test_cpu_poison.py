"""On CPU, fresh tensors from torch's allocation helpers are poisoned while a backend runs, so a
backend that leaves rows of a torch.empty unwritten is caught every time (malloc often hands out
zeroed pages, which would hide it)."""
from __future__ import annotations

import pytest
import torch
from moecheck.properties.case import Case
from moecheck.properties.checks import check
from moecheck.properties.harness import poisoned_allocations
from moecheck.tests.properties.planted import BACKENDS

LEAKY = next(b for b in BACKENDS if b.name == "pl_unwritten_workspace")


@pytest.mark.parametrize("seed", range(8))
def test_an_unwritten_row_of_a_fresh_empty_is_caught_every_time(seed):
    c = Case(backend=LEAKY.name, property="output_contract", tokens=5 + seed, hidden=64, inter=32, experts=4, top_k=2, seed=seed)
    out = check(LEAKY, c, "cpu")
    assert out.verdict == "fail" and "never written" in out.message, out.message


@pytest.mark.parametrize("make", [lambda: torch.empty(4, 8, dtype=torch.bfloat16),
                                  lambda: torch.empty_like(torch.zeros(4, 8, dtype=torch.float16)),
                                  lambda: torch.zeros(1).new_empty(3, 3),
                                  lambda: torch.empty_strided((2, 3), (3, 1))])
def test_allocation_helpers_hand_out_poison_and_are_restored(make):
    with poisoned_allocations("cpu"):
        t = make()
    assert bool(torch.isnan(t.float()).all())
    assert torch.empty is not None and make().shape  # the originals are back: no error, no poison forced
