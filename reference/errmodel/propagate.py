"""Variance terms the reference MoE accumulates next to its values (see budget.py)."""
from __future__ import annotations

import torch
from moecheck.reference.codecs import E4M3
from moecheck.reference.errmodel.budget import ErrorBudget, unit_roundoff
from moecheck.reference.errmodel.nonneg import nonneg_mm
from moecheck.reference.qtensor import expand_blocks
from moecheck.reference.quantize import _blocked, quantize
from moecheck.reference.spec import QuantSpec, ScaleRule

_DISCRETE_SCALES = (ScaleRule.MX, ScaleRule.NVFP4, ScaleRule.UE8M0)


def gemm_var(a: torch.Tensor, var_a: torch.Tensor | None, w_sq: torch.Tensor, k: int, budget: ErrorBudget) -> torch.Tensor:
    """Variance of (a @ w.T) given input variance var_a and the accumulation term.

    w_sq is w**2. Accumulating k products in another order with unit u: each partial-sum rounding
    is about u*|partial|; summed in quadrature over k steps this is u^2 * k/3 * sum(a^2 w^2).
    A weight off by up to weight_rel relative (uniform) adds weight_rel^2/3 * sum(a^2 w^2).
    """
    w_t = w_sq.transpose(-1, -2)  # nonneg_mm: float64 on CPU (fp32 squares of tiny values underflow), scaled TF32 on CUDA
    unit = budget.acc_unit**2 * k / 3.0 + budget.weight_rel**2 / 3.0
    v = nonneg_mm(a, w_t, square_a=True) * unit  # [.., R, K] @ [.., K, N]: one expert or a batch of them
    if var_a is not None:
        v = v + nonneg_mm(var_a, w_t)
    return v


def round_var(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor | float:
    """Rounding `x` to `dtype` at a point both sides round: uniform within +-u|x|, and never less
    than half the subnormal spacing (fp16 subnormals start at 6e-5: relative error is no model there)."""
    if dtype is None or dtype in (torch.float32, torch.float64):
        return 0.0
    fi = torch.finfo(dtype)
    half_sub = fi.tiny * fi.eps / 2
    return torch.clamp((unit_roundoff(dtype) * x.double()).abs(), min=half_sub) ** 2 / 3.0


def requant_var(x: torch.Tensor, sigma: torch.Tensor, spec: QuantSpec, scale, budget: ErrorBudget,
                steps: float) -> torch.Tensor:
    """Variance of re-quantizing `x` when a correct kernel sees it off by ~sigma (element-wise).

    Element flips: an element whose code moves within a couple of sigma of its boundary is flipped by
    a kernel often enough to charge the full move. Probed twice: x +- sigma re-quantized as a whole
    (scales move with the data: the continuous move of AMAX scales), and x +- flip_sigmas * sigma_el
    on the base scales, where sigma_el adds the relative sigma of an amax-derived scale (AMAX block,
    NVFP4 global): moving every element the same way moves such a scale with them and hides the
    flips a kernel sees when an element and its block amax round opposite ways.
    Scale flips: a discrete block scale jumps a whole block when the block amax is near a scale
    boundary; re-quantize x +- z*sigma and charge every element of a block whose scale code moved
    (NVFP4: block scales also re-derived against the base global scale, for the same reason).
    """
    out = torch.zeros_like(x, dtype=torch.float64)  # float64 variances, as gemm_var
    if steps == 0 or not bool((sigma > 0).any()):
        return out
    xf, sigma = x.float(), sigma.double()
    base_q = quantize(xf, spec, scale)
    base = base_q.dequantize()
    s_blk = _element_scales(base_q, base_q.scale_values())
    # held scales: the element's own move plus, for amax-derived scales, the scale's move the other way
    sig_el = (sigma * sigma + (xf * _scale_rel_sigma(xf, sigma, spec, base_q)) ** 2).sqrt()
    for sgn in (1.0, -1.0):
        d = (quantize(xf + sgn * sigma, spec, scale).dequantize() - base).double()
        out = torch.maximum(out, d * d)
        d = (_on_scales(xf + sgn * budget.flip_sigmas * sig_el, spec, s_blk, base_q.global_scale) - base).double()
        out = torch.maximum(out, d * d)
        if spec.rule in _DISCRETE_SCALES and (not spec.static or spec.rule == ScaleRule.NVFP4):  # static NVFP4: block scales still derived
            qz = quantize(xf + sgn * budget.z * sigma, spec, scale)
            moved = _moved_blocks(qz, base_q)
            if moved is not None:
                dz = (qz.dequantize() - base).double()
                out = torch.where(moved, torch.maximum(out, dz * dz), out)
            if spec.rule == ScaleRule.NVFP4:  # block scales against the base global scale
                br, bc = base_q.block
                amax_b = _blocked((xf + sgn * budget.z * sigma).abs(), br, bc, 0.0).amax(-1)
                g = base_q.global_scale.float()[..., None, None]
                sb = E4M3.round(amax_b / spec.codec.max / torch.where(g > 0, g, torch.ones_like(g)))
                moved = expand_blocks((sb != base_q.scales.float()).float(), base_q.shape, br, bc) > 0
                dz = (_on_scales(xf, spec, _element_scales(base_q, sb), base_q.global_scale) - base).double()
                out = torch.where(moved, torch.maximum(out, dz * dz), out)
    return out * steps**2


def _scale_rel_sigma(xf, sigma, spec: QuantSpec, q) -> torch.Tensor:
    """Per element: relative sigma of a scale that is amax / const (AMAX blocks, NVFP4 global):
    the sigma of the block's (slice's) largest element over its magnitude. 0 for other scales."""
    if spec.static or spec.rule not in (ScaleRule.AMAX, ScaleRule.NVFP4):
        return torch.zeros_like(xf)
    if spec.rule == ScaleRule.NVFP4:  # the global scale: one per leading slice
        a, sg = xf.abs().flatten(-2), sigma.expand_as(xf).flatten(-2)
        i = a.argmax(-1, keepdim=True)
        amax = a.gather(-1, i)
        rel = torch.where(amax > 0, sg.gather(-1, i) / amax.clamp(min=torch.finfo(torch.float32).tiny), 0.0)
        return rel[..., None].expand_as(xf)
    br, bc = q.block
    a, sg = _blocked(xf.abs(), br, bc, 0.0), _blocked(sigma.expand_as(xf).float(), br, bc, 0.0)
    i = a.argmax(-1, keepdim=True)
    amax = a.gather(-1, i)
    rel = torch.where(amax > 0, sg.gather(-1, i) / amax.clamp(min=torch.finfo(torch.float32).tiny), 0.0)
    return expand_blocks(rel[..., 0], q.shape, br, bc)


def _element_scales(q, block_scales: torch.Tensor) -> torch.Tensor:
    br, bc = q.block
    return expand_blocks(block_scales, q.shape, br, bc)


def _on_scales(x: torch.Tensor, spec: QuantSpec, s_blk: torch.Tensor, global_scale) -> torch.Tensor:
    """Fake-quantize x on given per-element block scales (and global scale), in quantize's and
    QTensor.dequantize's operation order, so unperturbed x reproduces them bit for bit.
    No zero points: activation specs have none."""
    g = None if global_scale is None else global_scale.float()[..., None, None]
    s_el = s_blk if g is None else s_blk * g
    safe = torch.where(s_el > 0, s_el, torch.ones_like(s_el))
    v = spec.codec.round(x / safe) * s_blk
    v = v if g is None else v * g
    return torch.where(s_el > 0, v, torch.zeros_like(v))


def _moved_blocks(q, base) -> torch.Tensor | None:
    a, b = q.scales, base.scales
    changed = (a.view(torch.uint8) != b.view(torch.uint8)) if a.dtype.itemsize == 1 else (a != b)
    if not bool(changed.any()):
        return None
    br, bc = base.block
    return expand_blocks(changed.to(torch.float32), base.shape, br, bc) > 0
