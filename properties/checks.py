"""The properties, one function each: (backend, case) -> Outcome. Records over if-chains: PROPERTIES.

Every run goes through harness.run_backend, so every property also proves the kernel ran (spies)
and that its output contract held; a failure of either is reported as such. A backend that raises,
returns None or a wrongly shaped tensor fails the property like a wrong number does (check() turns
harness.BackendRaised / ContractBroken into a `fail` Outcome), except in edge_contract, where a
clean exception is `refused`: a library may decline an empty batch, but must not crash on it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from moecheck.backends.base import Backend
from moecheck.backends.problem import MoEProblem
from moecheck.properties import isolation
from moecheck.properties.case import Case, build, weight_block_rows
from moecheck.properties.harness import (
    BackendRaised,
    ContractBroken,
    prepare,
    route_backend,
    run_backend,
    spying,
)
from moecheck.reference.errmodel import compare
from moecheck.reference.errmodel.compare import Comparison
from moecheck.reference.errmodel.routing import ambiguous_tokens, compare_routing
from moecheck.reference.formats import get_format
from moecheck.reference.padding import round_up


@dataclass
class Outcome:
    verdict: str  # pass | fail | skip | refused
    message: str = ""
    cmp: Comparison | None = None
    duration_s: float = 0.0
    info: dict = field(default_factory=dict)


def _ran(b: Backend, run, need_spies: bool = True) -> str | None:
    missing = [n for n, c in run.spy_counts.items() if c == 0]
    if missing and need_spies:
        return f"kernel not called: {', '.join(missing)} never entered during run (the backend computed without it)"
    if not run.guards_ok:
        return "wrote outside the output buffer (guard band changed)"
    if run.unwritten:
        return f"{run.unwritten} output elements never written (poison pattern left)"
    return None


def _reference(b: Backend, p: MoEProblem):
    cap = b.capability
    return p.with_(fmt=cap.reference_format(p.fmt)).reference(cap.rounding, cap.budget(p.fmt.name))


def _compare(b: Backend, p: MoEProblem, out: torch.Tensor, ref, rows=None, bound=None) -> Comparison:
    """All three verdicts (max, rms, bias) of `out` against the reference result `ref`."""
    bound = ref.bound if bound is None else bound
    ev, want, fl = ref.expected_var, ref.out, ref.floor
    if rows is not None:
        out, want, bound = out[rows], want[rows], bound[rows]
        ev, fl = (None if t is None else t[rows] for t in (ev, fl))
    return compare(out, want, bound, ev, b.capability.budget(p.fmt.name), fl)


def _judge(b: Backend, p: MoEProblem, prepared=None, need_spies: bool = True) -> tuple[Outcome, torch.Tensor | None]:
    prepared = prepare(b, p) if prepared is None else prepared
    run = run_backend(b, prepared, p)
    bad = _ran(b, run, need_spies)
    if bad:
        return Outcome("fail", bad), run.out
    c = _compare(b, p, run.out, _reference(b, p))
    return Outcome("pass" if c.passed else "fail", c.summary(), c), run.out


def matches_reference(b: Backend, case: Case, device) -> Outcome:
    return _judge(b, build(case, device))[0]


def edge_contract(b: Backend, case: Case, device) -> Outcome:
    """An edge of the contract (empty batch, one token, more experts than tokens, top_k = E, an expert
    with no rows): the output matches the reference and is fully written, or the library refuses the
    call with a clear exception. A device error is never a refusal."""
    try:  # an empty batch has nothing to launch: a kernel may rightly return before its spy is reached
        return _judge(b, build(case, device), need_spies=case.tokens > 0)[0]
    except BackendRaised as e:
        if isolation.is_device_error(e.exc):
            return Outcome("fail", f"{e} (a device error is not a refusal)", info={"device_error": True})
        return Outcome("refused", str(e))


def kernel_ran(b: Backend, case: Case, device) -> Outcome:
    p = build(case, device)
    run = run_backend(b, prepare(b, p), p)
    counts = ", ".join(f"{n} x{c}" for n, c in run.spy_counts.items()) or "no spies declared"
    if not b.spies:
        return Outcome("fail", "backend declares no spies: nothing proves its kernel ran")
    bad = _ran(b, run)
    return Outcome("fail", bad) if bad else Outcome("pass", counts)


def output_contract(b: Backend, case: Case, device) -> Outcome:
    """Poisoned output buffer + guard bands (out=) and, for allocating backends, a flooded cache."""
    p = build(case, device)
    prepared = prepare(b, p)
    for use_out in ([True, False] if b.capability.out_buffer else [False]):
        run = run_backend(b, prepared, p, use_out=use_out)
        bad = _ran(b, run)
        if bad:
            return Outcome("fail", f"{'out=' if use_out else 'allocated'} output: {bad}")
    return Outcome("pass", "fully written, guards intact")


def padded_sizes(b: Backend, case: Case) -> tuple[int, int]:
    """(H', I') the padding property runs the backend at: past the sizes, on its alignments."""
    cap, fmt = b.capability, get_format(case.format)
    hp = round_up(case.hidden + 1, math.lcm(cap.hidden_align, fmt.k_multiple, 16))
    ip = round_up(case.inter + 1, math.lcm(cap.inter_align, fmt.k_multiple, 16, weight_block_rows(fmt)))
    return hp, ip


def padded_equals_unpadded(b: Backend, case: Case, device) -> Outcome:
    """Pad H and I to the backend's alignment (and beyond); the unpadded reference is the truth."""
    p = build(case, device)
    hp, ip = padded_sizes(b, case)
    pp = build(case, device, pad_to=(hp, ip))
    run = run_backend(b, prepare(b, pp), pp)
    bad = _ran(b, run)
    if bad:
        return Outcome("fail", f"padded H={hp} I={ip}: {bad}")
    c = _compare(b, p, run.out[:, :case.hidden], _reference(b, p))
    return Outcome("pass" if c.passed else "fail", f"padded H={hp} I={ip}: {c.summary()}", c)


def permutation_equivariant(b: Backend, case: Case, device) -> Outcome:
    p = build(case, device)
    if p.tokens < 2:
        return Outcome("skip", "needs >= 2 tokens")
    g = torch.Generator().manual_seed(case.seed + 1)
    perm = torch.randperm(p.tokens, generator=g).to(p.device)
    pp = p.with_(hidden_states=p.hidden_states[perm], topk_weights=p.topk_weights[perm], topk_ids=p.topk_ids[perm],
                 token_lora=None if p.token_lora is None else p.token_lora[perm])
    prepared = prepare(b, p)
    r1, r2 = run_backend(b, prepared, p), run_backend(b, prepared, pp)
    bad = _ran(b, r1) or _ran(b, r2)
    if bad:
        return Outcome("fail", bad)
    ref = _reference(b, p)
    # two runs of one kernel: each within the model of the reference, so their difference within twice
    # its expected square; a combine that depends on token order shows in every element (rms)
    ev2 = None if ref.expected_var is None else 2 * ref.expected_var[perm]
    c = compare(r2.out, r1.out[perm], ref.bound[perm], ev2, b.capability.budget(p.fmt.name),
                None if ref.floor is None else ref.floor[perm])
    bitwise = bool(torch.equal(r2.out, r1.out[perm]))
    return Outcome("pass" if c.passed else "fail", f"bitwise={bitwise}; {c.summary()}", c, info={"bitwise": bitwise})


def _claimed(ok: bool, claim: bool, what: str, detail: str) -> Outcome:
    if ok:
        return Outcome("pass", detail)
    if claim:
        return Outcome("fail", f"record claims {what}, but {detail}")
    return Outcome("skip", f"not claimed by the record; observed: {detail}", info={"unclaimed": True})


def deterministic(b: Backend, case: Case, device) -> Outcome:
    p = build(case, device)
    prepared = prepare(b, p)
    outs = [run_backend(b, prepared, p).out.clone() for _ in range(3)]
    n = sum(int((o.view(torch.int16) != outs[0].view(torch.int16)).sum()) for o in outs[1:])
    return _claimed(n == 0, b.capability.deterministic, "bitwise determinism", f"{n} elements differ across 3 reruns")


def batch_invariant(b: Backend, case: Case, device) -> Outcome:
    p = build(case, device)
    if p.tokens < 2:
        return Outcome("skip", "needs >= 2 tokens")
    h = p.tokens // 2
    sub = p.with_(hidden_states=p.hidden_states[:h], topk_weights=p.topk_weights[:h], topk_ids=p.topk_ids[:h],
                  token_lora=None if p.token_lora is None else p.token_lora[:h])
    prepared = prepare(b, p)
    full, part = run_backend(b, prepared, p).out, run_backend(b, prepared, sub).out
    n = int((full[:h].view(torch.int16) != part.view(torch.int16)).sum())
    return _claimed(n == 0, b.capability.batch_invariant, "batch invariance",
                    f"{n} elements of the first {h} tokens differ when run alone")


def routes_like_reference(b: Backend, case: Case, device) -> Outcome:
    """A router backend's ids and weights against the reference router (ids as sets where ties allow)."""
    p = build(case, device)
    w, ids, counts = route_backend(b, prepare(b, p), p)
    missing = [n for n, c in counts.items() if c == 0]
    if missing:
        return Outcome("fail", f"kernel not called: {', '.join(missing)} never entered during route")
    c = compare_routing(w, ids, p.router_logits, p.router, p.router_bias, b.capability.budget(case.format))
    return Outcome("pass" if c.passed else "fail", c.summary(), c)


def matches_reference_from_logits(b: Backend, case: Case, device) -> Outcome:
    """The whole layer from router logits: the backend routes itself; tokens whose reference routing is
    a near tie are not judged (either side of a tie is right, and their outputs differ)."""
    p = build(case, device)
    rp = p.unrouted()
    prepared = prepare(b, p)
    with spying(b.router_spies) as counts:
        run = run_backend(b, prepared, rp)
    bad = _ran(b, run) or next((f"router not called: {n} never entered" for n, c in counts.items() if c == 0), None)
    if bad:
        return Outcome("fail", bad)
    budget = b.capability.budget(case.format)
    amb = ambiguous_tokens(p.router_logits, p.router, p.router_bias, budget).to(run.out.device)
    if bool(amb.any()) and _rows_share_scale(p.fmt):
        return Outcome("skip", f"{int(amb.sum())} near-tie tokens under a dynamic activation scale shared by all rows: "
                       "every output depends on the tie-break")
    c = _compare(b, p, run.out, _reference(b, p), rows=~amb)
    return Outcome("pass" if c.passed else "fail", f"{int(amb.sum())} near-tie tokens not judged; {c.summary()}", c)


def _rows_share_scale(fmt) -> bool:
    """A dynamic activation scale over many rows (per tensor, or NVFP4's global): a tie-break elsewhere moves it."""
    from moecheck.reference.spec import ScaleRule

    a = fmt.act
    return a is not None and not a.static and (a.block[0] is None or a.rule == ScaleRule.NVFP4)


MOE, ROUTER = frozenset({"moe"}), frozenset({"router"})


@dataclass(frozen=True)
class Property:
    name: str
    check: Callable[[Backend, Case, object], Outcome]
    doc: str
    gating: bool = True  # False: reported on its own, fails only where the record claims it
    kinds: frozenset[str] = MOE  # the backend kinds (Capability.kind) it applies to
    needs_router: bool = False  # applies only where the record claims routers; cases carry one

    def applies(self, b: Backend) -> bool:
        return b.capability.kind in self.kinds and (not self.needs_router or bool(b.capability.routers))


PROPERTIES: dict[str, Property] = {p.name: p for p in [
    Property("matches_reference", matches_reference, "output within the error-model bound; finite where the reference is"),
    Property("edge_contract", edge_contract, "edge shapes run correctly or are refused with a clear error"),
    Property("kernel_ran", kernel_ran, "the backend's declared kernels were entered"),
    Property("output_contract", output_contract, "every output element written, nothing written outside"),
    Property("padded_equals_unpadded", padded_equals_unpadded, "padded H/I give the unpadded answer"),
    Property("permutation_equivariant", permutation_equivariant, "permuting tokens permutes the output"),
    Property("deterministic", deterministic, "bitwise-identical reruns", gating=False),
    Property("batch_invariant", batch_invariant, "a token's output does not depend on its batch", gating=False),
    Property("matches_reference_from_logits", matches_reference_from_logits,
             "the layer routed by the backend itself from logits matches the reference", needs_router=True),
    Property("routes_like_reference", routes_like_reference, "router ids and weights match the reference router",
             kinds=ROUTER, needs_router=True),
]}


def check(b: Backend, case: Case, device) -> Outcome:
    """Run one property on one case; whatever the backend raises or returns wrongly is the verdict."""
    t0 = time.perf_counter()
    try:
        out = PROPERTIES[case.property].check(b, case, device)
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.synchronize()
    except BackendRaised as e:
        out = Outcome("fail", str(e), info={"device_error": isolation.is_device_error(e.exc)})
    except ContractBroken as e:
        out = Outcome("fail", str(e))
    except Exception as e:  # an asynchronous device error surfaces at the synchronize
        if not isolation.is_device_error(e):
            raise  # moecheck's own bug: a traceback, not a finding about the backend
        out = Outcome("fail", f"device error after the run: {type(e).__name__}: {str(e).strip()[:300]}",
                      info={"device_error": True})
    out.duration_s = time.perf_counter() - t0
    return out
