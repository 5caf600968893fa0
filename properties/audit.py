"""Capability audit: try what a record leaves out, and see how the library reacts.

Every registered backend gets rows. An unavailable one gets one row with its reason; one that is not
audit-safe (its kernels may fault the device) is not probed. For the others each probe is a small case
outside the record: an MoE backend gets its unclaimed formats, features (backends.base.FEATURES) and
alignments; a router backend (Capability.kind == "router") its unclaimed router kinds, routed scaling
and top_k above its limit, judged like routes_like_reference (formats mean nothing to a router).
A probe runs only where the adapter hands the thing to the library (Capability.forwarded()): an
adapter that never reads p.lora proves nothing about the library's LoRA path.

Outcomes (OUTCOMES) and what `moecheck audit` exits with (exit_code):
  refused         the library or adapter raised a clear, intended error: the good answer
  works           correct although unclaimed: the record undersells
  not probed      the library never saw it (the adapter does not pass it on, or computed without the kernel)
  adapter error   AttributeError/KeyError/IndexError/NameError, an interpreter TypeError, an empty message,
                  a broken output contract: a bug in the adapter, not a refusal                       -> 3
  device error    a CUDA error (the rest of that device is not probed once its context is lost)
  silently wrong  ran and returned a result outside the error-model bound without complaint           -> 1
  non-finite      ran and returned NaN/Inf where the reference is finite                             -> 1
  internal error  moecheck could not build the probe's case (a bug of ours)                           -> 3
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from moecheck.backends.base import FEATURES, Backend
from moecheck.properties import isolation
from moecheck.properties.case import Case, build
from moecheck.properties.checks import _compare, _reference
from moecheck.properties.harness import (
    BackendRaised,
    ContractBroken,
    first_lines,
    prepare,
    route_backend,
    run_backend,
)
from moecheck.properties.strategies import fit
from moecheck.reference.errmodel.routing import compare_routing
from moecheck.reference.errors import MoecheckError
from moecheck.reference.formats import FORMATS, get_format
from moecheck.reference.routing import ROUTER_KINDS

OUTCOMES = {
    "refused": "the library or adapter raised a clear, intended error (the good answer)",
    "works": "correct although unclaimed: the record undersells",
    "not probed": "the library never saw it: the adapter does not pass it on (Capability.forwards), or no kernel ran",
    "adapter error": "a bug in the adapter (AttributeError, KeyError, empty message, broken contract), never a refusal",
    "device error": "a CUDA error; once the context is lost the rest of that device is not probed",
    "silently wrong": "ran and returned a result outside the error-model bound without complaint",
    "non-finite": "ran and returned NaN/Inf where the reference is finite",
    "internal error": "moecheck could not build the probe's case (a bug of ours)",
    "unavailable": "the backend cannot run here (reason given)",
    "all claimed": "nothing the audit probes is left out of the record",
}
WRONG = ("silently wrong", "non-finite")  # exit 1: a library computed a wrong answer
BUGS = ("adapter error", "internal error")  # exit 3: a bug of ours (or of a plugin's adapter)


@dataclass(frozen=True)
class AuditRow:
    backend: str
    probe: str
    outcome: str  # a key of OUTCOMES
    detail: str


@dataclass(frozen=True)
class Probe:
    name: str
    passed_as: str | None  # its name in Capability.forwarded(); None: a shape, always passed on
    change: dict = field(default_factory=dict)  # applied after strategies.fit (which would undo it)
    before_fit: dict = field(default_factory=dict)  # applied before: sizes fit then aligns
    group: str = ""  # not passed on: probes of one group share a row ("formats", "router kinds")


@dataclass
class AuditState:
    """Across backends of one audit: a lost CUDA context ends probing on that device."""
    lost: dict[str, str] = field(default_factory=dict)  # device type -> why


BASE = Case(tokens=6, hidden=64, inter=64, experts=4, top_k=2, seed=7, property="matches_reference")
FEATURE_CHANGES = {"expert_map": dict(ep_remote=1), "lora": dict(lora_adapters=2), "bias": dict(bias=True),
                   "weights_on_input": dict(top_k=1, weights_on_input=True)}
ROUTER_BASE = Case(tokens=8, hidden=64, inter=32, experts=8, top_k=2, seed=7, property="routes_like_reference")
SCALED = 2.5  # DeepSeek-V3's routed scaling factor

# TypeErrors Python raises itself for a wrong call: an adapter bug, not a library's refusal
_CALL_BUG = re.compile(r"unexpected keyword argument|required (?:positional|keyword-only) argument|takes (?:from )?\d+ "
                       r"(?:to \d+ )?positional|object is not (?:callable|subscriptable|iterable)|unsupported operand|"
                       r"'NoneType' object")
_DEVICE = re.compile(r"CUDA error|cudaError|CUBLAS_STATUS|CUDNN_STATUS|illegal memory access|device-side assert|"
                     r"unspecified launch failure|misaligned address|CUDA driver error")
_BUG_TYPES = (AttributeError, KeyError, IndexError, NameError)


def _unaligned(align: int, k_multiple: int) -> int | None:
    """The smallest size >= 32 the format allows but the record's alignment does not; None if none."""
    if k_multiple % align == 0:
        return None
    n = -(-32 // k_multiple) * k_multiple
    while n % align == 0:
        n += k_multiple
    return n


def moe_probes(b: Backend, base_fmt: str) -> list[Probe]:
    cap = b.capability
    probes = [Probe(f"format {f}", f, before_fit=dict(format=f, hidden=128, inter=128), group="formats")
              for f in sorted(set(FORMATS) - set(cap.formats))]
    probes += [Probe(name, name, FEATURE_CHANGES[name]) for name in FEATURES if not getattr(cap, name)]
    k = get_format(base_fmt).k_multiple
    for dim, align in (("hidden", cap.hidden_align), ("inter", cap.inter_align)):
        n = _unaligned(align, k) if align > 1 else None
        if n is not None:
            probes.append(Probe(f"unaligned {dim} {n}", None, {dim: n}))
    return probes


def router_probes(b: Backend) -> list[Probe]:
    cap = b.capability
    probes = [Probe(f"router {k}", k, _router_case(k), group="router kinds") for k in sorted(set(ROUTER_KINDS) - set(cap.routers))]
    first = sorted(cap.routers)[0] if cap.routers else "softmax_topk"
    if not cap.routed_scaling:
        probes.append(Probe(f"routed_scaling {SCALED:g}", "routed_scaling", dict(_router_case(first), routed_scaling=SCALED)))
    if cap.max_top_k is not None:
        k = cap.max_top_k + 1
        probes.append(Probe(f"top_k {k}", None, dict(_router_case(first), top_k=k, experts=max(8, 2 * k), n_group=1, topk_group=1)))
    return probes


def _router_case(kind: str) -> dict:
    groups = dict(n_group=2, topk_group=1) if kind == "deepseek_v3" else {}
    return dict(router=kind, **groups)


def _chain(exc: BaseException) -> list[BaseException]:
    out = [exc]
    while out[-1].__cause__ is not None and len(out) < 8:
        out.append(out[-1].__cause__)
    return out


def _is_device(e: BaseException) -> bool:
    import torch

    accel = getattr(torch, "AcceleratorError", None)
    return (accel is not None and isinstance(e, accel)) or isinstance(e, torch.cuda.OutOfMemoryError) \
        or bool(_DEVICE.search(str(e)))


def classify(exc: BaseException) -> tuple[str, str]:
    """(outcome, detail) for what a probe raised. The type of the innermost cause decides (a wrapper such
    as FlashInfer's Refused keeps the library's exception as its cause); a MoecheckError is deliberate."""
    stage = ""
    if isinstance(exc, BackendRaised):
        stage, exc = f"{exc.stage}: ", exc.exc
    if isinstance(exc, ContractBroken):
        return "adapter error", f"{stage}output contract broken: {first_lines(exc, 2)}"
    chain = _chain(exc)
    root = chain[-1]
    text = stage + first_lines(exc, 2) + (f" (from {first_lines(root, 1)})" if root is not exc else "")
    if any(_is_device(e) for e in chain):
        return "device error", text
    if isinstance(exc, MoecheckError) and str(exc).strip():
        return "refused", text
    if isinstance(root, _BUG_TYPES):
        return "adapter error", text
    if not str(root).strip() or not str(exc).strip():
        return "adapter error", f"{stage}{type(root).__name__} with no message"
    if isinstance(root, TypeError) and _CALL_BUG.search(str(root)):
        return "adapter error", text
    return "refused", text


def _not_entered(counts: dict[str, int]) -> str | None:
    missing = [n for n, c in counts.items() if c == 0]
    return f"the library never saw it: {', '.join(missing)} never entered" if missing else None


def _judge_moe(b: Backend, p) -> tuple[str, str]:
    run = run_backend(b, prepare(b, p), p, use_out=False)
    why = _not_entered(run.spy_counts)
    if why:
        return "not probed", why
    if run.unwritten:
        return "silently wrong", f"{run.unwritten} output elements never written (poison left)"
    c = _compare(b, p, run.out, _reference(b, p))
    if c.nonfinite:
        return "non-finite", c.summary()
    if c.passed:
        return "works", f"within the bound (max normalized error {c.max_norm_err:.3g}): the record may undersell"
    return "silently wrong", c.summary()


def _judge_router(b: Backend, p, fmt: str) -> tuple[str, str]:
    import torch

    w, ids, counts = route_backend(b, prepare(b, p), p)
    why = _not_entered(counts)
    if why:
        return "not probed", why
    if w.is_floating_point() and not bool(torch.isfinite(w).all()):
        return "non-finite", f"{int((~torch.isfinite(w)).sum())} non-finite routing weights"
    c = compare_routing(w, ids, p.router_logits, p.router, p.router_bias, b.capability.budget(fmt))
    if c.passed:
        return "works", "ids and weights match the reference router: the record may undersell"
    return "silently wrong", c.summary()


def _probe(b: Backend, case: Case, device: str) -> tuple[str, str]:
    try:
        case.validate()
        p = build(case, device)
    except Exception as e:  # noqa: BLE001  the probe's case is ours: a bug of ours, not of the backend
        return "internal error", f"case not built: {first_lines(e, 1)}"
    try:
        return _judge_router(b, p, case.format) if b.capability.kind == "router" else _judge_moe(b, p)
    except Exception as e:  # noqa: BLE001  the point: does it refuse, and how clearly
        return classify(e)


def audit_backend(b: Backend, state: AuditState | None = None) -> list[AuditRow]:
    state = state if state is not None else AuditState()
    av = b.availability()
    if not av.ok:
        return [AuditRow(b.name, "-", "unavailable", av.reason)]
    if not getattr(b, "audit_safe", True):
        return [AuditRow(b.name, "-", "not probed", "not marked audit-safe: its kernels may fault the device")]
    cap = b.capability
    router = cap.kind == "router"
    base_fmt = sorted(cap.formats)[0] if cap.formats else "bf16"
    probes = router_probes(b) if router else moe_probes(b, base_fmt)
    base = (ROUTER_BASE if router else BASE).with_(backend=b.name, format=base_fmt)
    passed = cap.forwarded()
    rows, silent = [], {}
    for pr in probes:  # what the adapter never hands over: one row per group, or per feature
        if pr.passed_as is not None and pr.passed_as not in passed:
            silent.setdefault(pr.group or pr.name, []).append(pr)
    for group, prs in silent.items():
        rows.append(AuditRow(b.name, f"{len(prs)} {group}" if len(prs) > 1 else prs[0].name, "not probed",
                             f"the adapter does not pass {', '.join(p.passed_as for p in prs)} to the library "
                             "(Capability.forwards)"))
    dev = av.device.split(":")[0]
    for pr in probes:
        if pr.passed_as is not None and pr.passed_as not in passed:
            continue
        if dev in state.lost:
            rows.append(AuditRow(b.name, pr.name, "not probed", f"{dev} context lost earlier: {state.lost[dev]}"))
            continue
        case = fit(base.with_(**pr.before_fit), b).with_(**pr.change)
        outcome, detail = _probe(b, case, av.device)
        if outcome == "device error":
            ok, why = isolation.device_healthy(av.device)
            if not ok:
                state.lost[dev] = f"{b.name} {pr.name}: {why}"
        rows.append(AuditRow(b.name, pr.name, outcome, detail))
    if not rows:
        what = "router kind, routed scaling" if router else "format, feature"
        rows.append(AuditRow(b.name, "-", "all claimed", f"every {what} and limit the audit probes is in the record"))
    return rows


def exit_code(rows: list[AuditRow]) -> int:
    """1 if a library computed a wrong answer, else 3 if an adapter (or moecheck) has a bug, else 0."""
    if any(r.outcome in WRONG for r in rows):
        return 1
    return 3 if any(r.outcome in BUGS for r in rows) else 0
