"""QTensor: step() is exactly one code-grid spacing x scale; dequantize / element_values plumbing."""
from __future__ import annotations

import pytest
import torch
from moecheck.reference.formats import get_format
from moecheck.reference.quantize import fake_quantize, quantize
from moecheck.reference.spec import QuantSpec, ScaleRule
from moecheck.tests.reference._oracles import E2M1_VALUES

STATIC1 = torch.tensor(1.0)


def _fp8_table(dtype, top: float) -> torch.Tensor:
    """Non-negative finite values of a torch float8 dtype, ascending."""
    v = torch.arange(128, dtype=torch.uint8).view(dtype).float()
    return v[torch.isfinite(v) & (v <= top)].sort().values


@pytest.mark.parametrize("elem, dtype, top", [("e4m3", torch.float8_e4m3fn, 448.0), ("e5m2", torch.float8_e5m2, 57344.0)])
def test_fp8_step_is_gap_to_next_code(elem, dtype, top):
    table = _fp8_table(dtype, top)
    q = quantize(torch.cat([table, -table])[None], QuantSpec(elem, (None, None), static=True), STATIC1)
    step = q.step()[0]
    n = table.numel()
    gap_up = table[1:] - table[:-1]
    assert torch.equal(step[:n - 1], gap_up) and torch.equal(step[n:2 * n - 1], gap_up)  # sign-symmetric
    assert step[n - 1].item() == gap_up[-1].item()  # at max: the gap below
    # every neighbour is at most one step away (the gap down is half a step at powers of two)
    assert (gap_up[1:] >= gap_up[:-1]).all() and (step[1:n - 1] >= gap_up[:-1]).all()


def test_e2m1_step_table():
    x = torch.tensor([E2M1_VALUES + [-v for v in E2M1_VALUES]])
    q = quantize(x, QuantSpec("e2m1", (1, None), static=True), STATIC1)
    want = [0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 2.0, 2.0]
    assert q.step()[0].tolist() == want + want


def test_e4m3_step_hand_values_and_tightness():
    x = torch.tensor([[0.0, 2.0**-9, 1.0, 1.875, 2.0, 448.0, 1.0625]])
    q = quantize(x, QuantSpec("e4m3", (None, None), static=True), torch.tensor(2.0**-3))
    # scaled: 0, 2**-6, 8, 15, 16, 3584 -> 448 (saturated), 8.5 -> 8 (tie, even)
    assert q.step()[0].tolist() == [2.0**-12, 2.0**-12, 0.125, 0.125, 0.25, 4.0, 0.125]
    # a midpoint is exactly half a step from the code it rounds to: the bound is tight
    assert (x[0, 6] - q.dequantize()[0, 6]).item() == q.step()[0, 6].item() / 2


def test_mx_step_includes_e8m0_scale():
    x = torch.zeros(1, 32)
    x[0, :3] = torch.tensor([6.0, 1.0, 0.0]) * 2.0**-5
    q = quantize(x, QuantSpec("e2m1", (1, 32), rule=ScaleRule.MX))
    assert q.scales.item() == 127 - 5
    assert q.step()[0, :3].tolist() == [2.0**-4, 2.0**-6, 2.0**-6]


def test_int_and_zero_point_step_is_scale():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    for fmt in ("int8_w8a8", "int4_w_g32", "int4_zp_w_g32", "int8_w_g32"):
        q = quantize(x, get_format(fmt).weight)
        br, bc = q.block
        assert torch.equal(q.step(), q.scales.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:4, :64])


def test_nvfp4_step_includes_global_scale():
    x = torch.zeros(1, 16)
    x[0, :2] = torch.tensor([2688.0 * 2.0**-3, 1.0])
    q = quantize(x, get_format("nvfp4").weight)
    assert q.global_scale.item() == 2.0**-3 and q.scales.float().item() == 448.0
    assert q.step()[0, :2].tolist() == [2.0 * 448.0 * 2.0**-3, 0.5 * 448.0 * 2.0**-3]


def test_dequantize_dtype_to_and_fake_quantize():
    x = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(1))
    spec = get_format("mxfp4_bf16").weight
    q = quantize(x, spec)
    assert q.dequantize(torch.bfloat16).dtype == torch.bfloat16
    assert torch.equal(q.dequantize(torch.bfloat16), q.dequantize().to(torch.bfloat16))
    q2 = q.to("cpu")
    assert torch.equal(q2.dequantize(), q.dequantize()) and q2.spec == q.spec and q2.shape == q.shape
    assert torch.equal(fake_quantize(x, spec), q.dequantize())
    assert torch.equal(fake_quantize(x.bfloat16(), None), x.bfloat16().float())


def test_bf16_and_fp16_inputs_are_exact_in_fp32():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    spec = get_format("mxfp8").weight
    for dt in (torch.bfloat16, torch.float16):
        assert torch.equal(quantize(x.to(dt), spec).dequantize(), quantize(x.to(dt).float(), spec).dequantize())
