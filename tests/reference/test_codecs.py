"""Element codecs, bit-exact: decode tables, RNE ties, saturation, special values, E8M0."""
from __future__ import annotations

import math

import pytest
import torch
from moecheck.reference.codecs import (
    E2M1,
    E4M3,
    E5M2,
    INT4,
    INT8,
    UINT4,
    codec,
    e8m0_decode,
    e8m0_encode_exponent,
)
from moecheck.reference.errors import MoecheckError
from moecheck.tests.reference._oracles import (
    E2M1_VALUES,
    e2m1_decode,
    e4m3fn_decode,
    e5m2_decode,
    e8m0_value,
    rne_on_grid,
)

ALL8 = torch.arange(256)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of fp32 values (NaN matches NaN, -0 differs from +0)."""
    a, b = a.float(), b.float()
    na, nb = torch.isnan(a), torch.isnan(b)
    return torch.equal(na, nb) and torch.equal(a[~na].view(torch.int32), b[~nb].view(torch.int32))


# --- 1. exhaustive decode tables ---------------------------------------------------------------

def test_e2m1_decode_all_16_codes():
    want = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6, -0.0, -.5, -1, -1.5, -2, -3, -4, -6])
    got = E2M1.decode_codes(torch.arange(16))
    assert _same(got, want)
    assert _same(got, torch.tensor([e2m1_decode(c) for c in range(16)]))


def test_e2m1_grid_and_constants():
    assert E2M1.grid().tolist() == E2M1_VALUES
    assert (E2M1.max, E2M1.emax, E2M1.min_subnormal) == (6.0, 2, 0.5)


@pytest.mark.parametrize("cd, formula, dtype", [
    (E4M3, e4m3fn_decode, torch.float8_e4m3fn),
    (E5M2, e5m2_decode, torch.float8_e5m2),
])
def test_fp8_decode_all_256_codes(cd, formula, dtype):
    got = cd.decode_codes(ALL8)
    by_formula = torch.tensor([formula(c) for c in range(256)], dtype=torch.float32)
    by_torch = ALL8.to(torch.uint8).view(dtype).float()
    assert _same(got, by_formula)
    assert _same(got, by_torch)


def test_e4m3_specials():
    got = E4M3.decode_codes(ALL8)
    assert torch.isnan(got).nonzero().flatten().tolist() == [0x7F, 0xFF]
    assert not torch.isinf(got).any()
    assert got[0x7E].item() == 448.0 and got[0x01].item() == 2.0**-9
    assert (E4M3.emax, E4M3.min_subnormal) == (8, 2.0**-9)


def test_e5m2_specials():
    got = E5M2.decode_codes(ALL8)
    assert got[0x7C].item() == math.inf and got[0xFC].item() == -math.inf
    assert torch.isnan(got).nonzero().flatten().tolist() == [0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF]
    assert got[0x7B].item() == 57344.0 and got[0x01].item() == 2.0**-16
    assert (E5M2.emax, E5M2.min_subnormal) == (15, 2.0**-16)


def test_e8m0_decode_all_256_codes():
    got = e8m0_decode(torch.arange(256, dtype=torch.uint8))
    want = torch.tensor([e8m0_value(c) for c in range(256)], dtype=torch.float32)
    assert _same(got, want)
    by_torch = torch.arange(256, dtype=torch.uint8).view(torch.float8_e8m0fnu).float()
    assert _same(got, by_torch)
    assert got[0].item() == 2.0**-127 and got[254].item() == 2.0**127


def test_e8m0_encode_exponent_clamps_to_finite_range():
    exp = torch.tensor([-200, -127, -1, 0, 1, 127, 128, 500])
    assert e8m0_encode_exponent(exp).tolist() == [0, 0, 126, 127, 128, 254, 254, 254]


# --- 2. RNE ties -------------------------------------------------------------------------------

E2M1_TIES = [(0.25, 0.0), (0.75, 1.0), (1.25, 1.0), (1.75, 2.0), (2.5, 2.0), (3.5, 4.0), (5.0, 4.0)]


@pytest.mark.parametrize("x, want", E2M1_TIES + [(0.2500001, 0.5), (0.7499999, 0.5), (4.9999995, 4.0), (5.0000005, 6.0)])
def test_e2m1_rne_ties(x, want):
    got = E2M1.round(torch.tensor([x, -x]))
    assert _same(got, torch.tensor([want, -want]))


def test_e2m1_round_matches_brute_force_oracle():
    # every midpoint and its fp32 neighbours, plus a dense sweep
    mids = [(a + b) / 2 for a, b in zip(E2M1_VALUES, E2M1_VALUES[1:])]
    pts = torch.tensor(mids + E2M1_VALUES + [7.0, 1e30])
    near = torch.cat([pts, torch.nextafter(pts, pts + 1), torch.nextafter(pts, pts - 1)])
    x = torch.cat([near, torch.linspace(-8, 8, 4001)])
    x = torch.cat([x, -x])
    assert _same(E2M1.round(x), rne_on_grid(x, E2M1_VALUES))


def _fp8_sweep(cd) -> torch.Tensor:
    """All grid points, all midpoints, their fp32 neighbours, subnormal fp32 inputs, random."""
    g = cd.grid()
    g = g[g <= cd.max].double()
    mids = ((g[1:] + g[:-1]) / 2).float()
    pts = torch.cat([g.float(), mids])
    near = torch.cat([pts, torch.nextafter(pts, torch.full_like(pts, math.inf)),
                      torch.nextafter(pts, torch.full_like(pts, -math.inf))])
    tiny = torch.tensor([1e-45, 1e-40, 1e-38, 2.0**-126, cd.min_subnormal / 2, cd.min_subnormal / 4])
    rnd = torch.randn(20000, generator=torch.Generator().manual_seed(0)) * torch.logspace(-8, math.log10(cd.max), 20000)
    x = torch.cat([near, tiny, rnd]).clamp(-cd.max, cd.max)  # torch's e5m2 cast overflows to inf
    return torch.cat([x, -x])


@pytest.mark.parametrize("cd", [E4M3, E5M2], ids=lambda c: c.name)
def test_fp8_round_matches_torch_cast(cd):
    x = _fp8_sweep(cd)
    assert _same(cd.round(x), x.to(cd.torch_dtype).float())


@pytest.mark.parametrize("cd", [E4M3, E5M2], ids=lambda c: c.name)
def test_fp8_round_matches_brute_force_oracle(cd):
    x = _fp8_sweep(cd)[::7]
    grid = [v for v in cd.grid().tolist() if v <= cd.max]
    assert _same(cd.round(x), rne_on_grid(x, grid))


def test_e4m3_hand_ties():
    x = torch.tensor([1.0625, 1.1875, 2.0**-10, 3 * 2.0**-10, 240.0, 272.0, 304.0])
    want = torch.tensor([1.0, 1.25, 0.0, 2.0**-8, 240.0, 256.0, 320.0])
    assert _same(E4M3.round(x), want)


# --- 3. saturation and special values ----------------------------------------------------------

@pytest.mark.parametrize("cd, top", [(E4M3, 448.0), (E5M2, 57344.0), (E2M1, 6.0)], ids=["e4m3", "e5m2", "e2m1"])
def test_saturates_to_max_never_inf_or_nan(cd, top):
    big = torch.tensor([top, top * 1.0001, top * 1.5, top * 2, 1e30, 3.4e38, math.inf])
    got = cd.round(torch.cat([big, -big]))
    want = torch.tensor([top] * 7 + [-top] * 7)
    assert _same(got, want)


@pytest.mark.parametrize("cd", [E4M3, E5M2, E2M1], ids=lambda c: c.name)
def test_nan_stays_nan_and_signed_zero_kept(cd):
    got = cd.round(torch.tensor([math.nan, -0.0, 0.0, -1e-45]))
    assert math.isnan(got[0].item())
    assert _same(got[1:], torch.tensor([-0.0, 0.0, -0.0]))


@pytest.mark.parametrize("cd", [E4M3, E5M2, E2M1], ids=lambda c: c.name)
def test_encode_decode_round_trip_every_code(cd):
    codes = torch.arange(2**cd.bits)
    vals = cd.decode_codes(codes)
    ok = torch.isfinite(vals)
    assert torch.equal(cd.encode_codes(vals[ok]).long(), codes[ok])


@pytest.mark.parametrize("cd", [E4M3, E5M2], ids=lambda c: c.name)
def test_encode_matches_torch_bit_patterns(cd):
    x = _fp8_sweep(cd)
    x = torch.cat([x, torch.tensor([math.nan, -math.nan])])
    assert torch.equal(cd.encode_codes(x), x.to(cd.torch_dtype).view(torch.uint8))


def test_encode_saturates_inf_and_rejects_nan_for_e2m1():
    assert E2M1.encode_codes(torch.tensor([math.inf, -math.inf, 100.0])).tolist() == [7, 15, 7]
    with pytest.raises(MoecheckError, match="e2m1 has no NaN"):
        E2M1.encode_codes(torch.tensor([1.0, math.nan]))


# --- integer codecs ----------------------------------------------------------------------------

def test_int_codec_ranges():
    assert (INT8.qmin, INT8.qmax, INT4.qmin, INT4.qmax, UINT4.qmin, UINT4.qmax) == (-128, 127, -8, 7, 0, 15)


def test_int_round_half_even_and_clamps():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 6.5, 7.4, 7.6, -8.5, -9.0, 100.0])
    assert INT4.round(x).tolist() == [0, 2, 2, -0, -2, 6, 7, 7, -8, -8, 7]
    assert UINT4.round(torch.tensor([-3.0, 14.5, 15.5, 40.0])).tolist() == [0, 14, 15, 15]
    assert INT8.round(torch.tensor([127.5, -128.5, 1e9])).tolist() == [127, -128, 127]


def test_codec_lookup():
    assert codec("e4m3") is E4M3 and codec("int4") is INT4
    with pytest.raises(MoecheckError, match="unknown element codec 'fp5'"):
        codec("fp5")
