"""Hypothesis strategies: draw a case's structure (+ a seed) within what a backend's record allows.

Every structure the record allows is drawn often enough to appear in a ci-profile run (10 examples),
without relying on pinned cases (tests/properties/test_power.py measures it with them off):
  - tokens spread over the whole range, a small half and a large half; 0, 1, 2 only in the edge tests;
  - sizes as multiples of the alignment the format and backend need, large ones as often as small, plus
    deliberately awkward ones (not multiples of 16/32/128/256) where the record allows any size;
  - block formats with two or more scale blocks in each direction about half the time;
  - router weight on the input, expert maps, LoRA and biases about half the time where claimed, and
    every claimed activation;
  - routing with skew, everything on one expert and empty experts; values with outliers, tiny
    magnitudes near scale underflow and block maxima on rounding boundaries;
  - on the GPU (device_kind "cuda", numerics properties), one case in four at a real model's expert shape
    (properties/models.py: H, I and top_k of Qwen3-30B-A3B, DeepSeek-V3, gpt-oss-120b, Mixtral-8x7B; a
    slice of its experts under a weight budget) with 3..4096 tokens, each octave about as often. The CPU
    profile draws as before.
"""
from __future__ import annotations

import math

from hypothesis import currently_in_test_context, event
from hypothesis import strategies as st
from moecheck.backends.base import Backend
from moecheck.properties import models
from moecheck.properties.case import (
    ROUTER_LOGITS,
    ROUTINGS,
    VALUES,
    Case,
    weight_block_rows,
)
from moecheck.reference.activations import ACTIVATIONS
from moecheck.reference.formats import get_format

# sizes: (max tokens, max hidden, max inter, max experts) per budget; CPU CI keeps them small
LIMITS = {"cpu": (96, 384, 256, 10), "cuda": (600, 2048, 1024, 64)}
AWKWARD = (1, 3, 7, 15, 17, 31, 33, 100, 127, 129, 255, 257)


def up(n: int, align: int) -> int:
    """n rounded up to a multiple of align."""
    return -(-n // align) * align


def _size(align: int, hi: int):
    """A multiple of `align` up to ~hi: small, large and (where align allows any size) awkward ones in
    equal shares. Block formats (align >= 64) take two or more blocks three times in four."""
    hi = max(hi, align)
    m_hi = max(1, hi // align)
    half = max(1, m_hi // 2)
    if align >= 64 and m_hi >= 2:
        return st.sampled_from([1, *range(2, m_hi + 1), *range(2, m_hi + 1), *range(2, m_hi + 1)]).map(lambda m: m * align)
    small, large = st.integers(1, half).map(lambda m: m * align), st.integers(half, m_hi).map(lambda m: m * align)
    if align == 1:
        return st.one_of(st.sampled_from([a for a in AWKWARD if a <= hi]), small, large)
    return st.one_of(small, large)


# Edge contracts, each a test of its own (property edge_contract): name -> what the draw pins.
# The numerics properties never draw these token counts, so a backend that fails T=0 is still
# judged on everything else.
EDGE_TOKENS = 3  # numerics draw T >= this; 0, 1 and 2 belong to the edges
EDGES = {
    "empty_batch": "T = 0",
    "one_token": "T = 1",
    "two_tokens": "T = 2",
    "more_experts_than_tokens": "E > T",
    "top_k_equals_experts": "top_k = E",
    "expert_with_no_rows": "some local expert receives no token",
}


def _tokens(draw, cap, t_hi: int, edge: str | None, experts: int) -> int:
    if edge == "empty_batch":
        return 0
    if edge in ("one_token", "two_tokens"):
        return 1 if edge == "one_token" else 2
    if edge == "more_experts_than_tokens":
        return draw(st.integers(1, max(1, experts - 1)))
    lo = max(EDGE_TOKENS, cap.min_tokens)
    hi = max(t_hi, lo)
    mid = min(max(lo, 16), hi)
    # small batches, large ones and the largest (where the rms and bias verdicts have elements to judge)
    return draw(st.one_of(st.integers(lo, mid), st.integers(mid, hi), st.integers(max(mid, hi // 2), hi)))


def edge_applies(backend: Backend, edge: str) -> str | None:
    """None if the record allows this edge, else why not."""
    cap = backend.capability
    e_max = min(LIMITS["cpu"][3], cap.max_experts or 10**9)
    if edge in ("more_experts_than_tokens", "expert_with_no_rows") and e_max < 2:
        return f"the record allows {e_max} expert(s)"
    if edge == "more_experts_than_tokens" and cap.min_tokens > 1:
        return f"the record needs >= {cap.min_tokens} tokens"
    return None


def _blocked_size(blk: int, align: int, hi: int):
    """For 2-D scale blocks (blk > 1): two or three blocks (ragged edges included) three times in four,
    so a scale read from the wrong block shows; else _size."""
    if blk <= 1:
        return _size(align, hi)
    several = st.integers(blk + 1, 3 * blk).map(lambda n: -(-n // align) * align)
    return st.one_of(_size(align, hi), several, several, several)


@st.composite
def cases(draw, backend: Backend, fmt_name: str, prop: str, device_kind: str = "cpu", edge: str | None = None) -> Case:
    cap = backend.capability
    fmt = get_format(fmt_name)
    t_max, h_max, i_max, e_max = LIMITS[device_kind]
    blk = weight_block_rows(fmt)
    if blk > 1:  # 128x128 scale blocks: room for three in each direction
        h_max, i_max = max(h_max, 3 * blk), max(i_max, 3 * blk)
    h_align = math.lcm(cap.hidden_align, fmt.k_multiple)
    i_align = math.lcm(cap.inter_align, fmt.k_multiple)
    if prop == "padded_equals_unpadded":  # the point is sizes the kernel cannot take unpadded
        h_align, i_align = fmt.k_multiple, math.lcm(fmt.k_multiple, weight_block_rows(fmt))
    e_max = min(e_max, cap.max_experts or e_max)
    e_min = 2 if edge in ("more_experts_than_tokens", "expert_with_no_rows") else 1
    model = _model(draw, cap, h_align, i_align) if device_kind == "cuda" and edge is None else None
    if model:  # the slice of the layer that fits; 2 or more where there is room (routing kinds, ep_remote)
        e_max, e_min = model.experts, max(model.top_k, 2)
    routing = draw(_router(cap, e_max, cap.min_group_experts if model else 1)) if prop in ROUTING_PROPERTIES else {}
    if routing.get("n_group", 1) > 1:  # experts in whole groups
        per_lo = cap.min_group_experts
        experts = routing["n_group"] * draw(st.integers(per_lo, max(per_lo, e_max // routing["n_group"])))
    elif model:  # the whole slice half the time
        experts = draw(st.one_of(st.just(e_max), st.integers(min(e_min, e_max), e_max)))
    else:
        experts = draw(st.integers(min(e_min, e_max), e_max))
    ep_remote = draw(st.integers(0, experts - 1)) if cap.expert_map and experts > 1 and draw(st.booleans()) else 0
    k_max = min(experts, cap.max_top_k or experts, 8)
    on_input = cap.weights_on_input and edge is None and draw(st.booleans())
    if edge == "top_k_equals_experts":
        experts = min(experts, cap.max_top_k or 8, 8)
        ep_remote = 0
    if edge == "expert_with_no_rows":  # case.build leaves odd experts empty when the even ones can hold top_k
        k_max, ep_remote = max(1, min(k_max, (experts + 1) // 2)), 0
    # real models route to 2..8 experts: the upper half as often as the whole range
    k_any = st.one_of(st.integers(1, k_max), st.integers(max(1, (k_max + 1) // 2), k_max))
    if model:  # the model's own top_k, within the record and the slice
        top_k = 1 if on_input else min(model.top_k, k_max)
        t_lo = max(EDGE_TOKENS, cap.min_tokens)
        tokens = draw(models.tokens(t_lo, max(min(models.MAX_TOKENS, cap.max_tokens or models.MAX_TOKENS), t_lo)))
    else:
        top_k = 1 if on_input else experts if edge == "top_k_equals_experts" else draw(k_any)
        t_hi = max(min(t_max, cap.max_tokens or t_max), cap.min_tokens)
        tokens = _tokens(draw, cap, t_hi, edge, experts)
    acts = sorted(a for a in cap.activations if a in ACTIVATIONS)
    lora_ok = cap.lora and prop != "padded_equals_unpadded"
    if routing:
        per = experts // routing.get("n_group", 1)
        top_k = min(top_k, routing.get("topk_group", 1) * per)
        on_input = on_input and routing["router"] == "llama4"
    return Case(
        backend=backend.name, format=fmt_name, property=prop, tokens=tokens,
        hidden=model.hidden if model else max(draw(_blocked_size(blk, h_align, h_max)), up(cap.min_hidden, h_align)),
        inter=model.inter if model else max(draw(_blocked_size(blk, i_align, i_max)), up(cap.min_inter, i_align)),
        experts=experts, top_k=top_k,
        dtype=draw(st.sampled_from(sorted(str(d).replace("torch.", "") for d in cap.dtypes
                                          if str(d).replace("torch.", "") in ("bfloat16", "float16")))),
        activation=draw(st.sampled_from(acts)),
        routing="empty_experts" if edge == "expert_with_no_rows" else draw(st.sampled_from(ROUTINGS)),
        # on the input (Llama4: top-1 sigmoid, not renormalized) a renormalized top-1 weight is 1.0,
        # and a weight of 1 hides where, or how often, it is applied
        renormalize=False if on_input else draw(st.booleans()), values=draw(st.sampled_from([v for v in VALUES if cap.tiny_values or v != "tiny"])), ep_remote=ep_remote,
        bias=cap.bias and draw(st.booleans()),
        lora_adapters=draw(st.integers(0, 3)) if lora_ok else 0, lora_rank=draw(st.sampled_from([1, 4, 8])),
        weights_on_input=on_input, seed=draw(st.integers(0, 2**31 - 1)), **routing,
        gen=2 if device_kind == "cuda" else 1,  # GPU draws are made on the GPU (properties/rng.py)
    )


ROUTING_PROPERTIES = ("routes_like_reference", "matches_reference_from_logits")


def _model(draw, cap, h_align: int, i_align: int) -> models.Fitted | None:
    """One draw in models.SHARE: a real model's shape as the record takes it (else None). None comes
    first, so a failure shrinks toward the small sizes when it shows there too."""
    fits = models.fitted(cap, h_align, i_align)
    if not fits:
        return None
    # one sampled_from: st.one_of(none(), none(), none(), models) measured about half model shapes here
    model = draw(st.sampled_from([None] * ((models.SHARE - 1) * len(fits)) + fits))
    if model and currently_in_test_context():  # a trace: --hypothesis-show-statistics counts them
        event(f"model shape: {model.name}")
    return model


@st.composite
def _router(draw, cap, e_max: int, per_lo: int = 1) -> dict:
    """A router kind the record claims, with its group structure, scaling and a kind of logits.

    Groups of at least per_lo experts fit in e_max (a model's slice is a budget, not a soft limit).
    deepseek_v3 draws groups with at least one dropped (the group mask is only tested then), negative
    logits often (a 0-instead-of-minus-infinity mask only shows when biased scores are below 0), and
    DeepSeek-V3's own routed scaling factor (2.5) half the time."""
    kind = draw(st.sampled_from(sorted(cap.routers)))
    scales = [1.0, 2.5] if cap.routed_scaling else [1.0]
    if kind != "deepseek_v3":
        return {"router": kind, "router_logits": draw(st.sampled_from(ROUTER_LOGITS)),
                "routed_scaling": draw(st.sampled_from([1.0, *scales]))}
    n_group = draw(st.sampled_from([g for g in (2, 4, 8) if g * per_lo <= e_max] or [1]))
    return {"router": kind, "n_group": n_group, "topk_group": draw(st.integers(1, max(1, n_group - 1))),
            "router_logits": draw(st.sampled_from(["negative", "negative", *ROUTER_LOGITS])),
            "routed_scaling": draw(st.sampled_from(scales))}


def fit(case: Case, backend: Backend) -> Case:
    """Adjust a pinned case to a backend/format: sizes up to the alignments, unsupported features off."""
    cap = backend.capability
    fmt = get_format(case.format)
    hal = math.lcm(fmt.k_multiple, 1 if case.property == "padded_equals_unpadded" else cap.hidden_align)
    ial = math.lcm(fmt.k_multiple, weight_block_rows(fmt) if case.property == "padded_equals_unpadded" else cap.inter_align)
    act = case.activation if case.activation in cap.activations else sorted(cap.activations)[0]
    dtype = case.dtype if any(str(d).endswith(case.dtype) for d in cap.dtypes) else str(sorted(cap.dtypes, key=str)[0]).replace("torch.", "")
    return case.with_(
        tokens=case.tokens if case.property == "edge_contract" else max(case.tokens, cap.min_tokens),
        hidden=up(max(case.hidden, cap.min_hidden), hal), inter=up(max(case.inter, cap.min_inter), ial),
        activation=act, dtype=dtype,
        ep_remote=case.ep_remote if cap.expert_map else 0, bias=case.bias and cap.bias,
        lora_adapters=case.lora_adapters if cap.lora else 0,
        weights_on_input=case.weights_on_input and cap.weights_on_input,
        top_k=min(case.top_k, cap.max_top_k or case.top_k))
