"""The reference's two combine semantics, held against a plain-torch emulation of vLLM's fused_experts.

vLLM's Triton MoE stores round(w * o) (the router weight multiplied in fp32 in GEMM2's epilogue) and
moe_sum adds the k slots in bf16 for k in {2, 3, 4} but in fp32 for every other k; silu_and_mul stores
f(gate) in bf16, swigluoai_and_mul keeps glu in fp32 (csrc/activation_kernels.cu). The reference under
the record's Rounding must compute exactly that (zero difference), and the old declaration
(round(o) * w, a bf16 sum for every k) must not: the H200 run of 2026-12-02 failed the RMS verdict on
k >= 5 until the record said so (docs/findings/h200-2026-12-02/README.md).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from moecheck.backends.vllm.lora import LORA_ROUNDING
from moecheck.backends.vllm.triton_fused import GATE_STORED, TRITON_ROUNDING
from moecheck.properties.case import Case, build
from moecheck.reference.activations import ACTIVATIONS, join_gate_up
from moecheck.reference.activations import apply as act_apply
from moecheck.reference.lora import lora_w2_delta, lora_w13_delta
from moecheck.reference.moe import ACT


def _moe_sum(slots: torch.Tensor) -> torch.Tensor:
    """ops.moe_sum over [T, k, H] fp32-held bf16 slots."""
    bf, k = torch.bfloat16, slots.shape[1]
    if k in (2, 3, 4):  # moe_sum_kernel<bf16, k>: x += slot, in bf16
        acc = torch.zeros(slots.shape[0], slots.shape[2], dtype=bf)
        for j in range(k):
            acc = (acc.float() + slots[:, j]).to(bf)
        return acc
    return slots.sum(1).to(bf)  # at::sum_out: fp32 accumulator, one rounding


def _emulated_vllm(p) -> torch.Tensor:
    """fused_experts' arithmetic (TritonExperts + fused_moe_lora where p has LoRA), written from vLLM's
    source, one token slot at a time; each LoRA delta is rounded to bf16 and added onto the stored output."""
    bf = torch.bfloat16
    x, w13, w2 = p.hidden_states.float(), p.w13.float(), p.w2.float()
    act = ACTIVATIONS[p.activation_name]
    T, k = p.topk_ids.shape
    slots = torch.zeros(T, k, x.shape[1])
    for t in range(T):
        for j in range(k):
            e = torch.tensor([int(p.topk_ids[t, j])])
            h = (w13[e[0]] @ x[t]).to(bf).float()  # intermediate_cache1
            if p.lora is not None:
                g, u = lora_w13_delta(p.lora, x[t:t + 1], e, p.token_lora[t:t + 1], bf)  # shrink stored in bf16
                h = (h + join_gate_up(g, u, act)[0].to(bf).float()).to(bf).float()  # store(prev + acc.to(bf16))
            gate_dt = bf if p.activation_name in GATE_STORED else None  # swigluoai_and_mul: glu in fp32
            y = act_apply(h[None], act, gate_dt)[0].to(bf)  # act_and_mul, stored in bf16
            wt = p.topk_weights[t, j].float()
            slot = ((w2[e[0]] @ y.float()) * wt).to(bf).float()  # MUL_ROUTED_WEIGHT, then the store
            if p.lora is not None:
                d2 = lora_w2_delta(p.lora, y[None], e, p.token_lora[t:t + 1], bf)[0] * wt
                slot = (slot + d2.to(bf).float()).to(bf).float()
            slots[t, j] = slot
    return _moe_sum(slots)


@pytest.mark.parametrize("activation", ["silu", "swigluoai"])
@pytest.mark.parametrize("k", [2, 4, 5, 7])
def test_record_rounding_is_the_kernels(k, activation):
    p = build(Case(tokens=9, hidden=64, inter=48, experts=8, top_k=k, seed=k, renormalize=False, activation=activation))
    want = _emulated_vllm(p)
    got = p.reference(TRITON_ROUNDING).out
    assert torch.equal(got, want), (got.float() - want.float()).abs().max()


def test_the_old_declaration_differs_where_vllm_sums_in_fp32():
    p = build(Case(tokens=64, hidden=64, inter=48, experts=8, top_k=7, seed=3, renormalize=False))
    old = dataclasses.replace(TRITON_ROUNDING, weighted_store=False, topk_sum_k=None, topk_sum=ACT)
    assert not torch.equal(p.reference(old).out, _emulated_vllm(p))


def test_the_old_declaration_differs_where_swigluoai_keeps_glu_in_fp32():
    p = build(Case(tokens=64, hidden=64, inter=48, experts=8, top_k=2, seed=5, renormalize=False, activation="swigluoai"))
    old = dataclasses.replace(TRITON_ROUNDING, act_gate_kinds=None)
    assert not torch.equal(p.reference(old).out, _emulated_vllm(p))


def test_lora_deltas_land_on_the_stored_outputs_as_vllm_adds_them():
    p = build(Case(tokens=7, hidden=64, inter=48, experts=4, top_k=2, seed=11, renormalize=False,
                   lora_adapters=2, lora_rank=4))
    assert p.lora is not None and (p.token_lora >= 0).any()
    want = _emulated_vllm(p)
    assert torch.equal(p.reference(LORA_ROUNDING).out, want)
    fp32_deltas = dataclasses.replace(LORA_ROUNDING, lora_add=None)  # the declaration before the H200 run
    assert not torch.equal(p.reference(fp32_deltas).out, want)
