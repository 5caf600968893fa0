"""FP8 e4m3/e5m2: per-tensor, per-token, per-channel, static and dynamic, DeepSeek blocks, UE8M0.

Oracle: scale = amax / 448 (fp32), codes = torch's own float8 cast of x / scale (clamped to
+-max first, which is the saturating conversion the spec asks for).
"""
from __future__ import annotations

import math

import pytest
import torch
from moecheck.reference.formats import get_format
from moecheck.reference.quantize import quantize
from moecheck.reference.spec import QuantSpec, ScaleRule
from moecheck.tests.reference._oracles import next_up

GEN = torch.Generator().manual_seed(7)
PER_TENSOR, PER_ROW = (None, None), (1, None)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN) * torch.logspace(-2, 2, shape[-1])


def _cast(v: torch.Tensor, dtype=torch.float8_e4m3fn, top=448.0) -> torch.Tensor:
    return v.clamp(-top, top).to(dtype)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


def test_per_tensor_hand_example():
    x = torch.tensor([[896.0, -1.0, 3.0, 0.3], [0.0, -896.0, 0.0078125, 1e-4]])
    q = quantize(x, QuantSpec("e4m3", PER_TENSOR))
    assert q.scales.tolist() == [[2.0]]
    assert q.codes.dtype == torch.float8_e4m3fn
    # 0.15 -> 0.15625 (step 2**-6 in [0.125, 0.25)); 5e-5 is below half the smallest subnormal 2**-9
    assert q.codes.float().tolist() == [[448.0, -0.5, 1.5, 0.15625], [0.0, -448.0, 0.00390625, 0.0]]
    assert q.dequantize().tolist() == [[896.0, -1.0, 3.0, 0.3125], [0.0, -896.0, 0.0078125, 0.0]]


@pytest.mark.parametrize("elem, dtype, top", [("e4m3", torch.float8_e4m3fn, 448.0), ("e5m2", torch.float8_e5m2, 57344.0)])
def test_dynamic_per_tensor_matches_torch_cast(elem, dtype, top):
    x = _randn(3, 16, 64)  # 3 experts: one scale each
    q = quantize(x, QuantSpec(elem, PER_TENSOR))
    s = x.abs().amax(dim=(-2, -1), keepdim=True) / top
    assert q.scales.shape == (3, 1, 1) and torch.equal(q.scales, s)
    assert q.codes.dtype == dtype
    assert torch.equal(_bits(q.codes), _bits(_cast(x / s, dtype, top)))
    assert torch.equal(q.dequantize(), q.codes.float() * s)
    assert q.codes.float().abs().amax().item() == top  # amax maps to max, no overflow


def test_dynamic_per_token_and_zero_row():
    x = _randn(6, 96)
    x[4] = 0.0
    q = quantize(x, get_format("fp8_token_channel").act)
    s = x.abs().amax(-1, keepdim=True) / 448.0
    s[4] = 1.0  # zero row: scale 1, codes 0
    assert q.scales.shape == (6, 1) and torch.equal(q.scales, s)
    assert torch.equal(_bits(q.codes), _bits(_cast(x / s)))
    assert torch.equal(q.dequantize()[4], torch.zeros(96))


def test_dynamic_per_channel_weights():
    w = _randn(2, 8, 48)  # [E, N, K]: one scale per output channel n of each expert
    q = quantize(w, get_format("fp8_token_channel").weight)
    s = w.abs().amax(-1, keepdim=True) / 448.0
    assert q.scales.shape == (2, 8, 1) and torch.equal(q.scales, s)
    assert torch.equal(_bits(q.codes), _bits(_cast(w / s)))


def test_static_per_tensor_clamps_before_cast():
    spec = get_format("fp8_tensor_static").act
    assert spec.static
    x = torch.tensor([[0.1, -100.0, 224.0, 224.1, 300.0, -1e30, math.inf, -math.inf, math.nan]])
    q = quantize(x, spec, torch.tensor(0.5))
    assert q.scales.tolist() == [[0.5]]
    got = q.codes.float()[0]
    # -200 is a tie of 192 and 208 -> 192 (even); anything beyond 448 * 0.5, inf included, saturates
    want = [0.203125, -192.0, 448.0, 448.0, 448.0, -448.0, 448.0, -448.0]
    assert got[:8].tolist() == want and math.isnan(got[8].item())
    assert q.dequantize()[0, :8].tolist() == [w * 0.5 for w in want]


def test_static_scale_shapes():
    x = _randn(2, 4, 32)
    spec = QuantSpec("e4m3", PER_TENSOR, static=True)
    per_expert = torch.tensor([0.25, 4.0])
    q = quantize(x, spec, per_expert)
    assert q.scales.shape == (2, 1, 1) and q.scales.flatten().tolist() == [0.25, 4.0]
    assert torch.equal(_bits(q.codes), _bits(_cast(x / per_expert[:, None, None])))
    tok = torch.rand(4, 1, generator=GEN) + 0.5
    q = quantize(x[0], QuantSpec("e4m3", PER_ROW, static=True), tok)
    assert torch.equal(q.scales, tok)
    assert torch.equal(_bits(q.codes), _bits(_cast(x[0] / tok)))


def _block_scales(x: torch.Tensor, br: int, bc: int, top: float = 448.0) -> torch.Tensor:
    """Per-block amax / top by explicit slicing of the existing elements only."""
    r, c = x.shape[-2:]
    rows = []
    for i in range(0, r, br):
        rows.append([x[..., i:i + br, j:j + bc].abs().amax(dim=(-2, -1)) / top for j in range(0, c, bc)])
    return torch.stack([torch.stack(rw, -1) for rw in rows], -2)


def test_block_128x128_ragged_weight():
    w = _randn(2, 200, 300)
    w[:, 130:, 260:] *= 1e-3  # the ragged corner block is much smaller than its neighbours
    q = quantize(w, get_format("fp8_block").weight)
    s = _block_scales(w, 128, 128)
    assert q.scales.shape == (2, 2, 3) and torch.equal(q.scales, s)
    s_el = s.repeat_interleave(128, -2)[..., :200, :].repeat_interleave(128, -1)[..., :300]
    assert torch.equal(_bits(q.codes), _bits(_cast(w / s_el)))
    # each block's largest element maps exactly to +-448
    for i, j in [(0, 0), (1, 2), (0, 2), (1, 0)]:
        blk = q.codes.float()[:, i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
        assert blk.abs().amax(dim=(-2, -1)).tolist() == [448.0, 448.0]


def test_block_1x128_ragged_activation():
    x = _randn(5, 300)
    q = quantize(x, get_format("fp8_block").act)
    s = _block_scales(x, 1, 128)
    assert q.scales.shape == (5, 3) and torch.equal(q.scales, s)
    assert torch.equal(_bits(q.codes), _bits(_cast(x / s.repeat_interleave(128, -1)[:, :300])))


@pytest.mark.parametrize("amax, want", [
    (448.0, 1.0), (next_up(448.0), 2.0), (447.0, 1.0), (449.0, 2.0), (224.0, 0.5),
    (next_up(224.0), 1.0), (896.0, 2.0), (1.0, 2.0**-8), (3.0, 2.0**-7), (0.0, 1.0),
])
def test_ue8m0_hand_values(amax, want):
    x = torch.zeros(1, 128)
    x[0, 7] = -amax
    q = quantize(x, get_format("fp8_block_ue8m0").act)
    assert q.scales.tolist() == [[want]]


def test_ue8m0_scales_are_smallest_power_of_two_covering_amax():
    w = _randn(300, 260) * torch.logspace(-6, 6, 300)[:, None]
    spec = get_format("fp8_block_ue8m0").weight
    assert spec.rule == ScaleRule.UE8M0
    q = quantize(w, spec)
    s = q.scales
    need = _block_scales(w, 128, 128)
    m, _ = torch.frexp(s)
    assert torch.equal(m, torch.full_like(m, 0.5))  # powers of two
    assert (s >= need).all() and (s / 2 < need).all()
    assert q.codes.float().abs().amax().item() <= 448.0  # never saturates
    s_el = s.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :260]
    assert torch.equal(_bits(q.codes), _bits(_cast(w / s_el)))
