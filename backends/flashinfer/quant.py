"""FlashInfer's quantizers against moecheck's reference quantizers, code for code.

Each compare_* function quantizes one input with FlashInfer and with moecheck.reference.quantize
(the matching Format / QuantSpec and MX scale mode), brings FlashInfer's scales back to the linear
layout (moecheck.reference.layouts.unswizzle_128x4) and returns a QuantDiff: which codes and scales
differ, where the first one is, and what the padding holds. FlashInfer is imported only inside the
calls (module attribute at call time), so this module imports on any machine.

Rounding read in the sources (flashinfer-python 0.7.2.post1,
data/csrc/nv_internal/tensorrt_llm/kernels/quantization_utils.cuh):
  - mxfp8_quantize, cvt_warp_fp16_to_mxfp8: scale = e8m0 round-up of amax * rcp(448) = RCEIL
    (docs/rounding.md section 1), elements x * 2^-e clamped to +-448 then cvt.rn.satfinite: bit-exact
    with moecheck format `mxfp8_rceil` expected.
  - fp4_quantize(sf_use_ue8m0=True, sf_vec_size=32) / mxfp4_quantize: RCEIL via rcp(6): `mxfp4_bf16_rceil`.
  - fp4_quantize NVFP4: block scale e4m3(SFScale * amax_b * rcp(6)), elements x * rcp(sb * rcp(SFScale))
    (fast math): may differ from moecheck's divisions by one code at E4M3 / E2M1 midpoints
    (docs/rounding.md sections 4-5), so NVFP4 differences are accepted only between neighbouring codes.
  - quantize_with_block_size (quantization.cuh): padded columns get code 0 and scale 0x00; rows past M
    in the swizzled layout get scale 0x00. The whole kernel body, and cvt_warp_fp16_to_mxfp8, sit under
    `#if __CUDA_ARCH__ >= 1000`: built for sm_90 the kernel launches and writes nothing, and the Python
    wrappers allocate outputs with torch.empty and do not check the architecture. The allocator is
    flooded with a pattern before each call, so outputs that were never written show up as mismatches.
  - Known bug families the GPU tests aim at: E8M0 underflow of tiny blocks (code 0 = 2^-127 is an fp32
    subnormal that rcp.approx.ftz flushes: https://github.com/flashinfer-ai/flashinfer/issues/2440),
    scale padding of the TMA path (https://github.com/flashinfer-ai/flashinfer/pull/2726), unwritten
    swizzle padding (https://github.com/vllm-project/vllm/pull/30260), the alignment padding of
    https://github.com/vllm-project/vllm/pull/30647.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch
from moecheck.backends.flashinfer import common as C
from moecheck.reference.codecs import E2M1, E4M3
from moecheck.reference.errmodel import budget_for
from moecheck.reference.errmodel.budget import ErrorBudget
from moecheck.reference.errmodel.table import Loosening
from moecheck.reference.errors import require
from moecheck.reference.formats import FORMATS
from moecheck.reference.layouts import unpack_nibbles, unswizzle_128x4
from moecheck.reference.quantize import quantize

FP8_MOD = "flashinfer.quantization.fp8_quantization"
FP4_MOD = "flashinfer.quantization.fp4_quantization"
MXFP8_FORMAT = "mxfp8_rceil"  # FlashInfer's mxfp8_quantize rounds the E8M0 exponent up (RCEIL)
MXFP4_FORMAT = "mxfp4_bf16_rceil"
NVFP4_FORMAT = "nvfp4_dynamic"  # activation-style: global scale from the data (amax / 2688)
# fp4_quantize's arithmetic, declared as a backend record would declare it
FP4_QUANTIZE_RCP = Loosening(
    ErrorBudget(input_rel=2.0**-20),
    "fp4_quantize multiplies by rcp.approx(sb * rcp.approx(global)) (docs/rounding.md sec. 4): a value within "
    "~2^-20 relative of an E2M1/E4M3 rounding midpoint may round the other way; only there is a one-code "
    "difference accepted", formats="nvfp4*")
FLOOD = 0xA5  # byte pattern left in recycled allocator blocks before a FlashInfer call


Refused = C.Refused


def _call(mod: str, attr: str, *a, **k):
    return C.call(importlib.import_module(mod), attr, *a, **k)


def flood_allocator(device, nbytes: int) -> None:
    """Fill and free CUDA blocks so that torch.empty outputs start as FLOOD bytes, not zeros."""
    if torch.device(device).type != "cuda":
        return
    blocks = [torch.full((max(nbytes, 1 << 20),), FLOOD, dtype=torch.uint8, device=device) for _ in range(4)]
    del blocks


@dataclass
class QuantDiff:
    name: str
    layout: str
    n_codes: int = 0
    code_mismatch: int = 0  # codes that differ from the reference
    code_far: int = 0  # ... not explained by the NVFP4 midpoint rule (all of them elsewhere)
    code_first: tuple | None = None  # (row, col, got, want)
    n_scales: int = 0
    scale_mismatch: int = 0
    scale_far: int = 0
    scale_first: tuple | None = None
    pad_codes_nonzero: int = 0  # codes in the alignment padding (columns K..padded K) that are not 0
    pad_scales_nonzero: int = 0  # scale bytes of padding blocks / swizzle padding that are not 0x00
    neighbours_allowed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not (self.code_mismatch or self.scale_mismatch or self.pad_codes_nonzero or self.pad_scales_nonzero)

    @property
    def ok(self) -> bool:
        if not self.neighbours_allowed:
            return self.exact
        return not (self.code_far or self.scale_far or self.pad_codes_nonzero or self.pad_scales_nonzero)

    def summary(self) -> str:
        parts = [f"{self.name} [{self.layout}]: codes {self.code_mismatch}/{self.n_codes} differ"]
        if self.neighbours_allowed:
            parts[-1] += f" ({self.code_far} not a neighbouring code at a rounding midpoint)"
        if self.code_first:
            parts.append(f"first code at (row, col) {self.code_first[:2]}: got {self.code_first[2]:#04x} want {self.code_first[3]:#04x}")
        parts.append(f"scales {self.scale_mismatch}/{self.n_scales} differ" + (f" ({self.scale_far} not at a midpoint)" if self.neighbours_allowed else ""))
        if self.scale_first:
            parts.append(f"first scale at {self.scale_first[:2]}: got {self.scale_first[2]:#04x} want {self.scale_first[3]:#04x}")
        parts.append(f"padding: {self.pad_codes_nonzero} codes and {self.pad_scales_nonzero} scale bytes not zero")
        return "; ".join(parts + self.notes)


def _first(mask: torch.Tensor, got: torch.Tensor, want: torch.Tensor) -> tuple | None:
    if not bool(mask.any()):
        return None
    idx = tuple(int(i) for i in mask.nonzero()[0])
    return (*idx, int(got[idx]), int(want[idx]))


def _linear_scales(sf: torch.Tensor, rows: int, cols: int, swizzled: bool) -> tuple[torch.Tensor, int]:
    """FlashInfer scale bytes -> ([rows, cols] linear, count of non-zero bytes outside the real
    [rows, cols] region of the padded buffer)."""
    flat = sf.contiguous().view(torch.uint8).reshape(-1)
    if not swizzled:
        require(flat.numel() == rows * cols, f"linear scales: expected {rows * cols} bytes, got {flat.numel()}")
        return flat.view(rows, cols), 0
    pr, pc = -(-rows // 128) * 128, -(-cols // 4) * 4
    require(flat.numel() == pr * pc, f"128x4 scales of {rows}x{cols}: expected {pr * pc} bytes, got {flat.numel()}")
    full = unswizzle_128x4(flat, pr, pc)
    pad = full.clone()
    pad[:rows, :cols] = 0
    return full[:rows, :cols], int((pad != 0).sum())


def _neighbour(a: torch.Tensor, b: torch.Tensor, sign: int, mag: int) -> torch.Tensor:
    """Same sign and adjacent magnitude codes (E4M3 / E2M1 magnitude bits are monotone in value)."""
    a, b = a.to(torch.int16), b.to(torch.int16)
    same_sign = (a & sign) == (b & sign)
    zero_pair = ((a & mag) == 0) & ((b & mag) == 0)
    return (same_sign & ((a & mag) - (b & mag)).abs().le(1)) | zero_pair


def _fill_codes(d: QuantDiff, got: torch.Tensor, want: torch.Tensor, explained) -> None:
    """explained(got, want): mask of mismatches the rounding rules allow (NVFP4 midpoints)."""
    bad = got != want
    d.n_codes = want.numel()
    d.code_mismatch = int(bad.sum())
    d.code_far = int((bad & ~explained(got, want)).sum())
    d.code_first = _first(bad, got, want)


def _fill_scales(d: QuantDiff, got: torch.Tensor, want: torch.Tensor, explained) -> torch.Tensor:
    bad = got != want
    d.n_scales = want.numel()
    d.scale_mismatch = int(bad.sum())
    d.scale_far = int((bad & ~explained(got, want)).sum())
    d.scale_first = _first(bad, got, want)
    return bad


def _layout_name(swizzled: bool) -> str:
    return "128x4 swizzle, compared after unswizzle_128x4" if swizzled else "linear"


def compare_mxfp8(x: torch.Tensor, alignment: int = 32, swizzled: bool = True, host: bool = False) -> QuantDiff:
    """flashinfer mxfp8_quantize(x, is_sf_swizzled_layout, alignment) vs quantize(x, mxfp8_rceil).

    With alignment > 32 FlashInfer pads K to a multiple of it (vLLM PR #30647's padding path): the
    codes of columns K.. must be 0 and the scales of the padding blocks 0x00. host=True feeds an fp32
    CPU tensor, which mxfp8_quantize sends to its host quantizer (fp8Quantize.cpp mxfp8_quantize_host:
    no padding, "alignment is not used in the host kernel").
    """
    require(x.dim() == 2 and x.shape[-1] % 32 == 0, f"mxfp8 comparison needs [M, K] with K % 32 == 0, got {tuple(x.shape)}")
    m, k = x.shape
    kp = k if host else -(-k // alignment) * alignment
    if host:
        inp, kw = x.float().cpu(), dict(enable_pdl=False)
    else:
        inp, kw = x, {}
        flood_allocator(x.device, 2 * m * kp)
    q, sf = _call(FP8_MOD, "mxfp8_quantize", inp, is_sf_swizzled_layout=swizzled, alignment=alignment, **kw)
    where = "host " if host else ""
    d = QuantDiff(f"{where}mxfp8_quantize(M={m}, K={k}, alignment={alignment})", _layout_name(swizzled))
    require(tuple(q.shape) == (m, kp), f"mxfp8_quantize returned codes of shape {tuple(q.shape)}, expected {(m, kp)}")
    ref = quantize(x, FORMATS[MXFP8_FORMAT].act)
    codes = q.contiguous().view(torch.uint8).cpu()
    want = ref.codes.view(torch.uint8).cpu()
    nothing = lambda a, b: torch.zeros_like(a, dtype=torch.bool)  # noqa: E731 - MX scales are powers of two: exact
    _fill_codes(d, codes[:, :k], want, nothing)
    d.pad_codes_nonzero = int((codes[:, k:] != 0).sum())
    lin, pad_nonzero = _linear_scales(sf.cpu(), m, kp // 32, swizzled)
    _fill_scales(d, lin[:, :k // 32], ref.scales.cpu(), nothing)
    d.pad_scales_nonzero = pad_nonzero + int((lin[:, k // 32:] != 0).sum())
    return d


def _fp4_reference(x: torch.Tensor, kind: str):
    return quantize(x, FORMATS[NVFP4_FORMAT].act if kind == "nvfp4" else FORMATS[MXFP4_FORMAT].weight)


def _nvfp4_ambiguous(x: torch.Tensor, ref, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a relative perturbation `delta` of the reference's own unrounded NVFP4 quantities moves the
    rounding: (block scales [M, K/16], elements [M, K]). Only there may FlashInfer's fast-math chain
    round to the neighbouring code (docs/rounding.md sections 4-5)."""
    m, k = x.shape
    xf = x.float().cpu()
    g = ref.global_scale.float().cpu()
    raw_sb = xf.abs().view(m, k // 16, 16).amax(-1) / E2M1.max / g  # as quantize._nvfp4_scales, left to right
    amb_sb = E4M3.round(raw_sb * (1 - delta)) != E4M3.round(raw_sb * (1 + delta))
    s_el = (ref.scales.cpu().float() * g).repeat_interleave(16, dim=1)
    v = xf / torch.where(s_el > 0, s_el, torch.ones_like(s_el))
    amb_el = E2M1.round(v * (1 - delta)) != E2M1.round(v * (1 + delta))
    return amb_sb, amb_el


def compare_fp4(x: torch.Tensor, kind: str = "nvfp4", swizzled: bool = True) -> QuantDiff:
    """flashinfer fp4_quantize (NVFP4: sf_vec_size 16, E4M3 scales, global scale = 1 / moecheck's
    dequant global scale; MXFP4: sf_vec_size 32, UE8M0) vs the reference quantizer.

    MXFP4 must be bit-exact. NVFP4 may differ by one code, and only where the reference's unrounded
    value is within the tolerance table's input_rel (entry "flashinfer_fp4_quantize") of a rounding
    midpoint; elements of a block whose scale legitimately differs are not compared.
    """
    require(kind in ("nvfp4", "mxfp4"), f"fp4 comparison kind must be nvfp4 or mxfp4, got {kind!r}")
    vec = 16 if kind == "nvfp4" else 32
    require(x.dim() == 2 and x.shape[-1] % vec == 0, f"{kind} comparison needs [M, K] with K % {vec} == 0, got {tuple(x.shape)}")
    m, k = x.shape
    ref = _fp4_reference(x, kind)
    kw = dict(sf_vec_size=vec, sf_use_ue8m0=kind == "mxfp4", is_sf_swizzled_layout=swizzled, nvfp4_4over6=None)
    gs = (1.0 / ref.global_scale.float()).reshape(1).to(x.device) if kind == "nvfp4" else None
    flood_allocator(x.device, m * k)
    q, sf = _call(FP4_MOD, "fp4_quantize", x, gs, **kw)
    d = QuantDiff(f"fp4_quantize[{kind}](M={m}, K={k})", _layout_name(swizzled), neighbours_allowed=kind == "nvfp4")
    require(tuple(q.shape) == (m, k // 2), f"fp4_quantize returned codes of shape {tuple(q.shape)}, expected {(m, k // 2)}")
    got = unpack_nibbles(q.contiguous().view(torch.uint8).cpu())
    want = unpack_nibbles(ref.codes.cpu())
    lin, d.pad_scales_nonzero = _linear_scales(sf.cpu(), m, k // vec, swizzled)
    want_sf = ref.scales.cpu().view(torch.uint8) if kind == "nvfp4" else ref.scales.cpu()
    if kind == "nvfp4":
        amb_sb, amb_el = _nvfp4_ambiguous(x, ref, budget_for(NVFP4_FORMAT, (FP4_QUANTIZE_RCP,)).input_rel)
        sf_ok = lambda a, b: amb_sb & _neighbour(a, b, 0x80, 0x7F)  # noqa: E731
        el_ok = lambda a, b: amb_el & _neighbour(a, b, 0x8, 0x7)  # noqa: E731
    else:
        sf_ok = el_ok = lambda a, b: torch.zeros_like(a, dtype=torch.bool)  # noqa: E731
    bad_sf = _fill_scales(d, lin, want_sf, sf_ok)
    # where a block scale differs every element of the block may move: judge elements of equal-scale blocks
    same = ~bad_sf.repeat_interleave(vec, dim=1)
    _fill_codes(d, torch.where(same, got, want), want, el_ok)
    if kind == "nvfp4":
        d.notes.append(f"global scale passed {float(gs):.6g} (= 1 / moecheck dequant global {float(ref.global_scale):.6g})")
    return d


def compare_mxfp4_roundtrip(x: torch.Tensor) -> QuantDiff:
    """flashinfer mxfp4_quantize then mxfp4_dequantize vs moecheck's MXFP4 (RCEIL) dequantization."""
    m, k = x.shape
    flood_allocator(x.device, m * k)
    q, sf = _call(FP4_MOD, "mxfp4_quantize", x)
    deq = _call(FP4_MOD, "mxfp4_dequantize", q, sf).float().cpu()
    want = quantize(x, FORMATS[MXFP4_FORMAT].weight).dequantize().cpu()
    d = QuantDiff(f"mxfp4_quantize+mxfp4_dequantize(M={m}, K={k})", "values")
    bad = ~((deq == want) | (torch.isnan(deq) & torch.isnan(want)))
    d.n_codes, d.code_mismatch = want.numel(), int(bad.sum())
    if d.code_mismatch:
        idx = tuple(int(i) for i in bad.nonzero()[0])
        d.notes.append(f"first value at {idx}: got {float(deq[idx])!r} want {float(want[idx])!r}")
    return d


def compare_fp4_dequantize_host(x: torch.Tensor, kind: str = "nvfp4", swizzled: bool = True) -> QuantDiff:
    """FlashInfer's host dequantizer e2m1_and_ufp8sf_scale_to_float on moecheck's codes and scales (scales
    swizzled by moecheck's swizzle_128x4 when `swizzled`), global scale 1: must give code x block scale
    exactly. A host op (no GPU kernel), so it checks the nibble order, the 128x4 layout and the E4M3 / UE8M0
    decoding of FlashInfer's contract even where the device quantizers do not run."""
    from moecheck.reference.layouts import swizzle_128x4
    from moecheck.reference.qtensor import expand_blocks

    vec = 16 if kind == "nvfp4" else 32
    ref = _fp4_reference(x, kind)
    sc = (ref.scales.view(torch.uint8) if kind == "nvfp4" else ref.scales).cpu()
    sf = swizzle_128x4(sc).reshape(-1) if swizzled else sc.reshape(-1)
    got = _call(FP4_MOD, "e2m1_and_ufp8sf_scale_to_float", ref.codes.cpu(), sf, torch.tensor([1.0]), vec,
                1 if kind == "nvfp4" else 0, swizzled).float().cpu()
    want = ref.element_values().cpu() * expand_blocks(ref.scale_values().cpu(), ref.shape, 1, vec)
    d = QuantDiff(f"e2m1_and_ufp8sf_scale_to_float[{kind}]{tuple(x.shape)}", _layout_name(swizzled))
    require(tuple(got.shape) == tuple(want.shape), f"host dequantizer returned shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    bad = ~((got == want) | (torch.isnan(got) & torch.isnan(want)))
    d.n_codes, d.code_mismatch = want.numel(), int(bad.sum())
    if d.code_mismatch:
        idx = tuple(int(i) for i in bad.nonzero()[0])
        d.notes.append(f"first value at {idx}: got {float(got[idx])!r} want {float(want[idx])!r}")
    return d


def compare_block_scale_interleave(sf: torch.Tensor) -> QuantDiff:
    """flashinfer block_scale_interleave([E,] R, C uint8) vs moecheck swizzle_128x4, byte for byte."""
    from moecheck.reference.layouts import swizzle_128x4

    got = _call(FP4_MOD, "block_scale_interleave", sf).contiguous().view(torch.uint8).reshape(-1).cpu()
    want = swizzle_128x4(sf.cpu()).reshape(-1)
    d = QuantDiff(f"block_scale_interleave{tuple(sf.shape)}", "128x4")
    require(got.numel() == want.numel(), f"block_scale_interleave returned {got.numel()} bytes, moecheck's swizzle {want.numel()}")
    bad = got != want
    d.n_scales, d.scale_mismatch = want.numel(), int(bad.sum())
    d.scale_first = _first(bad.view(1, -1), got.view(1, -1), want.view(1, -1))
    return d
