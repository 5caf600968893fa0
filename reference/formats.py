"""The MoE quantization formats, as records: how weights and activations are quantized.

A Format names a weight QuantSpec (None: unquantized), an activation QuantSpec used both for the
layer input and the re-quantized intermediate between the two GEMMs (None: activations stay in
`act_dtype`), and the layout constraints a kernel family imposes. Variants (MX scale mode, group
size) are derived with `Format.variant`, never by editing a record in place.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from moecheck.reference.errors import require, unknown
from moecheck.reference.spec import MXScaleMode, QuantSpec, ScaleRule

PER_TENSOR = (None, None)
PER_ROW = (1, None)  # per-token for activations [T, H]; per-output-channel for weights [E, N, K]


@dataclass(frozen=True)
class Format:
    name: str
    weight: QuantSpec | None
    act: QuantSpec | None
    act_dtype: torch.dtype = torch.bfloat16
    k_multiple: int = 1  # K (hidden and intermediate) must divide by this (block formats)
    doc: str = ""
    tags: frozenset[str] = field(default_factory=frozenset)

    @property
    def quantized(self) -> bool:
        return self.weight is not None

    def variant(self, name: str | None = None, **spec_changes) -> "Format":
        """Same format with QuantSpec fields changed in both weight and act specs (e.g. mx_mode)."""
        upd = lambda s: None if s is None else s.with_(**{k: v for k, v in spec_changes.items() if hasattr(s, k)})  # noqa: E731
        return replace(self, name=name or self.name, weight=upd(self.weight), act=upd(self.act))

    def check_sizes(self, hidden: int, inter: int) -> None:
        for what, n in (("hidden", hidden), ("intermediate", inter)):
            require(n >= 1, f"{what} size must be >= 1, got {n}")
            require(n % self.k_multiple == 0, f"format {self.name} needs {what} size divisible by {self.k_multiple}, got {n}")


def _q(elem, block, **kw) -> QuantSpec:
    return QuantSpec(elem, block, **kw)


_MX = dict(rule=ScaleRule.MX, ragged=False)
_FORMATS: list[Format] = [
    Format("bf16", None, None, torch.bfloat16, doc="unquantized bf16"),
    Format("fp16", None, None, torch.float16, doc="unquantized fp16"),
    Format("fp8_tensor", _q("e4m3", PER_TENSOR), _q("e4m3", PER_TENSOR),
           doc="FP8 e4m3, per-expert weight scale, dynamic per-tensor activation scale"),
    Format("fp8_tensor_static", _q("e4m3", PER_TENSOR), _q("e4m3", PER_TENSOR, static=True),
           doc="FP8 e4m3, per-expert weight scale, static (calibrated) activation scales a1/a2"),
    Format("fp8_e5m2_tensor", _q("e5m2", PER_TENSOR), _q("e5m2", PER_TENSOR), doc="FP8 e5m2 per-tensor"),
    Format("fp8_token_channel", _q("e4m3", PER_ROW), _q("e4m3", PER_ROW),
           doc="FP8 e4m3, per-output-channel weights, dynamic per-token activations"),
    Format("fp8_w_channel", _q("e4m3", PER_ROW), None,
           doc="FP8 e4m3 per-output-channel weights x unquantized activations (weight-only W8A16: Marlin FP8)"),
    Format("fp8_block", _q("e4m3", (128, 128)), _q("e4m3", (1, 128)),
           doc="DeepSeek-V3 FP8: 128x128 weight blocks, 1x128 activation groups, fp32 scales"),
    Format("fp8_block_ue8m0", _q("e4m3", (128, 128), rule=ScaleRule.UE8M0), _q("e4m3", (1, 128), rule=ScaleRule.UE8M0),
           doc="FP8 block with power-of-two (UE8M0) scales, as DeepSeek-V3.1+ and SM100 DeepGEMM"),
    Format("int8_w8a8", _q("int8", PER_ROW), _q("int8", PER_ROW),
           doc="INT8 per-channel weights x dynamic per-token INT8 activations"),
    Format("mxfp8", _q("e4m3", (1, 32), **_MX), _q("e4m3", (1, 32), **_MX), k_multiple=32,
           doc="OCP MXFP8 (e4m3 elements, E8M0 scale per 32 along K) weights and activations"),
    Format("mxfp4_bf16", _q("e2m1", (1, 32), **_MX), None, k_multiple=32,
           doc="OCP MXFP4 weights x bf16 activations (gpt-oss checkpoints)"),
    Format("mxfp4_mxfp8", _q("e2m1", (1, 32), **_MX), _q("e4m3", (1, 32), **_MX), k_multiple=32,
           doc="MXFP4 weights x MXFP8 activations (FlashInfer/TRT-LLM W4A8-MX)"),
    Format("nvfp4", _q("e2m1", (1, 16), rule=ScaleRule.NVFP4, ragged=False),
           _q("e2m1", (1, 16), rule=ScaleRule.NVFP4, ragged=False, static=True), k_multiple=16,
           doc="NVFP4: E2M1 elements, E4M3 scale per 16; fp32 global scale per expert for weights, "
               "calibrated (static a1/a2) global scales for activations, as NVFP4 MoE kernels take them"),
    Format("nvfp4_dynamic", _q("e2m1", (1, 16), rule=ScaleRule.NVFP4, ragged=False),
           _q("e2m1", (1, 16), rule=ScaleRule.NVFP4, ragged=False), k_multiple=16,
           doc="NVFP4 with activation global scales computed per tensor from the data (amax / 2688)"),
    Format("w4a8", _q("int4", (1, 128), ragged=False), _q("e4m3", PER_TENSOR), k_multiple=128,
           doc="INT4 weights (symmetric groups of 128) x FP8 e4m3 per-tensor activations"),
]
for _g in (32, 64, 128):
    _FORMATS += [
        Format(f"int4_w_g{_g}", _q("int4", (1, _g), ragged=False), None, k_multiple=_g,
               doc=f"INT4 weight-only, symmetric amax/7 scale in [-8, 7], groups of {_g} (GPTQ sym uses 2*amax/15: docs/rounding.md)"),
        Format(f"int4_zp_w_g{_g}", _q("uint4", (1, _g), rule=ScaleRule.MINMAX, ragged=False), None, k_multiple=_g,
               doc=f"INT4 weight-only with zero points, groups of {_g}; range includes 0 (GPTQ asymmetric; AWQ differs on one-signed groups)"),
        Format(f"int8_w_g{_g}", _q("int8", (1, _g), ragged=False), None, k_multiple=_g,
               doc=f"INT8 weight-only, symmetric, groups of {_g}"),
    ]

FORMATS: dict[str, Format] = {f.name: f for f in _FORMATS}
for _mode in (MXScaleMode.RCEIL, MXScaleMode.EVEN):  # MX scale-rounding variants, by name
    for _base in ("mxfp8", "mxfp4_bf16", "mxfp4_mxfp8"):
        _v = FORMATS[_base].variant(f"{_base}_{_mode.value}", mx_mode=_mode)
        FORMATS[_v.name] = _v


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise unknown("format", name, FORMATS)
    return FORMATS[name]
