"""CPU tests of the vLLM adapters: pure-torch layouts against moecheck's reference, and the records.

The "emulated decoders" below transcribe the index arithmetic vLLM 0.24.0 uses to read each layout
(fused_moe.py: fused_moe_kernel_gptq_awq; quantization/moe_wna16.py: convert_awq_tensor), so a
layout that the kernel would read differently from moecheck's dequantization fails here, on CPU.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
import warnings

import pytest
import torch
from moecheck.backends import registry
from moecheck.backends import vllm as vllm_pkg
from moecheck.backends.vllm import cutlass_fp8, triton_fused, versions
from moecheck.backends.vllm import layouts as L
from moecheck.properties.case import Case, build
from moecheck.reference.activations import ACTIVATIONS, apply
from moecheck.reference.formats import FORMATS
from moecheck.reference.layouts import unswizzle_128x4
from moecheck.reference.lora import MoELoRA, lora_w2_delta, lora_w13_delta
from moecheck.reference.quantize import quantize


def _weights(fmt: str, E=2, N=64, K=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return quantize(torch.randn(E, N, K, generator=g), FORMATS[fmt].weight)


# ---- int32 packing: hand-computed bit order, round trips ----

def test_gptq_bit_order_hand_example():
    # one output column, K = 8 values 1..8 along K: element k sits in bits 4k of the int32
    q = torch.arange(1, 9, dtype=torch.int16).view(1, 8)  # [N=1, K=8]
    packed = L.gptq_pack(q)
    assert packed.shape == (1, 1) and packed.dtype == torch.int32
    assert int(packed) == 0x87654321 - 2**32  # 0x87654321 as a signed int32


def test_awq_bit_order_hand_example():
    # one row, 8 output columns 1..8: AutoAWQ puts column AWQ_ORDER[i] in nibble i
    q = torch.arange(1, 9, dtype=torch.int16).view(1, 8)
    packed = L.awq_pack(q)
    assert int(packed) == 0x86427531 - 2**32  # nibbles low->high: 1, 3, 5, 7, 2, 4, 6, 8


def test_awq_unpack_matches_vllm_reverse_order():
    # moe_wna16.py convert_awq_tensor: nibbles in slot order, then reordered by [0, 4, 1, 5, 2, 6, 3, 7]
    g = torch.Generator().manual_seed(1)
    q = torch.randint(0, 16, (3, 24), generator=g, dtype=torch.int16)
    packed = L.awq_pack(q)
    u8 = packed.view(torch.uint8)  # little-endian bytes, 4 per int32
    nib = torch.stack([u8 & 0xF, u8 >> 4], -1).view(3, -1, 8)
    vllm_view = nib[..., [0, 4, 1, 5, 2, 6, 3, 7]].reshape(3, -1)
    assert torch.equal(vllm_view.to(torch.int16), q)


@pytest.mark.parametrize("shape", [(64, 128), (2, 16, 32), (3, 8, 256)])
def test_gptq_and_awq_round_trip(shape):
    g = torch.Generator().manual_seed(sum(shape))
    q = torch.randint(0, 16, shape, generator=g, dtype=torch.int16)
    assert torch.equal(L.gptq_unpack(L.gptq_pack(q)), q)
    assert torch.equal(L.awq_unpack(L.awq_pack(q)), q)


def test_packing_rejects_bad_sizes():
    from moecheck.reference.errors import MoecheckError

    with pytest.raises(MoecheckError, match="multiple of 8"):
        L.gptq_pack(torch.zeros(4, 12, dtype=torch.int16))
    with pytest.raises(MoecheckError, match="even"):
        L.pack_zeros_along_n(torch.zeros(3, 2, dtype=torch.uint8))


# ---- WNA16 layouts as the Triton kernel decodes them ----

def _vllm_wna16_int4_decode(b, scale, zp, group):
    """fused_moe_kernel_gptq_awq, int4: b [E, N, K//2]; element (n, k) = (b[n, k//2] >> ((k%2)*4)) & 0xF;
    no zp: (v - 8) * s; zp [E, N//2, K/g]: zp nibble (n % 2) * 4 of zp[n // 2, k // g]."""
    E, N, K2 = b.shape
    k = torch.arange(2 * K2)
    v = ((b[..., k // 2].to(torch.int32) >> ((k % 2) * 4)) & 0xF).float()
    s = scale[..., k // group].float()
    if zp is None:
        return (v - 8) * s
    n = torch.arange(N)
    z = ((zp[:, n // 2, :].to(torch.int32) >> ((n % 2) * 4)[:, None]) & 0xF).float()
    return (v - z[..., k // group]) * s


@pytest.mark.parametrize("g", [32, 64, 128])
def test_int4_symmetric_layout_decodes_to_the_reference(g):
    q = _weights(f"int4_w_g{g}", K=256)
    b = L.int4_packed_to_uint4b8(q.codes)
    assert torch.equal(_vllm_wna16_int4_decode(b, q.scales, None, g), q.dequantize())


@pytest.mark.parametrize("g", [32, 128])
def test_int4_zero_point_layout_decodes_to_the_reference(g):
    q = _weights(f"int4_zp_w_g{g}", K=256)
    zp = L.pack_zeros_along_n(q.zeros)
    assert zp.shape == (q.shape[0], q.shape[1] // 2, q.shape[2] // g)  # moe_wna16.py w13_qzeros shape
    assert torch.equal(_vllm_wna16_int4_decode(q.codes, q.scales, zp, g), q.dequantize())
    assert torch.equal(L.unpack_zeros_along_n(zp), q.zeros)


def test_zero_point_nibble_order_hand_example():
    z = torch.tensor([[3], [10], [7], [1]], dtype=torch.uint8)  # N = 4 rows, one group
    assert L.pack_zeros_along_n(z).flatten().tolist() == [0xA3, 0x17]


def test_int8_weight_only_layout_decodes_to_the_reference():
    q = _weights("int8_w_g64")
    b = L.int8_to_uint8b128(q.codes)
    k = torch.arange(q.shape[-1])
    deq = (b.float() - 128) * q.scales[..., k // 64]  # fused_moe_kernel_gptq_awq int8: b_zp_num = 128
    assert torch.equal(deq, q.dequantize())


def test_uint4_values_for_gptq_are_biased_codes():
    q = _weights("int4_w_g32")
    v = L.uint4_values(q).float()
    k = torch.arange(q.shape[-1])
    assert torch.equal((v - 8) * q.scales[..., k // 32], q.dequantize())


# ---- gate/up order ----

@pytest.mark.parametrize("src,dst", [("silu", "silu_up_gate"), ("silu_up_gate", "silu"), ("swigluoai", "silu"),
                                     ("silu", "swigluoai"), ("swigluoai", "swigluoai")])
def test_gate_up_relayout_keeps_the_activation(src, dst):
    g = torch.Generator().manual_seed(3)
    inter, hidden = 12, 16
    # small integers: every dot product exact, so a BLAS that orders columns differently changes nothing
    w = torch.randint(-4, 5, (2, 2 * inter, hidden), generator=g).float()
    x = torch.randint(-4, 5, (5, hidden), generator=g).float() / 8
    # src's activation function in dst's row layout
    a = ACTIVATIONS[src]
    b = dataclasses.replace(a, order=ACTIVATIONS[dst].order, interleaved=ACTIVATIONS[dst].interleaved)
    wd = L.relayout_gate_up(w, a, b)
    assert torch.equal(apply(x @ wd[1].T, b), apply(x @ w[1].T, a))
    assert torch.equal(L.relayout_gate_up(wd, b, a), w)
    bias = torch.randn(2, 2 * inter, generator=g)
    assert torch.equal(L.relayout_gate_up(L.relayout_gate_up(bias, a, b, dim=-1), b, a, dim=-1), bias)


def test_vllm_layouts_need_no_gate_up_reordering():
    # silu_and_mul acts on the first half (gate) and swigluoai_and_mul on even columns: moecheck's
    # silu and swigluoai presets already are those layouts, so the relayout is the identity
    w = torch.arange(2 * 8 * 3, dtype=torch.float32).view(2, 8, 3)
    for name in ("silu", "swigluoai"):
        assert torch.equal(L.relayout_gate_up(w, ACTIVATIONS[name], ACTIVATIONS[name]), w)


# ---- FP8 block -> per tensor ----

def test_block_to_per_tensor_uses_the_largest_block_scale_and_keeps_that_block():
    q = _weights("fp8_block", E=2, N=256, K=256)
    codes, s = L.fp8_block_to_per_tensor(q)
    assert torch.equal(s, q.scales.reshape(2, -1).amax(-1))
    for e in range(2):
        bi, bj = divmod(int(q.scales[e].flatten().argmax()), q.scales.shape[-1])
        blk = (e, slice(bi * 128, bi * 128 + 128), slice(bj * 128, bj * 128 + 128))
        assert torch.equal(codes[blk].view(torch.uint8), q.codes[blk].view(torch.uint8))


def test_block_to_per_tensor_is_lossless_when_all_blocks_share_a_scale():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(1, 256, 256, generator=g)
    w[..., ::128, ::128] = 8.0  # every 128x128 block has the same amax, hence the same scale
    q = quantize(w, FORMATS["fp8_block"].weight)
    codes, s = L.fp8_block_to_per_tensor(q)
    assert torch.equal(codes.view(torch.uint8), q.codes.view(torch.uint8))
    assert torch.equal((codes.float() * s[:, None, None]), q.dequantize())


def test_block_to_per_tensor_loses_bits_where_scales_differ():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(1, 256, 256, generator=g)
    w[:, :128, :128] *= 64.0  # one block 64x larger: the others are re-quantized 6 binades coarser
    q = quantize(w, FORMATS["fp8_block"].weight)
    codes, s = L.fp8_block_to_per_tensor(q)
    small = (0, slice(128, 256), slice(128, 256))
    assert not torch.equal((codes.float() * s[:, None, None])[small], q.dequantize()[small])


# ---- NVFP4 and LoRA ----

def test_nvfp4_for_cutlass_swizzles_and_inverts_the_global_scale():
    q = _weights("nvfp4", E=2, N=192, K=128)
    codes, sw, gs = L.nvfp4_for_cutlass(q)
    assert codes is q.codes
    rows, cols = q.scales.shape[-2:]
    back = unswizzle_128x4(sw.reshape(2, -1).view(torch.uint8), rows, cols)
    assert torch.equal(back, q.scales.view(torch.uint8))
    assert torch.equal(gs, 1.0 / q.global_scale)


def test_lora_stacks_match_vllm_buffers_and_the_reference_delta():
    # small integers: every product and sum is exact in fp32, so summation order cannot matter, and
    # the power-of-two scaling folded into B (vLLM) equals scaling the expand output (moecheck)
    g = torch.Generator().manual_seed(2)
    Lc, E, r, H, I = 2, 3, 4, 32, 16
    ints = lambda *s: torch.randint(-3, 4, s, generator=g).float()  # noqa: E731
    lora = MoELoRA(ints(Lc, E, r, H), ints(Lc, E, I, r), ints(Lc, E, r, H), ints(Lc, E, I, r), ints(Lc, E, r, I),
                   ints(Lc, E, H, r), scaling=0.5)
    st = L.lora_stacks(lora, torch.float32)
    assert [t.shape for t in st["w13_lora_a_stacked"]] == [(Lc, E, r, H)] * 2
    assert [t.shape for t in st["w13_lora_b_stacked"]] == [(Lc, E, I, r)] * 2
    assert st["w2_lora_a_stacked"][0].shape == (Lc, E, r, I) and st["w2_lora_b_stacked"][0].shape == (Lc, E, H, r)
    x, y = ints(6, H), ints(6, I)
    expert = torch.tensor([0, 1, 2, 0, 1, 2])
    adapter = torch.tensor([0, 1, -1, 1, 0, -1])
    refs = (*lora_w13_delta(lora, x, expert, adapter), lora_w2_delta(lora, y, expert, adapter))
    stacks = [(st["w13_lora_a_stacked"][0], st["w13_lora_b_stacked"][0], x),
              (st["w13_lora_a_stacked"][1], st["w13_lora_b_stacked"][1], x),
              (st["w2_lora_a_stacked"][0], st["w2_lora_b_stacked"][0], y)]
    for (a_st, b_st, inp), ref in zip(stacks, refs):
        for i in range(6):  # vLLM: B[l, e] @ (A[l, e] @ row), scaling already in B; adapter -1: no delta
            li, ei = int(adapter[i]), int(expert[i])
            want = torch.zeros_like(ref[i]) if li < 0 else b_st[li, ei] @ (a_st[li, ei] @ inp[i])
            assert torch.equal(want, ref[i])
    assert L.adapter_enabled(2, "cpu").tolist() == [1, 1, 0]
    assert L.token_lora_mapping(torch.tensor([-1, 0, 1])).dtype == torch.int32


# ---- records, availability, registration ----

def test_records_are_well_formed():
    names = [b.name for b in vllm_pkg.BACKENDS]
    assert len(names) == len(set(names)) and all(n.startswith("vllm_") for n in names)
    for b in vllm_pkg.BACKENDS:
        cap = b.capability
        assert "vllm" in cap.requires, b.name
        assert cap.formats and cap.formats <= set(FORMATS), (b.name, cap.formats - set(FORMATS))
        assert cap.activations <= set(ACTIVATIONS), b.name
        for note in cap.verified:  # a claim of hardware verification says where, with what, and when
            assert re.match(r"\S+ sm_\d+, vLLM \d+\.\d+\.\d+.* \(\d{4}-\d\d-\d\d\): \S", note), (b.name, note)
        for v in b.vllm_verified:  # a version verified is one some hardware note names
            assert any(f"vLLM {v}" in note for note in cap.verified), (b.name, v)
        assert b.spies, b.name
        for spy in b.spies:
            mod, _, attr = spy.partition(":")
            assert mod.split(".")[0] in cap.requires and attr and "." not in attr, spy  # a module attribute the spy can patch
        assert b.description and cap.limitations, b.name


def test_triton_paths_cover_exactly_the_claimed_formats():
    claimed = set().union(*(b.capability.formats for b in triton_fused.BACKENDS))
    assert claimed <= set(triton_fused.PATHS) and set(triton_fused.PATHS) <= claimed | {"fp16"}
    cut = next(b for b in cutlass_fp8.BACKENDS if b.name == "vllm_cutlass_fp8")
    assert cut.capability.formats == set(cutlass_fp8.FP8_SCHEMES)


def test_modular_compositions_claim_at_least_one_token():
    # FusedMoEKernelModularImpl returns before any kernel for M == 0: a spy could never see those runs
    from moecheck.backends.vllm import modular

    for b in vllm_pkg.BACKENDS:
        composed = any(s.startswith(f"{modular.MK}:") for s in b.spies)
        assert b.capability.min_tokens == (modular.MIN_TOKENS if composed else 0), b.name


def test_min_tokens_is_honoured_by_strategies_and_fit():
    from hypothesis import given, settings
    from moecheck.properties.strategies import cases, fit

    b = next(b for b in vllm_pkg.BACKENDS if b.name == "vllm_modular_triton")
    assert fit(Case(tokens=0), b).tokens == 1
    assert b.capability.unsupported(build(Case(tokens=0))) == "fewer than 1 tokens"

    @settings(max_examples=30, deadline=None, database=None)
    @given(cases(b, "bf16", "matches_reference"))
    def check(c):
        assert c.tokens >= 1

    check()


def test_arch_records():
    by = {b.name: b.capability for b in vllm_pkg.BACKENDS}
    assert by["vllm_cutlass_fp8"].archs == {(9, 0), (10, 0)}
    assert by["vllm_cutlass_fp8_block_to_tensor"].archs == {(9, 0), (10, 0)}
    assert by["vllm_cutlass_nvfp4"].archs == {(10, 0)}
    assert by["vllm_trtllm_fp8_block"].archs == {(10, 0), (10, 3)}


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_unavailable_without_vllm_with_the_reason():
    for b in vllm_pkg.BACKENDS:
        av = b.availability()
        assert not av.ok and av.reason == "package 'vllm' not installed", (b.name, av.reason)


def _pretend_h100(monkeypatch, version):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n in ("vllm", "quark") else real(n, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100")
    monkeypatch.setattr(versions, "installed_version", lambda: version)


def test_sm100_only_adapters_report_the_requirement_on_sm90(monkeypatch):
    _pretend_h100(monkeypatch, "0.24.0")
    by = {b.name: b for b in vllm_pkg.BACKENDS}
    av = by["vllm_cutlass_nvfp4"].availability()
    assert not av.ok and av.reason == "needs sm_100, this GPU is sm_90"
    av = by["vllm_trtllm_fp8_block"].availability()  # flashinfer missing here: the arch is still the reason
    assert not av.ok and av.reason == "needs sm_100, sm_103, this GPU is sm_90"
    ok = by["vllm_triton_bf16"].availability()
    assert ok.ok and ok.reason == "vllm 0.24.0 unverified; NVIDIA H100 sm_90"


def test_other_vllm_versions_are_tried_and_reported(monkeypatch):
    _pretend_h100(monkeypatch, "0.31.0")
    monkeypatch.setattr(versions, "_WARNED", set())
    b = next(b for b in vllm_pkg.BACKENDS if b.name == "vllm_triton_fp8_block")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        av = b.availability()
    assert av.ok and "UNTESTED" in av.reason and "0.31.0" in av.reason
    assert any("UNTESTED" in str(x.message) for x in w)
    assert versions.version_note("0.24.0", ("0.24.0",)) == "vllm 0.24.0 verified"


def test_registered_as_builtin():
    assert "moecheck.backends.vllm" in registry.BUILTIN_MODULES
    bs = registry.load_all()
    assert {b.name for b in vllm_pkg.BACKENDS} <= set(bs)


def test_importing_the_adapters_does_not_import_vllm():
    code = "import sys, moecheck.backends.vllm as v; assert v.BACKENDS; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_lists_them_unavailable_with_the_reason():
    out = subprocess.run([sys.executable, "-m", "moecheck.ci.cli", "backends"], capture_output=True, text=True, check=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("vllm_")]
    assert len(lines) == len(vllm_pkg.BACKENDS)
    if importlib.util.find_spec("vllm") is None:
        assert all("unavailable" in ln and "package 'vllm' not installed" in ln for ln in lines)
