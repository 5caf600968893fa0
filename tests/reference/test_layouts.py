"""Storage layouts: 4-bit packing (element 2i in the low nibble) and the 128x4 block-scale swizzle
(cuBLAS / CUTLASS block-scaled MMA; torchao's `to_blocked`, re-typed in _oracles)."""
from __future__ import annotations

import pytest
import torch
from moecheck.reference.errors import MoecheckError
from moecheck.reference.layouts import (
    pack_nibbles,
    swizzle_128x4,
    swizzle_offsets,
    swizzled_size,
    unpack_nibbles,
    unswizzle_128x4,
)
from moecheck.tests.reference._oracles import to_blocked

# --- nibble packing ----------------------------------------------------------------------------

def test_pack_hand_bytes():
    assert pack_nibbles(torch.tensor([1, 2])).tolist() == [0x21]
    assert pack_nibbles(torch.tensor([[0xF, 0x0, 0x3, 0xC]])).tolist() == [[0x0F, 0xC3]]
    assert pack_nibbles(torch.tensor([-1, -8, 7, -2], dtype=torch.int16)).tolist() == [0x8F, 0xE7]
    assert pack_nibbles(torch.tensor([1, 2])).dtype == torch.uint8


def test_unpack_hand_bytes():
    packed = torch.tensor([0x21, 0x8F, 0xE7], dtype=torch.uint8)
    assert unpack_nibbles(packed).tolist() == [1, 2, 0xF, 0x8, 0x7, 0xE]
    assert unpack_nibbles(packed, signed=True).tolist() == [1, 2, -1, -8, 7, -2]


def test_pack_unpack_round_trip():
    g = torch.Generator().manual_seed(5)
    u = torch.randint(0, 16, (3, 4, 64), generator=g)
    assert torch.equal(unpack_nibbles(pack_nibbles(u)).long(), u)
    s = torch.randint(-8, 8, (7, 10), generator=g, dtype=torch.int16)
    assert torch.equal(unpack_nibbles(pack_nibbles(s), signed=True), s)
    every_byte = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(pack_nibbles(unpack_nibbles(every_byte)), every_byte)


def test_pack_odd_length_rejected():
    with pytest.raises(MoecheckError, match="even last dim"):
        pack_nibbles(torch.zeros(2, 5, dtype=torch.int16))


# --- 128x4 swizzle -----------------------------------------------------------------------------

SHAPES = [(128, 4), (256, 8), (100, 3), (129, 5), (1, 1), (300, 17), (32, 12), (384, 2)]


@pytest.mark.parametrize("rows, cols", SHAPES)
def test_swizzle_matches_torchao_to_blocked(rows, cols):
    scales = torch.randint(1, 255, (rows, cols), dtype=torch.uint8, generator=torch.Generator().manual_seed(rows * cols))
    want = to_blocked(scales)
    assert swizzled_size(rows, cols) == want.numel()
    assert torch.equal(swizzle_128x4(scales), want)  # padding filled with 0, as to_blocked does
    off = swizzle_offsets(rows, cols)
    assert torch.equal(want[off.flatten()], scales.flatten())


@pytest.mark.parametrize("rows, cols", SHAPES)
def test_unswizzle_round_trip(rows, cols):
    scales = torch.rand(2, rows, cols, generator=torch.Generator().manual_seed(1))
    flat = swizzle_128x4(scales, pad_value=-1.0)
    assert flat.shape == (2, swizzled_size(rows, cols))
    assert torch.equal(unswizzle_128x4(flat, rows, cols), scales)
    assert (flat == -1.0).sum().item() == 2 * (swizzled_size(rows, cols) - rows * cols)


def test_swizzle_batched_is_per_slice():
    scales = torch.randint(0, 255, (3, 130, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    got = swizzle_128x4(scales)
    for e in range(3):
        assert torch.equal(got[e], to_blocked(scales[e]))


def test_swizzle_hand_offsets():
    off = swizzle_offsets(256, 8)
    # inside a tile: row r at (r % 32) * 16 + (r // 32) * 4, col c adds c; tiles row-major
    assert off[0, 0] == 0 and off[0, 1] == 1 and off[0, 3] == 3
    assert off[1, 0] == 16 and off[31, 0] == 31 * 16 and off[32, 0] == 4 and off[127, 3] == 31 * 16 + 12 + 3
    assert off[0, 4] == 512 and off[128, 0] == 1024 and off[128, 4] == 1536
    assert sorted(off.flatten().tolist()) == list(range(256 * 8))  # a permutation


def test_unswizzle_wrong_size_rejected():
    with pytest.raises(MoecheckError, match="need 512 entries"):
        unswizzle_128x4(torch.zeros(100), 100, 3)
    with pytest.raises(MoecheckError, match=r"\[\.\.\., rows, cols\]"):
        swizzle_128x4(torch.zeros(10))
