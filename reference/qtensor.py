"""QTensor: quantized codes with their scales in storage form, and exact dequantization."""
from __future__ import annotations

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

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
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
