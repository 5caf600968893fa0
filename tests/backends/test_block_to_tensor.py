"""vllm_cutlass_fp8_block_to_tensor's record, held against an emulation of the kernel on CPU.

The kernel computes with per-tensor weights made from block ones (layouts.fp8_block_to_per_tensor) and
per-tensor dynamic activations. Computed exactly that way (the reference on the converted weights), it
passes the record's budget on every shape and value kind here; with a wrong scale (the expert's first
block's scale instead of its largest, or half of it) it fails.
"""
from __future__ import annotations

import dataclasses

import pytest
from moecheck.backends import registry
from moecheck.backends.vllm.layouts import fp8_block_to_per_tensor
from moecheck.properties.case import VALUES, Case, build
from moecheck.reference.errmodel import compare

B = registry.get("vllm_cutlass_fp8_block_to_tensor")
SHAPES = [(5, 128, 256), (37, 256, 384), (64, 384, 256)]


def _converted(q, wrong: str = ""):
    codes, s = fp8_block_to_per_tensor(q)
    if wrong == "first_block_scale":  # the scale of the expert's first block, not its largest
        s = q.scale_values()[:, 0, 0].float()
    if wrong == "half_scale":
        s = s / 2
    return dataclasses.replace(q, codes=codes, scales=s[:, None, None].expand_as(q.scales).to(q.scales.dtype).contiguous())


def _judge(case: Case, wrong: str = ""):
    p = build(case)
    cap = B.capability
    budget = cap.budget("fp8_block")
    pf = p.with_(fmt=cap.reference_format(p.fmt))
    ref = pf.reference(cap.rounding, budget)
    got = pf.with_(w13=_converted(p.w13, wrong), w2=_converted(p.w2, wrong)).reference(cap.rounding).out
    return compare(got, ref.out, ref.bound, ref.expected_var, budget)


@pytest.mark.parametrize("values", VALUES)
@pytest.mark.parametrize("T,H,I", SHAPES)
def test_the_kernels_arithmetic_passes_the_record(T, H, I, values):
    c = _judge(Case(format="fp8_block", tokens=T, hidden=H, inter=I, experts=6, top_k=2, values=values, seed=T + H))
    assert c.passed, c.summary()


@pytest.mark.parametrize("wrong", ["first_block_scale", "half_scale"])
def test_a_wrong_scale_still_fails(wrong):
    c = _judge(Case(format="fp8_block", tokens=37, hidden=256, inter=384, experts=6, top_k=2, seed=5), wrong)
    assert not c.passed, c.summary()
