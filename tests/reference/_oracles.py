"""Independent oracles for the quantizer tests, written from the format definitions.

Nothing here imports moecheck.reference: the tests compare the code under test against these
(and against torch's native float8 casts), never against itself.
"""
from __future__ import annotations

import math

import torch

# OCP MX v1.0 table 4: E2M1 magnitudes for codes 0..7; code 8+i is the negative of code i.
E2M1_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def e2m1_decode(code: int) -> float:
    mag = E2M1_VALUES[code & 7]
    return -mag if code & 8 else mag


def e4m3fn_decode(code: int) -> float:
    """OCP FP8 E4M3 (fn: no infinities, S.1111.111 is NaN), bias 7."""
    s, e, m = code >> 7, (code >> 3) & 0xF, code & 7
    if e == 15 and m == 7:
        return math.nan
    mag = math.ldexp(m / 8, -6) if e == 0 else math.ldexp(1 + m / 8, e - 7)
    return -mag if s else mag


def e5m2_decode(code: int) -> float:
    """OCP FP8 E5M2 (IEEE-like): exponent 31 is inf (m == 0) or NaN, bias 15."""
    s, e, m = code >> 7, (code >> 2) & 0x1F, code & 3
    if e == 31:
        mag = math.inf if m == 0 else math.nan
    else:
        mag = math.ldexp(m / 4, -14) if e == 0 else math.ldexp(1 + m / 4, e - 15)
    return -mag if s else mag


def rne_on_grid(x: torch.Tensor, grid: list[float]) -> torch.Tensor:
    """Round to nearest on an ascending non-negative grid (index i = magnitude code i), ties to the
    even code, saturating past the last value; sign kept. Brute force over all grid points."""
    g = torch.tensor(grid, dtype=torch.float64)
    mag = x.double().abs().clamp(max=grid[-1])
    d = (mag[..., None] - g).abs()
    best = d.min(-1, keepdim=True).values
    idx = torch.arange(len(grid))
    # among equally near grid points, the even code wins; otherwise the unique nearest
    cand = (d == best)
    even = cand & (idx % 2 == 0)
    pick = torch.where(even.any(-1, keepdim=True), even, cand).int().argmax(-1)
    r = g[pick]
    return torch.where(torch.signbit(x), -r, r).where(~torch.isnan(x), x.double()).float()


def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """torchao's `to_blocked` (cuBLAS 128x4 block-scale layout), re-typed from its recipe."""
    rows, cols = scales.shape
    nrb, ncb = -(-rows // 128), -(-cols // 4)
    padded = torch.zeros((nrb * 128, ncb * 4), dtype=scales.dtype)
    padded[:rows, :cols] = scales
    blocks = padded.view(nrb, 128, ncb, 4).permute(0, 2, 1, 3)
    return blocks.reshape(-1, 4, 32, 4).transpose(1, 2).reshape(-1, 32, 16).flatten()


def e8m0_value(code: int) -> float:
    return math.nan if code == 255 else math.ldexp(1.0, code - 127)


def next_up(x: float) -> float:
    return torch.nextafter(torch.tensor(x), torch.tensor(math.inf)).item()


def next_down(x: float) -> float:
    return torch.nextafter(torch.tensor(x), torch.tensor(-math.inf)).item()
