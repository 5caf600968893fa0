"""Routers on small hand-computed logits: expected weights are written out with math.exp, not torch."""
import math

import pytest
import torch
from moecheck.reference.errors import MoecheckError
from moecheck.reference.routing import ROUTERS, RouterSpec, get_router, route
from torch.testing import assert_close


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def _check(logits, spec, weights, ids, bias=None):
    w, i = route(logits, spec, bias)
    assert w.dtype == torch.float32 and i.dtype == torch.int64
    assert torch.equal(i, torch.tensor(ids, dtype=torch.int64))
    assert_close(w, _t(weights))


def _ln_odds(p):
    """The logit whose sigmoid is p, so DeepSeek cases can be written in sigmoid scores."""
    return math.log(p / (1 - p))


# --- softmax_topk (Mixtral, Qwen, OLMoE) ---

def test_softmax_topk_without_renormalize_keeps_full_softmax_probabilities():
    z = math.exp(1) + math.exp(2) + math.exp(3) + 1
    _check(_t([[1, 2, 3, 0]]), RouterSpec("softmax_topk", 2), [[math.exp(3) / z, math.exp(2) / z]], [[2, 1]])


def test_softmax_topk_renormalize_divides_by_the_k_sum():
    # e^3 / (e^3 + e^2) = 1 / (1 + e^-1)
    a = 1 / (1 + math.exp(-1))
    _check(_t([[1, 2, 3, 0]]), RouterSpec("softmax_topk", 2, renormalize=True), [[a, 1 - a]], [[2, 1]])


def test_softmax_topk_rows_are_independent():
    z0 = 3 * math.exp(0) + math.exp(2)
    z1 = math.exp(-1) + math.exp(4) + 2
    logits = _t([[0, 0, 2, 0], [-1, 0, 0, 4]])
    _check(logits, RouterSpec("softmax_topk", 1), [[math.exp(2) / z0], [math.exp(4) / z1]], [[2], [3]])


def test_mixtral_preset_is_top2_renormalized():
    a = 1 / (1 + math.exp(-0.5))  # two best logits differ by 0.5
    logits = _t([[0.0, 1.5, -3.0, 1.0, 0.2, 0.1, 0.0, -1.0]])
    _check(logits, ROUTERS["mixtral"], [[a, 1 - a]], [[1, 3]])


# --- ties: the lower expert index wins ---

@pytest.mark.parametrize("kind", ["softmax_topk", "topk_softmax", "gpt_oss", "sigmoid_topk", "llama4"])
def test_ties_go_to_the_lower_expert_index(kind):
    w, ids = route(_t([[1, 3, 3, 3, 0]]), RouterSpec(kind, 2))
    assert torch.equal(ids, torch.tensor([[1, 2]]))
    assert w[0, 0] == w[0, 1]


def test_all_equal_logits_pick_the_first_k_experts():
    for name in ("qwen3", "olmoe", "gpt_oss", "deepseek_v3"):
        _, ids = route(torch.zeros(3, 64), get_router(name))
        assert torch.equal(ids, torch.arange(get_router(name).top_k).expand(3, -1)), name


# --- topk_softmax (gpt-oss) ---

def test_gpt_oss_softmax_over_the_selected_logits_only():
    z = math.exp(4) + math.exp(3) + math.exp(2) + math.exp(1)
    expected = [[math.exp(4) / z, math.exp(3) / z, math.exp(2) / z, math.exp(1) / z]]
    logits = _t([[1, 4, 2, 3, 0, -1]])
    _check(logits, ROUTERS["gpt_oss"], expected, [[1, 3, 2, 0]])
    _check(logits, RouterSpec("topk_softmax", 4), expected, [[1, 3, 2, 0]])


# --- sigmoid_topk ---

def test_sigmoid_topk_with_and_without_renormalize():
    logits = _t([[0.0, math.log(3), -math.log(3), math.log(9)]])  # sigmoid: 0.5, 0.75, 0.25, 0.9
    _check(logits, RouterSpec("sigmoid_topk", 2), [[0.9, 0.75]], [[3, 1]])
    _check(logits, RouterSpec("sigmoid_topk", 2, renormalize=True), [[0.9 / 1.65, 0.75 / 1.65]], [[3, 1]])


# --- llama4 ---

def test_llama4_top1_sigmoid_of_the_selected_logit():
    spec = ROUTERS["llama4"]
    assert spec.top_k == 1 and spec.apply_weights_to_input
    logits = _t([[0.5, 2.0, -1.0], [-3.0, -4.0, -3.5]])
    _check(logits, spec, [[1 / (1 + math.exp(-2))], [1 / (1 + math.exp(3))]], [[1], [0]])


def test_llama4_chooses_on_logits_even_where_fp32_sigmoid_saturates():
    # sigmoid(20) and sigmoid(30) both round to 1.0 in fp32; choosing on the logits still picks 30
    logits = _t([[20.0, 30.0]])
    _check(logits, ROUTERS["llama4"], [[1.0]], [[1]])
    _check(logits, RouterSpec("sigmoid_topk", 1), [[1.0]], [[0]])  # chooses on saturated scores: tie


# --- deepseek_v3 ---

# sigmoid scores per expert; groups of 2: g0 = (0.95, 0.05) sum 1.0, g1 = (0.75, 0.5) sum 1.25,
# g2 = (0.8, 0.25) sum 1.05, g3 = (0.1, 0.1) sum 0.2
_DS_SCORES = [0.95, 0.05, 0.75, 0.5, 0.8, 0.25, 0.1, 0.1]
_DS_LOGITS = _t([[_ln_odds(p) for p in _DS_SCORES]])
_DS_GROUPED = RouterSpec("deepseek_v3", top_k=2, n_group=4, topk_group=2)


def test_deepseek_v3_best_expert_in_a_dropped_group_is_not_chosen():
    # kept groups g1, g2; expert 0 (0.95, the best) is in g0 and is dropped
    _check(_DS_LOGITS, _DS_GROUPED, [[0.8 / 1.55, 0.75 / 1.55]], [[4, 2]])


def test_deepseek_v3_without_groups_takes_the_global_top_k():
    _check(_DS_LOGITS, RouterSpec("deepseek_v3", top_k=2), [[0.95 / 1.75, 0.8 / 1.75]], [[0, 4]])


def test_deepseek_v3_routed_scaling_multiplies_the_normalized_weights():
    spec = RouterSpec("deepseek_v3", top_k=2, n_group=4, topk_group=2, routed_scaling_factor=2.5)
    _check(_DS_LOGITS, spec, [[2.0 / 1.55, 1.875 / 1.55]], [[4, 2]])


def test_deepseek_v3_bias_changes_selection_but_weights_use_unbiased_scores():
    bias = _t([0, 0, 0, 0, 0, 0, 0, 1.0])  # expert 7: choice score 1.1, weight still from 0.1
    _check(_DS_LOGITS, RouterSpec("deepseek_v3", top_k=2), [[0.1 / 1.05, 0.95 / 1.05]], [[7, 0]], bias)


def test_deepseek_v3_bias_changes_which_groups_are_kept():
    # g3 becomes (0.6, 0.6) sum 1.2 > g2's 1.05: kept g1, g3; choice 0.75 (e2), then tie 0.6 e6/e7 -> e6
    bias = _t([0, 0, 0, 0, 0, 0, 0.5, 0.5])
    _check(_DS_LOGITS, _DS_GROUPED, [[0.75 / 0.85, 0.1 / 0.85]], [[2, 6]], bias)


def test_deepseek_v3_kept_experts_beat_dropped_ones_even_with_negative_choice_scores():
    # all scores 0.5; choice g0 = (-0.5, -0.5), g1 = (-1.5, -1.5): g0 kept and both its experts chosen
    # (masking dropped groups with 0.0, as HF does, would pick experts 2 and 3 here)
    spec = RouterSpec("deepseek_v3", top_k=2, n_group=2, topk_group=1)
    _check(torch.zeros(1, 4), spec, [[0.5, 0.5]], [[0, 1]], _t([-1, -1, -2, -2]))


def test_deepseek_v3_top1_is_normalized_too():
    # as HF and DeepSeek's code: norm_topk_prob applies for any top_k, so a single weight is 1 * scale
    _check(_DS_LOGITS, RouterSpec("deepseek_v3", top_k=1, routed_scaling_factor=2.5), [[2.5]], [[0]])


def test_deepseek_v3_group_ties_go_to_the_lower_group():
    spec = RouterSpec("deepseek_v3", top_k=2, n_group=4, topk_group=1)
    _check(torch.zeros(1, 8), spec, [[0.5, 0.5]], [[0, 1]])


def test_deepseek_v3_preset_and_non_contiguous_logits():
    spec = ROUTERS["deepseek_v3"]
    assert (spec.top_k, spec.n_group, spec.topk_group, spec.routed_scaling_factor) == (8, 8, 4, 2.5)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(256, 5, generator=g)
    bias = torch.randn(256, generator=g) * 0.1
    w, ids = route(logits.t(), spec, bias)
    w2, ids2 = route(logits.t().contiguous(), spec, bias)
    assert torch.equal(ids, ids2) and torch.equal(w, w2)
    assert_close(w.sum(-1), torch.full((5,), 2.5))
    # every chosen expert lies in one of at most 4 groups of 32
    assert all(len(set((r // 32).tolist())) <= 4 for r in ids)


# --- shared behaviour ---

@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_zero_tokens_give_empty_outputs(name):
    spec = ROUTERS[name]
    bias = torch.zeros(256) if spec.kind == "deepseek_v3" else None
    w, ids = route(torch.zeros(0, 256, dtype=torch.bfloat16), spec, bias)
    assert w.shape == ids.shape == (0, spec.top_k)
    assert w.dtype == torch.float32 and ids.dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_math_is_float32_whatever_the_input_dtype(dtype):
    logits = torch.randn(4, 16, generator=torch.Generator().manual_seed(1)).to(dtype)
    for spec in ROUTERS.values():
        w, ids = route(logits, spec)
        w32, ids32 = route(logits.float(), spec)
        assert torch.equal(ids, ids32) and torch.equal(w, w32)


def test_presets():
    assert ROUTERS["mixtral"] == RouterSpec("softmax_topk", 2, renormalize=True)
    assert ROUTERS["qwen3"] == RouterSpec("softmax_topk", 8, renormalize=True)
    assert ROUTERS["qwen2"] == RouterSpec("softmax_topk", 8)
    assert ROUTERS["olmoe"] == RouterSpec("softmax_topk", 8)
    assert ROUTERS["gpt_oss"] == RouterSpec("gpt_oss", 4)


# --- bad input ---

@pytest.mark.parametrize("make, match", [
    (lambda: RouterSpec("softmax", 2), "unknown router kind"),
    (lambda: RouterSpec("softmax_topk", 0), "top_k must be >= 1"),
    (lambda: RouterSpec("deepseek_v3", 2, n_group=0), "n_group must be >= 1"),
    (lambda: RouterSpec("deepseek_v3", 2, n_group=2, topk_group=3), "topk_group must be in"),
    (lambda: RouterSpec("softmax_topk", 2, n_group=2), "apply to deepseek_v3 routing only"),
    (lambda: get_router("mixtral8x7b"), "unknown router preset"),
])
def test_bad_specs(make, match):
    with pytest.raises(MoecheckError, match=match):
        make()


_DS = RouterSpec("deepseek_v3", top_k=4, n_group=4, topk_group=1)


@pytest.mark.parametrize("logits, spec, bias, match", [
    (torch.zeros(8), ROUTERS["mixtral"], None, "must be 2-D"),
    (torch.zeros(2, 2, 8), ROUTERS["mixtral"], None, "must be 2-D"),
    (torch.zeros(2, 8, dtype=torch.int32), ROUTERS["mixtral"], None, "must be a float tensor"),
    (torch.zeros(2, 4), ROUTERS["qwen3"], None, r"top_k must be in \[1, E=4\]"),
    (torch.zeros(2, 6), RouterSpec("deepseek_v3", 2, n_group=4, topk_group=1), None, "divisible by n_group"),
    (torch.zeros(2, 8), _DS, None, "exceeds the 2 experts"),
    (_t([[0.0, float("nan")]]), RouterSpec("softmax_topk", 1), None, "NaN"),
    (torch.zeros(2, 8), RouterSpec("deepseek_v3", 2), torch.zeros(7), r"shape \[E=8\]"),
    (torch.zeros(2, 8), RouterSpec("deepseek_v3", 2), torch.zeros(1, 8), r"shape \[E=8\]"),
    (torch.zeros(2, 8), RouterSpec("sigmoid_topk", 2), torch.zeros(8), "deepseek_v3 routing only"),
])
def test_bad_route_input(logits, spec, bias, match):
    with pytest.raises(MoecheckError, match=match):
        route(logits, spec, bias)
