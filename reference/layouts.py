"""Storage layouts shared by quantizers and backends: nibble packing and the 128x4 scale swizzle."""
from __future__ import annotations

import torch
from moecheck.reference.errors import require


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (low 4 bits of each int) -> uint8, two per byte along the last dim.

    Element 2i goes to the low nibble and 2i+1 to the high nibble: the order of OCP MX FP4 as
    stored by PyTorch's float4_e2m1fn_x2, triton_kernels and FlashInfer.
    """
    require(codes.shape[-1] % 2 == 0, f"4-bit packing needs an even last dim, got {codes.shape[-1]}")
    c = (codes.to(torch.int16) & 0xF).to(torch.uint8)  # mask before narrowing: negative int4 codes wrap
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """uint8 two-per-byte -> one code per element (int16 so signed int4 fits)."""
    p = packed.to(torch.int16)
    lo, hi = p & 0xF, (p >> 4) & 0xF
    out = torch.stack([lo, hi], dim=-1).flatten(-2)
    if signed:
        out = torch.where(out >= 8, out - 16, out)
    return out


def swizzle_offsets(rows: int, cols: int) -> torch.Tensor:
    """Flat offset of scale (r, c) in the 128x4 tiled layout (cuBLAS/CUTLASS block-scaled MMA).

    Tiles of 128 rows x 4 cols are laid out row-major over tiles; inside a tile, row r sits at
    (r % 32) * 16 + (r // 32) * 4 and col c adds c. Rows pad to 128 and cols to 4.
    """
    r = torch.arange(rows).view(-1, 1)
    c = torch.arange(cols).view(1, -1)
    col_tiles = -(-cols // 4)
    tile = (r // 128) * col_tiles + c // 4
    rr = r % 128
    return tile * 512 + (rr % 32) * 16 + (rr // 32) * 4 + c % 4


def swizzled_size(rows: int, cols: int) -> int:
    return (-(-rows // 128) * 128) * (-(-cols // 4) * 4)


def swizzle_128x4(scales: torch.Tensor, pad_value: int | float = 0) -> torch.Tensor:
    """[..., rows, cols] linear scales -> [..., padded_rows * padded_cols] swizzled (flat)."""
    require(scales.dim() >= 2, f"swizzle_128x4 needs [..., rows, cols] scales, got shape {tuple(scales.shape)}")
    rows, cols = scales.shape[-2:]
    lead = scales.shape[:-2]
    out = torch.full((*lead, swizzled_size(rows, cols)), pad_value, dtype=scales.dtype, device=scales.device)
    off = swizzle_offsets(rows, cols).to(scales.device).flatten()
    out[..., off] = scales.reshape(*lead, -1)
    return out


def unswizzle_128x4(flat: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    require(flat.shape[-1] == swizzled_size(rows, cols), f"swizzled scales of {rows}x{cols} need {swizzled_size(rows, cols)} entries, got {flat.shape[-1]}")
    off = swizzle_offsets(rows, cols).to(flat.device).flatten()
    return flat[..., off].reshape(*flat.shape[:-1], rows, cols)
