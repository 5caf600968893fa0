"""compare(): backend output vs reference, judged three ways from the one error model.

- max: every |out - ref| <= bound (the envelope: z sigma of every term a correct kernel may differ by).
- rms: the mean of (e / bound)^2 over all elements may exceed what the model expects of a correct kernel
  (MoEResult.expected_var / bound^2, its mean mu) only by what chance allows. Each element's term is
  clipped at CLIP (|e| = bound / 2: beyond that an element is the max verdict's business, and one such
  element must not dominate the mean), so it lies in [0, CLIP], has mean <= mu and variance <= CLIP mu,
  and Bernstein's inequality bounds the excess at false-alarm rate alpha by
  t = (CLIP L/3 + sqrt(CLIP^2 L^2/9 + 2 n CLIP mu L)) / n, L = ln(1/alpha). A precision loss spread over
  all elements (an extra bf16 rounding of a sum) stays under the max bound and fails here.
- bias: the mean of sign(ref) * e / bound, clipped to +-sqrt(CLIP) (a magnitude bias: truncation, a scale
  slightly off) is 0 in expectation for a correct kernel whose roundings are to nearest; same inequality,
  range sqrt(CLIP), variance <= the larger of the observed and expected mean square. Reported, not judged, where the budget declares a
  truncating accumulator (acc_biased) or scales that lean one way (scale_biased).
Both statistics are printed in every summary, pass or fail.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Comparison:
    passed: bool
    max_norm_err: float  # max |out - ref| / bound (<= 1 passes)
    rms_norm_err: float  # RMS of |out - ref| / bound
    where: tuple[int, ...] | None  # index of the worst element
    got: float | None
    want: float | None
    bound: float | None
    nonfinite: int  # elements non-finite in `out` where the reference is finite
    shape_ok: bool = True
    rms_bound: float | None = None  # the RMS the model allows here (None: not judged)
    bias: float = 0.0  # mean sign(ref) * e / bound
    bias_bound: float | None = None  # None: not judged
    failed: tuple[str, ...] = ()  # which verdicts failed: max, rms, bias, nonfinite, shape

    def summary(self) -> str:
        if not self.shape_ok:
            return "output shape differs from the reference"
        if self.nonfinite:
            return f"{self.nonfinite} non-finite outputs where the reference is finite (first at {self.where})"
        if self.where is None:
            return "empty output (nothing to compare)"
        rms = f"rms {self.rms_norm_err:.3g}" + (f" (bound {self.rms_bound:.3g})" if self.rms_bound is not None else "")
        bias = f"bias {self.bias:+.3g}" + (f" (bound {self.bias_bound:.3g})" if self.bias_bound is not None else " (not judged)")
        head = f"{', '.join(self.failed).upper()} " if self.failed else ""
        return (f"{head}max normalized error {self.max_norm_err:.3g} at {self.where} "
                f"(got {self.got:.6g}, want {self.want:.6g}, bound {self.bound:.3g}); {rms}; {bias}")


CLIP = 0.25  # of (e / bound)^2 in the rms verdict: |e| = bound / 2


def bernstein(n: int, var: float, alpha: float, span: float = 1.0) -> float:
    """How far the mean of n independent terms within `span` of their mean (variance <= var) strays
    above it at rate alpha."""
    L = math.log(1.0 / alpha)
    return (span * L / 3.0 + math.sqrt(span * span * L * L / 9.0 + 2.0 * n * var * L)) / n


def compare(out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, expected_var: torch.Tensor | None = None,
            budget=None, floor: torch.Tensor | None = None) -> Comparison:
    """floor: the part of the bound that is a worst-case allowance with a sign (flushed subnormals lean
    toward zero: errmodel/underflow.py); the rms and bias verdicts judge only what exceeds it."""
    if tuple(out.shape) != tuple(ref.shape):
        return Comparison(False, float("inf"), float("inf"), None, None, None, None, 0, shape_ok=False, failed=("shape",))
    o, r, b = out.float(), ref.float(), bound.float().to(out.device)
    r = r.to(out.device)
    if o.numel() == 0:
        return Comparison(True, 0.0, 0.0, None, None, None, None, 0)
    bad = ~torch.isfinite(o) & torch.isfinite(r)
    fin = torch.isfinite(r) & torch.isfinite(b)
    signed = torch.where(fin, o - r, torch.zeros_like(o))
    diff = signed.abs()
    bb = b.clamp(min=torch.finfo(torch.float32).tiny)
    norm = torch.where(diff == 0, torch.zeros_like(diff), diff / bb)
    if floor is not None:
        signed = torch.sign(signed) * (diff - floor.float().to(out.device)).clamp(min=0)
    stat = signed.abs() / bb  # what the rms and bias verdicts see
    half = math.sqrt(CLIP)
    judged = expected_var is not None and budget is not None
    if judged:
        ev = expected_var.double().to(out.device)  # float64: squares of tiny bounds underflow in fp32
        ratio = torch.nan_to_num(ev / bb.double().square(), nan=0.0, posinf=CLIP).clamp(max=CLIP)
    # every statistic in one tensor, read back in one synchronization (each .item() waits on the GPU)
    first_bad, worst = bad.flatten().to(torch.uint8).argmax(), norm.flatten().argmax()
    picks = [t.flatten()[i] for i in (first_bad, worst) for t in (o, r, b)]
    stats = torch.stack([x.double() for x in (
        bad.sum(), first_bad, worst, norm.flatten()[worst], fin.sum(), norm.clamp(max=1.0).square().sum(),
        stat.square().clamp(max=CLIP).sum(),
        (torch.sign(r) * signed / bb).clamp(-half, half).where(fin, torch.zeros_like(o)).sum(),
        torch.where(fin, ratio, torch.zeros_like(ratio)).sum() if judged else torch.zeros((), device=o.device),
        *picks)]).tolist()
    n_bad, i_bad, flat, mx, n = int(stats[0]), int(stats[1]), int(stats[2]), stats[3], int(stats[4])
    at = lambda i: tuple(int(j) for j in torch.unravel_index(torch.tensor(i), o.shape))  # noqa: E731
    if n_bad:
        return Comparison(False, float("inf"), float("inf"), at(i_bad), *stats[9:12], n_bad, failed=("nonfinite",))
    idx = at(flat)
    rms = math.sqrt(stats[5] / max(n, 1))
    ms = stats[6] / max(n, 1)  # the judged statistic
    failed = ["max"] if mx > 1.0 else []
    rms_bound = bias_bound = None
    bias = stats[7] / max(n, 1)
    if judged and n:
        mu = stats[8] / n
        allowed = mu + bernstein(n, CLIP * mu, budget.false_alarm, CLIP)
        rms_bound = math.sqrt(allowed)
        if ms > allowed:
            failed.append("rms")
        if not (budget.acc_biased or budget.scale_biased):
            bias_bound = bernstein(n, max(ms, mu), budget.false_alarm / 2, 2 * half)
            if abs(bias) > bias_bound:
                failed.append("bias")
    return Comparison(not failed, mx, rms, idx, *stats[12:15], 0,
                      rms_bound=rms_bound, bias=bias, bias_bound=bias_bound, failed=tuple(failed))
