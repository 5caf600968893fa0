"""Element and scale codecs: how one number is stored, decoded and rounded, to the bit.

Every float codec rounds in the value domain with one generic minifloat routine (round to nearest,
ties to even, on the codec's own grid, saturating at its largest finite value), so E2M1 — which has
no torch dtype on every build — follows exactly the same rule as E4M3/E5M2. The tests check that
routine against torch's own float8 casts for every finite input class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from moecheck.reference.errors import require


@dataclass(frozen=True)
class FloatCodec:
    """A sign/exponent/mantissa minifloat (OCP FP8 / OCP MX element definitions)."""

    name: str
    ebits: int
    mbits: int
    bias: int
    max: float  # largest finite magnitude
    bits: int  # storage width
    torch_dtype: torch.dtype | None = None  # native storage dtype, if torch has one

    @property
    def min_normal_exp(self) -> int:
        return 1 - self.bias

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.min_normal_exp - self.mbits)

    @property
    def emax(self) -> int:
        """Exponent of the largest power of two <= max (OCP MX calls it emax_elem)."""
        return math.frexp(self.max)[1] - 1  # exact, and no tensor: under torch.compile .item() breaks the graph

    def round(self, x: torch.Tensor) -> torch.Tensor:
        """RNE onto this codec's grid with saturation; fp32 in, fp32 out.

        Saturating ("satfinite") conversion: anything beyond max, +-inf included, becomes +-max;
        NaN stays NaN; -0 stays -0. Non-fp32 input is rounded to fp32 first.
        """
        x = x.float()
        mag = x.abs().clamp(max=self.max)
        # exponent of each value, floored at the subnormal range: the grid step there is fixed
        _, e = torch.frexp(mag)  # mag = m * 2**e, m in [0.5, 1)
        exp = (e - 1).clamp(min=self.min_normal_exp)
        step = torch.ldexp(torch.ones_like(mag), exp - self.mbits)
        r = torch.round(mag / step) * step  # torch.round is half-to-even; /step is exact
        r = r.clamp(max=self.max)
        return torch.where(torch.isnan(x), x, torch.copysign(r, x))

    def grid(self) -> torch.Tensor:
        """All non-negative finite values, ascending (code order for the magnitude bits)."""
        return self.decode_magnitude_codes(torch.arange(2 ** (self.bits - 1), dtype=torch.int64))

    def decode_magnitude_codes(self, mcode: torch.Tensor) -> torch.Tensor:
        e = mcode >> self.mbits
        m = (mcode & ((1 << self.mbits) - 1)).double()
        sub = m * 2.0 ** (self.min_normal_exp - self.mbits)
        nor = (1 + m / 2**self.mbits) * torch.pow(2.0, (e - self.bias).double())
        return torch.where(e == 0, sub, nor).float()

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer bit patterns (any int dtype) -> fp32, by the format definition (no torch dtype)."""
        c = codes.to(torch.int64) & ((1 << self.bits) - 1)
        sign = (c >> (self.bits - 1)) & 1
        mag = self.decode_magnitude_codes(c & ((1 << (self.bits - 1)) - 1))
        val = torch.where(sign == 1, -mag, mag)
        if self.name == "e4m3":  # S.1111.111 is NaN in e4m3fn; no infinities
            val = torch.where((c & 0x7F) == 0x7F, torch.full_like(val, float("nan")), val)
        if self.name == "e5m2":  # IEEE-like: exponent all ones is inf/NaN
            e = (c >> 2) & 0x1F
            m = c & 0x3
            inf = torch.where(sign == 1, -torch.inf, torch.inf)
            val = torch.where((e == 31) & (m == 0), inf, val)
            val = torch.where((e == 31) & (m != 0), torch.full_like(val, float("nan")), val)
        return val

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 -> integer bit patterns (uint8 tensor, low `bits` bits used), after RNE+saturation.

        NaN -> the all-ones magnitude (S.1111.111 / S.11111.11); E2M1 has no NaN, so NaN input is
        an error (rather than silently becoming -0).
        """
        r = self.round(x)
        nan = torch.isnan(r)
        require(self.name != "e2m1" or not bool(nan.any()),
                "e2m1 has no NaN encoding: NaN input cannot be stored as e2m1")
        grid = self.grid().to(r.device)
        top = 2 ** (self.bits - 1) - 1  # all-ones magnitude: NaN in e4m3 and e5m2
        idx = torch.where(nan, top, torch.searchsorted(grid, r.abs().contiguous()).clamp(max=top))
        code = idx | (torch.signbit(r).to(torch.int64) << (self.bits - 1))
        return code.to(torch.uint8)


E4M3 = FloatCodec("e4m3", ebits=4, mbits=3, bias=7, max=448.0, bits=8, torch_dtype=torch.float8_e4m3fn)
E5M2 = FloatCodec("e5m2", ebits=5, mbits=2, bias=15, max=57344.0, bits=8, torch_dtype=torch.float8_e5m2)
E2M1 = FloatCodec("e2m1", ebits=2, mbits=1, bias=1, max=6.0, bits=4)
FLOAT_CODECS = {c.name: c for c in (E4M3, E5M2, E2M1)}


@dataclass(frozen=True)
class IntCodec:
    """Two's-complement (signed) or offset (unsigned, zero-point) integer codes; RNE rounding."""

    name: str
    bits: int
    signed: bool

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def max(self) -> float:  # symmetric scaling target: amax maps to qmax
        return float(self.qmax)

    def round(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x.float()).clamp(self.qmin, self.qmax)


INT8 = IntCodec("int8", 8, True)
INT4 = IntCodec("int4", 4, True)
UINT4 = IntCodec("uint4", 4, False)
UINT8 = IntCodec("uint8", 8, False)
INT_CODECS = {c.name: c for c in (INT8, INT4, UINT4, UINT8)}


def codec(name: str) -> FloatCodec | IntCodec:
    c = FLOAT_CODECS.get(name) or INT_CODECS.get(name)
    require(c is not None, f"unknown element codec {name!r}; known: {sorted(FLOAT_CODECS) + sorted(INT_CODECS)}")
    return c


# --- E8M0: the OCP MX shared scale, an 8-bit biased power-of-two exponent (255 is NaN) ---
E8M0_BIAS = 127
E8M0_NAN = 255


def e8m0_decode(codes: torch.Tensor) -> torch.Tensor:
    c = codes.to(torch.int32)
    val = torch.ldexp(torch.ones(c.shape, dtype=torch.float32, device=c.device), c - E8M0_BIAS)
    return torch.where(c == E8M0_NAN, torch.full_like(val, float("nan")), val)


def e8m0_encode_exponent(exp: torch.Tensor) -> torch.Tensor:
    """Unbiased integer exponent -> E8M0 code, clamped to the finite range [-127, 127]."""
    return (exp.to(torch.int32).clamp(-E8M0_BIAS, E8M0_BIAS) + E8M0_BIAS).to(torch.uint8)
