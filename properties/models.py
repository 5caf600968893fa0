"""Real models' routed-expert shapes, as data: the GPU profile draws about one case in four at one of them
(strategies.cases), so the kernels are judged at the sizes they are deployed at, not only at small ones.

A whole layer rarely fits one example's memory, so a case takes a slice of the layer's experts: from
top_k (at least 2) up to as many as keep the bf16 weights under WEIGHT_BYTES. Sizes a record cannot take are rounded up
to its alignment, as a padding kernel path would run them (gpt-oss's 2880 under 128-aligned formats).
"""
from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st
from moecheck.backends.base import Capability


@dataclass(frozen=True)
class Model:
    name: str
    hidden: int
    inter: int  # per expert (moe_intermediate_size)
    experts: int  # routed experts of the whole layer
    top_k: int


MODELS = (
    Model("Qwen3-30B-A3B", hidden=2048, inter=768, experts=128, top_k=8),
    Model("DeepSeek-V3", hidden=7168, inter=2048, experts=256, top_k=8),
    Model("gpt-oss-120b", hidden=2880, inter=2880, experts=128, top_k=4),
    Model("Mixtral-8x7B", hidden=4096, inter=14336, experts=8, top_k=2),
)
SHARE = 4  # one draw in SHARE takes a model's shape
# bf16 w13 + w2 of the drawn experts. Modest on purpose: an example's peak is about 10x this (fp32 weights,
# the error model's float64 w^2 of a bucket and its fp32 root), and 8 workers share one H200's 141 GB:
# at 1 GiB the whole run of 2026-12-03 ran workers out of their 16.6 GiB share. 768 MiB keeps two of
# Mixtral's 336 MiB experts, so its top-2 is still drawn.
WEIGHT_BYTES = 768 << 20
MAX_TOKENS = 4096  # decode batches to prefill chunks


def weight_bytes(hidden: int, inter: int, experts: int) -> int:
    """bf16 bytes of w13 [E, 2I, H] and w2 [E, H, I]: the gated count, an upper bound for the others."""
    return 3 * hidden * inter * experts * 2


@dataclass(frozen=True)
class Fitted:
    """A model's shape as one record can take it."""

    name: str
    hidden: int
    inter: int
    experts: int  # the most experts of the slice
    top_k: int


def _up(n: int, a: int) -> int:
    return -(-n // a) * a


def fitted(cap: Capability, h_align: int, i_align: int) -> list[Fitted]:
    """Every model as `cap` can take it: sizes rounded up to the alignments, experts within the record and
    WEIGHT_BYTES, top_k within the record; a model of which not even one expert fits is left out."""
    out = []
    for m in MODELS:
        h, i = _up(m.hidden, h_align), _up(m.inter, i_align)
        e_hi = min(m.experts, WEIGHT_BYTES // weight_bytes(h, i, 1), cap.max_experts or m.experts)
        if e_hi >= 1:
            out.append(Fitted(m.name, h, i, e_hi, min(m.top_k, cap.max_top_k or m.top_k, e_hi)))
    return out


def tokens(lo: int, hi: int):
    """lo..hi (lo >= 1), by power-of-two octave: decode batches of a few tokens about as often as prefill."""
    j_lo, j_hi = lo.bit_length() - 1, hi.bit_length() - 1
    # Hypothesis leans toward a range's low end; the mirrored draw as often gives the top octaves that lean
    octave = st.integers(j_lo, j_hi)
    octave = st.one_of(octave, octave.map(lambda j: j_lo + j_hi - j))
    return octave.flatmap(lambda j: st.integers(max(lo, 2**j), min(hi, 2 ** (j + 1) - 1)))
