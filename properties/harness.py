"""Running a backend under observation: spies prove its kernel ran, poison proves what it wrote.

Output contract: where a backend takes `out=`, the buffer is a view into a larger allocation
whose guard bands and body are filled with a NaN bit pattern no computation produces; afterwards
the guards must be untouched and no body element may still hold the pattern. Where it allocates
its own output on CUDA, the caching allocator is first flooded with the pattern, so an unwritten
element of a recycled block shows up as the pattern too.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from dataclasses import dataclass

import torch
from moecheck.backends.base import Backend
from moecheck.backends.poison import POISON, pattern_i16, poisoned
from moecheck.backends.problem import MoEProblem
from moecheck.reference.errors import require

GUARD_ROWS = 2


@contextlib.contextmanager
def spying(names: tuple[str, ...]):
    """Wrap each "module:attr" callable with a counter for the duration; yields the counts."""
    counts = {n: 0 for n in names}
    undo = []
    for n in names:
        mod_name, attr = n.split(":")
        mod = importlib.import_module(mod_name)
        orig = getattr(mod, attr)

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


@dataclass
class Run:
    out: torch.Tensor
    spy_counts: dict[str, int]
    guards_ok: bool = True
    unwritten: int = 0  # elements still holding the poison


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
            ret = backend.run(prepared, p, out=body)
            require(ret is None or ret.data_ptr() == body.data_ptr() or ret.numel() == 0,
                    f"backend {backend.name} claims out_buffer but returned a different tensor")
            guards = torch.cat([big[:GUARD_ROWS * H], big[(GUARD_ROWS + T) * H:]])
            return Run(body, counts, bool(poisoned(guards).all()), int(poisoned(body).sum()))
        _flood_allocator(4 * p.tokens * p.hidden * 2 + (1 << 20), dt, p.device)
        out = backend.run(prepared, p)
        return Run(out, counts, True, int(poisoned(out).sum()) if out.dtype in POISON else 0)
