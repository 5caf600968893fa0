"""A large weight stack is quantized, dequantized and stepped slice by slice (qtensor.CHUNK) to bound
memory: the bits must be those of one pass, for every format, NaN and all-zero slices included."""
import pytest
import torch
from moecheck.reference import qtensor
from moecheck.reference.formats import FORMATS
from moecheck.reference.quantize import quantize

WEIGHTED = sorted(n for n, f in FORMATS.items() if f.weight is not None)


def _stack() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 64, 256, generator=g) * torch.logspace(-3, 3, 7)[:, None, None]
    x[2, 3, 5] = float("nan")
    x[4] = 0
    return x


def _bits(t):
    return None if t is None else t.contiguous().view(torch.uint8) if t.dtype.is_floating_point else t


def _same(u, v) -> bool:
    return (u is None and v is None) or (u.shape == v.shape and torch.equal(_bits(u), _bits(v)))


@pytest.mark.parametrize("name", WEIGHTED)
def test_slice_by_slice_gives_the_bits_of_one_pass(name, monkeypatch):
    spec, x = FORMATS[name].weight, _stack()
    scale = torch.tensor(0.01) if spec.static else None
    monkeypatch.setattr(qtensor, "CHUNK", 1 << 40)
    one = quantize(x, spec, scale)
    want = (one.dequantize(), one.step())
    monkeypatch.setattr(qtensor, "CHUNK", 2 * 64 * 256)  # slices of 2, 2, 2, 1
    assert len(qtensor.lead_slices(tuple(x.shape))) == 4
    got = quantize(x, spec, scale)
    assert got.shape == one.shape
    for k in ("codes", "scales", "zeros", "global_scale"):
        assert _same(getattr(got, k), getattr(one, k)), k
    assert _same(got.dequantize(), want[0]) and _same(got.step(), want[1])


def test_small_and_two_dim_tensors_take_one_pass():
    assert qtensor.lead_slices((3, 4)) == [slice(None)]
    assert qtensor.lead_slices((2, 8, 8)) == [slice(None)]
    assert qtensor.lead_slices((qtensor.CHUNK + 1, 1, 1))[-1] == slice(qtensor.CHUNK, qtensor.CHUNK + 1)
