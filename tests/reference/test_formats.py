"""Every registered format quantizes a weight [E, N, K] and an activation [T, K] end to end."""
from __future__ import annotations

import pytest
import torch
from moecheck.reference.formats import FORMATS
from moecheck.reference.quantize import quantize

CODE_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2, "int8": torch.int8,
               "e2m1": torch.uint8, "int4": torch.uint8, "uint4": torch.uint8}
SCALE_DTYPES = {"mx": torch.uint8, "nvfp4": torch.float8_e4m3fn}


def _check(q, spec, x):
    assert q.codes.dtype == CODE_DTYPES[spec.elem]
    k = x.shape[-1] // 2 if spec.packed else x.shape[-1]
    assert q.codes.shape == (*x.shape[:-1], k)
    assert q.scales.dtype == SCALE_DTYPES.get(spec.rule.value, torch.float32)
    deq = q.dequantize()
    assert deq.shape == x.shape and torch.isfinite(deq).all()
    # sign is never flipped, and the largest element survives (to within a factor of 2)
    assert ((deq * x) >= 0).all()
    assert (deq.abs().amax() * 2 >= x.abs().amax()) and (deq.abs().amax() <= 2 * x.abs().amax())


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_quantizes_weight_and_activation(name):
    fmt = FORMATS[name]
    fmt.check_sizes(256, 128)
    g = torch.Generator().manual_seed(len(name))
    w = torch.randn(2, 64, 256, generator=g)
    x = torch.randn(16, 256, generator=g) * 3
    if fmt.weight is None:
        assert fmt.act is None and not fmt.quantized
        return
    _check(quantize(w, fmt.weight), fmt.weight, w)
    if fmt.act is not None:
        scale = x.abs().amax() / 448.0 if fmt.act.static else None
        _check(quantize(x, fmt.act, scale), fmt.act, x)
