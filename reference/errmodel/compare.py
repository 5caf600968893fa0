"""compare(): backend output vs reference under the bound, with max-and-RMS metrics."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Comparison:
    passed: bool
    max_norm_err: float  # max |out - ref| / bound (<= 1 passes)
    rms_norm_err: float  # RMS of |out - ref| / bound: a drift indicator, reported not gated
    where: tuple[int, ...] | None  # index of the worst element
    got: float | None
    want: float | None
    bound: float | None
    nonfinite: int  # elements non-finite in `out` where the reference is finite
    shape_ok: bool = True

    def summary(self) -> str:
        if not self.shape_ok:
            return "output shape differs from the reference"
        if self.nonfinite:
            return f"{self.nonfinite} non-finite outputs where the reference is finite (first at {self.where})"
        if self.where is None:
            return "empty output (nothing to compare)"
        return (f"max normalized error {self.max_norm_err:.3g} at {self.where} "
                f"(got {self.got:.6g}, want {self.want:.6g}, bound {self.bound:.3g}); rms {self.rms_norm_err:.3g}")


def compare(out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor) -> Comparison:
    if tuple(out.shape) != tuple(ref.shape):
        return Comparison(False, float("inf"), float("inf"), None, None, None, None, 0, shape_ok=False)
    o, r, b = out.float(), ref.float(), bound.float().to(out.device)
    r = r.to(out.device)
    bad = ~torch.isfinite(o) & torch.isfinite(r)
    n_bad = int(bad.sum())
    if n_bad:
        idx = tuple(int(i) for i in bad.nonzero()[0])
        return Comparison(False, float("inf"), float("inf"), idx, float(o[idx]), float(r[idx]), float(b[idx]), n_bad)
    if o.numel() == 0:
        return Comparison(True, 0.0, 0.0, None, None, None, None, 0)
    diff = (o - r).abs()
    diff = torch.where(torch.isfinite(r), diff, torch.zeros_like(diff))
    norm = diff / b.clamp(min=torch.finfo(torch.float32).tiny)
    norm = torch.where(diff == 0, torch.zeros_like(norm), norm)
    flat = int(norm.argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), norm.shape))
    mx = float(norm.flatten()[flat])
    rms = float(norm.pow(2).mean().sqrt())
    return Comparison(mx <= 1.0, mx, rms, idx, float(o[idx]), float(r[idx]), float(b[idx]), 0)
