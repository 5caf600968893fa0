"""Bad input raises MoecheckError with a one-line message naming the violated constraint."""
from __future__ import annotations

import math

import pytest
import torch
from moecheck.reference.errors import MoecheckError
from moecheck.reference.formats import get_format
from moecheck.reference.quantize import calibrate, fake_quantize, quantize
from moecheck.reference.spec import QuantSpec, ScaleRule


def _raises(match: str, fn, *args, **kw) -> MoecheckError:
    with pytest.raises(MoecheckError, match=match) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return info.value


def test_is_a_value_error():
    assert issubclass(MoecheckError, ValueError)


@pytest.mark.parametrize("x, match", [
    (torch.ones(4, 32, dtype=torch.int32), "float tensor.*torch.int32"),
    (torch.ones(4, 32, dtype=torch.bool), "float tensor.*torch.bool"),
    (torch.ones(32), r"at least 2 dims.*\(32,\)"),
    (torch.tensor(1.0), "at least 2 dims"),
    ([[1.0, 2.0]], "needs a torch.Tensor, got list"),
])
def test_bad_tensor(x, match):
    _raises(match, quantize, x, get_format("fp8_tensor").act)


@pytest.mark.parametrize("fmt, k, n", [
    ("mxfp8", 40, 32), ("mxfp4_bf16", 48, 32), ("mxfp8_rceil", 33, 32), ("nvfp4", 24, 16),
    ("int4_w_g32", 48, 32), ("int4_w_g64", 96, 64), ("int4_w_g128", 192, 128),
    ("int4_zp_w_g128", 64, 128), ("int8_w_g64", 32, 64), ("w4a8", 130, 128),
])
def test_k_not_divisible_by_block(fmt, k, n):
    _raises(f"K={k} must be divisible by {n}", quantize, torch.ones(2, k), get_format(fmt).weight)


def test_rows_not_divisible_for_non_ragged_row_blocks():
    spec = QuantSpec("e4m3", (128, 128), ragged=False)
    _raises("rows=200 must be divisible by 128", quantize, torch.ones(200, 256), spec)


def test_ragged_blocks_accept_any_size():
    assert quantize(torch.ones(200, 300), get_format("fp8_block").weight).scales.shape == (2, 3)


@pytest.mark.parametrize("elem", ["int4", "uint4", "e2m1"])
def test_odd_k_for_4bit_packing(elem):
    rule = ScaleRule.MINMAX if elem == "uint4" else ScaleRule.AMAX
    _raises("two codes per byte: K=5 must be even", quantize, torch.ones(3, 5), QuantSpec(elem, (1, None), rule=rule))


def test_static_needs_scale_and_dynamic_rejects_one():
    _raises("static spec needs its calibrated scale", quantize, torch.ones(2, 8), get_format("fp8_tensor_static").act)
    _raises("spec is dynamic", quantize, torch.ones(2, 8), get_format("fp8_tensor").act, torch.tensor(1.0))


@pytest.mark.parametrize("scale, match", [
    (torch.tensor([1.0, 2.0, 3.0]), r"does not broadcast to the block grid \(2, 1\)"),
    (torch.tensor(0.0), "finite and > 0"),
    (torch.tensor(-1.0), "finite and > 0"),
    (torch.tensor(math.nan), "finite and > 0"),
    (torch.tensor(math.inf), "finite and > 0"),
    (1.0, "must be a torch.Tensor"),
])
def test_bad_static_scale(scale, match):
    _raises(match, quantize, torch.ones(2, 8), QuantSpec("e4m3", (1, None), static=True), scale)


@pytest.mark.parametrize("name", ["fp5", "E4M3", "int3", ""])
def test_unknown_codec_name(name):
    _raises(f"unknown element codec {name!r}", QuantSpec, name, (1, 32))


@pytest.mark.parametrize("block", [(0, 32), (1, -32), (-1, None), (1, 0), (1, 32.0), (True, 32)])
def test_bad_block_sizes(block):
    _raises("block sizes must be integers >= 1 or None", QuantSpec, "e4m3", block)


@pytest.mark.parametrize("block", [(32,), (1, 32, 1), 32])
def test_block_must_be_a_pair(block):
    _raises("block must be a \\(rows, cols\\) pair", QuantSpec, "e4m3", block)


@pytest.mark.parametrize("kw, match", [
    (dict(elem="int8", rule=ScaleRule.MX), "rule mx needs a float element codec"),
    (dict(elem="int4", rule=ScaleRule.NVFP4), "rule nvfp4 needs a float element codec"),
    (dict(elem="int4", rule=ScaleRule.MINMAX), "zero-point quantization needs an unsigned codec"),
    (dict(elem="uint4", rule=ScaleRule.AMAX), "rule amax needs a signed or float codec"),
    (dict(elem="e4m3", rule="bogus"), "unknown ScaleRule 'bogus'"),
    (dict(elem="e4m3", rule=ScaleRule.MX, mx_mode="nearest"), "unknown MXScaleMode 'nearest'"),
    (dict(elem="e4m3", rule=ScaleRule.MX, static=True), "static scales need rule amax, ue8m0 or nvfp4"),
    (dict(elem="uint4", rule=ScaleRule.MINMAX, static=True), "static scales need rule amax, ue8m0 or nvfp4"),
])
def test_inconsistent_spec(kw, match):
    _raises(match, QuantSpec, block=(1, 32), **kw)


def test_rule_accepts_its_string_value():
    assert QuantSpec("e4m3", (1, 32), rule="mx", mx_mode="rceil", ragged=False) == get_format("mxfp8_rceil").weight


def test_unknown_format_and_bad_sizes():
    _raises("unknown format 'mxfp9'", get_format, "mxfp9")
    _raises("needs hidden size divisible by 32, got 48", get_format("mxfp8").check_sizes, 48, 64)
    _raises("needs intermediate size divisible by 16, got 8", get_format("nvfp4").check_sizes, 32, 8)
    _raises("hidden size must be >= 1, got 0", get_format("bf16").check_sizes, 0, 8)



@pytest.mark.parametrize("spec, got", [(None, "NoneType"), ("fp8", "str"), (3, "int"), (get_format("fp8_tensor"), "Format")])
def test_spec_of_wrong_type(spec, got):
    err = _raises(f"quantize needs a moecheck.reference.spec.QuantSpec as spec, got {got}", quantize, torch.ones(2, 8), spec)
    assert ("fmt.weight or fmt.act" in str(err)) == (got == "Format")
    if spec is not None:  # fake_quantize takes None as "unquantized"
        _raises(f"got {got}", fake_quantize, torch.ones(2, 8), spec)


@pytest.mark.parametrize("spec, got", [(None, "NoneType"), ("fp8", "str")])
def test_calibrate_spec_of_wrong_type(spec, got):
    _raises(f"calibrate needs a moecheck.reference.spec.QuantSpec as spec, got {got}", calibrate, torch.ones(2, 8), spec)
