"""The error model's variance GEMMs: products of non-negative matrices (squares times squares).

nonneg_mm(a, b) = a @ b for a >= 0, b >= 0. On CPU it is the plain product in `exact` (float64 by
default: fp32 squares of tiny values, 2^-100 and below, underflow to 0), so CPU numbers are those of
`a.double() @ b.double()`. On CUDA it is a power-of-two-scaled TF32 GEMM (scaled_mm), about 2.5x faster
than float64 on the H200 (ci/gemm_probe.py), and never below the exact product but for flushed terms:

- Each row of a and each column of b is multiplied by an exact power of two so its maximum lies in
  [0.5, 1) (frexp of the max, in float64; an all-zero row or column gets 1): no row is tiny, whatever
  its magnitude in float64, and the scales are undone exactly in float64 afterwards.
- Inputs: float64 -> float32 (and a square in fp32) rounds by a few 2^-24 relative, TF32 keeps 10
  mantissa bits (< 2^-10 relative, truncated or rounded), so each input is >= x (1 - 2^-10 - 2^-22)
  and each product of two >= p (1 - 2^-9 - 2^-21). The fp32 sums of K terms, in any order or split,
  lose < 2^-23 of a partial sum per add: >= (1 - K 2^-23) of the exact sum. Every term is >= 0, so
  there is no cancellation and the relative bounds of the terms hold for their sum. The result times
  (1 + 2^-8)(1 + K 2^-22) is therefore >= the exact product: (1 + 2^-8)(1 - 2^-9 - 2^-21) > 1 and
  (1 + K 2^-22)(1 - K 2^-23) >= 1 for K <= 2^22. (1 + 2^-8) covers TF32's input rounding, the K term
  fp32's accumulation (2^-11 at K=2048; random-order sums lose far less, but a bound is a bound).
- Flushes: a scaled term below 2^-126 (fp32's smallest normal; TF32 may flush subnormal inputs too)
  may become 0. Scaled entries are <= 1, so each such term is < 2^-126 of (row max x column max), and
  all of them together < K 2^-126 of it: negligible next to the GEMM's scale, though an output whose
  every term is that small relative to its row's and column's maxima may come out below it.
"""
from __future__ import annotations

import torch


def _tf32_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """fp32 a @ b with TF32 allowed for this call only (the reference runs IEEE fp32: moe._ieee_fp32)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        return a @ b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _pow2(n: torch.Tensor) -> torch.Tensor:
    """2.0**n in float64, exact, for integer n in [-1022, 1023] (built from the exponent bits)."""
    return ((n.to(torch.int64) + 1023) << 52).view(torch.float64)


def max_exponents(x: torch.Tensor, dim: int, signed: bool = False, limit: int = 1000) -> torch.Tensor:
    """e with max(|x|, dim) = m 2^e, m in [0.5, 1) (keepdim, int64, clamped to +-limit so that 2^-e is a
    float64 normal); 0 for an all-zero slice. signed: x may be negative (|x| without an |x| copy)."""
    if signed:
        lo, hi = torch.aminmax(x, dim=dim, keepdim=True)
        m = torch.maximum(hi, -lo)
    else:
        m = x.amax(dim, keepdim=True)
    _, e = torch.frexp(m.double())
    return e.to(torch.int64).clamp(-limit, limit)


def _scale_into(out: torch.Tensor, x: torch.Tensor, e: torch.Tensor, square: bool) -> torch.Tensor:
    """out (float32) = x 2^-e, or its square, computed in float64 (2^-e may lie outside fp32's range)."""
    torch.mul(x, _pow2(-e), out=out)  # float64 math, one rounding to float32
    return out.square_() if square else out  # scaled |x| <= 1: squares >= 2^-126 of the max stay normal


def scaled_mm(a, b: torch.Tensor, mm=_tf32_mm, square_a: bool = False) -> torch.Tensor:
    """float64 (a**2 if square_a else a) @ b for a, b >= 0, through `mm`, a float32 GEMM that may round
    its inputs to TF32: >= the exact product but for terms flushed below 2^-126 of their row's and
    column's maxima (the module docstring). a [.., R, K] or a list of them, stacked along rows (dim -2)
    into one GEMM; b [.., K, N]."""
    parts = list(a) if isinstance(a, (list, tuple)) else [a]
    k = b.shape[-2]
    limit = 500 if square_a else 1000  # the square's scale 2^(2e) stays a float64 normal
    eas = [max_exponents(p, -1, signed=square_a, limit=limit) for p in parts]  # [.., R_i, 1]
    eb = max_exponents(b, -2)  # [.., 1, N]
    rows = sum(p.shape[-2] for p in parts)
    a32 = torch.empty(*parts[0].shape[:-2], rows, parts[0].shape[-1], dtype=torch.float32, device=b.device)
    s = 0
    for p, e in zip(parts, eas):
        _scale_into(a32[..., s:s + p.shape[-2], :], p, e, square_a)
        s += p.shape[-2]
    b32 = _scale_into(torch.empty_like(b, dtype=torch.float32), b, eb, False)  # b's strides: w^T stays a view's layout
    r = mm(a32, b32)
    ea = eas[0] if len(eas) == 1 else torch.cat(eas, dim=-2)
    out = torch.empty(r.shape, dtype=torch.float64, device=r.device)
    torch.mul(r, _pow2(2 * ea if square_a else ea), out=out)  # undo the row scales (exact)
    factor = (1.0 + 2.0**-8) * (1.0 + k * 2.0**-22)  # conservative: TF32 inputs and fp32 sums (above)
    return out.mul_(_pow2(eb) * factor)  # the column scales, and the factor


def nonneg_mm(a, b: torch.Tensor, *, square_a: bool = False, exact: torch.dtype = torch.float64) -> torch.Tensor:
    """Variance GEMM (a**2 if square_a else a) @ b of non-negative matrices, float64 out; a may be a list
    of left operands stacked along rows (dim -2) as one GEMM. CPU: the product computed in `exact`, as
    the reference always has (bit for bit). CUDA: scaled_mm through TF32, >= the exact product."""
    parts = list(a) if isinstance(a, (list, tuple)) else [a]
    if parts[0].is_cuda:
        return scaled_mm(parts, b, square_a=square_a)
    x = parts[0].to(exact) if len(parts) == 1 else torch.cat([p.to(exact) for p in parts], dim=-2)
    return ((x * x if square_a else x) @ b.to(exact)).to(torch.float64)
