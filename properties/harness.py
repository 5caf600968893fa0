"""Running a backend under observation: spies prove its kernel ran, poison proves what it wrote.

Output contract: where a backend takes `out=`, the buffer is a view into a larger allocation
whose guard bands and body are filled with a NaN bit pattern no computation produces; afterwards
the guards must be untouched and no body element may still hold the pattern. Where it allocates
its own output, fresh memory holds the pattern too: on CUDA the caching allocator is flooded with it
first; on CPU, where malloc may hand out zeroed pages, torch's allocation helpers (`empty`,
`empty_like`, `empty_strided`, `Tensor.new_empty`) return poisoned tensors while the backend runs.

Whatever the backend raises or returns wrongly becomes a BackendRaised or ContractBroken here, so a
property records it as a finding (with its case and repro) instead of a bare traceback.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import linecache
from dataclasses import dataclass

import torch
from moecheck.backends.base import Backend
from moecheck.backends.poison import POISON, pattern_i16, poisoned
from moecheck.backends.problem import MoEProblem

GUARD_ROWS = 2
TRACE_LINES = 3  # lines of an exception's message kept in results


def first_lines(exc: BaseException, n: int = TRACE_LINES) -> str:
    """The message's first n lines and, if longer, its last n (Triton's compile errors end with the failing
    assert, after a code excerpt); a bare exception (`assert x` without text) names the line that raised."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = " | ".join(lines if len(lines) <= 2 * n else [*lines[:n], "...", *lines[-n:]])
    return f"{type(exc).__name__}: {text or raised_at(exc)}".rstrip(": ")


def raised_at(exc: BaseException) -> str:
    """'at FILE:LINE: source' of the innermost frame of exc's traceback, or '' without one."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ""
    path, line = tb.tb_frame.f_code.co_filename, tb.tb_lineno
    short = path.split("site-packages/")[-1] if "site-packages/" in path else "/".join(path.split("/")[-3:])
    return f"at {short}:{line}: {linecache.getline(path, line).strip()}"


class BackendRaised(Exception):
    """The backend under test raised from `stage` (prepare / run / route)."""

    def __init__(self, stage: str, exc: BaseException):
        super().__init__(f"{stage} raised {first_lines(exc)}")
        self.stage, self.exc = stage, exc


class ContractBroken(Exception):
    """The backend returned what the protocol forbids: None, a wrong shape, dtype or device, a new
    tensor where it claimed to write `out`, or a spy that names nothing."""


def guarded(stage: str, fn, *a, **k):
    try:
        return fn(*a, **k)
    except (BackendRaised, ContractBroken):
        raise
    except Exception as e:  # the backend's own failure: a finding, not a crash of the suite
        raise BackendRaised(stage, e) from e


def prepare(backend: Backend, p: MoEProblem):
    return guarded("prepare", backend.prepare, p)


@contextlib.contextmanager
def spying(names: tuple[str, ...]):
    """Wrap each "module:attr" callable with a counter for the duration; yields the counts."""
    counts = {n: 0 for n in names}
    undo = []
    for n in names:
        mod_name, _, attr = n.partition(":")
        try:
            mod = importlib.import_module(mod_name)
            orig = getattr(mod, attr)
        except Exception as e:
            for m, a, o in reversed(undo):
                setattr(m, a, o)
            raise ContractBroken(f"spy {n!r} names nothing importable ({first_lines(e, 1)}): "
                                 "a spy must be 'module:attribute' of the kernel entry point") from None

        @functools.wraps(orig)
        def wrapper(*a, __n=n, __f=orig, **k):
            counts[__n] += 1
            return __f(*a, **k)

        setattr(mod, attr, wrapper)
        undo.append((mod, attr, orig))
    try:
        yield counts
    finally:
        for mod, attr, orig in reversed(undo):
            setattr(mod, attr, orig)


def _flood_allocator(nbytes: int, dtype: torch.dtype, device) -> None:
    if torch.device(device).type != "cuda":
        return
    n = max(nbytes // 2, 1)
    blocks = [torch.empty(n, dtype=torch.int16, device=device).fill_(pattern_i16(dtype)) for _ in range(4)]
    del blocks  # returned to the cache, contents kept: the next allocations see the pattern


def _poison_fresh(t: torch.Tensor) -> torch.Tensor:
    if t.device.type == "cpu" and t.numel():
        if t.dtype in POISON:
            t.view(torch.int16).fill_(pattern_i16(t.dtype))
        elif t.is_floating_point():
            t.fill_(float("nan"))
    return t


@contextlib.contextmanager
def poisoned_allocations(device):
    """On CPU, while the backend runs, fresh tensors from torch's allocation helpers hold poison
    (16-bit floats: the pattern; other floats: NaN), so reading or returning unwritten memory shows."""
    if torch.device(device).type != "cpu":
        yield
        return
    targets = [(torch, "empty"), (torch, "empty_like"), (torch, "empty_strided"), (torch.Tensor, "new_empty")]
    saved = [(obj, name, getattr(obj, name)) for obj, name in targets]
    for obj, name, orig in saved:
        @functools.wraps(orig)
        def wrapper(*a, __f=orig, **k):
            return _poison_fresh(__f(*a, **k))
        setattr(obj, name, wrapper)
    try:
        yield
    finally:
        for obj, name, orig in saved:
            setattr(obj, name, orig)


@dataclass
class Run:
    out: torch.Tensor
    spy_counts: dict[str, int]
    guards_ok: bool = True
    unwritten: int = 0  # elements still holding the poison


def check_output(backend: Backend, out, p: MoEProblem) -> torch.Tensor:
    """The returned output must be a [T, H] tensor in the activation dtype on the problem's device."""
    want = (p.tokens, p.hidden)
    if out is None:
        raise ContractBroken(f"backend {backend.name} returned None instead of the [T, H] = {list(want)} output")
    if not isinstance(out, torch.Tensor):
        raise ContractBroken(f"backend {backend.name} returned {type(out).__name__}, not a tensor")
    got = (tuple(out.shape), out.dtype, out.device)
    if got != (want, p.hidden_states.dtype, p.device):
        raise ContractBroken(f"backend {backend.name} returned shape {list(out.shape)} {out.dtype} on {out.device}; "
                             f"expected shape {list(want)} {p.hidden_states.dtype} on {p.device}")
    return out


def run_backend(backend: Backend, prepared, p: MoEProblem, use_out: bool | None = None) -> Run:
    """Run once, observed. use_out defaults to the record's out_buffer claim."""
    cap = backend.capability
    use_out = cap.out_buffer if use_out is None else use_out
    dt = p.hidden_states.dtype
    pattern = pattern_i16(dt)
    with spying(backend.spies) as counts:
        if use_out:
            T, H = p.tokens, p.hidden
            big = torch.full(((T + 2 * GUARD_ROWS) * H,), pattern, dtype=torch.int16, device=p.device).view(dt)
            body = big[GUARD_ROWS * H:(GUARD_ROWS + T) * H].view(T, H)
            with poisoned_allocations(p.device):
                ret = guarded("run", backend.run, prepared, p, out=body)
            if ret is not None and not (isinstance(ret, torch.Tensor) and ret.data_ptr() == body.data_ptr()
                                        and tuple(ret.shape) == (T, H)):
                shape = list(ret.shape) if isinstance(ret, torch.Tensor) else type(ret).__name__
                raise ContractBroken(f"backend {backend.name} claims out_buffer but returned {shape} instead of "
                                     f"writing the [T, H] = {[T, H]} buffer it was given")
            guards = torch.cat([big[:GUARD_ROWS * H], big[(GUARD_ROWS + T) * H:]])
            return Run(body, counts, bool(poisoned(guards).all()), int(poisoned(body).sum()))
        _flood_allocator(4 * p.tokens * p.hidden * 2 + (1 << 20), dt, p.device)
        with poisoned_allocations(p.device):
            out = check_output(backend, guarded("run", backend.run, prepared, p), p)
        return Run(out, counts, True, int(poisoned(out).sum()) if out.dtype in POISON else 0)


def route_backend(backend: Backend, prepared, p: MoEProblem) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """A router backend's (weights, ids) for the logits of `p`, observed by its spies."""
    with spying(backend.spies) as counts:
        got = guarded("route", backend.route, prepared, p.unrouted())
    if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)):
        raise ContractBroken(f"backend {backend.name} route() returned {type(got).__name__}, not (weights, ids) tensors")
    return got[0], got[1], counts
