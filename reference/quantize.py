"""quantize(x, spec): the one blockwise quantizer every format goes through.

Scale rules are a table of small functions keyed by ScaleRule; each returns the per-block
dequantization multiplier (fp32) and its storage form. Elements are x / scale rounded by the
codec (RNE, saturating: the clamp happens before any cast). Division, not a multiply by a
reciprocal: where a kernel multiplies by a reciprocal the two can differ on exact boundaries
(docs/rounding.md).
"""
from __future__ import annotations

import torch
from moecheck.reference.codecs import (
    E4M3,
    E8M0_NAN,
    FloatCodec,
    e8m0_decode,
    e8m0_encode_exponent,
)
from moecheck.reference.errors import MoecheckError, require
from moecheck.reference.layouts import pack_nibbles
from moecheck.reference.qtensor import QTensor, block_dims, e4m3_storage, expand_blocks, lead_slices
from moecheck.reference.spec import MXScaleMode, QuantSpec, ScaleRule

_FLOAT_INPUTS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _blocked(x: torch.Tensor, br: int, bc: int, fill: float) -> torch.Tensor:
    """[..., R, C] -> [..., R/br, C/bc, br*bc], ragged edges padded with `fill`."""
    r, c = x.shape[-2:]
    pr, pc = (-r) % br, (-c) % bc
    if pr or pc:
        x = torch.nn.functional.pad(x, (0, pc, 0, pr), value=fill)
    lead = x.shape[:-2]
    x = x.reshape(*lead, x.shape[-2] // br, br, x.shape[-1] // bc, bc)
    return x.transpose(-3, -2).reshape(*lead, x.shape[-4], x.shape[-2], br * bc)


def _divisor(t: torch.Tensor, d: float) -> torch.Tensor:
    """d as a tensor beside t. CUDA turns a division by a Python number into a multiplication by its
    reciprocal, which can differ in the last bit (amax / 448 is a scale); by a tensor it divides."""
    return torch.full((), d, dtype=t.dtype, device=t.device)


def div(t: torch.Tensor, d: float) -> torch.Tensor:
    """t / d correctly rounded on every device."""
    return t / _divisor(t, d)


def div_(t: torch.Tensor, d: float) -> torch.Tensor:
    """div, in place."""
    return t.div_(_divisor(t, d))


def _poison(s: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """Zero block -> scale 1 (codes 0); non-finite amax -> NaN scale, so the block dequantizes to NaN
    instead of being silently quantized against a made-up scale (torchao does the same for MX)."""
    s = torch.where(amax == 0, torch.ones_like(s), s)
    return torch.where(torch.isfinite(amax), s, torch.full_like(s, float("nan")))


def _amax_scale(amax, cd, _):
    s = _poison(div(amax, cd.max), amax)
    return s, s


def _ue8m0_scale(amax, cd, _):
    ratio = div(amax, cd.max)
    m, e = torch.frexp(ratio)  # ratio = m * 2**e, m in [0.5, 1): ceil(log2) = e, or e-1 if m == 0.5
    exp = torch.where(m == 0.5, e - 1, e)
    s = _poison(torch.ldexp(torch.ones_like(ratio), exp), amax)
    return s, s


def _mx_exponent(amax: torch.Tensor, cd: FloatCodec, mode: MXScaleMode) -> torch.Tensor:
    if mode == MXScaleMode.RCEIL:
        m, e = torch.frexp(div(amax, cd.max))
        exp = torch.where(m == 0.5, e - 1, e)
    else:
        m, e = torch.frexp(amax)  # floor(log2(amax)) = e - 1
        exp = e - 1 - cd.emax
        if mode == MXScaleMode.EVEN:
            # torchao's EVEN: round amax's mantissa half-up to the element's mbits (adds
            # 1 << (23 - mbits - 1) to the fp32 bits); it carries into the exponent iff
            # frac >= 1 - 2**-(mbits + 1): e2m1 bumps at 1.75 (not 1.5), e4m3 at 1.9375
            frac = m * 2 - 1  # mantissa fraction in [0, 1)
            exp = exp + (frac >= 1 - 2.0 ** (-cd.mbits - 1)).to(exp.dtype)
    return torch.where(amax > 0, exp, torch.full_like(exp, -127))


def _mx_scale(amax, cd, mode):
    codes = e8m0_encode_exponent(_mx_exponent(amax, cd, mode))
    codes = torch.where(torch.isfinite(amax), codes, torch.full_like(codes, E8M0_NAN))  # OCP: 0xFF = NaN
    return e8m0_decode(codes), codes


def _minmax_scale(x_blocks, cd):
    lo = x_blocks.amin(-1).clamp(max=0)
    hi = x_blocks.amax(-1).clamp(min=0)
    s = _poison(div(hi - lo, cd.qmax), hi - lo)
    z = torch.round(-lo / s).clamp(0, cd.qmax)
    return s, torch.where(torch.isnan(z), torch.zeros_like(z), z)


_SCALE_RULES = {ScaleRule.AMAX: _amax_scale, ScaleRule.UE8M0: _ue8m0_scale, ScaleRule.MX: _mx_scale}


def _check_spec(fn: str, spec: object) -> None:
    require(isinstance(spec, QuantSpec), f"{fn} needs a moecheck.reference.spec.QuantSpec as spec, got {type(spec).__name__}"
            + (" (a Format holds one per tensor: fmt.weight or fmt.act)" if hasattr(spec, "weight") else ""))


def _check_input(x: torch.Tensor, spec: QuantSpec) -> tuple[int, int]:
    _check_spec("quantize", spec)
    require(isinstance(x, torch.Tensor), f"quantize needs a torch.Tensor, got {type(x).__name__}")
    require(x.dtype in _FLOAT_INPUTS, f"quantize needs a float tensor (float32/bfloat16/float16/float64), got {x.dtype}")
    require(x.dim() >= 2, lambda: f"quantize needs at least 2 dims [..., rows, cols], got shape {tuple(x.shape)}")
    br, bc = block_dims(tuple(x.shape), spec)
    r, c = x.shape[-2:]
    if not spec.ragged:  # messages as lambdas: a formatted size is a constant under torch.compile
        require(r % br == 0, lambda: f"{spec.elem} with block {spec.block}: rows={r} must be divisible by {br}")
        require(c % bc == 0, lambda: f"{spec.elem} with block {spec.block}: K={c} must be divisible by {bc}")
    if spec.packed:
        require(c % 2 == 0, lambda: f"{spec.elem} packs two codes per byte: K={c} must be even")
    return br, bc


def _static_scale(scale: torch.Tensor, x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Given scale -> per-block [..., R/br, C/bc]. A scalar or a tensor of the leading dims' shape
    is one scale per slice; anything else broadcasts right-aligned against the block grid."""
    require(isinstance(scale, torch.Tensor), f"static scale must be a torch.Tensor, got {type(scale).__name__}")
    s = scale.float().to(x.device)
    lead = tuple(x.shape[:-2])
    if s.dim() <= len(lead) and tuple(s.shape) == lead[len(lead) - s.dim():]:
        s = s.reshape(*s.shape, 1, 1)
    try:
        s = s.expand(grid).contiguous()
    except RuntimeError:
        msg = f"static scale of shape {tuple(scale.shape)} does not broadcast to the block grid {grid}"
        raise MoecheckError(msg) from None
    require(bool(torch.isfinite(s).all() and (s > 0).all()), "static scale must be finite and > 0")
    return s


def quantize(x: torch.Tensor, spec: QuantSpec, scale: torch.Tensor | None = None) -> QTensor:
    """Quantize `x` [..., R, C] by `spec`. `scale` (fp32, per block; NVFP4: the global scale per
    slice) is required iff spec.static.

    Non-finite input: with a static scale, +-inf saturates to +-max like any overflow and NaN stays
    NaN where the codec has one. With a data-derived scale, a block (NVFP4: a slice) holding NaN or
    inf gets a NaN scale (MX: E8M0 0xFF) and zero codes, so it dequantizes to NaN.
    """
    br, bc = _check_input(x, spec)
    require(not spec.static or scale is not None, "a static spec needs its calibrated scale: quantize(x, spec, scale)")
    require(spec.static or scale is None, "a scale was given but the spec is dynamic (static=False)")
    parts = lead_slices(tuple(x.shape))
    if len(parts) > 1 and (scale is None or isinstance(scale, torch.Tensor) and scale.numel() == 1):  # a large stack: slice by slice, same bits
        return QTensor.cat([quantize(x[s], spec, scale) for s in parts])
    cd = spec.codec
    shape = tuple(x.shape)
    xf = x.float()
    blocks = _blocked(xf, br, bc, 0.0)
    zeros = global_scale = None
    if spec.rule == ScaleRule.NVFP4:
        given = _static_scale(scale, x, tuple(x.shape[:-2]) + (1, 1))[..., 0, 0] if spec.static else None
        s, s_store, global_scale = _nvfp4_scales(xf, blocks, cd, given)
    elif spec.static:
        s_store = s = _static_scale(scale, x, tuple(blocks.shape[:-1]))
    elif spec.rule == ScaleRule.MINMAX:
        s, z = _minmax_scale(blocks, cd)
        s_store, zeros = s, z.to(torch.uint8)
    else:
        s, s_store = _SCALE_RULES[spec.rule](blocks.abs().amax(-1), cd, spec.mx_mode)

    s_el = expand_blocks(s, shape, br, bc)
    if global_scale is not None:
        s_el = s_el * global_scale[..., None, None]
    safe = torch.where(s_el > 0, s_el, torch.ones_like(s_el))
    v = xf / safe
    if zeros is not None:  # round, then add the zero point (GPTQ): ties and fp32 sums don't depend on z
        v = torch.round(v) + expand_blocks(zeros.float(), shape, br, bc)
    q = cd.round(v)
    q = torch.where(s_el > 0, q, torch.zeros_like(q))
    return QTensor(_store_codes(q, spec), s_store, spec, shape, zeros, global_scale)


def _nvfp4_scales(xf: torch.Tensor, blocks: torch.Tensor, cd: FloatCodec, given: torch.Tensor | None = None):
    """Two-level NVFP4: global = amax_slice / (448 * 6), or the calibrated one given (static);
    block = e4m3(amax_b / 6 / global), saturating at 448 when a static global is too small."""
    if given is None:
        g = _poison(nvfp4_global(xf), _slice_amax(xf))  # a non-finite value makes its whole slice NaN
    else:
        g = given
    sb = E4M3.round(div(blocks.abs().amax(-1), cd.max) / g[..., None, None])
    return sb, e4m3_storage(sb), g


def _slice_amax(xf: torch.Tensor) -> torch.Tensor:
    lead = xf.shape[:-2]
    return xf.abs().reshape(*lead, -1).amax(-1) if xf.numel() else torch.zeros(lead, device=xf.device)


def nvfp4_global(x: torch.Tensor) -> torch.Tensor:
    """The NVFP4 global dequantization scale of each [..., R, C] slice: amax / (448 * 6)."""
    from moecheck.reference.codecs import codec

    return div(_slice_amax(x.float()), E4M3.max * codec("e2m1").max)


def calibrate(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The static scale a calibration pass over `x` would store for `spec`: what the dynamic rule
    computes for the whole tensor (NVFP4: its global scale). 1.0 for an empty or all-zero x."""
    _check_spec("calibrate", spec)
    require(isinstance(x, torch.Tensor), f"calibrate needs a torch.Tensor, got {type(x).__name__}")
    require(spec.static, "calibrate() is for static specs")
    if spec.rule == ScaleRule.NVFP4:
        s = nvfp4_global(x) if x.numel() else torch.ones(())
    else:
        s = div(x.float().abs().amax() if x.numel() else torch.tensor(0.0), spec.codec.max)
    return torch.where(s > 0, s, torch.ones_like(s))


def _store_codes(q: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    cd = spec.codec
    if isinstance(cd, FloatCodec) and cd.torch_dtype is not None:
        return q.to(cd.torch_dtype)
    if spec.packed:
        raw = cd.encode_codes(q) if isinstance(cd, FloatCodec) else q.to(torch.int16)
        return pack_nibbles(raw)
    return q.to(torch.int8 if cd.name == "int8" else torch.uint8)


def fake_quantize(x: torch.Tensor, spec: QuantSpec | None, scale: torch.Tensor | None = None) -> torch.Tensor:
    """quantize then dequantize to fp32; identity (to fp32) when spec is None."""
    if spec is None:
        return x.float()
    return quantize(x, spec, scale).dequantize()
