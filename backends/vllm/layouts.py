"""Pure-torch conversions from moecheck's QTensor storage to the layouts vLLM 0.24's MoE kernels read.

Everything here runs on CPU and is tested against moecheck's reference (test_vllm_layouts.py). What
needs a vLLM op (Marlin repacking, triton_kernels swizzles) is called in the adapters' prepare, not
re-implemented here. Sources (vLLM 0.24.0 wheel):
  - `fused_moe/fused_moe.py: fused_moe_kernel_gptq_awq`: int4 weights [E, N, K//2] uint8, element k in
    nibble (k % 2) * 4 of byte k // 2; no zero point -> value (nibble - 8) (uint4b8), int8 (byte - 128);
    zero points [E, N//2, K//g] uint8, element n in nibble (n % 2) * 4 (`b_zp_shifter`).
  - `quantization/moe_wna16.py: create_weights / convert_awq_tensor`: the same shapes, and AWQ's int32
    nibble order [0, 2, 4, 6, 1, 3, 5, 7] (undone there with [0, 4, 1, 5, 2, 6, 3, 7]).
  - `fused_moe/oracle/int_wna16.py`: GPTQ qweight [E, K//8, N] int32 (8 nibbles along K, element
    k at bits 4 * (k % 8)) into `ops.gptq_marlin_moe_repack`; AWQ qweight [E, K, N//8] and qzeros
    [E, K//g, N//8] int32 into `ops.awq_marlin_moe_repack` / `moe_awq_to_marlin_zero_points`.
  - `quantization/utils/w8a8_utils.py: requantize_with_max_scale`: per-tensor requantization against
    the largest scale (the model for `fp8_block_to_per_tensor`).
"""
from __future__ import annotations

import torch
from moecheck.reference.activations import ActivationSpec
from moecheck.reference.codecs import E4M3
from moecheck.reference.errors import require
from moecheck.reference.layouts import swizzle_128x4, unpack_nibbles
from moecheck.reference.lora import MoELoRA
from moecheck.reference.qtensor import QTensor

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ: nibble slot i of an int32 holds column 8j + AWQ_ORDER[i]


def _as_int32(u: torch.Tensor) -> torch.Tensor:
    """uint32 values held in int64 -> int32 with the same bits."""
    return torch.where(u >= 2**31, u - 2**32, u).to(torch.int32)


def _nibbles_of_int32(w: torch.Tensor) -> torch.Tensor:
    """int32 [..., C] -> [..., C, 8] nibbles, slot i = bits 4i..4i+3."""
    u = w.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, 4, device=w.device)
    return (u[..., None] >> shifts) & 0xF


def _pack_slots(q8: torch.Tensor) -> torch.Tensor:
    """[..., C, 8] nibble values (slot i) -> int32 [..., C]."""
    shifts = torch.arange(0, 32, 4, device=q8.device)
    return _as_int32((q8.to(torch.int64) << shifts).sum(-1))


# ---- int4 / int8 codes: moecheck's signed codes -> vLLM's biased unsigned codes ----

def int4_packed_to_uint4b8(packed: torch.Tensor) -> torch.Tensor:
    """moecheck int4 storage (two's-complement nibbles, element 2i low) -> uint4b8 bytes, same order.

    x in [-8, 7] as a nibble is x & 0xF; x + 8 is that nibble with its top bit flipped, so each byte
    is XORed with 0x88. The byte order (element k in nibble (k % 2) * 4) is what the Triton WNA16
    kernel reads, so nothing else moves.
    """
    require(packed.dtype == torch.uint8, f"int4 storage must be uint8, got {packed.dtype}")
    return packed ^ 0x88


def int8_to_uint8b128(codes: torch.Tensor) -> torch.Tensor:
    require(codes.dtype == torch.int8, f"int8 codes must be torch.int8, got {codes.dtype}")
    return (codes.to(torch.int16) + 128).to(torch.uint8)


def pack_zeros_along_n(zeros: torch.Tensor) -> torch.Tensor:
    """Zero points [..., N, G] (values 0..15) -> [..., N//2, G] uint8, row n in nibble (n % 2) * 4."""
    require(zeros.shape[-2] % 2 == 0, f"4-bit zero points pack two rows per byte: N={zeros.shape[-2]} must be even")
    z = (zeros.to(torch.int16) & 0xF).to(torch.uint8)
    return z[..., 0::2, :] | (z[..., 1::2, :] << 4)


def unpack_zeros_along_n(packed: torch.Tensor) -> torch.Tensor:
    lo, hi = packed & 0xF, (packed >> 4) & 0xF
    return torch.stack([lo, hi], dim=-2).flatten(-3, -2)


# ---- GPTQ / AWQ int32 packing (Marlin's inputs) ----

def gptq_pack(q: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit values in moecheck's logical layout [..., N, K] -> GPTQ qweight [..., K//8, N] int32.

    GPTQ packs along K (the input dim): element k sits in bits 4 * (k % 8) of row k // 8.
    """
    N, K = q.shape[-2:]
    require(K % 8 == 0, f"GPTQ packs 8 values per int32 along K: K={K} must be a multiple of 8")
    qt = q.transpose(-2, -1).reshape(*q.shape[:-2], K // 8, 8, N)  # [.., K//8, slot, N]
    return _pack_slots(qt.transpose(-2, -1))


def gptq_unpack(w: torch.Tensor) -> torch.Tensor:
    """Inverse of gptq_pack: [..., K//8, N] int32 -> [..., N, K] int16."""
    nib = _nibbles_of_int32(w)  # [.., K//8, N, 8]
    K8, N = w.shape[-2:]
    return nib.transpose(-2, -1).reshape(*w.shape[:-2], K8 * 8, N).transpose(-2, -1).to(torch.int16)


def awq_pack(q: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit values [..., R, C] -> AWQ int32 [..., R, C//8], packed along C (the output dim)
    in AutoAWQ's interleaved order. AWQ weights: q is [K, N]; AWQ zeros: [K//g, N]."""
    C = q.shape[-1]
    require(C % 8 == 0, f"AWQ packs 8 values per int32 along N: {C} must be a multiple of 8")
    cols = q.reshape(*q.shape[:-1], C // 8, 8)
    return _pack_slots(cols[..., list(AWQ_ORDER)])


def awq_unpack(w: torch.Tensor) -> torch.Tensor:
    nib = _nibbles_of_int32(w)  # [..., C//8, slot]
    inv = sorted(range(8), key=lambda i: AWQ_ORDER[i])  # slot holding column j
    return nib[..., inv].flatten(-2).to(torch.int16)


def uint4_values(q: QTensor) -> torch.Tensor:
    """Logical unsigned 4-bit values [..., N, K] of an int4 (as uint4b8) or uint4 QTensor."""
    require(q.spec.elem in ("int4", "uint4"), f"expected an int4/uint4 QTensor, got {q.spec.elem}")
    raw = unpack_nibbles(q.codes)  # nibble bits, unsigned
    return raw ^ 0x8 if q.spec.elem == "int4" else raw


def group_size(q: QTensor) -> int:
    br, bc = q.block
    require(br == 1, f"weight-only group quantization needs (1, g) blocks, got {q.spec.block}")
    return bc


# ---- gate/up order of GEMM1 ----

def gate_up_rows(spec: ActivationSpec, inter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate rows, up rows) of a gated activation's [2I] GEMM1 output, by moecheck's ActivationSpec."""
    require(spec.gated, f"gate/up rows need a gated activation, got {spec.kind!r}")
    idx = torch.arange(2 * inter)
    first, second = (idx[0::2], idx[1::2]) if spec.interleaved else (idx[:inter], idx[inter:])
    return (first, second) if spec.order == "gate_up" else (second, first)


def relayout_gate_up(t: torch.Tensor, src: ActivationSpec, dst: ActivationSpec, dim: int = -2) -> torch.Tensor:
    """Reorder the 2I rows (along `dim`) of w13 / its scales / its bias from src's layout to dst's."""
    n = t.shape[dim]
    require(n % 2 == 0, f"gate/up relayout needs an even row count, got {n}")
    sg, su = gate_up_rows(src, n // 2)
    dg, du = gate_up_rows(dst, n // 2)
    perm = torch.empty(n, dtype=torch.long)
    perm[dg], perm[du] = sg, su  # dst row r takes src row perm[r]
    return t.index_select(dim % t.dim(), perm.to(t.device))


# ---- FP8 block scales -> one scale per expert (the CUTLASS per-tensor path) ----

def fp8_block_to_per_tensor(q: QTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-scaled FP8 weights [E, N, K] -> (e4m3 codes [E, N, K], fp32 scale [E]).

    Each expert is dequantized exactly (code x block scale) and re-quantized against its largest
    block scale, RNE and saturating, as `requantize_with_max_scale` does for fused per-tensor shards.
    Blocks whose scale is below the maximum lose mantissa bits (and small values flush to the E4M3
    subnormals): this is the accuracy the conversion gives away.
    """
    require(q.spec.elem == "e4m3" and q.codes.dtype == torch.float8_e4m3fn,
            f"fp8_block_to_per_tensor needs e4m3 block-scaled weights, got {q.spec.elem}")
    require(len(q.shape) == 3, f"expected [E, N, K] weights, got shape {q.shape}")
    s = q.scale_values()
    s_max = s.reshape(s.shape[0], -1).amax(-1)
    deq = q.dequantize()
    safe = torch.where(s_max > 0, s_max, torch.ones_like(s_max))
    codes = E4M3.round(deq / safe[:, None, None]).to(torch.float8_e4m3fn)
    return codes, s_max.float()


# ---- NVFP4 for the CUTLASS FP4 MoE ----

def nvfp4_for_cutlass(q: QTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NVFP4 QTensor [E, N, K] -> (packed e2m1 [E, N, K//2] uint8, swizzled e4m3 block scales
    [E, N_pad, (K//16)_pad], global scale in the kernels' quant direction [E] = 1 / moecheck's)."""
    require(q.global_scale is not None, "nvfp4_for_cutlass needs an NVFP4 QTensor (global scale)")
    E, N, K = q.shape
    rows, cols = q.scales.shape[-2:]
    sw = swizzle_128x4(q.scales.view(torch.uint8)).view(torch.float8_e4m3fn)
    pr, pc = -(-rows // 128) * 128, -(-cols // 4) * 4
    g = q.global_scale.float()
    return q.codes, sw.reshape(E, pr, pc), torch.where(g > 0, 1.0 / g, torch.ones_like(g))


# ---- MoE-LoRA: moecheck's MoELoRA -> vLLM's stacked LoRA tensors ----

def lora_stacks(lora: MoELoRA, dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, ...]]:
    """vLLM `FusedMoEWithLoRA` buffers (lora/layers/fused_moe.py `_create_lora_{a,b}_weights`):
    w13 A/B as two slices (gate, up) [L, E, r, H] / [L, E, I, r]; w2 A/B [L, E, r, I] / [L, E, H, r].
    The LoRA scaling is folded into B, as vLLM does when it loads an adapter."""
    c = lambda t: t.to(dtype).contiguous()  # noqa: E731
    s = float(lora.scaling)
    return {
        "w13_lora_a_stacked": (c(lora.gate_a), c(lora.up_a)),
        "w13_lora_b_stacked": (c(lora.gate_b * s), c(lora.up_b * s)),
        "w2_lora_a_stacked": (c(lora.down_a),),
        "w2_lora_b_stacked": (c(lora.down_b * s),),
    }


def adapter_enabled(num_adapters: int, device) -> torch.Tensor:
    """int32 [L + 1]: slot i = 1 when adapter i is loaded (FusedMoEWithLoRA.adapter_enabled)."""
    out = torch.zeros(num_adapters + 1, dtype=torch.int32, device=device)
    out[:num_adapters] = 1
    return out


def token_lora_mapping(token_lora: torch.Tensor) -> torch.Tensor:
    """moecheck's [T] adapter ids (-1 = none) -> vLLM's int32 token->LoRA map (-1 = none, same meaning)."""
    require(not token_lora.is_floating_point(), f"token_lora must be integer, got {token_lora.dtype}")
    return token_lora.to(torch.int32).contiguous()

