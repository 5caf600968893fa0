"""Weight and scale preparation for FlashInfer's MoE kernels, in plain torch (never imports flashinfer).

Every re-layout is a row permutation given as an index tensor `perm` with `new[r] = old[perm[r]]`,
so each one can be inverted (`invert`) and checked to be a permutation on CPU. The 128x4 scale
swizzle is moecheck.reference.layouts' (swizzle_128x4), not a second copy.

Layout facts, with where they were read (flashinfer-python 0.7.2.post1, site-packages/flashinfer/):
  - cutlass_fused_moe and trtllm-gen MoE take GEMM1 weights as [up | gate] halves ("w31"):
    tests/moe/test_trtllm_cutlass_fused_moe.py `w3_expert, w1_expert = torch.chunk(w31_expert, 2)`,
    fused_moe/core.py trtllm_bf16_routed_moe docstring "X1 (linear/up half) and X2 (gate half)".
  - trtllm-gen gated-activation row reorder: fused_moe/core.py
    get_reorder_rows_for_gated_act_gemm_row_indices ([r0, rN/2, r1, rN/2+1, ...]).
  - trtllm-gen shuffleMatrixA: utils.py get_shuffle_matrix_a_row_indices with srcToDstBlk16/32RowMap
    (block 32 when epilogue_tile_m % 128 == 0, else 16): source row i of a block goes to
    (i % g) * 8 + i // g, g = block / 8.
  - trtllm-gen BlockMajorK: fused_moe/core.py convert_to_block_layout, [M, K] -> [K/bk, M, bk].
  - CuTe-DSL SM90 bf16 MoE: fused_moe/cute_dsl/sm90_contiguous_gather_grouped_gemm_act_fusion.py
    _interleave_gated_halves: [up 0:32 | gate 0:32 | up 32:64 | ...].
  - mono_moe: fused_moe/monomoe.py interleave_for_tma_wgmma_up (input [gate | up], 64-row blocks
    become 128-row slabs of 8-row gate/up stripes).
  - SM90 mixed-input (W4A16 MXFP4 / W4A8) scale fold: fused_moe/prepare.py
    interleave_moe_scales_for_sm90_mixed_gemm, [E, rows/64, K/128, folded_m, physical_cols].
"""
from __future__ import annotations

import torch
from moecheck.reference.activations import ActivationSpec
from moecheck.reference.errors import require
from moecheck.reference.layouts import swizzle_128x4, swizzled_size, unswizzle_128x4
from moecheck.reference.qtensor import QTensor

# ---------------------------------------------------------------- permutations

def invert(perm: torch.Tensor) -> torch.Tensor:
    """The inverse permutation: invert(p)[p[r]] = r."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), dtype=perm.dtype, device=perm.device)
    return inv


def is_permutation(perm: torch.Tensor) -> bool:
    return perm.dim() == 1 and bool(torch.equal(torch.sort(perm).values, torch.arange(perm.numel(), dtype=perm.dtype)))


def gate_up_rows(rows: int, act: ActivationSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the gate rows and the up rows of a [2I, H] GEMM1 weight stored in `act`'s layout."""
    require(act.gated, f"gate/up rows need a gated activation, got {act.kind!r}")
    require(rows % 2 == 0, f"a gated GEMM1 weight needs an even row count, got {rows}")
    idx = torch.arange(rows)
    first, second = (idx[0::2], idx[1::2]) if act.interleaved else (idx[: rows // 2], idx[rows // 2:])
    return (first, second) if act.order == "gate_up" else (second, first)


def to_up_gate(rows: int, act: ActivationSpec) -> torch.Tensor:
    """Permutation from `act`'s layout to [up | gate] halves (cutlass_fused_moe, trtllm-gen).

    Applied once: for "silu" ([gate|up]) it swaps the halves, for "silu_up_gate" it is the identity,
    for gpt-oss interleaved rows it de-interleaves. Ungated weights keep their order.
    """
    if not act.gated:
        return torch.arange(rows)
    gate, up = gate_up_rows(rows, act)
    return torch.cat([up, gate])


def to_gate_up(rows: int, act: ActivationSpec) -> torch.Tensor:
    """Permutation from `act`'s layout to [gate | up] halves (mono_moe, vLLM w13)."""
    if not act.gated:
        return torch.arange(rows)
    gate, up = gate_up_rows(rows, act)
    return torch.cat([gate, up])


def reorder_gated_act(rows: int) -> torch.Tensor:
    """trtllm-gen reorderRowsForGatedActGemm: [r0, rN/2, r1, rN/2+1, ...] for [up | gate] rows."""
    require(rows % 2 == 0, f"gated-activation row reorder needs an even row count, got {rows}")
    half = rows // 2
    perm = torch.empty(rows, dtype=torch.long)
    perm[0::2] = torch.arange(half)
    perm[1::2] = torch.arange(half, rows)
    return perm


def shuffle_a(rows: int, epilogue_tile_m: int = 128) -> torch.Tensor:
    """trtllm-gen shuffleMatrixA row permutation (also the row part of shuffleMatrixSfA)."""
    block = 32 if epilogue_tile_m % 128 == 0 else 16
    require(rows % block == 0, f"shuffleMatrixA needs rows divisible by {block}, got {rows}")
    g = block // 8
    old = torch.arange(rows)
    i = old % block
    new = old - i + (i % g) * 8 + i // g
    perm = torch.empty(rows, dtype=torch.long)
    perm[new] = old
    return perm


def cute_sm90_up_gate(rows: int, act: ActivationSpec) -> torch.Tensor:
    """CuTe-DSL SM90 bf16 MoE GEMM1 rows: [up 0:32 | gate 0:32 | up 32:64 | gate 32:64 | ...]."""
    if not act.gated:
        return torch.arange(rows)
    gate, up = gate_up_rows(rows, act)
    inter = rows // 2
    require(inter % 32 == 0, f"the CuTe-DSL SM90 up/gate interleave needs I divisible by 32, got I={inter}")
    return torch.stack([up.reshape(-1, 32), gate.reshape(-1, 32)], dim=1).flatten()


def mono_pair_layout(rows: int) -> torch.Tensor:
    """mono_moe Pair_Layout of [gate | up] rows (N = rows/2, multiple of 64).

    For 64-gate-row block b, warpgroup wg and warp w, output rows 128b + 64wg + 16w + [0, 8) take
    gate rows 64b + 32wg + 8w + [0, 8) and the next 8 output rows take the same up rows.
    """
    require(rows % 2 == 0, f"mono_moe needs rows = 2N, got {rows}")
    n = rows // 2
    require(n % 64 == 0, f"mono_moe needs N divisible by 64, got N={n}")
    out = torch.empty(rows, dtype=torch.long)
    r = torch.arange(rows)
    b, rem = r // 128, r % 128
    wg, rem = rem // 64, rem % 64
    w, rem = rem // 16, rem % 16
    is_up, j = rem // 8, rem % 8
    src = 64 * b + 32 * wg + 8 * w + j
    out[r] = src + is_up * n
    return out


# ---------------------------------------------------------------- applying them

def permute_rows(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Rows (dim -2) of `t` reordered: out[..., r, :] = t[..., perm[r], :]."""
    require(t.shape[-2] == perm.numel(), f"row permutation of {perm.numel()} rows applied to {t.shape[-2]} rows")
    return t.index_select(-2, perm.to(t.device)).contiguous()


def block_perm(perm: torch.Tensor, block_rows: int) -> torch.Tensor | None:
    """The permutation of row blocks implied by a row permutation, or None if it splits a block."""
    if perm.numel() % block_rows:
        return None
    blocks = perm.view(-1, block_rows)
    first = blocks[:, 0]
    whole = (first % block_rows == 0) & (blocks == first[:, None] + torch.arange(block_rows)).all(1)
    return first // block_rows if bool(whole.all()) else None


def permute_qtensor_rows(q: QTensor, perm: torch.Tensor) -> QTensor:
    """A QTensor's rows reordered, scales and zero points with them.

    Per-row scales (block rows 1) follow the rows; one scale per slice (per-tensor) stays; 2-D
    blocks (DeepSeek 128x128) move as whole blocks, so `perm` must keep each block together.
    """
    br = q.block[0]
    nrows = q.shape[-2]
    scale_rows = q.scales.shape[-2]
    if scale_rows == 1 and br >= nrows:
        sperm = None
    elif br == 1:
        sperm = perm
    else:
        sperm = block_perm(perm, br)
        require(sperm is not None, f"this row permutation splits the {br}-row scale blocks of {q.spec.elem} "
                f"block {q.spec.block}: intermediate size must be a multiple of {br}")
    scales, zeros = q.scales, q.zeros
    if sperm is not None:
        scales = permute_rows(q.scales, sperm)
        zeros = None if q.zeros is None else permute_rows(q.zeros, sperm)
    return QTensor(permute_rows(q.codes, perm), scales, q.spec, q.shape, zeros, q.global_scale)


def to_block_major_k(t: torch.Tensor, block_k: int) -> torch.Tensor:
    """[..., M, K] -> [..., K/bk, M, bk] (trtllm-gen WeightLayout.BlockMajorK)."""
    m, k = t.shape[-2:]
    require(k % block_k == 0, f"BlockMajorK needs K={k} divisible by the block {block_k}")
    lead = t.shape[:-2]
    return t.reshape(*lead, m, k // block_k, block_k).transpose(-3, -2).contiguous()


def from_block_major_k(t: torch.Tensor) -> torch.Tensor:
    """Inverse of to_block_major_k."""
    kb, m, bk = t.shape[-3:]
    return t.transpose(-3, -2).reshape(*t.shape[:-3], m, kb * bk).contiguous()


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor viewed as uint8 along its last dim (FlashInfer shuffles bytes, not elements)."""
    return t.contiguous().view(torch.uint8)


def swizzle_expert_scales(scales: torch.Tensor, pad_value: int | float = 0) -> torch.Tensor:
    """[E, R, C] linear block scales -> [E, pad128(R), pad4(C)] in the 128x4 layout (per expert)."""
    e, r, c = scales.shape
    flat = swizzle_128x4(scales, pad_value)
    return flat.view(e, -(-r // 128) * 128, -(-c // 4) * 4)


def unswizzle_expert_scales(sw: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    require(sw.shape[-2] * sw.shape[-1] == swizzled_size(rows, cols),
            f"swizzled scales {tuple(sw.shape)} do not hold {rows}x{cols} scales")
    return unswizzle_128x4(sw.reshape(*sw.shape[:-2], -1), rows, cols)


# ---------------------------------------------------------------- SM90 mixed-input scale fold

def _fold_index(rows: int, kg: int, group_size: int, elem_bits: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Flat destination of each linear scale (r, c) in the SM90 fold, and the folded shape (no E)."""
    require(group_size > 0 and 128 % group_size == 0, f"group size {group_size} must divide 128")
    gpk = 128 // group_size
    phys = 128 // elem_bits
    require(phys >= 1 and phys % gpk == 0 and 64 % (phys // gpk) == 0,
            f"{elem_bits}-bit scales with group {group_size} do not fold into 16-byte rows")
    folded = 64 // (phys // gpk)
    require(rows % 64 == 0, f"SM90 scale fold needs rows divisible by 64, got {rows}")
    require(kg % gpk == 0, f"SM90 scale fold needs K/group={kg} divisible by {gpk}")
    r = torch.arange(rows).view(-1, 1)
    c = torch.arange(kg).view(1, -1)
    rr = r % 64
    idx = (((r // 64) * (kg // gpk) + c // gpk) * folded + rr % folded) * phys + (rr // folded) * gpk + c % gpk
    return idx.flatten(), (rows // 64, kg // gpk, folded, phys)


def sm90_mixed_scale_fold(scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """[E, rows, K/group] scales -> [E, rows/64, K/128, folded_m, physical_cols] (SM90 W4A16/W4A8).

    Scale (r, c) lands at [r // 64, c // gpk, (r % 64) % folded_m, ((r % 64) // folded_m) * gpk + c % gpk]
    with gpk = 128 / group (scale groups per 128 K), physical_cols = 16 bytes of scale elements and
    folded_m = 64 * gpk / physical_cols (E8M0 with group 32: 16 and 16; bf16 with group 128: 8 and 64).
    """
    require(scales.dim() == 3, f"SM90 scale fold needs [E, rows, K/group] scales, got {tuple(scales.shape)}")
    e, rows, kg = scales.shape
    idx, shape = _fold_index(rows, kg, group_size, scales.element_size() * 8)
    out = scales.new_empty(e, rows * kg)
    out[:, idx.to(scales.device)] = scales.reshape(e, -1)
    return out.view(e, *shape)


def sm90_mixed_scale_unfold(folded: torch.Tensor, group_size: int) -> torch.Tensor:
    """Inverse of sm90_mixed_scale_fold."""
    e, rb, kb, _, _ = folded.shape
    rows, kg = rb * 64, kb * (128 // group_size)
    idx, _ = _fold_index(rows, kg, group_size, folded.element_size() * 8)
    return folded.reshape(e, -1)[:, idx.to(folded.device)].view(e, rows, kg)
