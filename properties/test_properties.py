"""One template, every (backend, format, property) the registry allows: `pytest -n auto` runs them.

Three kinds of test item, each a result of its own, so one finding never hides another:
  - test_property[B-F-P]: a property over drawn examples (Hypothesis), never on the edge token counts;
  - test_edge[B-F-EDGE]: one edge of the contract (empty batch, one token, ...), drawn within that edge:
    correct, or `refused` with a clear exception (a valid outcome, recorded with its message);
  - test_pinned[B-F-PIN]: one pinned case from the seed pull requests' bug families, through every
    gating property (MOECHECK_PINNED=0 leaves them out, to measure what drawn examples alone find).
An unavailable backend is one test that skips with its availability reason. Formats outside a record
are not generated (the capability audit tries those). Every failure saves one case file, the shrunk
one, and prints the one command that replays it.
"""
from __future__ import annotations

import os
from fnmatch import fnmatchcase

import pytest
from hypothesis import given, note, settings, target
from moecheck.backends import registry
from moecheck.properties import isolation
from moecheck.properties.case import Case
from moecheck.properties.checks import PROPERTIES, Outcome, check
from moecheck.properties.pytest_plugin import share_gpu_memory
from moecheck.properties.repro import repro_command, save_case
from moecheck.properties.strategies import EDGES, cases, edge_applies, fit

PINNED = {
    # hidden/intermediate not multiples of 64/128/256 (PR #30647: padding moved into the quantizer)
    "unaligned_30647": Case(tokens=5, hidden=96, inter=160, experts=4, top_k=2, seed=30647),
    # outlier channels: where per-block -> per-tensor scale conversion loses accuracy (PR #19843)
    "outliers_19843": Case(tokens=9, hidden=256, inter=128, experts=4, top_k=2, values="outliers", seed=19843),
    # every row on one expert, more experts than tokens: workspace sizing
    "one_expert_workspace": Case(tokens=47, hidden=128, inter=64, experts=12, top_k=8, routing="one_expert", seed=47),
    # expert parallelism with most experts remote and empty local experts
    "ep_mostly_remote": Case(tokens=16, hidden=64, inter=96, experts=8, top_k=2, ep_remote=6, routing="empty_experts", seed=8),
    # block maxima exactly on scale-rounding boundaries
    "scale_boundaries": Case(tokens=8, hidden=128, inter=64, experts=2, top_k=1, values="boundary", seed=448),
}
NUMERIC = [n for n in PROPERTIES if n != "edge_contract"]
PINNED_PROPERTIES = [n for n in NUMERIC if PROPERTIES[n].gating and not PROPERTIES[n].needs_router]
EDGE_EXAMPLES = 5  # per edge: the edge is the point, not the sizes around it
_CONTEXT_LOST: list[tuple[str, str]] = []  # outside xdist: (test, why) once the CUDA context broke


def _selected(kind: str, name: str) -> bool:
    """MOECHECK_SELECT_<KIND>=pat1,pat2 (fnmatch, exact names: `bf16` is not `mxfp4_bf16`); set by `moecheck run`."""
    pats = [p for p in os.environ.get(f"MOECHECK_SELECT_{kind}", "").split(",") if p]
    return not pats or any(fnmatchcase(name, p) for p in pats)


def _params(kind: str):
    out = []
    for name, b in sorted(registry.suite().items()):
        fmts = sorted(b.capability.formats) or ["-"]
        if not _selected("BACKENDS", name):
            continue
        if not b.availability().ok:  # one skip with the reason, not one per format x property
            if kind == "property" and any(_selected("FORMATS", f) for f in fmts):
                out.append(pytest.param(name, "-", "-", id=f"{name}-unavailable"))
            continue
        if kind != "property" and b.capability.kind != "moe":
            continue  # edges and pinned cases are of the MoE layer
        what = {"property": [n for n in NUMERIC if PROPERTIES[n].applies(b)], "edge": list(EDGES), "pinned": list(PINNED)}[kind]
        prop_of = {"property": lambda w: w, "edge": lambda w: "edge_contract", "pinned": lambda w: "pinned"}[kind]
        if kind == "pinned" and os.environ.get("MOECHECK_PINNED", "1") == "0":
            continue
        for fmt in fmts:
            for w in what:
                if _selected("FORMATS", fmt) and _selected("PROPERTIES", prop_of(w)):
                    out.append(pytest.param(name, fmt, w, id=f"{name}-{fmt}-{w}"))
    return out


def _final() -> bool:
    """True in Hypothesis' last replay of a failing example (the shrunk one), or outside Hypothesis."""
    from hypothesis.control import _current_build_context

    ctx = _current_build_context.value
    return ctx is None or ctx.is_final


class Tally:
    """What one test item saw: examples run, the worst one, refusals, skips, and its failure."""

    def __init__(self, request, backend_name: str, fmt: str, label: str):
        self.request, self.nodeid = request, request.node.nodeid
        self.backend, self.fmt, self.label = registry.get(backend_name), fmt, label
        self.device = self.backend.availability().device
        self.ran, self.err, self.rms, self.bias, self.worst = 0, 0.0, 0.0, 0.0, None
        self.skips, self.unclaimed, self.refused, self.failures = [], [], [], []
        if self.device == "cuda":
            share_gpu_memory()
        if _CONTEXT_LOST and self.device == "cuda":
            pytest.skip(f"CUDA context lost after {_CONTEXT_LOST[0][0]} ({_CONTEXT_LOST[0][1]}); "
                        "`moecheck run` runs tests under xdist, which restarts the worker instead")

    def one(self, case: Case, raise_on_fail: bool = True) -> Outcome:
        case = fit(case.with_(backend=self.backend.name, format=self.fmt), self.backend)
        if self._in_hypothesis():
            note(case.summary())
        with isolation.example(self.nodeid, case.to_json(), repro_command(case)):
            out = check(self.backend, case, self.device)
        if out.info.get("device_error"):
            self._after_device_error(case, out)
        if out.verdict == "skip" and not out.info.get("unclaimed"):
            self.skips.append(out.message)  # this example does not apply (e.g. one token for a batch property)
            return out
        self.ran += 1
        if out.verdict == "skip":  # it ran: the record just does not promise it
            self.unclaimed.append(out.message)
        if out.verdict == "refused":
            self.refused.append(out.message)
        c = out.cmp
        if c is not None and self._in_hypothesis() and c.max_norm_err < float("inf"):
            # steer the search toward the edge of the bound (Hypothesis' targeted phase)
            target(c.max_norm_err, label="max normalized error")
            if getattr(c, "rms_bound", None):
                target(c.rms_norm_err / c.rms_bound, label="rms over its bound")
        if self.worst is None or (c is not None and c.max_norm_err > self.err):
            self.err = c.max_norm_err if c is not None else self.err
            self.worst = case
        if c is not None:  # the worst of each statistic, over every example
            self.rms = max(self.rms, c.rms_norm_err)
            self.bias = max(self.bias, getattr(c, "bias", 0.0), key=abs)
        if out.verdict == "fail":
            self._fail(case, out, raise_on_fail)
        return out

    @staticmethod
    def _in_hypothesis() -> bool:
        from hypothesis.control import _current_build_context

        return _current_build_context.value is not None

    def _fail(self, case: Case, out: Outcome, raise_on_fail: bool) -> None:
        text = f"{case.summary()}\n  {out.message}\n  reproduce: {repro_command(case)}"
        if _final():  # one case file per failure: the shrunk case, the one the repro replays
            path = save_case(case)
            self.failures.append((case, out, path))
            text += f"\n  case file: {path}"
        if raise_on_fail:
            raise AssertionError(text)

    def _after_device_error(self, case: Case, out: Outcome) -> None:
        ok, why = isolation.device_healthy(self.device)
        if self.device != "cuda":
            return
        out.message += f"; device health afterwards: {why}"
        if ok:
            return
        if isolation.under_xdist():  # the controller records it as crashed, with its case and repro
            isolation.die_after_device_error(self.nodeid, f"{case.summary()}: {out.message}")
        _CONTEXT_LOST.append((self.nodeid, why))

    def finish(self) -> None:
        isolation.done(self.nodeid)
        case, out, _ = self.failures[-1] if self.failures else (None, None, None)
        c = out.cmp if out is not None else None
        rec = {"backend": self.backend.name, "format": self.fmt, "property": self.label, "examples_run": self.ran,
               "max_norm_err": c.max_norm_err if c is not None else self.err,
               "rms_norm_err": c.rms_norm_err if c is not None else self.rms,
               "bias": getattr(c, "bias", 0.0) if c is not None else self.bias,
               "where": list(c.where) if c is not None and c.where is not None else None,
               "bound": getattr(c, "bound", None) if c is not None else None,  # at `where`: the dashboard shows it
               "worst_case": (case or self.worst).to_json() if (case or self.worst) else None}
        if out is not None:
            rec["message"] = "; ".join(f"{c.summary()}: {o.message}" for c, o, _ in self.failures)
            rec["case_file"] = str(self.failures[-1][2])
            self.request.node.user_properties.append(("moecheck_repro", repro_command(case)))
        elif self.refused:
            rec["outcome"] = "refused"
            rec["message"] = f"{self.refused[0]} ({len(self.refused)} of {self.ran} examples refused)"
        self.request.node.user_properties.append(("moecheck", rec))

    def verdict(self) -> None:
        """After the examples: skip when nothing applied, or when only unclaimed behaviour was seen."""
        if not self.ran:
            pytest.skip(self.skips[0] if self.skips else "no example applicable")
        if self.unclaimed:
            pytest.skip(f"{self.unclaimed[0]} ({len(self.unclaimed)} of {self.ran} examples)")


def _drawn(t: Tally, strategy, max_examples: int | None = None) -> None:
    cfg = settings() if max_examples is None else settings(max_examples=min(settings().max_examples, max_examples))

    @settings(cfg)
    @given(case=strategy)
    def run(case: Case):
        t.one(case)

    try:
        run()
    finally:
        t.finish()
    t.verdict()


def _unavailable(backend_name: str) -> None:
    av = registry.get(backend_name).availability()
    if not av.ok:
        pytest.skip(f"backend unavailable here: {av.reason}")  # grouped by reason in -ra; names: moecheck backends


@pytest.mark.parametrize("backend_name,fmt,prop", _params("property"))
def test_property(backend_name, fmt, prop, request):
    _unavailable(backend_name)
    t = Tally(request, backend_name, fmt, prop)
    _drawn(t, cases(t.backend, fmt, prop, t.device).map(lambda c: c.with_(property=prop)))


@pytest.mark.parametrize("backend_name,fmt,edge", _params("edge"))
def test_edge(backend_name, fmt, edge, request):
    t = Tally(request, backend_name, fmt, f"edge:{edge}")
    why = edge_applies(t.backend, edge)
    if why:
        pytest.skip(f"edge {edge} ({EDGES[edge]}) outside the record: {why}")
    strategy = cases(t.backend, fmt, "edge_contract", t.device, edge=edge)
    _drawn(t, strategy.map(lambda c: c.with_(property="edge_contract")), EDGE_EXAMPLES)


@pytest.mark.parametrize("backend_name,fmt,pin", _params("pinned"))
def test_pinned(backend_name, fmt, pin, request):
    """Every gating property on one pinned case; all of their failures are reported together."""
    t = Tally(request, backend_name, fmt, f"pinned:{pin}")
    try:
        for prop in PINNED_PROPERTIES:
            t.one(PINNED[pin].with_(property=prop), raise_on_fail=False)
    finally:
        t.finish()
    if t.failures:
        raise AssertionError("\n".join(f"{c.summary()}\n  {o.message}\n  reproduce: {repro_command(c)}\n  case file: {p}"
                                       for c, o, p in t.failures))
    t.verdict()
