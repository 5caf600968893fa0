"""NVFP4: E2M1 elements, an E4M3 scale per 16 along K, and one fp32 global scale per leading slice.

global = amax_slice / (448 * 6); block scale = e4m3(amax_block / 6 / global); dequant = code *
block scale * global. Hand examples use amax_slice = 2688 * 2**k so the global scale is exact.
"""
from __future__ import annotations

import math

import torch
from moecheck.reference.formats import get_format
from moecheck.reference.quantize import calibrate, quantize
from moecheck.tests.reference._oracles import E2M1_VALUES, e2m1_decode, rne_on_grid

SPEC = get_format("nvfp4").weight


def _row(*blocks: list[float]) -> torch.Tensor:
    return torch.tensor([sum((b + [0.0] * (16 - len(b)) for b in blocks), [])])


def _codes(q) -> list[int]:
    lo, hi = q.codes & 0xF, q.codes >> 4
    return torch.stack([lo, hi], -1).flatten(-2).flatten().tolist()


def test_spec_shape():
    assert (SPEC.elem, SPEC.block, SPEC.rule.value, SPEC.ragged) == ("e2m1", (1, 16), "nvfp4", False)
    assert get_format("nvfp4").k_multiple == 16


def test_hand_example_unit_global():
    x = _row([2688.0, -1344.0, 448.0, 100.0], [9.0, 4.5, 2.25, 0.75, 1.125, -9.0])
    q = quantize(x, SPEC)
    assert q.global_scale.item() == 1.0  # 2688 / (448 * 6)
    assert q.scales.dtype == torch.float8_e4m3fn
    assert q.scales.float().tolist() == [[448.0, 1.5]]  # e4m3(2688 / 6), e4m3(9 / 6)
    vals = [e2m1_decode(c) for c in _codes(q)]
    assert vals[:5] == [6.0, -3.0, 1.0, 0.0, 0.0]  # 100 / 448 = 0.22 < 0.25 -> 0
    assert vals[16:22] == [6.0, 3.0, 1.5, 0.5, 1.0, -6.0]  # 1.125 / 1.5 = 0.75: tie -> 1 (even)
    deq = q.dequantize()[0]
    assert deq[:4].tolist() == [2688.0, -1344.0, 448.0, 0.0]
    assert deq[16:22].tolist() == [9.0, 4.5, 2.25, 0.75, 1.5, -9.0]


def test_block_scale_rounding_down_saturates_element():
    # e4m3(10 / 6 = 1.667) = 1.625; 10 / 1.625 = 6.15 saturates to 6 -> 9.75
    q = quantize(_row([2688.0], [10.0, 5.0]), SPEC)
    assert q.scales.float().tolist() == [[448.0, 1.625]]
    assert q.dequantize()[0, 16:18].tolist() == [9.75, 4.875]  # 5 / 1.625 = 3.08 -> 3


def test_global_scale_is_per_leading_slice():
    base = _row([2688.0, -1344.0, 448.0], [9.0, 4.5, 2.25, 0.75])
    x = torch.stack([base, base * 2.0**-4, base * 2.0**5])  # [3, 1, 32]
    q = quantize(x, SPEC)
    assert q.global_scale.tolist() == [1.0, 2.0**-4, 2.0**5]
    assert torch.equal(q.scales[0].float(), q.scales[1].float()) and torch.equal(q.scales[0].float(), q.scales[2].float())
    assert torch.equal(q.codes[0], q.codes[1]) and torch.equal(q.codes[0], q.codes[2])
    deq = q.dequantize()
    assert torch.equal(deq[1], deq[0] * 2.0**-4) and torch.equal(deq[2], deq[0] * 2.0**5)


def test_matches_definition_for_random_data():
    """Non-exact globals: the definition re-typed with torch's e4m3 cast and a brute-force E2M1 RNE."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, 64, generator=g) * torch.tensor([0.01, 1.0, 300.0])[:, None, None]
    x[1, 2, 16:32] = 0.0  # one zero block
    q = quantize(x, SPEC)
    amax_t = x.abs().amax(dim=(-2, -1))
    glob = amax_t / (448.0 * 6.0)
    assert torch.equal(q.global_scale, glob)
    amax_b = x.abs().reshape(3, 8, 4, 16).amax(-1)
    sb = (amax_b / 6.0 / glob[:, None, None]).to(torch.float8_e4m3fn).float()
    assert torch.equal(q.scales.float(), sb)
    s_el = sb.repeat_interleave(16, dim=-1) * glob[:, None, None]
    want_codes = rne_on_grid(torch.where(s_el > 0, x / s_el, torch.zeros_like(x)), E2M1_VALUES)
    got_codes = torch.tensor([e2m1_decode(c) for c in _codes(q)]).reshape(x.shape)
    assert torch.equal(got_codes.abs(), want_codes.abs())  # signs of zeros aside
    want_deq = got_codes * sb.repeat_interleave(16, dim=-1) * glob[:, None, None]
    assert torch.equal(q.dequantize(), want_deq)
    assert q.dequantize()[1, 2, 16:32].abs().sum().item() == 0


def test_zero_blocks_and_zero_tensor():
    q = quantize(_row([3.0, -1.0], []), SPEC)
    assert q.scales.float().tolist()[0][1] == 0.0 and q.codes[0, 8:].tolist() == [0] * 8
    assert q.dequantize()[0, 16:].abs().sum().item() == 0
    z = quantize(torch.zeros(2, 4, 32), SPEC)
    assert z.global_scale.tolist() == [1.0, 1.0]
    assert z.scales.float().abs().sum().item() == 0 and z.codes.sum().item() == 0
    assert torch.equal(z.dequantize(), torch.zeros(2, 4, 32))


def test_non_finite_slice_dequantizes_to_nan_only_in_its_slice():
    x = torch.ones(2, 2, 32)
    x[0, 1, 3] = math.nan
    x[1] *= 2688.0  # global 1: exact
    q = quantize(x, SPEC)
    deq = q.dequantize()
    assert torch.isnan(deq[0]).all()
    assert torch.equal(deq[1], torch.full((2, 32), 2688.0))
    y = torch.ones(1, 1, 32)
    y[0, 0, 0] = math.inf
    assert torch.isnan(quantize(y, SPEC).dequantize()).all()


# --- static (calibrated) global scale: what NVFP4 MoE kernels take as a1/a2 ---------------------

ACT_SPEC = get_format("nvfp4").act


def test_activation_spec_is_static_and_dynamic_variant_is_not():
    assert ACT_SPEC.static and ACT_SPEC.rule.value == "nvfp4"
    assert not get_format("nvfp4_dynamic").act.static


def test_static_global_equal_to_the_dynamic_one_gives_the_same_bits():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 64, generator=g) * 7
    dyn = quantize(x, get_format("nvfp4_dynamic").act)
    st = quantize(x, ACT_SPEC, calibrate(x, ACT_SPEC))
    assert torch.equal(st.global_scale, dyn.global_scale)
    assert torch.equal(st.scales.view(torch.uint8), dyn.scales.view(torch.uint8))
    assert torch.equal(st.codes, dyn.codes)


def test_calibrate_is_amax_over_2688():
    x = _row([2688.0 * 4, 1.0])
    assert calibrate(x, ACT_SPEC).item() == 4.0
    assert calibrate(torch.zeros(2, 16), ACT_SPEC).item() == 1.0  # nothing to calibrate on: unit scale


def test_static_global_too_small_saturates_block_scale_and_codes():
    # global 1/64 while the data wants 1: block scale e4m3(2688 / 6 * 64) saturates at 448, codes at 6
    x = _row([2688.0, -1344.0, 448.0])
    q = quantize(x, ACT_SPEC, torch.tensor(1 / 64))
    assert q.global_scale.item() == 1 / 64 and q.scales.float().tolist() == [[448.0]]
    vals = [e2m1_decode(c) for c in _codes(q)][:3]
    assert vals == [6.0, -6.0, 6.0]  # 448 / (448 / 64) = 64 -> saturates too
