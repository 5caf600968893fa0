"""OCP MX (MXFP8 / MXFP4): E8M0 shared scales per 32 along K, for the FLOOR / RCEIL / EVEN modes.

Expected E8M0 codes are hand-computed from the definitions:
  FLOOR: 127 + floor(log2 amax) - emax_elem           (OCP MX v1.0 section 6.3)
  RCEIL: 127 + ceil(log2(amax / max_elem))             (NVIDIA cvt.rp.ue8m0)
  EVEN:  FLOOR of amax with its mantissa rounded half-up to mbits bits (torchao: adds
         1 << (23 - mbits - 1) to the fp32 bits); bumps iff frac >= 1 - 2**-(mbits + 1)
with emax/mbits = 8/3 for e4m3 (max 448) and 2/1 for e2m1 (max 6).
"""
from __future__ import annotations

import math

import pytest
import torch
from moecheck.reference.formats import get_format
from moecheck.reference.quantize import quantize
from moecheck.reference.spec import MXScaleMode, QuantSpec, ScaleRule
from moecheck.tests.reference._oracles import (
    e2m1_decode,
    e8m0_value,
    next_down,
    next_up,
)

F, R, E = MXScaleMode.FLOOR, MXScaleMode.RCEIL, MXScaleMode.EVEN


def _mx(elem: str, mode: MXScaleMode) -> QuantSpec:
    return QuantSpec(elem, (1, 32), rule=ScaleRule.MX, mx_mode=mode, ragged=False)


def _block(amax: float, rest: float = 0.0) -> torch.Tensor:
    """One MX block: amax at position 0 (negated at 1 to check sign symmetry), `rest` elsewhere."""
    x = torch.full((1, 32), rest)
    x[0, 0], x[0, 1] = amax, -amax
    return x


# (amax in units of 2**k, mode, e8m0 code - k, top element value in units of 2**k after dequant)
MXFP8_CASES = [
    (448.0, F, 127, 448.0), (448.0, R, 127, 448.0), (448.0, E, 127, 448.0),
    ("up448", F, 127, 448.0), ("up448", R, 128, 448.0), ("up448", E, 127, 448.0),  # 224.00002 -> 224
    ("down448", F, 127, 448.0), ("down448", R, 127, 448.0), ("down448", E, 127, 448.0),
    (480.0, F, 127, 448.0), (480.0, R, 128, 480.0), (480.0, E, 127, 448.0),  # 1.875: EVEN keeps
    (496.0, F, 127, 448.0), (496.0, R, 128, 512.0), (496.0, E, 128, 512.0),  # 1.9375: EVEN bumps; 248 -> 256
    ("down496", E, 127, 448.0),
    (512.0, F, 128, 512.0), (512.0, R, 128, 512.0), (512.0, E, 128, 512.0),
    (256.0, F, 127, 256.0), (256.0, R, 127, 256.0), (256.0, E, 127, 256.0),
    (1.0, F, 119, 1.0), (1.0, R, 119, 1.0), (1.0, E, 119, 1.0),
]
MXFP4_CASES = [
    (6.0, F, 127, 6.0), (6.0, R, 127, 6.0), (6.0, E, 127, 6.0),  # 1.5: EVEN must not bump
    ("up6", F, 127, 6.0), ("up6", R, 128, 6.0), ("up6", E, 127, 6.0),
    ("down6", F, 127, 6.0), ("down6", R, 127, 6.0), ("down6", E, 127, 6.0),
    (7.0, F, 127, 6.0), (7.0, R, 128, 8.0), (7.0, E, 128, 8.0),  # FLOOR saturates; 3.5 -> 4 (RNE)
    (8.0, F, 128, 8.0), (8.0, R, 128, 8.0), (8.0, E, 128, 8.0),
    (4.0, F, 127, 4.0), (4.0, R, 127, 4.0), (4.0, E, 127, 4.0),
    (5.0, F, 127, 4.0), (5.0, R, 127, 4.0), (5.0, E, 127, 4.0),  # 5 is a tie: 4 is the even code
    (3.0, F, 126, 3.0), (3.0, R, 126, 3.0), (3.0, E, 126, 3.0),  # 1.5 * 2: same as 6 one binade down
]


def _amax(a) -> float:
    if isinstance(a, float):
        return a
    base = float(a.lstrip("updown"))
    return next_up(base) if a.startswith("up") else next_down(base)


@pytest.mark.parametrize("k", [-20, 0, 7])
@pytest.mark.parametrize("elem, a, mode, code, top", [("e4m3", *c) for c in MXFP8_CASES] + [("e2m1", *c) for c in MXFP4_CASES])
def test_scale_code_on_power_of_two_boundaries(elem, a, mode, code, top, k):
    amax = math.ldexp(_amax(a), k)
    q = quantize(_block(amax), _mx(elem, mode))
    assert q.scales.dtype == torch.uint8 and q.scales.shape == (1, 1)
    assert q.scales.item() == code + k
    deq = q.dequantize()[0]
    want_top = amax if top == "same" else math.ldexp(top, k)
    assert deq[0].item() == want_top and deq[1].item() == -want_top
    assert torch.equal(deq[2:], torch.zeros(30))


def test_floor_saturates_top_element_only_where_ocp_says():
    # MXFP4 FLOOR: amax 7 * 2**k -> scale 2**k and 7 clamps to 6 (the OCP-sanctioned saturation)
    x = torch.tensor([[7.0, 5.5, 2.5, -0.75] + [0.0] * 28]) * 2.0**3
    q = quantize(x, _mx("e2m1", F))
    assert q.scales.item() == 127 + 3
    assert q.dequantize()[0, :4].tolist() == [48.0, 48.0, 16.0, -8.0]  # 6, 6, 2 (tie->even), -1 (tie->even)


def test_mxfp4_codes_are_packed_e2m1_bit_patterns():
    vals = [6.0, -6.0, 0.5, -0.0, 1.5, 3.0, -4.0, 2.0] * 4
    q = quantize(torch.tensor([vals]), _mx("e2m1", F))
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (1, 16)
    # element 2i in the low nibble: code(6) = 0b0111, code(-6) = 0b1111 -> 0xF7; -0 is 0b1000
    assert q.codes[0, :4].tolist() == [0xF7, 0x81, 0x53, 0x4E]
    lo, hi = q.codes & 0xF, q.codes >> 4
    decoded = torch.tensor([e2m1_decode(c) for c in torch.stack([lo, hi], -1).flatten().tolist()])
    assert torch.equal(decoded.view(torch.int32), torch.tensor(vals).view(torch.int32))  # -0 kept


def test_mxfp8_codes_are_float8_and_dequant_is_code_times_scale():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 96, generator=g) * torch.logspace(-3, 3, 96)
    for mode in (F, R, E):
        q = quantize(x, _mx("e4m3", mode))
        assert q.codes.dtype == torch.float8_e4m3fn and q.scales.shape == (4, 3)
        s = torch.tensor([[e8m0_value(c) for c in row] for row in q.scales.tolist()])
        want = q.codes.float() * s.repeat_interleave(32, dim=1)
        assert torch.equal(q.dequantize(), want)


@pytest.mark.parametrize("elem", ["e4m3", "e2m1"])
@pytest.mark.parametrize("mode", [F, R, E])
def test_all_zero_block(elem, mode):
    x = torch.zeros(2, 64)
    x[1, 40] = 3.0  # only the last block of row 1 is non-zero
    q = quantize(x, _mx(elem, mode))
    assert q.scales[0].tolist() == [0, 0] and q.scales[1, 0].item() == 0  # 2**-127, the smallest
    assert q.dequantize()[0].abs().sum().item() == 0 and q.dequantize()[1, :32].abs().sum().item() == 0
    assert q.element_values()[0].abs().sum().item() == 0
    assert q.dequantize()[1, 40].item() == 3.0


def test_tiny_and_huge_amax_clamp_to_e8m0_range():
    tiny = quantize(_block(2.0**-140), _mx("e4m3", F))  # floor exp -148 clamps to -127
    assert tiny.scales.item() == 0
    huge = quantize(_block(3.0e38), _mx("e2m1", F))  # floor(log2 3e38) = 127, minus emax 2
    assert huge.scales.item() == 127 + 125
    assert huge.dequantize()[0, 0].item() == 6.0 * 2.0**125  # 3e38 / 2**125 ~ 7.05 saturates to 6
    rceil_tiny = quantize(_block(2.0**-130), _mx("e4m3", R))
    assert rceil_tiny.scales.item() == 0


@pytest.mark.parametrize("elem", ["e4m3", "e2m1"])
@pytest.mark.parametrize("mode", [F, R, E])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_block_gets_nan_scale(elem, mode, bad):
    x = torch.ones(1, 64)
    x[0, 5] = bad
    q = quantize(x, _mx(elem, mode))
    assert q.scales.tolist() == [[255, 127 + {"e4m3": -8, "e2m1": -2}[elem]]]
    deq = q.dequantize()
    assert torch.isnan(deq[0, :32]).all()
    assert torch.equal(deq[0, 32:], torch.ones(32))


def test_formats_registry_mx_variants():
    for base in ("mxfp8", "mxfp4_bf16", "mxfp4_mxfp8"):
        assert get_format(base).weight.mx_mode == F
        assert get_format(f"{base}_rceil").weight.mx_mode == R
        assert get_format(f"{base}_even").weight.mx_mode == E
        assert get_format(base).weight.block == (1, 32) and get_format(base).k_multiple == 32
    assert get_format("mxfp4_mxfp8_even").act.mx_mode == E
