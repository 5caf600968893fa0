"""Every case file kept under docs/findings/ is a regression test: replayed here with its backend,
it must pass once the finding is fixed (or skip with the reason it cannot run on this machine).

The 2026-11-23 H100 cases of torch_grouped_mm were an undeclared rounding point: the adapter adds
the bias in torch after the grouped GEMM stored its result in bf16, which matters where the bias
cancels the product (I=1, gelu); Rounding.pre_bias now declares it.
"""
from __future__ import annotations

import pytest
from moecheck.properties.repro import load_case, replay, replay_isolated
from moecheck.tests.checkout import IS_CHECKOUT, NOT_A_CHECKOUT, ROOT

FINDINGS = ROOT / "docs" / "findings"
FILES = sorted(FINDINGS.glob("*/*.json")) if FINDINGS.is_dir() else []
# open findings: library bugs (or untriaged) kept failing on purpose; each README says which
OPEN = sorted(FINDINGS.glob("*/open/*.json")) if FINDINGS.is_dir() else []


def test_findings_are_here():
    if not FINDINGS.is_dir():
        pytest.skip(NOT_A_CHECKOUT if not IS_CHECKOUT else f"no {FINDINGS}")
    assert FILES, f"{FINDINGS} holds no case files"


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.stem}" for p in FILES])
def test_finding_replays_clean(path):
    verdict, msg = replay(load_case(str(path)))
    if verdict == "skip":
        pytest.skip(msg)
    assert verdict == "pass", f"{msg}\n  reproduce: moecheck repro {path}"


@pytest.mark.parametrize("path", OPEN, ids=[f"{p.parent.parent.name}/{p.stem}" for p in OPEN])
def test_open_finding_still_fails(path):
    """Replayed whatever the record now claims: once it passes, the library fixed it, and the record
    can claim the case again (then move the file up out of open/)."""
    from moecheck.backends import registry

    case = load_case(str(path))
    av = registry.get(case.backend).availability()
    if not av.ok:
        pytest.skip(f"backend {case.backend} unavailable here: {av.reason}")
    # a process each: an open finding may break the CUDA context (T=0) or hang (Marlin AWQ)
    verdict, msg = replay_isolated(case, claimed=False)
    if verdict == "skip":
        pytest.skip(msg)
    assert verdict in ("fail", "crashed"), f"{path.name} now replays {verdict}: {msg}"


def test_grouped_mm_findings_fail_without_the_declared_rounding_point():
    """The replay can fail: judged by a record that forgets pre_bias, the same case fails again."""
    import dataclasses

    from moecheck.backends import registry
    from moecheck.properties.checks import check

    cases = [load_case(str(p)) for p in FILES if p.name.startswith("torch_grouped_mm-")]
    if not cases:
        pytest.skip("no torch_grouped_mm finding files here")
    b = registry.get("torch_grouped_mm")
    cap = dataclasses.replace(b.capability, rounding=dataclasses.replace(b.capability.rounding, pre_bias=None))
    forgetful = dataclasses.replace(b, capability=cap)
    assert check(forgetful, cases[0], "cpu").verdict == "fail"
