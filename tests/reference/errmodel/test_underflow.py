"""The bound's absolute floor (errmodel/underflow.py): a kernel that flushes fp32 subnormals to zero, as
GPU kernels do, passes; without the floor it fails; and the floor loosens nothing above the underflow range.

The flushing kernel is cpu_loop run under torch.set_flush_denormal (x86 FTZ/DAZ), on the H200 cases of
2026-12-03 where eager torch on CUDA returned 0 for outputs of 1.7e-38 and 8.3e-38.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from moecheck.backends import registry
from moecheck.properties.case import build
from moecheck.properties.checks import _compare, _reference
from moecheck.properties.repro import load_case
from moecheck.reference.errmodel import underflow
from moecheck.tests.checkout import IS_CHECKOUT, NOT_A_CHECKOUT, ROOT

_DIR = ROOT / "docs" / "findings" / "h200-2026-12-03"
CASES = [p for p in (_DIR / f"torch_compile-{n}.json" for n in (
    "bf16-matches_reference-95b67755a2", "fp16-padded_equals_unpadded-97e14d84e5",  # MAX: got 0 for 1.7e-38, 8.3e-38
    "int4_w_g32-matches_reference-c6e896e29b")) if p.exists()]  # BIAS: every output underflows, all flushed to 0


def _flushing(b, p):
    w = b.prepare(p)
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals (torch.set_flush_denormal returned False)")
    try:
        return b.run(w, p)
    finally:
        torch.set_flush_denormal(False)


@pytest.fixture
def cpu_loop():
    return registry.load_all()["cpu_loop"]


@pytest.mark.skipif(not CASES, reason=NOT_A_CHECKOUT if not IS_CHECKOUT else "the 2026-12-03 underflow cases are missing")
@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_a_kernel_that_flushes_subnormals_passes_and_fails_without_the_floor(path, cpu_loop, monkeypatch):
    case = load_case(str(path)).with_(backend="cpu_loop")
    if case.hidden * case.inter > 2048 * 128:  # the H200 case's I=2048 costs 45 s on CPU; every output still underflows
        case = case.with_(hidden=2048, inter=128)
    p = build(case, "cpu")
    out = _flushing(cpu_loop, p)
    plain = cpu_loop.run(cpu_loop.prepare(p), p)
    assert not torch.equal(out, plain), "the flush changed nothing: the case no longer reaches the underflow range"
    assert _compare(cpu_loop, p, out, _reference(cpu_loop, p)).passed
    monkeypatch.setattr("moecheck.reference.moe.ftz_floor",
                        lambda *a, **k: torch.full((p.tokens, p.hidden), underflow.TINY))
    old = dataclasses.replace(_reference(cpu_loop, p), floor=None)  # before: a floor of tiny, every error judged
    assert not _compare(cpu_loop, p, out, old).passed, "the old floor (tiny) passed it too"


def test_the_floor_is_invisible_above_the_underflow_range():
    g = torch.Generator().manual_seed(0)
    E, H, I, T, k = 4, 64, 32, 8, 2
    A = torch.randn(T * k, H, generator=g)
    W13, W2 = torch.randn(E, 2 * I, H, generator=g) / 8, torch.randn(E, H, I, generator=g) / 6
    e_rows = torch.arange(T * k) % E
    slope, y = torch.rand(T * k, I, generator=g) * 1.2, torch.randn(T * k, I, generator=g)
    f = underflow.ftz_floor(A, W13, slope, y, W2, e_rows, torch.rand(T * k, generator=g), torch.arange(T * k), T, k)
    # outputs of this layer are O(1); their bf16 bound is O(1e-3): the floor must be ~1e-34 or less
    assert f.shape == (T, H) and bool((f > 0).all()) and float(f.max()) < 2.0**-100


def test_subnormal_weights_charge_the_inputs_they_multiply():
    W = torch.ones(1, 2, 3)
    A = torch.full((1, 3), 1e10)
    args = (torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 3, 2), torch.zeros(1, dtype=torch.long), torch.ones(1),
            torch.arange(1), 1, 1)
    clean = underflow.ftz_floor(A, W, *args)
    W[0, 0, 0] = 1e-40
    assert bool((underflow.ftz_floor(A, W, *args) > 1e6 * clean).all())


def test_the_statistical_verdicts_judge_only_what_exceeds_the_floor():
    from moecheck.reference.errmodel.compare import compare
    from moecheck.reference.errmodel.table import budget_for

    ref = torch.linspace(1.0, 2.0, 4096)
    floor, bound = torch.full_like(ref, 1e-3), torch.full_like(ref, 4e-3)
    ev = (bound.double() / 12) ** 2
    inside = compare(ref - 0.9 * floor, ref, bound, ev, budget_for("bf16"), floor)
    assert inside.passed and inside.bias == 0.0
    beyond = compare(ref - 1.5 * floor, ref, bound, ev, budget_for("bf16"), floor)
    assert not beyond.passed and "bias" in beyond.failed
    assert not compare(ref - 0.9 * floor, ref, bound, ev, budget_for("bf16")).passed  # no floor: all of it judged
