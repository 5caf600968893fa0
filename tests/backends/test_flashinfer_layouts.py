"""CPU tests of the FlashInfer adapters' pure-torch preparation and of their records (no flashinfer needed)."""
import os
import subprocess
import sys

import pytest
import torch
from moecheck.backends.flashinfer import BACKENDS, cute_dsl, cutlass, mono, trtllm
from moecheck.backends.flashinfer import layouts as L
from moecheck.properties.case import Case, build
from moecheck.reference.activations import ACTIVATIONS
from moecheck.reference.errors import MoecheckError
from moecheck.reference.formats import FORMATS
from moecheck.reference.layouts import swizzle_128x4, unswizzle_128x4

GATED = ["silu", "silu_up_gate", "swigluoai", "gelu_tanh"]


def _problem(fmt="bf16", act="silu", hidden=128, inter=128, experts=3, tokens=5, seed=4):
    return build(Case(format=fmt, activation=act, hidden=hidden, inter=inter, experts=experts, tokens=tokens, seed=seed))


# ------------------------------------------------------------------ permutations

@pytest.mark.parametrize("rows", [128, 256, 512])
def test_permutations_are_permutations(rows):
    perms = [L.reorder_gated_act(rows), L.shuffle_a(rows, 128), L.shuffle_a(rows, 64), L.mono_pair_layout(rows)]
    perms += [L.to_up_gate(rows, ACTIVATIONS[a]) for a in GATED] + [L.to_gate_up(rows, ACTIVATIONS[a]) for a in GATED]
    perms += [L.cute_sm90_up_gate(rows, ACTIVATIONS[a]) for a in GATED]
    for p in perms:
        assert L.is_permutation(p)
        assert torch.equal(p[L.invert(p)], torch.arange(rows))


@pytest.mark.parametrize("act", GATED)
def test_gate_up_swap_applied_exactly_once(act):
    spec = ACTIVATIONS[act]
    rows = 64
    gate, up = L.gate_up_rows(rows, spec)
    up_gate = L.to_up_gate(rows, spec)
    assert torch.equal(up_gate[: rows // 2], up) and torch.equal(up_gate[rows // 2:], gate)
    # back to [gate | up], and from there to [up | gate] is a plain half swap
    gu = L.to_gate_up(rows, spec)
    assert torch.equal(gu, torch.cat([gate, up]))
    half_swap = torch.cat([torch.arange(rows // 2, rows), torch.arange(rows // 2)])
    assert torch.equal(gu[half_swap], up_gate)


def test_gate_up_layouts_by_preset():
    rows = 8
    assert torch.equal(L.to_up_gate(rows, ACTIVATIONS["silu"]), torch.tensor([4, 5, 6, 7, 0, 1, 2, 3]))
    assert torch.equal(L.to_up_gate(rows, ACTIVATIONS["silu_up_gate"]), torch.arange(rows))  # already [up | gate]
    assert torch.equal(L.to_up_gate(rows, ACTIVATIONS["swigluoai"]), torch.tensor([1, 3, 5, 7, 0, 2, 4, 6]))
    assert torch.equal(L.to_up_gate(rows, ACTIVATIONS["relu2"]), torch.arange(rows))  # ungated: untouched


def test_gated_act_reorder_interleaves_halves():
    assert torch.equal(L.reorder_gated_act(8), torch.tensor([0, 4, 1, 5, 2, 6, 3, 7]))


# flashinfer/utils.py srcToDstBlk16RowMap / srcToDstBlk32RowMap: destination row of source row i in a block
BLK16 = [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]
BLK32 = [0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27, 4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31]


@pytest.mark.parametrize("tile,table", [(128, BLK32), (64, BLK16)])
def test_shuffle_a_matches_the_row_map_tables(tile, table):
    b = len(table)
    perm = L.shuffle_a(3 * b, tile)
    for blk in range(3):
        for src, dst in enumerate(table):
            assert int(perm[blk * b + dst]) == blk * b + src


def test_cute_sm90_interleave_is_32_row_up_gate_blocks():
    spec = ACTIVATIONS["silu"]  # [gate | up] halves of I = 64
    perm = L.cute_sm90_up_gate(128, spec)
    assert torch.equal(perm[:32], torch.arange(64, 96))  # up 0:32
    assert torch.equal(perm[32:64], torch.arange(0, 32))  # gate 0:32
    assert torch.equal(perm[64:96], torch.arange(96, 128))


def test_mono_pair_layout_matches_its_docstring():
    n = 128
    perm = L.mono_pair_layout(2 * n)
    assert torch.equal(perm[0:8], torch.arange(0, 8))  # gate 0..7
    assert torch.equal(perm[8:16], n + torch.arange(0, 8))  # up 0..7
    assert torch.equal(perm[16:24], torch.arange(8, 16))  # warp 1 of warpgroup 0
    assert torch.equal(perm[64:72], torch.arange(32, 40))  # warpgroup 1 starts at gate 32
    assert torch.equal(perm[128:136], torch.arange(64, 72))  # block 1


def test_block_major_k_round_trip():
    x = torch.arange(6 * 256, dtype=torch.int32).view(6, 256).to(torch.uint8)
    b = L.to_block_major_k(x, 128)
    assert b.shape == (2, 6, 128) and torch.equal(b[1, 3], x[3, 128:])
    assert torch.equal(L.from_block_major_k(b), x)


@pytest.mark.parametrize("dtype,group", [(torch.uint8, 32), (torch.bfloat16, 128)])
def test_sm90_scale_fold_round_trip_and_placement(dtype, group):
    rows, kg = 128, 1024 // group
    s = torch.arange(2 * rows * kg, dtype=torch.int64).view(2, rows, kg)
    s = (s % 251).to(dtype) if dtype == torch.uint8 else s.to(dtype)
    f = L.sm90_mixed_scale_fold(s, group)
    gpk, phys = 128 // group, 128 // (s.element_size() * 8)
    folded = 64 * gpk // phys
    assert f.shape == (2, rows // 64, kg // gpk, folded, phys)
    assert torch.equal(L.sm90_mixed_scale_unfold(f, group), s)
    r, c = 70, kg - 1  # one element by the docstring's formula
    assert torch.equal(f[1, r // 64, c // gpk, (r % 64) % folded, ((r % 64) // folded) * gpk + c % gpk], s[1, r, c])


def test_expert_scale_swizzle_is_the_reference_swizzle():
    s = torch.randint(0, 255, (3, 200, 9), dtype=torch.uint8)
    sw = L.swizzle_expert_scales(s)
    assert sw.shape == (3, 256, 12)
    assert torch.equal(sw.reshape(3, -1), swizzle_128x4(s))
    assert torch.equal(L.unswizzle_expert_scales(sw, 200, 9), s)
    assert torch.equal(unswizzle_128x4(sw.reshape(3, -1), 200, 9), s)


# ------------------------------------------------------------------ quantized rows move with their scales

@pytest.mark.parametrize("fmt", ["fp8_block", "fp8_tensor_static", "mxfp4_bf16", "nvfp4", "mxfp4_mxfp8_rceil", "int4_zp_w_g32"])
def test_qtensor_row_permutation_keeps_values(fmt):
    p = _problem(fmt, hidden=256, inter=128)
    perm = L.to_up_gate(p.w13.shape[1], p.activation)
    q = L.permute_qtensor_rows(p.w13, perm)
    assert torch.equal(q.dequantize(), p.w13.dequantize()[:, perm])


def test_row_permutation_splitting_scale_blocks_is_refused():
    p = _problem("fp8_block", hidden=128, inter=128)
    with pytest.raises(MoecheckError, match="splits the 128-row scale blocks"):
        L.permute_qtensor_rows(p.w13, L.reorder_gated_act(p.w13.shape[1]))


# ------------------------------------------------------------------ adapters' pure-torch prepare, inverted

def _inv_rows(t, perm):
    return L.permute_rows(t, L.invert(perm))


@pytest.mark.parametrize("act", ["silu", "silu_up_gate", "swigluoai", "relu2"])
def test_cutlass_bf16_layout_inverts(act):
    b = next(x for x in cutlass.BACKENDS if x.name == "flashinfer_cutlass_bf16")
    p = _problem("bf16", act)
    d = b.layout(p)
    perm = L.to_up_gate(p.w13.shape[1], p.activation)
    assert torch.equal(_inv_rows(d["fc1"], perm), p.w13) and torch.equal(d["fc2"], p.w2)


def test_cutlass_fp8_block_layout_inverts():
    b = next(x for x in cutlass.BACKENDS if x.name == "flashinfer_cutlass_fp8_block")
    p = _problem("fp8_block", hidden=256, inter=128)
    d = b.layout(p)
    perm = L.to_up_gate(p.w13.shape[1], p.activation)
    assert torch.equal(_inv_rows(d["fc1"].view(torch.uint8), perm), p.w13.codes.view(torch.uint8))
    sperm = L.block_perm(perm, 128)
    assert torch.equal(_inv_rows(d["s1"], sperm), p.w13.scales)
    assert d["s2"].shape == (p.experts, 2, 1)


def test_cutlass_mxfp4_layouts_invert():
    p = _problem("mxfp4_bf16", hidden=256, inter=128)
    d = next(x for x in cutlass.BACKENDS if x.name == "flashinfer_cutlass_mxfp4_bf16").layout(p)
    perm = L.to_up_gate(p.w13.shape[1], p.activation)
    assert torch.equal(_inv_rows(L.sm90_mixed_scale_unfold(d["s1"], 32), perm), p.w13.scales)
    assert torch.equal(_inv_rows(d["fc1"], perm), p.w13.codes)
    p = _problem("mxfp4_mxfp8_rceil", hidden=256, inter=128)
    d = next(x for x in cutlass.BACKENDS if x.name == "flashinfer_cutlass_mxfp8_mxfp4").layout(p)
    lin = L.unswizzle_expert_scales(d["s1"], p.w13.shape[1], p.w13.scales.shape[-1])
    assert torch.equal(_inv_rows(lin, perm), p.w13.scales)


def test_cutlass_fp8_tensor_inputs_use_the_calibrated_scales():
    b = next(x for x in cutlass.BACKENDS if x.name == "flashinfer_cutlass_fp8_tensor")
    p = _problem("fp8_tensor_static")
    w = b.layout(p)
    x, sf, scales = cutlass.RECIPES["fp8_tensor"].inputs(w, p)
    assert sf is None and x.dtype == torch.float8_e4m3fn
    a1, a2 = p.a1_scale.float(), p.a2_scale.float()
    assert torch.equal(scales[0], w["s1"] * a1) and torch.equal(scales[2], w["s2"] * a2)
    assert float(scales[1]) * float(a2) == 1.0 and float(scales[3]) == float(a1)


@pytest.mark.parametrize("act", ["silu", "swigluoai", "relu2"])
def test_trtllm_bf16_layout_inverts(act):
    b = next(x for x in trtllm.BACKENDS if x.name == "flashinfer_trtllm_bf16")
    p = _problem("bf16", act)
    d = b.layout(p)
    back = L.from_block_major_k(d["fc1"].view(torch.uint8)).view(torch.bfloat16)
    assert torch.equal(_inv_rows(back, trtllm.fc1_perm(p)), p.w13)
    back2 = L.from_block_major_k(d["fc2"].view(torch.uint8)).view(torch.bfloat16)
    assert torch.equal(_inv_rows(back2, trtllm.fc2_perm(p)), p.w2)


def test_trtllm_fc1_perm_is_swap_then_reorder_then_shuffle():
    p = _problem("bf16", "silu")
    rows = p.w13.shape[1]
    want = L.to_up_gate(rows, p.activation)[L.reorder_gated_act(rows)][L.shuffle_a(rows, 128)]
    assert torch.equal(trtllm.fc1_perm(p), want)


def test_cute_dsl_layout_inverts():
    b = cute_dsl.BACKENDS[0]
    p = _problem("bf16", "silu", inter=64)
    d = b.layout(p)
    assert torch.equal(_inv_rows(d["fc1"], L.cute_sm90_up_gate(p.w13.shape[1], p.activation)), p.w13)


def test_adapters_refuse_what_they_cannot_express():
    p = _problem("bf16")
    b = next(x for x in cutlass.BACKENDS if x.name == "flashinfer_cutlass_fp8_block")
    with pytest.raises(MoecheckError, match="no weight recipe"):
        b.layout(p)
    with pytest.raises(MoecheckError, match="expert_map"):
        next(x for x in cutlass.BACKENDS if x.name == "flashinfer_cutlass_bf16").layout(
            build(Case(hidden=128, inter=128, experts=4, ep_remote=1, seed=2)))
    with pytest.raises(MoecheckError, match="block-FP8 only"):
        mono.MONO.layout(p)
    with pytest.raises(MoecheckError, match="specialized to E=256"):
        mono.MONO.layout(_problem("fp8_block"))


# ------------------------------------------------------------------ records

def test_records_are_well_formed_and_unavailable_with_reason_here():
    names = [b.name for b in BACKENDS]
    assert len(names) == len(set(names))
    for b in BACKENDS:
        cap = b.capability
        assert b.name.startswith("flashinfer_")
        assert "flashinfer" in cap.requires and cap.verified == ()
        assert cap.formats and cap.formats <= set(FORMATS), b.name
        assert cap.activations <= set(ACTIVATIONS), b.name
        assert cap.archs and all(isinstance(a, tuple) and len(a) == 2 for a in cap.archs)
        assert cap.limitations and all(lim.text for lim in cap.limitations)
        assert b.spies and all(s.startswith("flashinfer.") and s.count(":") == 1 for s in b.spies)
        assert b.description
        av = b.availability()
        if not torch.cuda.is_available():
            assert not av.ok and av.reason, b.name
            assert any(w in av.reason for w in ("not installed", "needs", "not wired", "fixed-shape")), av.reason


def test_import_does_not_import_flashinfer_and_listing_says_not_verified():
    code = ("import sys, moecheck.backends.flashinfer as f; "
            "assert not any(m == 'flashinfer' or m.startswith('flashinfer.') for m in sys.modules), 'flashinfer imported'; "
            "print(len(f.BACKENDS))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-m", "moecheck.ci.cli", "backends"], capture_output=True, text=True, env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("flashinfer_")]
    assert len(rows) == len(BACKENDS)
    assert all("[not verified on hardware]" in r for r in rows)
    if not torch.cuda.is_available():
        assert all("unavailable" in r for r in rows)


def test_mono_layout_inverts_on_a_small_stand_in_shape(monkeypatch):
    monkeypatch.setattr(mono, "E", 3)
    monkeypatch.setattr(mono, "K", 128)
    monkeypatch.setattr(mono, "N", 128)
    p = mono.routed_problem(_problem("fp8_block", hidden=128, inter=128, experts=3, tokens=4), seed=5, top_k=2)
    assert p.topk_ids.shape == (4, 2) and p.router_logits.dtype == torch.bfloat16
    d = mono.MONO.layout(p)
    back = L.permute_rows(d["up"].view(torch.uint8), L.invert(L.mono_pair_layout(256)))
    assert torch.equal(back, p.w13.codes.view(torch.uint8))  # "silu" is [gate | up] already
    assert torch.equal(d["up_s"], p.w13.scales) and torch.equal(d["down"].view(torch.uint8), p.w2.codes.view(torch.uint8))


def test_mono_logits_have_no_ties():
    lg = mono.logits_for(8, 256, seed=3).float()
    assert all(len(set(row.tolist())) == 256 for row in lg)
