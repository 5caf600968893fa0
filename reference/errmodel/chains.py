"""What a correct kernel may differ by, carried next to the reference's values as three chains.

- env: the variance of the max bound. Every rounding point both sides share is charged in full
  (round_var), as is every re-quantization flip a probe finds: the envelope of the worst element.
- exp: the expected squared difference of a correct kernel, for the RMS and bias verdicts. A shared
  rounding point adds nothing where both sides hold the same value and one ulp where a rounding
  boundary lies between them, which happens with probability about E|d| / ulp: E[diff^2] = ulp E|d|.
- m1: that E|d|, the expected absolute difference. Through a GEMM it is at most both the sum of
  |w| E|d_in| (few inputs differ) and the standard deviation sqrt(exp) (many do).
Terms that always differ (accumulation order, a fast exp, LoRA's bf16 shrink store) enter all three.
"""
from __future__ import annotations

import torch
from moecheck.reference.errmodel.budget import ErrorBudget
from moecheck.reference.errmodel.nonneg import nonneg_mm
from moecheck.reference.errmodel.propagate import round_var


class Spread:
    def __init__(self, env: torch.Tensor, exp: torch.Tensor, m1: torch.Tensor):
        self.env, self.exp, self.m1 = env, exp, m1

    @staticmethod
    def of(var: torch.Tensor) -> "Spread":
        """A difference present in every chain alike (e.g. the input's quantization flips)."""
        var = var.double()
        return Spread(var, var, var.sqrt())

    def plus(self, var) -> "Spread":
        if not isinstance(var, torch.Tensor) and not var:
            return self
        return Spread(self.env + var, self.exp + var, self.m1 + torch.as_tensor(var, dtype=torch.float64).sqrt())

    def rounded(self, x: torch.Tensor, dtype: torch.dtype | None) -> "Spread":
        if dtype is None or dtype in (torch.float32, torch.float64):
            return self
        rv = round_var(x, dtype)
        ulp = 2.0 * (3.0 * rv).sqrt()
        flip = torch.minimum(2.0 * rv, ulp * self.m1)  # both sides round: at most two independent errors
        m1 = torch.where(self.m1 < ulp, self.m1, self.m1 + ulp / 4)  # flipped rows now differ by one ulp
        return Spread(self.env + rv, self.exp + flip, m1)

    def map(self, f_sq, f_abs) -> "Spread":
        """Through an element-wise map: f_sq on variances, f_abs on the mean absolute difference."""
        return Spread(f_sq(self.env), f_sq(self.exp), f_abs(self.m1))

    def add_exp(self, env_var: torch.Tensor, exp_var: torch.Tensor) -> "Spread":
        """Terms each chain measures its own way (re-quantization flips probed at its own sigma)."""
        return Spread(self.env + env_var, self.exp + exp_var, self.m1 + exp_var.sqrt())


def gemm_spread(a, env, exp, m1, w_sq: torch.Tensor, k: int, budget: ErrorBudget) -> torch.Tensor:
    """[.., R, 3N] = env | exp | m1 of (a @ w.T), given the input's chains (None: an exact input).
    grouped_apply's fn: broadcasts over a leading expert dim."""
    w_t = w_sq.transpose(-1, -2)  # the variance GEMMs: nonneg_mm (float64 on CPU, scaled TF32 on CUDA)
    unit = budget.acc_unit**2 * k / 3.0 + budget.weight_rel**2 / 3.0
    base = nonneg_mm(a, w_t, square_a=True) * unit
    if env is None:
        return torch.cat([base, base, base.sqrt()], dim=-1)
    r = env.shape[-2]
    both = nonneg_mm([env, exp], w_t)  # one GEMM for both variance chains
    e_out, x_out = base + both[..., :r, :], base + both[..., r:, :]
    spread = nonneg_mm(m1, w_sq.float().sqrt().transpose(-1, -2), exact=torch.float32)  # CPU: in fp32, as before
    return torch.cat([e_out, x_out, torch.minimum(x_out.sqrt(), base.sqrt() + spread)], dim=-1)


def split3(both: torch.Tensor) -> Spread:
    n = both.shape[-1] // 3
    return Spread(both[..., :n], both[..., n:2 * n], both[..., 2 * n:])
