"""The reference's two combine semantics, held against a plain-torch emulation of vLLM's fused_experts.

vLLM's Triton MoE stores round(w * o) (the router weight multiplied in fp32 in GEMM2's epilogue) and
moe_sum adds the k slots in bf16 for k in {2, 3, 4} but in fp32 for every other k. The reference under
the record's Rounding must compute exactly that (zero difference), and the old declaration
(round(o) * w, a bf16 sum for every k) must not: the H200 run of 2026-12-02 failed the RMS verdict on
k >= 5 until the record said so (docs/findings/h200-2026-12-02/README.md).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from moecheck.backends.vllm.triton_fused import TRITON_ROUNDING
from moecheck.properties.case import Case, build
from moecheck.reference.activations import ACTIVATIONS
from moecheck.reference.activations import apply as act_apply
from moecheck.reference.moe import ACT


def _emulated_vllm(p) -> torch.Tensor:
    """fused_experts' arithmetic, written from vLLM's source, one token slot at a time."""
    bf = torch.bfloat16
    x, w13, w2 = p.hidden_states.float(), p.w13.float(), p.w2.float()
    act = ACTIVATIONS[p.activation_name]
    T, k = p.topk_ids.shape
    slots = torch.zeros(T, k, x.shape[1])
    for t in range(T):
        for j in range(k):
            e = int(p.topk_ids[t, j])
            h = (w13[e] @ x[t]).to(bf).float()  # intermediate_cache1
            y = act_apply(h[None], act, bf)[0].to(bf).float()  # act_and_mul: f(gate) in bf16, then * up
            o = w2[e] @ y
            slots[t, j] = (o * p.topk_weights[t, j].float()).to(bf).float()  # MUL_ROUTED_WEIGHT, then the store
    if k in (2, 3, 4):  # moe_sum_kernel<bf16, k>: x += slot, in bf16
        acc = torch.zeros(T, x.shape[1], dtype=bf)
        for j in range(k):
            acc = (acc.float() + slots[:, j]).to(bf)
        return acc
    return slots.sum(1).to(bf)  # at::sum_out: fp32 accumulator, one rounding


@pytest.mark.parametrize("k", [2, 4, 5, 7])
def test_record_rounding_is_the_kernels(k):
    p = build(Case(tokens=9, hidden=64, inter=48, experts=8, top_k=k, seed=k, renormalize=False))
    want = _emulated_vllm(p)
    got = p.reference(TRITON_ROUNDING).out
    assert torch.equal(got, want), (got.float() - want.float()).abs().max()


def test_the_old_declaration_differs_where_vllm_sums_in_fp32():
    p = build(Case(tokens=64, hidden=64, inter=48, experts=8, top_k=7, seed=3, renormalize=False))
    old = dataclasses.replace(TRITON_ROUNDING, weighted_store=False, topk_sum_k=None, topk_sum=ACT)
    assert not torch.equal(p.reference(old).out, _emulated_vllm(p))
