"""The GPU profile draws real models' expert shapes (properties/models.py) within each record; the CPU
profile never does. Records load on the CPU even where their backend is unavailable."""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from moecheck.backends import registry
from moecheck.properties import models
from moecheck.properties.case import weight_block_rows
from moecheck.properties.strategies import EDGE_TOKENS, LIMITS, cases, fit
from moecheck.reference.formats import get_format

SEEDS, PER_SEED = 12, 20  # Hypothesis mutates an example into runs of like ones: many short runs mix better


def drawn(strategy, seeds: int = SEEDS, per_seed: int = PER_SEED) -> list:
    out = []
    for s in range(seeds):
        @seed(s)
        @settings(max_examples=per_seed, database=None, phases=[Phase.generate], deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def collect(c):
            out.append(c)

        collect()
    return out


def aligns(b, fmt_name: str, prop: str) -> tuple[int, int]:
    cap, fmt = b.capability, get_format(fmt_name)
    if prop == "padded_equals_unpadded":
        return fmt.k_multiple, math.lcm(fmt.k_multiple, weight_block_rows(fmt))
    return math.lcm(cap.hidden_align, fmt.k_multiple), math.lcm(cap.inter_align, fmt.k_multiple)


def shapes(b, fmt_name: str, prop: str) -> dict:
    return {(m.hidden, m.inter): m for m in models.fitted(b.capability, *aligns(b, fmt_name, prop))}


def surely_model(c, table) -> bool:
    """A model's (H, I) with something no other draw has: Qwen3's 2048x768 is also a size the rest draw."""
    t_max, h_max, i_max, e_max = LIMITS["cuda"]
    return (c.hidden, c.inter) in table and (c.hidden > h_max or c.inter > i_max or c.tokens > t_max or c.experts > e_max)


# (backend, format, property): plain, 8-aligned, 128/256-aligned (gpt-oss rounded up), capped experts and
# tokens (torch_compile), 2-D blocks under padding, a grouped router with >= 2 experts per group
RECORDS = [
    ("cpu_loop", "bf16", "matches_reference"),
    ("torch_grouped_mm", "bf16", "matches_reference"),
    ("vllm_marlin_mxfp4", "mxfp4_bf16", "matches_reference"),
    ("torch_compile", "bf16", "permutation_equivariant"),
    ("cpu_loop", "fp8_block", "padded_equals_unpadded"),
    ("vllm_grouped_topk", "bf16", "routes_like_reference"),
]


@pytest.fixture(scope="module")
def backends():
    return registry.load_all()


@pytest.fixture(scope="module")
def gpu_draws(backends):
    return {r: drawn(cases(backends[r[0]], r[1], r[2], "cuda")) for r in RECORDS}


@pytest.mark.parametrize("rec", RECORDS[:2], ids="-".join)
def test_every_model_shape_is_drawn(gpu_draws, backends, rec):
    table = shapes(backends[rec[0]], rec[1], rec[2])
    seen = {(c.hidden, c.inter) for c in gpu_draws[rec] if surely_model(c, table)}
    assert {m.name for hi, m in table.items() if hi in seen} == {m.name for m in models.MODELS}


def test_about_one_draw_in_four_is_a_model(gpu_draws, backends):
    for rec, cs in gpu_draws.items():
        share = sum(c.hidden > LIMITS["cuda"][1] or (c.hidden, c.inter) in shapes(backends[rec[0]], rec[1], rec[2])
                    for c in cs) / len(cs)
        assert 0.12 < share < 0.45, (rec, share)


@pytest.mark.parametrize("rec", RECORDS, ids="-".join)
def test_drawn_sizes_respect_the_record(gpu_draws, backends, rec):
    b = backends[rec[0]]
    cap, table = b.capability, shapes(b, rec[1], rec[2])
    h_align, i_align = aligns(b, rec[1], rec[2])
    model_drawn = [c for c in gpu_draws[rec] if surely_model(c, table)]
    assert model_drawn
    for c in gpu_draws[rec]:
        c.validate()
        assert c.hidden % h_align == 0 and c.inter % i_align == 0, c.summary()
        assert max(EDGE_TOKENS, cap.min_tokens) <= c.tokens <= min(models.MAX_TOKENS, cap.max_tokens or 10**9), c.summary()
        assert c.experts <= (cap.max_experts or 10**9) and c.top_k <= (cap.max_top_k or 10**9), c.summary()
        assert fit(c, b) == c  # nothing the test run would still change
    for c in model_drawn:
        m = table[(c.hidden, c.inter)]
        assert models.weight_bytes(c.hidden, c.inter, c.experts) <= models.WEIGHT_BYTES, c.summary()
        assert c.top_k in (1, m.top_k) or c.router, c.summary()  # 1: router weight on the input
        assert c.gen == 2


def test_tokens_reach_decode_and_prefill(gpu_draws, backends):
    rec = RECORDS[0]
    table = shapes(backends[rec[0]], *rec[1:])
    _, h_max, i_max, _ = LIMITS["cuda"]
    ts = [c.tokens for c in gpu_draws[rec] if (c.hidden, c.inter) in table and (c.hidden > h_max or c.inter > i_max)]
    assert min(ts) <= 16 and max(ts) >= 1024
    assert sum(t <= 16 for t in ts) > len(ts) / 8 and sum(t >= 1024 for t in ts) > len(ts) / 8


def test_sizes_off_the_alignment_are_rounded_up(backends):
    marlin = {m.name: m for m in models.fitted(backends["vllm_marlin_mxfp4"].capability, 256, 128)}
    assert (marlin["gpt-oss-120b"].hidden, marlin["gpt-oss-120b"].inter) == (3072, 2944)
    assert (marlin["DeepSeek-V3"].hidden, marlin["DeepSeek-V3"].inter) == (7168, 2048)


def test_the_slice_is_the_most_experts_under_the_budget(backends):
    cap = backends["cpu_loop"].capability
    for f, m in zip(models.fitted(cap, 1, 1), models.MODELS):
        assert models.weight_bytes(f.hidden, f.inter, f.experts) <= models.WEIGHT_BYTES
        assert f.experts == m.experts or models.weight_bytes(f.hidden, f.inter, f.experts + 1) > models.WEIGHT_BYTES
        assert f.experts >= f.top_k == m.top_k
    capped = {m.name: m for m in models.fitted(backends["torch_compile"].capability, 1, 1)}
    assert capped["Qwen3-30B-A3B"].experts == backends["torch_compile"].capability.max_experts


def test_the_cpu_profile_never_draws_a_model_shape(backends):
    t_max, h_max, i_max, e_max = LIMITS["cpu"]
    for name, fmt in (("cpu_loop", "bf16"), ("cpu_loop", "fp8_block"), ("torch_grouped_mm", "bf16")):
        for c in drawn(cases(backends[name], fmt, "matches_reference", "cpu"), seeds=5):
            assert c.hidden <= 384 and c.inter <= 384 and c.tokens <= t_max and c.experts <= e_max, c.summary()
            assert c.gen == 1


def test_edges_keep_their_own_sizes_on_the_gpu(backends):
    b = backends["cpu_loop"]
    for c in drawn(cases(b, "bf16", "edge_contract", "cuda", edge="one_token"), seeds=5):
        assert c.tokens == 1 and c.hidden <= LIMITS["cuda"][1] and c.inter <= LIMITS["cuda"][2], c.summary()
