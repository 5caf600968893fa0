"""nonneg.py, the variance GEMMs: the power-of-two-scaled TF32 path CUDA takes, run on CPU through an
emulated TF32 GEMM (inputs truncated to 10 mantissa bits, subnormals flushed, fp32 sums), is never below
the exact float64 product and at most (1 + 2^-6) above it, down to entries of 1e-160; without the scaling
it returns 0 for tiny rows; and the CPU path stays the reference's old float64 (fp32) GEMMs bit for bit.
"""
from __future__ import annotations

import pytest
import torch
from moecheck.reference.errmodel import nonneg
from moecheck.reference.errmodel.chains import gemm_spread
from moecheck.reference.errmodel.nonneg import nonneg_mm, scaled_mm
from moecheck.reference.errmodel.propagate import gemm_var
from moecheck.reference.errmodel.table import budget_for

UPPER = 1.0 + 2.0**-6


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> TF32 the pessimistic way: the low 13 mantissa bits dropped (toward zero), subnormals to 0."""
    t = (x.view(torch.int32) & ~((1 << 13) - 1)).view(torch.float32)
    return torch.where(t.abs() < torch.finfo(torch.float32).tiny, torch.zeros_like(t), t)


def emulated_tf32_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    assert a.dtype == b.dtype == torch.float32
    return _tf32(a) @ _tf32(b)


def _magnitudes(shape, exps, gen, dim) -> torch.Tensor:
    """Non-negative float64, slice i along `dim` of magnitude 10**exps[i] (None: all zeros)."""
    x = torch.rand(shape, dtype=torch.float64, generator=gen) + 0.05
    sh = [1] * len(shape)
    sh[dim] = len(exps)
    s = torch.tensor([0.0 if e is None else 10.0**e for e in exps], dtype=torch.float64).view(sh)
    return x * s


@pytest.fixture
def tiny():
    """a [2, 7, 48]: rows from 1 down to 1e-160 (pairs of rows of different magnitudes), an all-zero row,
    a row spread over 1e-40 .. 1e-70 within itself; b [2, 48, 6]: columns 1 .. 1e-60 and an all-zero one."""
    g = torch.Generator().manual_seed(14)
    a = _magnitudes((2, 7, 48), [0, -40, -100, -160, None, -120, -45], g, -2)
    a[:, 6] *= 10.0 ** -torch.linspace(0, 25, 48, dtype=torch.float64)  # within-row spread 1e-45 .. 1e-70
    b = _magnitudes((2, 48, 6), [0, -10, None, -40, -60, -1], g, -1)
    return a, b


def _conservative(got: torch.Tensor, exact: torch.Tensor) -> bool:
    return bool((got >= exact).all() and (got <= exact * UPPER).all())


def test_scaled_tf32_conservative_at_tiny_values(tiny):
    a, b = tiny
    exact = a @ b
    got = scaled_mm(a, b, emulated_tf32_mm)
    assert got.dtype == torch.float64 and got.shape == exact.shape
    assert (exact[:, 3, 3:5] > 0).all() and (exact[:, 3, 3:5] < 1e-190).all()  # the 1e-160 row times 1e-40, 1e-60
    assert _conservative(got, exact)
    assert (got[:, 4] == 0).all() and (got[..., 2] == 0).all()  # the zero row and column stay 0
    # the factor is needed: without it, the truncated inputs leave some outputs below the exact product
    factor = (1.0 + 2.0**-8) * (1.0 + a.shape[-1] * 2.0**-22)
    assert ((got / factor) < exact).any()


def test_scaled_tf32_square_and_stacked_rows(tiny):
    """square_a (the a^2 @ w^2 term) with float64 a down to 1e-80 (squares 1e-160), and a list of left
    operands stacked into one GEMM (the env | exp chains) against the exact float64 product."""
    a, b = tiny
    g = torch.Generator().manual_seed(15)
    x = _magnitudes((2, 5, 48), [0, -20, -50, -80, None], g, -2) * (torch.randint(0, 2, (2, 5, 48), generator=g) * 2 - 1)
    exact = (x * x) @ b
    got = scaled_mm(x, b, emulated_tf32_mm, square_a=True)
    assert _conservative(got, exact) and (got[:, 4] == 0).all()
    stacked = scaled_mm([a, a * 1e-30], b, emulated_tf32_mm)
    assert _conservative(stacked, torch.cat([a, a * 1e-30], -2) @ b)


def test_flushed_terms_below_row_and_column_max():
    """Terms below 2^-126 of their row's and column's maxima may flush: the loss is < K 2^-126 of
    (row max x column max), and only there may the result fall below the exact product."""
    k = 64
    a = torch.ones(1, k, dtype=torch.float64)
    a[0, 1:] = 1e-60  # 2^-199 of the row max
    b = torch.full((k, 1), 1.0, dtype=torch.float64)
    b[0, 0] = 0.0  # the row max meets a zero: the whole sum is made of flushed terms
    exact = a @ b
    got = scaled_mm(a, b, emulated_tf32_mm)
    assert (got >= exact - k * 2.0**-126 * a.amax() * b.amax()).all()
    assert (got <= exact * UPPER).all()


def test_without_scaling_tiny_rows_return_zero(tiny, monkeypatch):
    """Planted: scales of 1 (the plain fp32 path) lose the tiny rows to 0, and the check above fails."""
    a, b = tiny
    exact = a @ b
    monkeypatch.setattr(nonneg, "max_exponents", lambda x, dim, signed=False, limit=1000: torch.zeros(
        [1 if i == dim % x.dim() else n for i, n in enumerate(x.shape)], dtype=torch.int64))
    got = scaled_mm(a, b, emulated_tf32_mm)
    live = [0, 1, 3, 4, 5]  # column 2 is all zeros
    assert (got[:, 2:4] == 0).all() and (exact[:, 2:4][..., live] > 0).all()  # the 1e-100 and 1e-160 rows
    assert not _conservative(got, exact)


def test_tf32_flag_restored():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        y = nonneg._tf32_mm(torch.ones(2, 3), torch.ones(3, 2))
        assert torch.equal(y, torch.full((2, 2), 3.0)) and torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def test_cpu_path_bit_identical_to_the_float64_gemms():
    """On CPU the variance GEMMs are the reference's old expressions, bit for bit (CI's numbers)."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 9, 33, generator=g)
    w_sq = torch.randn(4, 17, 33, generator=g).square()
    env, exp = torch.rand(4, 9, 33, dtype=torch.float64, generator=g), torch.rand(4, 9, 33, dtype=torch.float64, generator=g)
    m1 = exp.sqrt()
    budget = budget_for("bf16")
    k = 33
    # before nonneg.py (chains.gemm_spread, propagate.gemm_var)
    a64, w_t = a.double(), w_sq.double().transpose(-1, -2)
    unit = budget.acc_unit**2 * k / 3.0 + budget.weight_rel**2 / 3.0
    base = (a64 * a64) @ w_t * unit
    both = torch.cat([env.double(), exp.double()], dim=-2) @ w_t
    e_out, x_out = base + both[..., :9, :], base + both[..., 9:, :]
    spread = (m1.float() @ w_sq.float().sqrt().transpose(-1, -2)).double()
    old = torch.cat([e_out, x_out, torch.minimum(x_out.sqrt(), base.sqrt() + spread)], dim=-1)
    assert torch.equal(gemm_spread(a, env, exp, m1, w_sq, k, budget), old)
    assert torch.equal(gemm_spread(a, None, None, None, w_sq, k, budget), torch.cat([base, base, base.sqrt()], -1))
    assert torch.equal(gemm_var(a, env, w_sq, k, budget), base + env.double() @ w_t)
    assert torch.equal(nonneg_mm(env, w_t), env @ w_t)
