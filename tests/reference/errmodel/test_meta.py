"""Meta-tests of the error model: it accepts correct implementations and rejects planted bugs.

ACCEPT: the reference against the same layer computed another way — float64 GEMMs then cast, fp32
with the k slots summed in reverse, fp32 with K split into two chunks, experts relabelled in
reverse order, and fp32 intermediates against a bound declared for bf16/fp16 rounding points —
for every format, over a few seeds and activations. REJECT: planted bugs of real kernel families.
The planted errors' normalized errors (max |out - ref| / bound) are printed as a table by
test_planted_table (pytest -s) or `python -m moecheck.tests.reference.errmodel.test_meta`.
"""
from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from moecheck.reference.activations import ACTIVATIONS
from moecheck.reference.errmodel import budget_for, compare
from moecheck.reference.formats import FORMATS
from moecheck.reference.moe import ACT, ACT_EVERYWHERE, Rounding, fused_experts
from moecheck.reference.qtensor import QTensor
from moecheck.reference.routing import RouterSpec
from moecheck.reference.spec import ScaleRule
from moecheck.tests.reference.errmodel.dense import (  # noqa: F401 (autouse)
    make_problem,
    one_torch_thread,
    run_oracle,
)

BACKEND = "planted"  # no table entry matches: the baseline budget every backend starts from
CONFIGS = [dict(seed=0, act="silu", x_dtype=None), dict(seed=1, act="swigluoai", bias=True, x_dtype=torch.float32),
           dict(seed=2, act="gelu", x_dtype=None, remote=2), dict(seed=3, act="relu2", x_dtype=torch.float32, k=3)]


def _problem(fmt, cfg):
    c = dict(cfg)
    return make_problem(fmt, c.pop("act"), T=16, **c)


def _flip_experts(p):
    """Experts relabelled E-1..0: the reference's grouped loop then runs them in reverse order."""
    def flip(w):
        if not isinstance(w, QTensor):
            return w.flip(0)
        f = lambda t: None if t is None else t.flip(0)  # noqa: E731
        return dataclasses.replace(w, codes=f(w.codes), scales=f(w.scales), zeros=f(w.zeros), global_scale=f(w.global_scale))
    E = p["w2"].shape[0]
    q = {**p, "w13": flip(p["w13"]), "w2": flip(p["w2"])}
    for b in ("w13_bias", "w2_bias"):
        if b in p:
            q[b] = p[b].flip(0)
    if "expert_map" in p:
        q["expert_map"] = torch.where(p["expert_map"] >= 0, E - 1 - p["expert_map"], p["expert_map"])
    else:
        q["topk_ids"] = E - 1 - p["topk_ids"]
    return q


WAYS = {
    "f64_then_cast": lambda p: run_oracle(p, acc=torch.float64),
    "f32_slots_reversed": lambda p: run_oracle(p, acc=torch.float32, reverse_slots=True),
    "f32_k_split_2": lambda p: run_oracle(p, acc=torch.float32, k_split=2),
    "experts_reversed": lambda p: fused_experts(**_flip_experts(p)).out,
}


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
def test_accepts_the_reference_computed_another_way(fmt_name):
    fmt, budget = FORMATS[fmt_name], budget_for(fmt_name)
    worst = {}
    for cfg in CONFIGS:
        p = _problem(fmt, cfg)
        ref = fused_experts(**p, budget=budget)
        for way, f in WAYS.items():  # the same rounding points: all three verdicts (max, rms, bias)
            c = compare(f(p).to(ref.out.dtype), ref.out, ref.bound, ref.expected_var, budget)
            worst[way] = max(worst.get(way, 0.0), c.max_norm_err)
            assert c.passed, f"{way} seed {cfg['seed']}: {c.summary()}"
        # fp32 intermediates judged by a bound declared for act-dtype rounding points: the max verdict, the
        # envelope of "may round here"; the rms verdict expects the declared points (test_statistical.py)
        declared = fused_experts(**p, rounding=ACT_EVERYWHERE, budget=budget)
        c = compare(fused_experts(**p, rounding=Rounding()).out, declared.out, declared.bound)
        worst["fp32_vs_declared_act"] = max(worst.get("fp32_vs_declared_act", 0.0), c.max_norm_err)
        assert c.passed, f"fp32 vs declared ACT_EVERYWHERE seed {cfg['seed']}: {c.summary()}"
    print(fmt_name, {k: round(v, 3) for k, v in worst.items()})


VLLM_LIKE = Rounding(ACT, ACT, ACT, None, torch.float32, ACT, act_gate=ACT)  # silu(gate) stored in bf16 too


@pytest.mark.parametrize("fmt_name", ["bf16", "fp8_block", "int4_w_g32", "mxfp4_mxfp8"])
def test_gate_rounding_point_is_accepted_both_ways(fmt_name):
    """A kernel that stores f(gate) before the multiply, judged by a record that declares it, and the
    reference without that rounding judged by the same bound: both inside."""
    budget = budget_for(fmt_name)
    for cfg in CONFIGS[:3]:
        p = _problem(FORMATS[fmt_name], cfg)
        declared = fused_experts(**p, rounding=VLLM_LIKE, budget=budget)
        for other in (ACT_EVERYWHERE, Rounding()):
            c = compare(fused_experts(**p, rounding=other).out, declared.out, declared.bound)
            assert c.passed, f"seed {cfg['seed']} {other}: {c.summary()}"


# cases the error model once failed to accept, kept as regressions: (format, activation, seed, fp32 input,
# bias, what is compared). gelu: 0.5 x (1 + erf) loses its relative accuracy in the negative tail
# (moe._act_fn_scale); nvfp4: block-scale flips against the held global scale (requant_var).
REGRESSIONS = [("fp8_token_channel", "gelu", 6, True, False, "oracle"), ("w4a8", "gelu", 6, True, False, "oracle"),
               ("nvfp4", "swigluoai", 11, False, True, "declared")]


@pytest.mark.parametrize("fmt_name, act, seed, f32, bias, what", REGRESSIONS)
def test_accepts_past_misses(fmt_name, act, seed, f32, bias, what):
    p = make_problem(FORMATS[fmt_name], act, T=16, seed=seed, bias=bias, x_dtype=torch.float32 if f32 else None)
    budget = budget_for(fmt_name)
    if what == "oracle":
        ref = fused_experts(**p, budget=budget)
        c = compare(run_oracle(p).to(ref.out.dtype), ref.out, ref.bound)
    else:
        ref = fused_experts(**p, rounding=ACT_EVERYWHERE, budget=budget)
        c = compare(fused_experts(**p).out, ref.out, ref.bound)
    assert c.passed, c.summary()


@pytest.mark.parametrize("fmt_name", ["bf16", "int4_w_g32", "mxfp8", "nvfp4_dynamic", "fp8_tensor"])
def test_tiny_magnitudes_keep_their_bound(fmt_name):
    """Inputs at 2^-100 (swigluoai is linear near 0, so outputs are ~1e-31): fp32 variances of such
    values underflowed to 0, leaving only the 1e-38 floor (a property-suite failure, seed 390002).
    Dynamic activation scales only: a static scale calibrated on the unscaled input flushes them to 0."""
    p = make_problem(FORMATS[fmt_name], "swigluoai", T=16, seed=4)
    p["hidden_states"] = (p["hidden_states"].float() * 2.0**-100).to(p["hidden_states"].dtype)
    declared = fused_experts(**p, rounding=ACT_EVERYWHERE, budget=budget_for(fmt_name))
    nz = declared.out != 0
    assert bool(nz.any()) and bool((declared.bound[nz] > torch.finfo(torch.float32).tiny).all())
    c = compare(fused_experts(**p).out, declared.out, declared.bound)
    assert c.passed, c.summary()


# --- planted bugs ----------------------------------------------------------------------------------

def _busiest_expert(p):
    return int(torch.bincount(p["topk_ids"].flatten(), minlength=p["w2"].shape[0]).argmax())


def _with(q: QTensor, **kw) -> QTensor:
    return dataclasses.replace(q, **kw)


def _bump_scale(q: QTensor, e: int, whole: bool) -> QTensor:
    """One step up: E8M0 code + 1 (MX), E4M3 code + 1 (NVFP4, never into NaN), fp32 scale * 2."""
    s = q.scales.clone()
    if q.spec.rule == ScaleRule.NVFP4:
        codes = s.view(torch.uint8)
        ok = codes[e] < 0x7E
        vals = q.scales[e].float().masked_fill(~ok, -1.0)
    else:
        codes, ok, vals = s, torch.ones_like(s[e], dtype=torch.bool), q.scales[e].float()
    mask = ok if whole else torch.zeros_like(ok).flatten().scatter(0, vals.flatten().argmax()[None], True).view(ok.shape)
    if q.spec.rule in (ScaleRule.MX, ScaleRule.NVFP4):
        codes[e] = torch.where(mask, codes[e] + 1, codes[e])  # view: writes through to s
    else:
        s[e] = torch.where(mask, s[e] * 2, s[e])
    return _with(q, scales=s)


def _swap_nibbles(q: QTensor, e: int) -> QTensor:
    c = q.codes.clone()
    c[e] = (c[e] >> 4) | ((c[e] & 0xF) << 4)
    return _with(q, codes=c)


def _permute_scales(q: QTensor, e: int) -> QTensor:
    """Square grid: transposed; else (or if the grid is symmetric) rows rotated by one, then columns."""
    s = q.scales.clone()
    g = q.scales[e]
    R, C = g.shape
    tries = ([g.transpose(0, 1)] if R == C else []) + [g.roll(1, 0), g.roll(1, 1)]
    s[e] = next((t for t in tries if not torch.equal(t.view(torch.uint8) if t.dtype.itemsize == 1 else t,
                                                     g.view(torch.uint8) if g.dtype.itemsize == 1 else g)), tries[0])
    return _with(q, scales=s)


def _planted(bug: str, fmt, p, seed: int):
    e = _busiest_expert(p)
    if bug == "a_scale_step_one_block":
        return {**p, "w13": _bump_scale(p["w13"], e, whole=False)}
    if bug == "a_scale_step_whole_expert":
        return {**p, "w13": _bump_scale(p["w13"], e, whole=True)}
    if bug == "b_swapped_nibbles":
        return {**p, "w13": _swap_nibbles(p["w13"], e)}
    if bug == "c_permuted_scales":
        return {**p, "w13": _permute_scales(p["w13"], e)}
    if bug == "d_not_renormalized":
        raw = make_problem(fmt, "silu", T=16, seed=seed, router=RouterSpec("softmax_topk", 2, renormalize=False))
        assert torch.equal(raw["topk_ids"], p["topk_ids"])
        return {**p, "topk_weights": raw["topk_weights"]}
    if bug == "e_gate_up_swapped":
        return {**p, "activation": ACTIVATIONS["silu_up_gate"]}
    raise AssertionError(bug)


def _relevant(bug: str, fmt) -> bool:
    w = fmt.weight
    if bug.startswith("a_"):
        return w is not None
    if bug.startswith("b_"):
        return w is not None and w.packed
    if bug.startswith("c_"):
        return w is not None and w.block != (None, None)
    return True


BUGS = ["a_scale_step_one_block", "a_scale_step_whole_expert", "b_swapped_nibbles", "c_permuted_scales",
        "d_not_renormalized", "e_gate_up_swapped"]
CASES = [(b, f) for b in BUGS for f in sorted(FORMATS) if _relevant(b, FORMATS[f])]


# seed 7 is a hard case: four layer inputs sit on E2M1/E4M3 rounding ties, which a kernel may break
# the other way; through per-tensor (NVFP4: global) intermediate scales that loosens every token
SEEDS = (0, 7)


@functools.lru_cache(maxsize=None)
def _reference(fmt_name: str, native: bool, seed: int = 7):
    p = make_problem(FORMATS[fmt_name], "silu", T=16, seed=seed, x_dtype=None if native else torch.float32)
    return p, fused_experts(**p, budget=budget_for(fmt_name))


@functools.lru_cache(maxsize=None)
def planted_error(bug: str, fmt_name: str, native: bool = True, seed: int = 7) -> float:
    p, ref = _reference(fmt_name, native, seed)
    bad = _planted(bug, FORMATS[fmt_name], p, seed)
    if bug[0] in "abc":  # the plant really changed the weights it targets
        assert not torch.equal(bad["w13"].dequantize(), p["w13"].dequantize()), f"{bug} left w13 unchanged"
    return compare(fused_experts(**bad).out, ref.out, ref.bound).max_norm_err


# Skips as data, each with its measured reason. nvfp4_dynamic re-derives the intermediate's global
# scale from its amax, so one legitimate code flip at the amax element re-scales every block:
# on seed 7 a correct bf16-rounding implementation moves the output by 4.6 where this plant moves
# it by 5.0 (0.66 of the bound), so no bound can tell them apart. nvfp4 (static global scales, as
# NVFP4 MoE kernels take them) rejects the same plant.
KNOWN_MISSES = {("a_scale_step_one_block", "nvfp4_dynamic", 7):
                "below what a dynamic NVFP4 global scale lets any bound resolve (see the note above KNOWN_MISSES)"}


def _case_param(b, f, seed):
    return pytest.param(b, f, seed, id=f"{b}-{f}-seed{seed}")


@pytest.mark.parametrize("bug, fmt_name, seed", [_case_param(b, f, s) for b, f in CASES for s in SEEDS])
def test_rejects_planted_bug(bug, fmt_name, seed):
    if (bug, fmt_name, seed) in KNOWN_MISSES:
        pytest.skip(KNOWN_MISSES[bug, fmt_name, seed])
    err = planted_error(bug, fmt_name, True, seed)
    assert err > 1.0, f"{bug} on {fmt_name} seed {seed} not rejected: normalized error {err:.3g}"


def test_known_misses_are_still_misses_and_the_static_format_catches_them():
    """A known miss that starts being rejected should leave the skip list; its static twin must reject."""
    for bug, fmt_name, seed in KNOWN_MISSES:
        assert planted_error(bug, fmt_name, True, seed) <= 1.0, f"{bug} {fmt_name} seed {seed} is now rejected: drop it from KNOWN_MISSES"
        assert planted_error(bug, fmt_name.removesuffix("_dynamic"), True, seed) > 1.0


def planted_table(seeds=SEEDS) -> str:
    lines = [f"{'format':18s}" + "".join(f"{b[:27]:>29s}" for b in BUGS)]
    for f in sorted(FORMATS):
        cells = []
        for b in BUGS:
            if not _relevant(b, FORMATS[f]):
                cells.append(f"{'-':>29s}")
                continue
            nat = sorted(planted_error(b, f, True, s) for s in seeds)
            cells.append(f"{nat[0]:>9.3g} {nat[len(nat) // 2]:>9.3g} {min(planted_error(b, f, False, s) for s in seeds):>9.3g}")
        lines.append(f"{f:18s}" + "".join(cells))
    return (f"normalized error over seeds {tuple(seeds)}: bf16-out min, bf16-out median, fp32-out min "
            "(>1 = rejected)\n" + "\n".join(lines))


def test_planted_table():
    table = planted_table()
    print("\n" + table)
    assert "nan" not in table


def test_nvfp4_looseness():
    """Measured, not gated: how much of the bound the scale-flip charges of the re-quantized
    intermediate make, for NVFP4 (E4M3 block scales: a boundary every 1/8 octave) against MXFP4
    activations (E8M0: one per octave), with fp32 and with declared act-dtype rounding points."""
    from moecheck.reference.errmodel import propagate

    rows = []
    for name, seed in (("nvfp4", 0), ("nvfp4", 7), ("nvfp4_dynamic", 7), ("mxfp4_mxfp8", 0), ("mxfp4_mxfp8", 7)):
        for rnd_name, rnd in (("fp32", Rounding()), ("act", ACT_EVERYWHERE)):
            p, _ = _reference(name, True, seed)
            full = fused_experts(**p, rounding=rnd, budget=budget_for(name))
            saved = propagate._DISCRETE_SCALES
            propagate._DISCRETE_SCALES = (ScaleRule.MX, ScaleRule.UE8M0)
            try:
                no_flip = fused_experts(**p, rounding=rnd, budget=budget_for(name))
            finally:
                propagate._DISCRETE_SCALES = saved
            rel = full.bound / full.out.float().abs().clamp(min=torch.finfo(torch.float32).eps)
            ratio = full.bound / no_flip.bound
            assert bool((ratio >= 1).all())  # a charge never tightens
            rows.append(f"{name:12s} seed {seed} {rnd_name:5s} median bound/|out| {rel.median().item():8.3g}   "
                        f"bound / bound without scale-flip charges: median {ratio.median().item():.3g} max {ratio.max().item():.3g}")
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    print(planted_table(range(8)))
