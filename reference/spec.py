"""QuantSpec: a record that says, as data, how one tensor is quantized.

Every format in moecheck is `codes x block scale (x global scale) (- zero point)`; the blocks tile
the last two dims (leading dims are a batch, e.g. experts). A per-tensor scale is block (None, None),
per-token/per-channel is (1, None), DeepSeek weights (128, 128), MX (1, 32), NVFP4 (1, 16).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from moecheck.reference.codecs import codec
from moecheck.reference.errors import require


class ScaleRule(str, enum.Enum):
    AMAX = "amax"  # fp32 scale = amax / elem.max (FP8, INT8, symmetric INT4)
    UE8M0 = "ue8m0"  # fp32 power of two, smallest >= amax / elem.max (DeepSeek UE8M0 checkpoints)
    MX = "mx"  # E8M0 shared exponent per OCP MX, rounding chosen by `mx_mode`
    NVFP4 = "nvfp4"  # E4M3 block scale under one fp32 global scale per batch slice
    MINMAX = "minmax"  # asymmetric: scale = (max - min) / qmax with an integer zero point


class MXScaleMode(str, enum.Enum):
    """How the E8M0 exponent is taken from a block's amax; libraries disagree (docs/rounding.md)."""

    FLOOR = "floor"  # OCP MX v1.0: floor(log2(amax)) - emax_elem; may saturate the top element
    RCEIL = "rceil"  # ceil(log2(amax / elem.max)): never saturates (NVIDIA cvt.rp to ue8m0)
    EVEN = "even"  # FLOOR after rounding amax's mantissa to the element's mantissa width


def _enum(kind, value):
    known = [m.value for m in kind]
    require(value in known or value in list(kind), f"unknown {kind.__name__} {value!r}; known: {known}")
    return kind(value)


@dataclass(frozen=True)
class QuantSpec:
    elem: str  # element codec name: e4m3, e5m2, e2m1, int8, int4, uint4
    block: tuple[int | None, int | None]  # block over the last two dims; None = whole dim
    rule: ScaleRule = ScaleRule.AMAX
    mx_mode: MXScaleMode = MXScaleMode.FLOOR
    ragged: bool = True  # partial edge blocks allowed; False: the dim must divide by the block
    static: bool = False  # scale is given (calibrated), not computed from the data

    def __post_init__(self):
        cd = codec(self.elem)  # validates the name
        require(isinstance(self.block, (tuple, list)) and len(self.block) == 2,
                f"block must be a (rows, cols) pair, got {self.block!r}")
        object.__setattr__(self, "block", tuple(self.block))
        for b in self.block:
            ok = b is None or (isinstance(b, int) and not isinstance(b, bool) and b >= 1)
            require(ok, f"block sizes must be integers >= 1 or None, got {self.block}")
        object.__setattr__(self, "rule", _enum(ScaleRule, self.rule))  # accept "mx" as well as ScaleRule.MX
        object.__setattr__(self, "mx_mode", _enum(MXScaleMode, self.mx_mode))
        floaty = hasattr(cd, "ebits")
        if self.rule == ScaleRule.MINMAX:
            require(self.elem.startswith("uint"), f"zero-point quantization needs an unsigned codec, got {self.elem}")
        elif self.rule in (ScaleRule.MX, ScaleRule.NVFP4):
            require(floaty, f"rule {self.rule.value} needs a float element codec, got {self.elem}")
        else:  # symmetric amax -> max: negative values need a signed codec
            require(floaty or cd.signed, f"rule {self.rule.value} needs a signed or float codec, got {self.elem}")
        # a given scale is a plain fp32 multiplier: E8M0/E4M3-coded scales and zero points are computed.
        # Static NVFP4 is the calibrated global scale; its E4M3 block scales are still derived (as
        # every NVFP4 MoE kernel takes a1/a2 global scales from the checkpoint)
        require(not self.static or self.rule in (ScaleRule.AMAX, ScaleRule.UE8M0, ScaleRule.NVFP4),
                f"static scales need rule amax, ue8m0 or nvfp4, got {self.rule.value}")

    @property
    def codec(self):
        return codec(self.elem)

    @property
    def packed(self) -> bool:
        """4-bit codes are stored two per byte along the last dim, element 2i in the low nibble."""
        return self.codec.bits == 4

    def with_(self, **kw) -> "QuantSpec":
        return replace(self, **kw)
