"""Round-trip and error-bound properties (Hypothesis, small example counts).

Where every scale is a power of two (MX, UE8M0, AMAX on data whose block amax is max * 2**k) all
arithmetic is exact, so the bounds below hold bit-exactly with no tolerance:
  * quantize(dequantize(q)) reproduces q's codes and scales (MX FLOOR/EVEN, power-of-two AMAX);
  * for RCEIL/UE8M0 the *values* are reproduced (codes may renormalize, see the last test);
  * |x - dequantize(q)| <= step / 2 for every element that did not saturate.
"""
from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from moecheck.reference.quantize import quantize
from moecheck.reference.spec import MXScaleMode, QuantSpec, ScaleRule

MODES = list(MXScaleMode)
FLOAT_ELEMS = {"e4m3": 448.0, "e5m2": 57344.0, "e2m1": 6.0}


@st.composite
def tensors(draw, cols: int = 64) -> torch.Tensor:
    """[2, cols] fp32, any finite values (zeros, subnormals, ties) scaled by 2**k."""
    vals = draw(st.lists(st.floats(-1.0, 1.0, width=32), min_size=2 * cols, max_size=2 * cols))
    k = draw(st.integers(-40, 40))
    return torch.tensor(vals, dtype=torch.float32).reshape(2, cols) * 2.0**k


@st.composite
def pow2_amax_tensors(draw, top: float, bc: int = 32) -> torch.Tensor:
    """Every block of `bc` has amax exactly top * 2**k, so its AMAX scale is 2**k."""
    x = draw(tensors())
    k = draw(st.integers(-30, 30))
    x = x / x.abs().amax().clamp(min=2.0**-100) * (top * 2.0**k)
    x = x.clamp(-top * 2.0**k, top * 2.0**k)
    sign = torch.where(torch.arange(x.shape[1]) % 3 == 0, 1.0, -1.0)
    x[:, ::bc] = top * 2.0**k * sign[::bc]
    return x


def _codes_equal(a, b) -> bool:
    if a.codes.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return torch.equal(a.codes.view(torch.uint8), b.codes.view(torch.uint8))
    return torch.equal(a.codes, b.codes)


def _within_half_step(x: torch.Tensor, q, unsaturated: torch.Tensor) -> None:
    err = (x - q.dequantize()).abs()
    half = q.step() / 2
    bad = unsaturated & ~(err <= half)
    assert not bad.any(), f"x={x[bad][:4].tolist()} deq={q.dequantize()[bad][:4].tolist()} step={q.step()[bad][:4].tolist()}"


@given(x=tensors(), elem=st.sampled_from(sorted(FLOAT_ELEMS)), mode=st.sampled_from([MXScaleMode.FLOOR, MXScaleMode.EVEN]))
def test_mx_floor_even_requantize_reproduces_codes(x, elem, mode):
    spec = QuantSpec(elem, (1, 32), rule=ScaleRule.MX, mx_mode=mode)
    q = quantize(x, spec)
    q2 = quantize(q.dequantize(), spec)
    assert torch.equal(q2.scales, q.scales)
    assert _codes_equal(q2, q)


@given(x=tensors(), elem=st.sampled_from(sorted(FLOAT_ELEMS)))
def test_rceil_and_ue8m0_requantize_reproduces_values(x, elem):
    for spec in (QuantSpec(elem, (1, 32), rule=ScaleRule.MX, mx_mode=MXScaleMode.RCEIL),
                 QuantSpec(elem, (1, 32), rule=ScaleRule.UE8M0)):
        deq = quantize(x, spec).dequantize()
        assert torch.equal(quantize(deq, spec).dequantize(), deq)


@given(x=tensors(), elem=st.sampled_from(sorted(FLOAT_ELEMS)), mode=st.sampled_from(MODES))
def test_mx_error_within_half_step(x, elem, mode):
    q = quantize(x, QuantSpec(elem, (1, 32), rule=ScaleRule.MX, mx_mode=mode))
    s = q.scale_values().repeat_interleave(32, dim=-1)
    unsat = x.abs() <= FLOAT_ELEMS[elem] * s
    if mode == MXScaleMode.RCEIL:
        assert unsat.all()  # RCEIL never saturates
    _within_half_step(x, q, unsat)


@given(x=tensors(), elem=st.sampled_from(sorted(FLOAT_ELEMS)))
def test_ue8m0_error_within_half_step(x, elem):
    q = quantize(x, QuantSpec(elem, (1, 32), rule=ScaleRule.UE8M0))
    _within_half_step(x, q, torch.ones_like(x, dtype=torch.bool))


@given(data=st.data(), elem=st.sampled_from(["e4m3", "e5m2", "e2m1", "int8", "int4"]))
def test_pow2_amax_requantize_and_half_step(data, elem):
    top = {"int8": 127.0, "int4": 7.0}.get(elem) or FLOAT_ELEMS[elem]
    x = data.draw(pow2_amax_tensors(top))
    spec = QuantSpec(elem, (1, 32))
    q = quantize(x, spec)
    _, e = torch.frexp(q.scales)
    assert torch.equal(q.scales, torch.ldexp(torch.full_like(q.scales, 0.5), e))  # 2**k, as built
    _within_half_step(x, q, torch.ones_like(x, dtype=torch.bool))
    q2 = quantize(q.dequantize(), spec)
    assert torch.equal(q2.scales, q.scales) and _codes_equal(q2, q)


def test_rceil_codes_may_renormalize_on_requantize():
    # amax 225: RCEIL scale 1 and 225 -> 224 (e4m3); 224 / 448 = 2**-1 exactly, so the
    # re-quantized block gets scale 2**-1 and code 448: same value, different codes
    x = torch.zeros(1, 32)
    x[0, 0] = 225.0
    spec = QuantSpec("e4m3", (1, 32), rule=ScaleRule.MX, mx_mode=MXScaleMode.RCEIL)
    q = quantize(x, spec)
    q2 = quantize(q.dequantize(), spec)
    assert (q.scales.item(), q.codes.float()[0, 0].item()) == (127, 224.0)
    assert (q2.scales.item(), q2.codes.float()[0, 0].item()) == (126, 448.0)
    assert torch.equal(q2.dequantize(), q.dequantize())
