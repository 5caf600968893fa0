"""Capability audit: try what a record says is unsupported, and see how the library reacts.

For each available backend, formats and features outside its record are tried on a small case.
Outcomes: `refused` (raised an error: the good answer), `works` (correct: the record may be too
narrow), `silently wrong` (returned a result outside the error-model bound without complaint: the
dangerous answer), `non-finite` (returned NaN/Inf). Only backends marked audit-safe are tried
(torch-level adapters); a kernel that may fault the device is not poked this way.
"""
from __future__ import annotations

from dataclasses import dataclass

from moecheck.backends.base import Backend
from moecheck.properties.case import Case, build
from moecheck.reference.errmodel import compare
from moecheck.reference.formats import FORMATS


@dataclass(frozen=True)
class AuditRow:
    backend: str
    probe: str
    outcome: str  # refused | works | silently wrong | non-finite | not tried
    detail: str


BASE = Case(tokens=6, hidden=64, inter=64, experts=4, top_k=2, seed=7)
FEATURE_PROBES = {  # feature name -> (record flag, case change)
    "expert_map": ("expert_map", dict(ep_remote=1)),
    "lora": ("lora", dict(lora_adapters=2)),
    "bias": ("bias", dict(bias=True)),
    "weights_on_input": ("weights_on_input", dict(top_k=1, weights_on_input=True)),
    "unaligned hidden": (None, dict(hidden=36)),
}


def _try(b: Backend, case: Case, device) -> tuple[str, str]:
    try:
        p = build(case, device)
        out = b.run(b.prepare(p), p)
    except Exception as e:  # the point: does it refuse, and how clearly
        first = (str(e).strip().splitlines() or [""])[0][:160]
        return "refused", f"{type(e).__name__}: {first}"
    ref = p.reference(b.capability.rounding, b.capability.budget(case.format))
    c = compare(out, ref.out, ref.bound)
    if c.nonfinite:
        return "non-finite", c.summary()
    return ("works", c.summary()) if c.passed else ("silently wrong", c.summary())


def audit_backend(b: Backend) -> list[AuditRow]:
    av = b.availability()
    if not av.ok:
        return [AuditRow(b.name, "-", "not tried", av.reason)]
    if not getattr(b, "audit_safe", True):
        return [AuditRow(b.name, "-", "not tried", "backend not marked audit-safe")]
    cap = b.capability
    base_fmt = sorted(cap.formats)[0] if cap.formats else "bf16"
    rows = []
    for fmt in sorted(set(FORMATS) - set(cap.formats)):
        case = BASE.with_(backend=b.name, format=fmt, hidden=128, inter=128)
        rows.append(AuditRow(b.name, f"format {fmt}", *_try(b, case, av.device)))
    for name, (flag, change) in FEATURE_PROBES.items():
        if flag is not None and getattr(cap, flag):
            continue
        if flag is None and cap.hidden_align <= 1:
            continue
        case = BASE.with_(backend=b.name, format=base_fmt, **change)
        rows.append(AuditRow(b.name, name, *_try(b, case, av.device)))
    return rows
