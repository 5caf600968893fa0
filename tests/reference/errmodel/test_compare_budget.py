"""compare() reports the worst element and non-finite outputs; budget_for merges the table and a record's
declared loosenings by max;
requant_var's held-scale probe reproduces the quantizer exactly when nothing moves."""
from __future__ import annotations

import dataclasses
from fnmatch import fnmatchcase

import pytest
import torch
from moecheck.reference.errmodel import (
    ErrorBudget,
    budget_for,
    compare,
    propagate,
    table,
)
from moecheck.reference.errors import MoecheckError
from moecheck.reference.formats import FORMATS
from moecheck.reference.quantize import quantize
from moecheck.tests.reference.errmodel.dense import make_problem, one_torch_thread  # noqa: F401 (autouse)


def test_compare_reports_the_worst_normalized_element():
    ref = torch.zeros(3, 4)
    bound = torch.ones(3, 4)
    bound[2, 1] = 0.1
    out = ref.clone()
    out[1, 3] = 0.9  # larger absolute difference, within its bound
    out[2, 1] = 0.3  # smaller difference, 3x its bound: the worst
    c = compare(out, ref, bound)
    assert not c.passed and c.where == (2, 1) and c.nonfinite == 0
    assert (c.got, c.want) == (out[2, 1].item(), 0.0) and c.bound == bound[2, 1].item()
    assert c.max_norm_err == (out[2, 1] / bound[2, 1]).item() > 1 and "(2, 1)" in c.summary()
    ok = compare(ref.clone(), ref, bound * 0)  # exact equality passes even against a zero bound
    assert ok.passed and ok.max_norm_err == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_compare_flags_nonfinite_where_the_reference_is_finite(bad):
    ref, bound = torch.ones(2, 5), torch.ones(2, 5)
    out = ref.clone()
    out[1, 2] = bad
    out[0, 4] = bad
    c = compare(out.bfloat16(), ref, bound)
    assert not c.passed and c.nonfinite == 2 and c.where == (0, 4)
    assert "non-finite" in c.summary()


def test_compare_ignores_nonfinite_where_the_reference_is_nonfinite_and_checks_shape():
    ref = torch.tensor([[1.0, float("nan"), float("inf")]])
    out = torch.tensor([[1.0, float("nan"), float("inf")]])
    assert compare(out, ref, torch.ones(1, 3)).passed
    assert not compare(torch.ones(3, 1), torch.ones(1, 3), torch.ones(1, 3)).shape_ok
    assert compare(torch.ones(0, 3), torch.ones(0, 3), torch.ones(0, 3)).passed


LOOSE = (table.FP8_WGMMA, table.BF16_LORA_SHRINK, table.FAST_ACT_FN)


@pytest.mark.parametrize("declared", [(), LOOSE[:1], LOOSE])
def test_budget_for_is_the_fieldwise_max_of_table_and_declared_loosenings(declared):
    fields = [f.name for f in dataclasses.fields(ErrorBudget) if f.name != "false_alarm"]
    base = table.TABLE[0].budget
    for fmt in FORMATS:
        got = budget_for(fmt, declared)
        match = [e.budget for e in table.TABLE if fnmatchcase(fmt, e.formats)]
        match += [d.budget for d in declared if fnmatchcase(fmt, d.formats)]
        for f in fields:
            assert getattr(got, f) == max(getattr(b, f) for b in match)
            assert getattr(got, f) >= getattr(base, f)  # never tighter than the baseline


def test_a_declared_tightening_never_tightens():
    tight = table.Loosening(ErrorBudget(z=1.0, acc_unit=0.0, flip_sigmas=0.0), "a planted tightening", "nvfp4")
    assert budget_for("nvfp4", (tight,)) == budget_for("mxfp8", (tight,)) == table.TABLE[0].budget
    loose = table.Loosening(ErrorBudget(z=9.0), "a planted loosening", "nvfp4")
    assert budget_for("nvfp4", (loose,)).z == 9.0 and budget_for("mxfp8", (loose,)).z == table.TABLE[0].budget.z


def test_a_name_is_not_a_declaration():
    with pytest.raises(MoecheckError, match="not a backend name"):
        budget_for("bf16", "vllm_lora")


def test_every_entry_loosens_something_and_says_why():
    """An entry that cannot loosen any field is dead under the max-merge (it would only mislead)."""
    fields = [f.name for f in dataclasses.fields(ErrorBudget) if f.name != "false_alarm"]
    base = table.TABLE[0].budget
    for e in [*table.TABLE[1:], *LOOSE]:
        assert any(getattr(e.budget, f) > getattr(base, f) for f in fields), e.why
        assert e.why.strip()


def test_merge_is_commutative_and_idempotent():
    a, b = ErrorBudget(z=7.0), ErrorBudget(acc_unit=2.0**-10, lora_rel=0.5)
    assert a.merge(b) == b.merge(a) and a.merge(a) == a


@pytest.mark.parametrize("fmt_name", sorted(n for n, f in FORMATS.items() if f.act is not None))
def test_held_scale_probe_reproduces_the_quantizer(fmt_name):
    """requant_var's held-scale re-quantization of the unperturbed input is bit-identical to
    quantize().dequantize() (else it would charge phantom flips), and zero sigma charges nothing."""
    fmt = FORMATS[fmt_name]
    p = make_problem(fmt, "silu", T=12, seed=1)
    x = p["hidden_states"].float()
    q = quantize(x, fmt.act, p.get("a1_scale"))
    held = propagate._on_scales(x, fmt.act, propagate._element_scales(q, q.scale_values()), q.global_scale)
    assert torch.equal(held, q.dequantize())
    v = propagate.requant_var(x, torch.zeros_like(x), fmt.act, p.get("a1_scale"), budget_for(fmt_name), 1.0)
    assert not bool(v.any())


def test_scales_that_lean_one_way_leave_the_bias_unjudged_and_nothing_else():
    """A record declaring scale_by_reciprocal (torch_compile, for its amax-scaled formats): the bias verdict is
    reported, not judged, for those formats only; max and rms still fail a kernel."""
    import dataclasses

    import torch
    from moecheck.backends import registry
    from moecheck.reference.errmodel.compare import compare
    from moecheck.reference.errmodel.table import budget_for, scale_by_reciprocal

    ref = torch.linspace(1.0, 2.0, 4096)
    bound = torch.full_like(ref, 4e-3)
    ev = (bound.double() / 4) ** 2  # rms allows a quarter of the bound
    leaning = ref - 0.2 * bound  # every element a fifth of its bound toward zero: a bias, within max and rms
    plain, declared = budget_for("fp8_token_channel"), budget_for("fp8_token_channel", scale_by_reciprocal({"fp8_token_channel"}))
    assert compare(leaning, ref, bound, ev, plain).failed == ("bias",)
    c = compare(leaning, ref, bound, ev, declared)
    assert c.passed and c.bias_bound is None and c.bias < 0
    assert not compare(ref - 2 * bound, ref, bound, ev, declared).passed
    assert budget_for("int4_w_g32", scale_by_reciprocal({"fp8_token_channel"})) == budget_for("int4_w_g32")
    tc = registry.load_all()["torch_compile"].capability
    judged = {f for f in tc.formats if not tc.budget(f).scale_biased}
    assert {"int4_w_g32", "bf16", "mxfp8", "fp8_tensor_static"} <= judged and "fp8_token_channel" not in judged
    assert dataclasses.replace(plain, scale_biased=True).merge(plain).scale_biased
