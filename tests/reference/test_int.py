"""Integer formats: INT8 W8A8 per-row, INT4 symmetric groups, INT4 zero-point (AWQ/GPTQ style)
groups, INT8 weight-only groups. Oracle: the textbook formulas re-typed here with torch.round
(half to even):  symmetric  q = clamp(round(x / (amax / qmax)), qmin, qmax)
                 zero-point q = clamp(round(x / s) + z, 0, 15), s = (max - min) / 15, z = round(-min / s)
with min/max widened to include 0.
"""
from __future__ import annotations

import pytest
import torch
from moecheck.reference.formats import get_format
from moecheck.reference.quantize import quantize
from moecheck.reference.spec import QuantSpec, ScaleRule

GEN = torch.Generator().manual_seed(11)


def _nibbles(packed: torch.Tensor, signed: bool) -> torch.Tensor:
    """Unpack by hand: element 2i is the low nibble of byte i."""
    p = packed.to(torch.int32)
    out = torch.stack([p & 0xF, p >> 4], -1).flatten(-2)
    return torch.where(out >= 8, out - 16, out) if signed else out


def _groups(x: torch.Tensor, g: int) -> torch.Tensor:
    return x.reshape(*x.shape[:-1], x.shape[-1] // g, g)


def test_int8_w8a8_per_row_hand_example():
    x = torch.tensor([[127.0, -63.5, 0.5, 1.5, 2.5, -127.0], [0.0] * 6])
    q = quantize(x, get_format("int8_w8a8").act)
    assert q.codes.dtype == torch.int8
    assert q.scales.tolist() == [[1.0], [1.0]]
    assert q.codes.tolist() == [[127, -64, 0, 2, 2, -127], [0] * 6]
    assert q.dequantize()[0].tolist() == [127.0, -64.0, 0.0, 2.0, 2.0, -127.0]


def test_int8_w8a8_per_row_random():
    fmt = get_format("int8_w8a8")
    for spec, x in ((fmt.act, torch.randn(9, 80, generator=GEN)), (fmt.weight, torch.randn(2, 5, 80, generator=GEN))):
        q = quantize(x, spec)
        s = x.abs().amax(-1, keepdim=True) / 127.0
        assert torch.equal(q.scales, s)
        want = torch.round(x / s).clamp(-128, 127)
        assert torch.equal(q.codes, want.to(torch.int8))
        assert q.codes.abs().amax().item() == 127
        assert torch.equal(q.dequantize(), want * s)


def test_int4_symmetric_hand_example_and_nibbles():
    x = torch.tensor([[7.0, -7.0, 3.5, 2.5, -0.5, 1.0] + [0.0] * 26])
    q = quantize(x, get_format("int4_w_g32").weight)
    assert q.scales.tolist() == [[1.0]]
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (1, 16)
    # 7 | (-7 & 0xF) << 4 = 0x97; 4 (3.5 -> even) | 2 (2.5 -> even) << 4 = 0x24; -0 | 1 << 4 = 0x10
    assert q.codes[0, :3].tolist() == [0x97, 0x24, 0x10]
    assert q.dequantize()[0, :6].tolist() == [7.0, -7.0, 4.0, 2.0, 0.0, 1.0]


@pytest.mark.parametrize("g", [32, 64, 128])
def test_int4_symmetric_groups(g):
    spec = get_format(f"int4_w_g{g}").weight
    assert (spec.elem, spec.block, spec.ragged) == ("int4", (1, g), False)
    w = torch.randn(2, 6, 256, generator=GEN)
    q = quantize(w, spec)
    s = _groups(w, g).abs().amax(-1) / 7.0
    assert q.scales.shape == (2, 6, 256 // g) and torch.equal(q.scales, s)
    want = torch.round(_groups(w, g) / s[..., None]).clamp(-8, 7).reshape(w.shape)
    codes = _nibbles(q.codes, signed=True)
    assert torch.equal(codes.float(), want)
    assert codes.min().item() >= -8 and codes.max().item() <= 7
    assert torch.equal(q.element_values(), want)
    assert torch.equal(q.dequantize(), (_groups(want, g) * s[..., None]).reshape(w.shape))


def test_int4_zero_point_hand_example_odd_zero():
    # min -3, max 12: s = 15 / 15 = 1, z = 3 (odd, so rounding x + z instead of x would move ties)
    x = torch.tensor([[12.0, -3.0, 0.5, 1.5, -2.5, 0.0, 4.5, 5.5] + [0.0] * 24])
    q = quantize(x, get_format("int4_zp_w_g32").weight)
    assert q.scales.tolist() == [[1.0]] and q.zeros.tolist() == [[3]] and q.zeros.dtype == torch.uint8
    assert _nibbles(q.codes, signed=False)[0, :8].tolist() == [15, 0, 3, 5, 1, 3, 7, 9]
    assert q.dequantize()[0, :8].tolist() == [12.0, -3.0, 0.0, 2.0, -2.0, 0.0, 4.0, 6.0]


def test_int4_zero_point_rounds_before_adding_zero():
    # s = 4/15 = 0.26666668, z = 4: 2 / s = 7.4999995 rounds to 7 (code 11); adding z first gives
    # 11.4999995, which is 11.5 in fp32 and would round to 12
    q = quantize(torch.tensor([[-1.0, 3.0, 2.0, 0.0]]), QuantSpec("uint4", (1, 4), rule=ScaleRule.MINMAX))
    assert q.zeros.tolist() == [[4]]
    assert _nibbles(q.codes, signed=False).tolist() == [[0, 15, 11, 4]]


@pytest.mark.parametrize("g", [32, 64, 128])
def test_int4_zero_point_groups(g):
    spec = get_format(f"int4_zp_w_g{g}").weight
    assert (spec.elem, spec.rule, spec.block) == ("uint4", ScaleRule.MINMAX, (1, g))
    w = torch.randn(3, 4, 256, generator=GEN) + 0.3
    w[0, 0, :g] = torch.rand(g, generator=GEN) + 0.1  # all-positive group: z = 0
    w[0, 1, :g] = -torch.rand(g, generator=GEN) - 0.1  # all-negative group: z = 15
    w[0, 2, :g] = 0.0  # constant group: s = 1, z = 0, codes 0
    q = quantize(w, spec)
    wg = _groups(w, g)
    lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
    s = torch.where(hi > lo, (hi - lo) / 15, torch.ones_like(hi))
    z = torch.round(-lo / s).clamp(0, 15)
    assert torch.equal(q.scales, s) and torch.equal(q.zeros, z.to(torch.uint8))
    assert q.zeros[0, 0, 0].item() == 0 and q.zeros[0, 1, 0].item() == 15 and q.zeros[0, 2, 0].item() == 0
    assert q.zeros.min().item() >= 0 and q.zeros.max().item() <= 15
    want = (torch.round(wg / s[..., None]) + z[..., None]).clamp(0, 15)
    codes = _nibbles(q.codes, signed=False).float()
    assert torch.equal(codes, want.reshape(w.shape))
    assert torch.equal(q.dequantize(), ((want - z[..., None]) * s[..., None]).reshape(w.shape))
    assert q.dequantize()[0, 2, :g].abs().sum().item() == 0


@pytest.mark.parametrize("g", [32, 64, 128])
def test_int8_weight_only_groups(g):
    spec = get_format(f"int8_w_g{g}").weight
    assert get_format(f"int8_w_g{g}").act is None
    w = torch.randn(5, 384, generator=GEN)
    q = quantize(w, spec)
    s = _groups(w, g).abs().amax(-1) / 127.0
    assert q.scales.shape == (5, 384 // g) and torch.equal(q.scales, s)
    want = torch.round(_groups(w, g) / s[..., None]).clamp(-128, 127).reshape(w.shape)
    assert q.codes.dtype == torch.int8 and torch.equal(q.codes.float(), want)


def test_w4a8_format():
    fmt = get_format("w4a8")
    assert (fmt.weight.elem, fmt.weight.block, fmt.act.elem, fmt.act.block) == ("int4", (1, 128), "e4m3", (None, None))
    assert fmt.k_multiple == 128
