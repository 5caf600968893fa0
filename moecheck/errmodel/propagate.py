"""Variance terms the reference MoE accumulates next to its values (see budget.py)."""
from __future__ import annotations

import torch

from moecheck.errmodel.budget import ErrorBudget, unit_roundoff
from moecheck.reference.quantize import quantize
from moecheck.reference.spec import QuantSpec, ScaleRule

_DISCRETE_SCALES = (ScaleRule.MX, ScaleRule.NVFP4, ScaleRule.UE8M0)


def gemm_var(a: torch.Tensor, var_a: torch.Tensor | None, w_sq: torch.Tensor, k: int, budget: ErrorBudget) -> torch.Tensor:
    """Variance of (a @ w.T) given input variance var_a and the accumulation term.

    w_sq is w**2. Accumulating k products in another order with unit u: each partial-sum rounding
    is about u*|partial|; summed in quadrature over k steps this is u^2 * k/3 * sum(a^2 w^2).
    """
    v = (a * a) @ w_sq.T * (budget.acc_unit**2 * k / 3.0)
    if var_a is not None:
        v = v + var_a @ w_sq.T
    return v


def round_var(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor | float:
    """Rounding `x` to `dtype` at a point both sides round: uniform within +-u|x|, and never less
    than half the subnormal spacing (fp16 subnormals start at 6e-5: relative error is no model there)."""
    if dtype is None or dtype in (torch.float32, torch.float64):
        return 0.0
    fi = torch.finfo(dtype)
    half_sub = fi.tiny * fi.eps / 2
    return torch.clamp((unit_roundoff(dtype) * x).abs(), min=half_sub) ** 2 / 3.0


def requant_var(x: torch.Tensor, sigma: torch.Tensor, spec: QuantSpec, scale, budget: ErrorBudget,
                steps: float) -> torch.Tensor:
    """Variance of re-quantizing `x` when a correct kernel sees it off by ~sigma (element-wise).

    Element flips: re-quantize x +- sigma; an element whose code moves is within about one sigma of
    a boundary, and a kernel flips it with a probability of that order: charge the full move.
    Scale flips: a discrete block scale jumps a whole block when the block amax is near a scale
    boundary; re-quantize x +- z*sigma and charge every element of a block whose scale code moved.
    """
    out = torch.zeros_like(x, dtype=torch.float32)
    if steps == 0 or not bool((sigma > 0).any()):
        return out
    xf = x.float()
    base_q = quantize(xf, spec, scale)
    base = base_q.dequantize()
    for sgn in (1.0, -1.0):
        d = quantize(xf + sgn * sigma, spec, scale).dequantize() - base
        out = torch.maximum(out, d * d)
        if spec.rule in _DISCRETE_SCALES and not spec.static:
            qz = quantize(xf + sgn * budget.z * sigma, spec, scale)
            moved = _moved_blocks(qz, base_q)
            if moved is not None:
                dz = qz.dequantize() - base
                out = torch.where(moved, torch.maximum(out, dz * dz), out)
    return out * steps**2


def _moved_blocks(q, base) -> torch.Tensor | None:
    from moecheck.reference.qtensor import expand_blocks

    a, b = q.scales, base.scales
    changed = (a.view(torch.uint8) != b.view(torch.uint8)) if a.dtype.itemsize == 1 else (a != b)
    if not bool(changed.any()):
        return None
    br, bc = base.block
    return expand_blocks(changed.to(torch.float32), base.shape, br, bc) > 0
