"""GPU: FlashInfer's quantizers code for code against moecheck's reference quantizers, and our weight
layouts against FlashInfer's own layout helpers.

Outcomes: pass = codes and scales as the reference (NVFP4: at most a neighbouring code at rounding
midpoints, docs/rounding.md sections 4-5); skip "refused: ..." = FlashInfer raised (the message is its);
fail "silently wrong: ..." = it returned something else without complaint. Off-GPU, or without
flashinfer, every test skips with the exact reason.
"""
import importlib

import pytest
import torch
from moecheck.backends.flashinfer import layouts as L
from moecheck.backends.flashinfer import quant as Q
from moecheck.reference.activations import ACTIVATIONS
from moecheck.tests.backends._flashinfer_gpu import (
    VALUE_KINDS,
    arch,
    need_flashinfer,
    values,
)

pytestmark = pytest.mark.gpu

SHAPES = [(1, 32), (7, 96), (130, 256), (300, 1024)]


def _judge(fn, *a, **k):
    need_flashinfer()
    try:
        d = fn(*a, **k)
    except Q.Refused as e:
        pytest.skip(f"refused on {arch()}: {e}")
    assert d.ok, f"silently wrong on {arch()}: {d.summary()}"
    return d


@pytest.mark.parametrize("swizzled", [True, False], ids=["128x4", "linear"])
@pytest.mark.parametrize("kind", VALUE_KINDS)
@pytest.mark.parametrize("m,k", SHAPES)
def test_mxfp8_quantize_matches_reference(m, k, kind, swizzled):
    need_flashinfer()
    _judge(Q.compare_mxfp8, values(m, k, kind, m * k, 448.0, 32), 32, swizzled)


@pytest.mark.parametrize("swizzled", [True, False], ids=["128x4", "linear"])
@pytest.mark.parametrize("kind", VALUE_KINDS)
@pytest.mark.parametrize("m,k", SHAPES[:3])
def test_mxfp8_host_quantizer_matches_reference(m, k, kind, swizzled):
    need_flashinfer()
    _judge(Q.compare_mxfp8, values(m, k, kind, m * k + 1, 448.0, 32), 32, swizzled, host=True)


# vLLM PR #30647: the quantizer pads K to an alignment; codes of the padding must be 0, the scales of
# padding blocks 0x00 (quantize_with_block_size), and the real part must not move
@pytest.mark.parametrize("swizzled", [True, False], ids=["128x4", "linear"])
@pytest.mark.parametrize("m,k,alignment", [(5, 96, 128), (3, 32, 64), (130, 2880, 256), (17, 1056, 512)])
def test_mxfp8_quantize_alignment_padding(m, k, alignment, swizzled):
    need_flashinfer()
    d = _judge(Q.compare_mxfp8, values(m, k, "normal", k, 448.0, 32), alignment, swizzled)
    assert d.n_codes == m * k


# m >= 1024 with K % 512 == 0 takes the TMA kernel (quantize_with_block_size_tma), whose linear-layout
# padding was wrong before flashinfer PR #2726; unwritten scale padding is vLLM PR #30260's bug family
NVFP4_SHAPES = SHAPES + [(1024, 512), (1100, 1024)]
NVFP4_KINDS = [v for v in VALUE_KINDS if v != "e8m0_underflow"]  # an E8M0 case; NVFP4's global 2688/amax would overflow


@pytest.mark.parametrize("swizzled", [True, False], ids=["128x4", "linear"])
@pytest.mark.parametrize("kind", NVFP4_KINDS)
@pytest.mark.parametrize("m,k", NVFP4_SHAPES)
def test_fp4_quantize_nvfp4_matches_reference(m, k, kind, swizzled):
    need_flashinfer()
    _judge(Q.compare_fp4, values(m, k, kind, m + k, 6.0, 16), "nvfp4", swizzled)


@pytest.mark.parametrize("swizzled", [True, False], ids=["128x4", "linear"])
@pytest.mark.parametrize("kind", VALUE_KINDS)
@pytest.mark.parametrize("m,k", SHAPES)
def test_fp4_quantize_mxfp4_matches_reference(m, k, kind, swizzled):
    need_flashinfer()
    _judge(Q.compare_fp4, values(m, k, kind, m + 2 * k, 6.0, 32), "mxfp4", swizzled)


@pytest.mark.parametrize("m,k", [(7, 96), (130, 256)])
def test_mxfp4_quantize_dequantize_round_trip(m, k):
    need_flashinfer()
    _judge(Q.compare_mxfp4_roundtrip, values(m, k, "normal", 3, 6.0, 32))


@pytest.mark.parametrize("swizzled", [True, False], ids=["128x4", "linear"])
@pytest.mark.parametrize("kind", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("m,k", [(7, 96), (130, 256)])
def test_host_fp4_dequantizer_reads_moecheck_layouts(m, k, kind, swizzled):
    need_flashinfer()
    _judge(Q.compare_fp4_dequantize_host, values(m, k, "outliers", 9, 6.0, 16 if kind == "nvfp4" else 32), kind, swizzled)


@pytest.mark.parametrize("shape", [(128, 4), (300, 7), (2, 257, 12)])
def test_block_scale_interleave_is_the_reference_swizzle(shape):
    need_flashinfer()
    sf = torch.randint(1, 255, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1)).cuda()
    _judge(Q.compare_block_scale_interleave, sf)


# ------------------------------------------------------------------ our layouts vs FlashInfer's helpers

def _fi(mod, attr):
    need_flashinfer()
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        pytest.skip(f"{mod}.{attr} not importable: {type(e).__name__}: {e}")


def test_gated_act_reorder_matches_flashinfer():
    fn = _fi("flashinfer.fused_moe", "reorder_rows_for_gated_act_gemm")
    x = torch.arange(256 * 4).view(256, 4)
    assert torch.equal(fn(x), L.permute_rows(x, L.reorder_gated_act(256)))


@pytest.mark.parametrize("tile", [128, 64])
def test_shuffle_a_matches_flashinfer(tile):
    fn = _fi("flashinfer.quantization.fp4_quantization", "shuffle_matrix_a")
    x = torch.arange(256 * 4, dtype=torch.int32).view(256, 4)
    assert torch.equal(fn(x, tile), L.permute_rows(x, L.shuffle_a(256, tile)))


def test_block_layout_matches_flashinfer():
    fn = _fi("flashinfer.fused_moe", "convert_to_block_layout")
    x = torch.randint(0, 255, (64, 512), dtype=torch.uint8)
    assert torch.equal(fn(x, 128), L.to_block_major_k(x, 128))


@pytest.mark.parametrize("dtype,group", [(torch.uint8, 32), (torch.bfloat16, 128)])
def test_sm90_scale_fold_matches_flashinfer(dtype, group):
    fn = _fi("flashinfer.fused_moe", "interleave_moe_scales_for_sm90_mixed_gemm")
    s = torch.randint(0, 255, (2, 128, 1024 // group), dtype=torch.int32).to(dtype)
    assert torch.equal(fn(s, group), L.sm90_mixed_scale_fold(s, group))


def test_mono_pair_layout_matches_flashinfer():
    fn = _fi("flashinfer.fused_moe", "interleave_for_tma_wgmma_up")
    w = torch.arange(2 * 256 * 16, dtype=torch.int32).view(2, 256, 16)
    assert torch.equal(fn(w), L.permute_rows(w, L.mono_pair_layout(256)))


def test_cute_sm90_interleave_matches_flashinfer():
    fn = _fi("flashinfer.fused_moe.cute_dsl.sm90_contiguous_gather_grouped_gemm_act_fusion", "interleave_up_gate_sm90")
    w = torch.arange(2 * 128 * 8, dtype=torch.int32).view(2, 128, 8)  # [gate | up] halves
    assert torch.equal(fn(w), L.permute_rows(w, L.cute_sm90_up_gate(128, ACTIVATIONS["silu"])))
