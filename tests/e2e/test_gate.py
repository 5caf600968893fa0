"""The gate's statistics: exact McNemar against hand-computed values, verdicts and messages."""
from __future__ import annotations

from fractions import Fraction

import pytest
from moecheck.e2e.gate import Answer, judge, mcnemar_exact
from moecheck.reference.errors import MoecheckError

# (b, c) -> two-sided exact p = min(1, 2 * sum_{i <= min(b, c)} C(b + c, i) / 2^(b + c)), by hand
HAND = [
    (0, 0, Fraction(1)),  # no discordant pair: no evidence
    (1, 0, Fraction(1)),  # 2 * 1/2
    (5, 0, Fraction(2, 32)),
    (6, 0, Fraction(2, 64)),
    (2, 8, Fraction(2 * (1 + 10 + 45), 1024)),
    (10, 2, Fraction(2 * (1 + 12 + 66), 4096)),
    (3, 3, Fraction(1)),  # 2 * 42/64 > 1, capped
    (20, 0, Fraction(2, 2**20)),
]
ALPHA = 0.05
FLOOR = 0.5


@pytest.mark.parametrize("b, c, want", HAND)
def test_mcnemar_exact_matches_hand_values(b, c, want):
    assert mcnemar_exact(b, c) == float(want)
    assert mcnemar_exact(c, b) == float(want)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(MoecheckError, match="discordant counts"):
        mcnemar_exact(-1, 3)


def _answers(pattern: str, start: int = 0) -> list[Answer]:
    return [Answer(doc_id=i, correct=ch == "1", question=f"Question number {i}: how many?", response=f" x #### {i}",
                   extracted=str(i) if ch == "1" else "[invalid]") for i, ch in enumerate(pattern, start)]


def test_identical_runs_pass_with_p_one():
    ref = _answers("1101101111" * 3)
    g = judge("m", "bf16", "reference", ref, ref, floor=FLOOR, alpha=ALPHA)
    assert g.verdict == "pass" and (g.b, g.c, g.p_value) == (0, 0, 1.0) and g.discordant == ()
    assert g.accuracy == g.reference_accuracy


def test_a_few_flips_either_way_pass():
    ref = _answers("1111111111" + "0000000000" + "1111111111")
    got = _answers("0111111111" + "1000000000" + "1111111110")
    g = judge("m", "bf16", "cpu_loop", got, ref, floor=FLOOR, alpha=ALPHA)
    assert (g.b, g.c) == (2, 1) and g.p_value == 1.0 and g.verdict == "pass"
    assert g.discordant == (0, 29, 10)


def test_a_broken_backend_fails_and_the_message_names_everything():
    ref = _answers("1" * 20 + "0" * 5)
    got = _answers("0" * 25)
    g = judge("tiny_qwen3_moe", "mxfp8", "broken_scales", got, ref, floor=0.0, alpha=ALPHA)
    assert g.verdict == "fail" and (g.b, g.c) == (20, 0) and g.p_value == float(Fraction(2, 2**20))
    for needle in ("tiny_qwen3_moe", "mxfp8", "broken_scales", "b=20", "c=0", "#0 ", "Question number 0", "#4 ",
                   "15 more", "worse", "reference right '0', backend wrong '[invalid]'"):
        assert needle in g.message, needle
    assert "\n" not in g.message


def test_floor_fails_a_backend_the_paired_test_cannot_see():
    ref = _answers("1100000000")
    got = _answers("1000000000")
    g = judge("m", "bf16", "b", got, ref, floor=0.15, alpha=ALPHA)
    assert g.verdict == "fail" and "below the floor" in g.message and g.p_value == 1.0


def test_baseline_below_floor_is_an_error_not_a_backend_verdict():
    ref = _answers("1000000000")
    g = judge("m", "bf16", "b", ref, ref, floor=FLOOR, alpha=ALPHA)
    assert g.verdict == "error" and "baseline itself is below the floor" in g.message


@pytest.mark.parametrize("kw, why", [
    (dict(alpha=0.0), "alpha must be in"),
    (dict(floor=1.5), "floor must be in"),
])
def test_bad_parameters(kw, why):
    a = _answers("11")
    with pytest.raises(MoecheckError, match=why):
        judge("m", "f", "b", a, a, **{"floor": FLOOR, "alpha": ALPHA, **kw})


def test_unpaired_runs_are_refused():
    with pytest.raises(MoecheckError, match="different questions"):
        judge("m", "f", "b", _answers("11"), _answers("11", start=1), floor=FLOOR, alpha=ALPHA)
    with pytest.raises(MoecheckError, match="no questions"):
        judge("m", "f", "b", [], [], floor=FLOOR, alpha=ALPHA)
