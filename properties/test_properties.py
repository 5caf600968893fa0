"""One template, every (backend, format, property) the registry allows: `pytest -n auto` runs them.

An unavailable backend is one test that skips with its availability reason (not one per format and
property); formats outside a record are not generated (the capability audit tries those). Pinned examples cover the bug families of the seed
pull requests: padding/alignment, scale conversion, output-buffer contracts, workspace sizing.
"""
from __future__ import annotations

import os
from fnmatch import fnmatchcase

import pytest
from hypothesis import example, given, note
from moecheck.backends import registry
from moecheck.properties.case import Case
from moecheck.properties.checks import PROPERTIES, check
from moecheck.properties.repro import repro_command, save_case
from moecheck.properties.strategies import cases, fit

PINNED = [
    # hidden/intermediate not multiples of 64/128/256 (PR #30647: padding moved into the quantizer)
    Case(tokens=5, hidden=96, inter=160, experts=4, top_k=2, seed=30647),
    # outlier channels: where per-block -> per-tensor scale conversion loses accuracy (PR #19843)
    Case(tokens=9, hidden=256, inter=128, experts=4, top_k=2, values="outliers", seed=19843),
    # one token on every expert, and an empty batch: output-buffer contracts (MoE-LoRA PR)
    Case(tokens=1, hidden=64, inter=64, experts=4, top_k=4, seed=1),
    Case(tokens=0, hidden=64, inter=64, experts=4, top_k=2, seed=0),
    # every row on one expert, more experts than tokens: workspace sizing
    Case(tokens=47, hidden=128, inter=64, experts=12, top_k=8, routing="one_expert", seed=47),
    # expert parallelism with most experts remote and empty local experts
    Case(tokens=16, hidden=64, inter=96, experts=8, top_k=2, ep_remote=6, routing="empty_experts", seed=8),
    # block maxima exactly on scale-rounding boundaries
    Case(tokens=8, hidden=128, inter=64, experts=2, top_k=1, values="boundary", seed=448),
]


def _selected(kind: str, name: str) -> bool:
    """MOECHECK_SELECT_<KIND>=pat1,pat2 (fnmatch, exact names: `bf16` is not `mxfp4_bf16`); set by `moecheck run`."""
    pats = [p for p in os.environ.get(f"MOECHECK_SELECT_{kind}", "").split(",") if p]
    return not pats or any(fnmatchcase(name, p) for p in pats)


def _params():
    out = []
    for name, b in sorted(registry.load_all().items()):
        fmts = sorted(b.capability.formats) or ["-"]
        if not b.availability().ok:  # one skip with the reason, not one per format x property
            if _selected("BACKENDS", name) and any(_selected("FORMATS", f) for f in fmts):
                out.append(pytest.param(name, "-", "-", id=f"{name}-unavailable"))
            continue
        for fmt in fmts:
            for prop in PROPERTIES:
                if _selected("BACKENDS", name) and _selected("FORMATS", fmt) and _selected("PROPERTIES", prop):
                    out.append(pytest.param(name, fmt, prop, id=f"{name}-{fmt}-{prop}"))
    return out


def _pinned(test):
    for c in PINNED:
        test = example(case=c)(test)
    return test


@pytest.mark.parametrize("backend_name,fmt,prop", _params())
def test_property(backend_name, fmt, prop, request):
    b = registry.get(backend_name)
    av = b.availability()
    if not av.ok:
        pytest.skip(f"backend unavailable here: {av.reason}")  # grouped by reason in -ra; names: moecheck backends
    worst = {"err": 0.0, "case": None, "skips": [], "unclaimed": [], "ran": 0}

    @_pinned
    @given(case=cases(b, fmt, prop, av.device))
    def run(case: Case):
        case = fit(case.with_(backend=backend_name, format=fmt, property=prop), b)
        note(case.summary())
        out = check(b, case, av.device)
        if out.verdict == "skip" and out.info.get("unclaimed"):  # it ran: the record just does not promise it
            worst["unclaimed"].append(out.message)
        elif out.verdict == "skip":  # this example does not apply (e.g. one token for a batch property)
            worst["skips"].append(out.message)
            return
        worst["ran"] += 1
        err = out.cmp.max_norm_err if out.cmp is not None else 0.0
        if worst["case"] is None or err > worst["err"]:  # the worst case, else the first one run
            worst["err"], worst["case"] = max(err, worst["err"]), case
        if out.verdict == "fail":
            path = save_case(case)
            request.node.user_properties.append(("moecheck_repro", repro_command(case)))
            raise AssertionError(f"{case.summary()}\n  {out.message}\n  reproduce: {repro_command(case)}\n  case file: {path}")

    try:
        run()
    finally:
        request.node.user_properties.append(("moecheck", {
            "backend": backend_name, "format": fmt, "property": prop, "max_norm_err": worst["err"],
            "examples_run": worst["ran"], "worst_case": worst["case"].to_json() if worst["case"] else None}))
    if not worst["ran"]:
        pytest.skip(worst["skips"][0] if worst["skips"] else "no example applicable")
    if worst["unclaimed"]:
        pytest.skip(f"{worst['unclaimed'][0]} ({len(worst['unclaimed'])} of {worst['ran']} examples)")
