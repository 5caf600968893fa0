"""The stream's normals (properties/rng.py) in one Triton launch: the torch formulation costs ~25
elementwise kernels per 2^24 values, which made building a GPU case launch-bound. Same integer
hash, same one fp32 multiply, so the same bits (tests/properties/test_rng.py checks it on CUDA, and
under TRITON_INTERPRET=1 on the CPU)."""
from __future__ import annotations

import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _mix(x):
    x = x ^ (x >> 16)
    x = x * tl.full(x.shape, 0x21F0AAAD, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full(x.shape, 0x735A2D97, tl.uint32)
    return x ^ (x >> 15)


@triton.jit
def _randn(out_ptr, n, key, sd, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    i0 = (offs * 2).to(tl.uint32)  # words 2j and 2j + 1 make element j, as in Stream._bits
    k = tl.full((BLOCK,), key, tl.int64).to(tl.uint32)
    h0 = _mix(_mix(i0) + k)  # uint32 arithmetic wraps: the torch path's "& M32"
    h1 = _mix(_mix(i0 + 1) + k)
    s = (h0 & 0xFFFF) + (h0 >> 16) + (h1 & 0xFFFF) + (h1 >> 16)
    v = (s.to(tl.int32) - 2 * 0xFFFF).to(tl.float32) * sd
    tl.store(out_ptr + offs, v, mask=live)


def randn_into(out, key: int, sd: float) -> None:
    """Fill the contiguous fp32 tensor `out` with the draw whose hash key is `key`."""
    n = out.numel()
    if n:
        _randn[(triton.cdiv(n, BLOCK),)](out, n, key, sd, BLOCK=BLOCK)
