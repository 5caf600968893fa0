"""The reference's per-expert GEMM: rows sorted by expert times each expert's weight, fp32 out.

Experts whose row counts are close are batched into one padded bmm (one launch instead of E, which
is what kept the reference 24x behind torch._grouped_mm at E=128 on the H100); a skewed routing,
where padding would multiply the work, runs the per-expert loop. Both are IEEE fp32 accumulation
(on CUDA: bf16 tensor-core products, exact, with fp32 accumulation, when the operands are exactly
bf16), so which one runs changes only the accumulation order, which the error model allows for.
"""
from __future__ import annotations

import torch

PAD_WASTE = 2.0  # padded rows may at most double the work; beyond that the loop is cheaper


class Groups:
    """Rows sorted by expert, `counts` per expert; pad() lays them out as [E, max count, ...]."""

    def __init__(self, counts: list[int], device):
        self.counts = counts
        rows = sum(counts)
        self.padded = len(counts) > 1 and rows > 0 and len(counts) * max(counts) <= PAD_WASTE * rows
        if self.padded:
            c = torch.tensor(counts, device=device)
            self.expert = torch.repeat_interleave(torch.arange(len(counts), device=device), c)
            self.pos = torch.arange(rows, device=device) - (torch.cumsum(c, 0) - c)[self.expert]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        buf = x.new_zeros(len(self.counts), max(self.counts), *x.shape[1:])
        buf[self.expert, self.pos] = x
        return buf

    def unpad(self, y: torch.Tensor) -> torch.Tensor:
        return y[self.expert, self.pos]


def grouped_mm(a: torch.Tensor, w: torch.Tensor, groups: Groups, fast: bool) -> torch.Tensor:
    """a [R, K] (rows sorted by expert) times w[e].T [K, N] -> [R, N] fp32."""
    if groups.padded:
        if fast:
            try:
                return groups.unpad(torch.bmm(groups.pad(a.to(torch.bfloat16)), w.to(torch.bfloat16).transpose(1, 2),
                                              out_dtype=torch.float32))
            except (RuntimeError, NotImplementedError, TypeError):  # a torch without bmm(out_dtype=): the loop
                pass
        else:
            return groups.unpad(torch.bmm(groups.pad(a.float()), w.float().transpose(1, 2)))
    return loop_mm(a, w, groups.counts, fast)


def loop_mm(a: torch.Tensor, w: torch.Tensor, counts: list[int], fast: bool) -> torch.Tensor:
    out = a.new_empty(a.shape[0], w.shape[1], dtype=torch.float32)
    s = 0
    for e, c in enumerate(counts):
        if c:
            if fast:
                out[s:s + c] = torch.mm(a[s:s + c].to(torch.bfloat16), w[e].to(torch.bfloat16).T, out_dtype=torch.float32)
            else:
                out[s:s + c] = a[s:s + c].float() @ w[e].float().T
            s += c
    return out


def grouped_apply(fn, groups: Groups, w: torch.Tensor, *xs: torch.Tensor | None) -> torch.Tensor:
    """fn(x_rows..., w_e) per expert, batched over padded groups where they are balanced (fn must
    broadcast over a leading expert dim: the error model's variance GEMMs)."""
    if groups.padded:
        return groups.unpad(fn(*(None if x is None else groups.pad(x) for x in xs), w))
    parts, s = [], 0
    for e, c in enumerate(groups.counts):
        if c:
            parts.append(fn(*(None if x is None else x[s:s + c] for x in xs), w[e]))
            s += c
    return torch.cat(parts) if parts else xs[0].new_zeros(0, w.shape[1], dtype=torch.float64)
