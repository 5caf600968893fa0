"""FlashInfer's MoE-LoRA kernels (bgmv_moe shrink/expand) as the LoRA part of an MoE backend.

The expert GEMMs are plain fp32 torch (a per-expert loop, as the reference does); the LoRA deltas come
from FlashInfer. Signatures read in site-packages/flashinfer/fused_moe/moe_lora_delta.py (0.7.2.post1):
  bgmv_moe_gemm1_lora_delta(hidden_states [T,H], w_ptr_a [2,E] int64, lora_stride_a, w_ptr_b [2,E],
      lora_stride_b, topk_ids [T,k], lora_ids [T] (-1 = none), rank, intermediate_size, *, lora_dtype=bf16,
      scale=1.0, out_dtype=bf16) -> [T, k, 2I], per (token, slot), unweighted, [gate | up]
  bgmv_moe_gemm2_lora_delta(gemm1_activation_output [rows, I] (permuted), expanded_idx_to_permuted_idx [T*k],
      w_ptr_a [1,E], lora_stride_a, w_ptr_b [1,E], lora_stride_b, topk_ids, topk_weights, lora_ids, rank,
      hidden_size, *, lora_dtype, scale, out_dtype) -> [T, H], routing-weighted, to add after the combine
and fused_moe/bgmv_moe.py fill_w_ptr(w_ptr, weights [L, E, rank|feat, feat|rank], num_experts, slice_id) ->
lora stride. The LoRA banks have moecheck's MoELoRA layout (A [L,E,r,in], B [L,E,out,r]), as the upstream test
tests/moe/test_bgmv_moe_lora_delta.py builds them. out_dtype=float32 keeps both deltas unrounded; the shrink
output is stored in lora_dtype (bf16): Rounding.lora_mid. A case without LoRA runs the kernels with one
all-zero rank-1 adapter and every token at -1, whose delta must come back exactly zero.

The kernels exist only for compiled (narrow, wide) pairs (csrc/bgmv_moe/moe_bgmv_config.h FOR_MOE_ALL_WIDE /
_NARROW; anything else raises "Dimension pair not compiled"): ranks 8/16/32/64 and the widths in WIDTHS.
The adapter zero-pads hidden, intermediate and rank up to the next compiled size (inputs, A rows/columns,
B rows/columns) and slices the outputs back: zeros add exact zeros, so the numbers under test are the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from moecheck.backends.base import Capability, Limitation
from moecheck.backends.dispatch import dispatch, weighted_sum
from moecheck.backends.flashinfer import common as C
from moecheck.backends.problem import MoEProblem
from moecheck.reference import activations as act_mod
from moecheck.reference.errmodel.table import BF16_LORA_SHRINK
from moecheck.reference.errors import require
from moecheck.reference.grouped import loop_mm
from moecheck.reference.lora import MoELoRA
from moecheck.reference.moe import ACT, Rounding

LORA_DTYPE = torch.bfloat16
_BANKS = ("gate_a", "gate_b", "up_a", "up_b", "down_a", "down_b")
RANKS = (8, 16, 32, 64)  # moe_bgmv_config.h FOR_MOE_ALL_WIDE_NARROW
WIDTHS = (384, 736, 768, 1024, 1344, 1472, 1536, 1856, 2048, 2112, 2688, 2816, 2880, 2944, 3072, 4096, 5120,
          5888, 7168, 8192, 10240, 14336, 16384, 28672)  # moe_bgmv_config.h FOR_MOE_ALL_WIDE


def compiled(n: int, sizes: tuple[int, ...], what: str) -> int:
    """The smallest compiled size >= n."""
    fit = [s for s in sizes if s >= n]
    require(bool(fit), f"bgmv_moe has no kernel for {what} {n} (largest compiled: {sizes[-1]})")
    return fit[0]


def _pad_bank(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return F.pad(t, (0, cols - t.shape[-1], 0, rows - t.shape[-2]))


def _zero_lora(p: MoEProblem) -> tuple[MoELoRA, torch.Tensor]:
    E, H, I = p.experts, p.hidden, p.inter
    z = lambda *s: torch.zeros(1, E, *s, device=p.device)  # noqa: E731
    return MoELoRA(z(1, H), z(I, 1), z(1, H), z(I, 1), z(1, I), z(H, 1)), torch.full((p.tokens,), -1, dtype=torch.int64, device=p.device)


@dataclass
class BgmvMoELoRA(C.FlashInferBackend):
    def prepare(self, p: MoEProblem) -> dict:
        require(p.fmt.name in self.capability.formats, f"{self.name} runs unquantized experts, not format {p.fmt.name}")
        require(p.expert_map is None, "bgmv_moe indexes w_ptr by expert id: no expert_map (EP)")
        require(p.activation.gated, "the FC1 LoRA delta is a two-slice (gate, up) projection: gated activations only")
        lora, ids = (p.lora, p.token_lora) if p.lora is not None else _zero_lora(p)
        r = lora.gate_a.shape[2]
        rp, hp, ip = compiled(r, RANKS, "rank"), compiled(p.hidden, WIDTHS, "width"), compiled(p.inter, WIDTHS, "width")
        shapes = {"gate_a": (rp, hp), "up_a": (rp, hp), "gate_b": (ip, rp), "up_b": (ip, rp), "down_a": (rp, ip), "down_b": (hp, rp)}
        banks = {k: _pad_bank(getattr(lora, k).to(device=p.device, dtype=LORA_DTYPE), *shapes[k]).contiguous() for k in _BANKS}
        fm = C.fused_moe()
        E = p.experts
        tables = {}
        for name, slices in (("a13", ("gate_a", "up_a")), ("b13", ("gate_b", "up_b")), ("a2", ("down_a",)), ("b2", ("down_b",))):
            ptr = torch.zeros(len(slices), E, dtype=torch.int64, device=p.device)
            stride = 0
            for s, bank in enumerate(slices):
                stride = fm.fill_w_ptr(ptr, banks[bank], E, s)
            tables[name] = (ptr, stride)
        return dict(banks=banks, tables=tables, lora_ids=ids.to(p.device).long(), rank=rp, hp=hp, ip=ip,
                    scaling=float(lora.scaling), w13=p.w13.float(), w2=p.w2.float())

    def run(self, w: dict, p: MoEProblem, out=None) -> torch.Tensor:
        fm = C.fused_moe()
        dt, act, I = p.hidden_states.dtype, p.activation, p.inter
        r = dispatch(p)
        counts = torch.diff(r.offs, prepend=r.offs.new_zeros(1)).tolist()
        (pa, sa), (pb, sb) = w["tables"]["a13"], w["tables"]["b13"]
        hp, ip = w["hp"], w["ip"]
        d13 = C.call(
            fm, "bgmv_moe_gemm1_lora_delta",
            F.pad(p.hidden_states, (0, hp - p.hidden)), pa, sa, pb, sb, p.topk_ids, w["lora_ids"], w["rank"], ip,
            lora_dtype=LORA_DTYPE, scale=w["scaling"], out_dtype=torch.float32)
        d = d13.reshape(p.tokens * p.top_k, 2 * ip)[r.slot]
        h = loop_mm(p.hidden_states[r.tok], w["w13"], counts, fast=False) + act_mod.join_gate_up(d[:, :I], d[:, ip:ip + I], act)
        if p.w13_bias is not None:
            h = h + p.w13_bias.float()[r.expert]
        y = act_mod.apply(h.to(dt), act).to(dt)  # gemm1_out and act_out rounded to the activation dtype
        o = loop_mm(y, w["w2"], counts, fast=False)
        if p.w2_bias is not None:
            o = o + p.w2_bias.float()[r.expert]
        acc = weighted_sum(o, r, p)
        perm = torch.full((p.tokens * p.top_k,), -1, dtype=torch.int64, device=p.device)
        perm[r.slot] = torch.arange(r.slot.numel(), device=p.device)
        (qa, ta), (qb, tb) = w["tables"]["a2"], w["tables"]["b2"]
        d2 = C.call(
            fm, "bgmv_moe_gemm2_lora_delta",
            F.pad(y, (0, ip - I)), perm, qa, ta, qb, tb, p.topk_ids, p.topk_weights.float(), w["lora_ids"], w["rank"],
            hp, lora_dtype=LORA_DTYPE, scale=w["scaling"], out_dtype=torch.float32)
        res = (acc + d2.float()[:, :p.hidden]).to(dt)
        if out is None:
            return res
        out.copy_(res)
        return out


BACKENDS = [
    BgmvMoELoRA(
        name="flashinfer_lora_bgmv",
        spies=(f"{C.FUSED_MOE}:bgmv_moe_gemm1_lora_delta", f"{C.FUSED_MOE}:bgmv_moe_gemm2_lora_delta"),
        description="FlashInfer bgmv_moe shrink/expand LoRA deltas on fp32 torch expert GEMMs",
        capability=Capability(
            formats=frozenset({"bf16"}), archs=frozenset({(9, 0), (10, 0), (10, 3)}),
            activations=frozenset({"silu", "silu_up_gate", "gelu", "gelu_tanh", "swigluoai"}), lora=True, bias=True,
            out_buffer=True, rounding=Rounding(gemm1_out=ACT, act_out=ACT, lora_mid=ACT), requires=C.REQUIRES,
            numerics=(BF16_LORA_SHRINK,),
            limitations=(C.UNVERIFIED,
                         Limitation("kernels compiled for ranks 8/16/32/64 and widths 384..28672 only: hidden, intermediate "
                                    "and rank are zero-padded to the next compiled size",
                                    "https://github.com/flashinfer-ai/flashinfer/blob/main/csrc/bgmv_moe/moe_bgmv_config.h"),
                         Limitation("LoRA banks are cast to bf16 (lora_dtype); the upstream test validates SM90, SM100, SM103",
                                    "https://github.com/flashinfer-ai/flashinfer/blob/main/tests/moe/test_bgmv_moe_lora_delta.py")),
            verified=(), deterministic=False)),
]
