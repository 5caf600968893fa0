"""The absolute floor of the bound: what flushing fp32 subnormals to zero may cost a correct kernel.

GPU kernels flush subnormal fp32 operands and results to zero (PTX `.ftz`, cuBLAS and Inductor kernels
on the H200: docs/findings/h200-2026-12-03, session 26, where eager torch on CUDA returned 0 for outputs
of 1e-40 to 8e-38 that the CPU computes). Each flush moves a value by less than the smallest normal,
`tiny`, so the error it leaves is absolute, not relative: the variance chains (relative by design)
cannot see it. Bounded here worst case, linearly through the layer, with every sum of |terms| taken at
its largest over a row so the cost is a few reductions, not GEMMs:
  - GEMM 1, per routed row: flushed inputs (< tiny each, times sum_k |w|), flushed products and partial
    sums (2H of them), and, where the expert's weights hold subnormals, flushed weights (tiny sum_k |a|);
  - through the activation at its largest slope over the row, plus the flushed intermediate itself;
  - GEMM 2 the same way (2I flushes), then the k weighted slots, their partial sums and the output;
  - a subnormal routing weight flushed before its multiply: that slot's whole |w o| (router outputs of
    4e-43 times expert outputs of 2e5 gave 8e-38 in the H200 case).
It matters only for outputs within a few thousand `tiny` of zero: the bound elsewhere is many orders larger.
"""
from __future__ import annotations

import torch

TINY = torch.finfo(torch.float32).tiny


def _abs_sums(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [E, N, K] -> (sum_k |w| [E, N], whether expert e holds a nonzero below tiny [E])."""
    a = w.float().abs()
    sub = ((a > 0) & (a < TINY)).flatten(1).any(1)
    return a.sum(-1), sub


def _finite(t: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(t, nan=0.0, posinf=torch.finfo(torch.float32).max)


def ftz_floor(A: torch.Tensor, W13: torch.Tensor, slope: torch.Tensor, y: torch.Tensor, W2: torch.Tensor,
              e_rows: torch.Tensor, w_rows: torch.Tensor, slot_rows: torch.Tensor, T: int, k: int,
              extra_flushes: int = 0, o: torch.Tensor | None = None) -> torch.Tensor:
    """[T, H] float32 floor. A [R, H] GEMM 1's input rows; slope [R, I] |d y / d h| summed over the
    halves that feed each y; y [R, I] GEMM 2's input rows; w_rows [R] each row's weight in the combine
    (ones when applied on the input); extra_flushes: more flushing adds per row (biases, LoRA); o [R, H]
    the expert outputs the weights multiply."""
    H, I = W2.shape[1], W2.shape[2]
    if A.shape[0] == 0:
        return torch.full((T, H), (2 * k + 1) * TINY, device=W2.device)
    s13, sub13 = _abs_sums(W13)
    s2, sub2 = _abs_sums(W2)
    e = e_rows
    d_h = TINY * (s13.amax(-1)[e] + 2 * H + 1 + extra_flushes
                  + torch.where(sub13[e], A.float().abs().sum(-1), torch.zeros_like(s13[e, 0])))
    d_y = _finite(d_h * _finite(slope.float().abs()).amax(-1)) + TINY
    d_o = d_y[:, None] * s2[e] + TINY * (2 * I + 1 + extra_flushes
                                         + torch.where(sub2[e], y.float().abs().sum(-1), torch.zeros_like(d_y))[:, None])
    wa = w_rows.float().abs()[:, None]
    slot = d_o * wa
    if o is not None:
        slot = slot + torch.where((wa > 0) & (wa < TINY), wa * o.float().abs(), 0.0)
    buf = torch.zeros(T * k, H, device=W2.device)
    buf[slot_rows] = _finite(slot)
    return _finite(buf.view(T, k, H).sum(1) + (2 * k + 1) * TINY)
