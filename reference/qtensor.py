"""QTensor: quantized codes with their scales in storage form, and exact dequantization."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from moecheck.reference.codecs import E4M3, FloatCodec, e8m0_decode
from moecheck.reference.layouts import unpack_nibbles
from moecheck.reference.spec import QuantSpec, ScaleRule


def block_dims(shape: tuple[int, ...], spec: QuantSpec) -> tuple[int, int]:
    """Concrete (rows, cols) block size for a tensor of `shape` (None -> the whole dim)."""
    r, c = shape[-2], shape[-1]
    br = spec.block[0] if spec.block[0] is not None else max(r, 1)
    bc = spec.block[1] if spec.block[1] is not None else max(c, 1)
    return br, bc


CHUNK = 1 << 25  # elements per pass over a stack of slices: bounds the dozen fp32 temporaries of one pass


def lead_slices(shape: tuple[int, ...]) -> list[slice]:
    """Ranges of dim 0 of a [S, ..., R, C] stack holding at most CHUNK elements each (one slice at least).
    Scales never span slices, so quantizing or dequantizing slice by slice gives the same bits."""
    if len(shape) < 3:
        return [slice(None)]
    step = max(1, CHUNK // max(1, math.prod(shape[1:])))
    if shape[0] <= step:
        return [slice(None)]
    return [slice(i, min(i + step, shape[0])) for i in range(0, shape[0], step)]


def expand_blocks(s: torch.Tensor, shape: tuple[int, ...], br: int, bc: int) -> torch.Tensor:
    """Per-block values [..., R/br, C/bc] -> per-element [..., R, C] (ragged edges cut)."""
    r, c = shape[-2], shape[-1]
    return s.repeat_interleave(br, dim=-2)[..., :r, :].repeat_interleave(bc, dim=-1)[..., :c]


@dataclass
class QTensor:
    """Codes and scales as a kernel would receive them, in the linear (unswizzled) scale layout.

    codes:  float8_e4m3fn / float8_e5m2 for FP8; int8 for INT8; uint8 two-per-byte for 4-bit
            (E2M1 bit patterns, INT4 two's complement nibbles, or UINT4 zero-point codes).
    scales: fp32 for AMAX/UE8M0/MINMAX; uint8 E8M0 codes for MX; float8_e4m3fn for NVFP4.
            Shape [..., ceil(R/br), ceil(C/bc)].
    zeros:  uint8 zero points, same shape as scales (MINMAX only).
    global_scale: fp32 [...] (one per leading-dim slice), NVFP4 only; dequant = code*scale*global.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    spec: QuantSpec
    shape: tuple[int, ...]
    zeros: torch.Tensor | None = None
    global_scale: torch.Tensor | None = None

    @property
    def block(self) -> tuple[int, int]:
        return block_dims(self.shape, self.spec)

    def element_values(self) -> torch.Tensor:
        """Decoded element codes as fp32 (integers for INT codecs), logical shape."""
        cd = self.spec.codec
        if self.spec.packed:
            raw = unpack_nibbles(self.codes, signed=self.spec.elem == "int4")
            if isinstance(cd, FloatCodec):
                return cd.decode_codes(raw)
            return raw.float()
        return self.codes.float()

    def scale_values(self) -> torch.Tensor:
        """Per-block dequantization multiplier as fp32 (global scale not included)."""
        if self.spec.rule == ScaleRule.MX:
            return e8m0_decode(self.scales)
        if self.spec.rule == ScaleRule.NVFP4:
            return self.scales.float()
        return self.scales.float()

    def rows(self, s: slice) -> "QTensor":
        """Slices s of dim 0 (one expert range of a weight stack)."""
        cut = lambda t: None if t is None else t[s]  # noqa: E731
        n = len(range(*s.indices(self.shape[0])))
        return QTensor(self.codes[s], self.scales[s], self.spec, (n, *self.shape[1:]), cut(self.zeros), cut(self.global_scale))

    @staticmethod
    def cat(parts: list["QTensor"]) -> "QTensor":
        """The slices of one stack, back in one QTensor."""
        first = parts[0]
        cat = lambda ts: None if ts[0] is None else torch.cat(ts)  # noqa: E731
        shape = (sum(q.shape[0] for q in parts), *first.shape[1:])
        return QTensor(torch.cat([q.codes for q in parts]), torch.cat([q.scales for q in parts]), first.spec, shape,
                       cat([q.zeros for q in parts]), cat([q.global_scale for q in parts]))

    def _by_slices(self, fn, dtype: torch.dtype) -> torch.Tensor | None:
        """fn(slice) for each CHUNK of dim 0 into one output; None when one pass fits."""
        parts = lead_slices(self.shape)
        if len(parts) == 1:
            return None
        out = torch.empty(self.shape, dtype=dtype, device=self.codes.device)
        for s in parts:
            out[s] = fn(self.rows(s))
        return out

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out = self._by_slices(lambda q: q.dequantize(dtype), dtype)
        if out is not None:
            return out
        q = self.element_values()
        br, bc = self.block
        s = expand_blocks(self.scale_values(), self.shape, br, bc)
        if self.zeros is not None:
            q = q - expand_blocks(self.zeros.float(), self.shape, br, bc)
        out = q * s
        if self.global_scale is not None:
            out = out * self.global_scale.float()[..., None, None]
        return out.to(dtype)

    def step(self) -> torch.Tensor:
        """Per-element size of one quantization step (code grid spacing x scale), fp32.

        The error model charges one of these wherever a backend may round a value to the
        neighbouring code (re-quantized intermediates, dynamic activation quantization).
        """
        out = self._by_slices(QTensor.step, torch.float32)
        if out is not None:
            return out
        cd = self.spec.codec
        q = self.element_values()
        br, bc = self.block
        s = expand_blocks(self.scale_values(), self.shape, br, bc)
        if isinstance(cd, FloatCodec):
            # the spacing of the code's own binade: the gap to the next code up, and >= the gap
            # down (half of it at a power of two), so any neighbour is at most one step away
            _, e = torch.frexp(q.abs())
            exp = (e - 1).clamp(min=cd.min_normal_exp)
            exp = torch.where(q == 0, cd.min_normal_exp, exp)  # frexp(0) has exponent 0, not -inf
            grid = torch.ldexp(torch.ones_like(q), exp - cd.mbits)
        else:
            grid = torch.ones_like(q)
        out = grid * s
        if self.global_scale is not None:
            out = out * self.global_scale.float()[..., None, None]
        return out

    def to(self, device) -> "QTensor":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QTensor(mv(self.codes), mv(self.scales), self.spec, self.shape, mv(self.zeros), mv(self.global_scale))


def e4m3_storage(x: torch.Tensor) -> torch.Tensor:
    """fp32 values already on the E4M3 grid -> float8_e4m3fn storage (exact)."""
    return E4M3.round(x).to(torch.float8_e4m3fn)
