"""Where an example's time goes: the stages of `check()`, per (backend, property), on CPU or CUDA.

    python -m moecheck.ci.stages [--backend NAME ...] [--property P ...] [--examples N] [--out FILE.json]
                                 [--kernels N] [--gen 1|2]

N cases are drawn from each property's strategy first (drawing is timed on its own), the first is
checked once untimed (imports, compiles), then all are checked under cProfile. A stage's time is the cumulative time of the functions that make it (nested calls
count in each stage that holds them: `run` includes its allocator flood and poison). On CUDA, the
time a stage waits on the GPU lands where the first synchronizing call is (`.item()`, `.tolist()`,
a host copy): the `sync` row says how much waiting there was in all. --kernels N then checks three
of the cases again under torch.profiler and prints its N costliest ops by self CPU and by self CUDA
time, and how much of the wall time the GPU was busy (on CPU: the CPU table only).
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

from moecheck.backends import registry
from moecheck.properties.checks import PROPERTIES, check
from moecheck.properties.strategies import cases, fit

# stage -> (module path suffix, function name) pairs whose cumulative time makes it
STAGES = {
    "build": [("properties/case.py", "build")],
    "prepare": [("properties/harness.py", "prepare")],
    "run": [("properties/harness.py", "run_backend")],
    "flood+poison": [("properties/harness.py", "_flood_allocator"), ("properties/harness.py", "_poison_fresh"),
                     ("properties/harness.py", "poisoned")],
    "reference": [("properties/checks.py", "_reference")],
    "compare": [("errmodel/compare.py", "compare")],
    "sync": [("~", "<method 'item' of 'torch._C.TensorBase' objects>"),
             ("~", "<method 'tolist' of 'torch._C.TensorBase' objects>"),
             ("~", "<method 'cpu' of 'torch._C.TensorBase' objects>"),
             ("~", "<built-in method torch._C._cuda_synchronize>")],
}


def _stage_times(stats: pstats.Stats) -> dict[str, float]:
    out = dict.fromkeys(STAGES, 0.0)
    for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        for stage, keys in STAGES.items():
            if any(name == fn and path.replace("\\", "/").endswith(suffix) or (suffix == "~" and name == fn)
                   for suffix, fn in keys):
                out[stage] += ct
    return out


def kernel_table(backend, drawn, device: str, n: int) -> str:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    t0 = time.perf_counter()
    with tprofile(activities=acts) as prof:
        for c in drawn[:3]:
            check(backend, c, device)
        if device == "cuda":
            torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    ka = prof.key_averages()
    busy = sum(getattr(e, "self_device_time_total", 0) for e in ka) / 1e6
    out = [f"-- {backend.name} {drawn[0].property}: {min(3, len(drawn))} examples, wall {wall:.3f}s, GPU busy {busy:.3f}s"]
    out.append(ka.table(sort_by="self_cpu_time_total", row_limit=n, max_name_column_width=60))
    if device == "cuda":
        out.append(ka.table(sort_by="self_device_time_total", row_limit=n, max_name_column_width=60))
    return "\n".join(out)


def profile(backend, prop: str, n: int, gen: int | None = None) -> dict:
    av = backend.availability()
    fmt = "bf16" if "bf16" in backend.capability.formats else sorted(backend.capability.formats)[0]
    t0 = time.perf_counter()
    strat = cases(backend, fmt, prop, av.device)
    drawn = [fit(strat.example(), backend) for _ in range(n)]
    if gen is not None:  # the same structures drawn with the other generator (properties/rng.py)
        drawn = [c.with_(gen=gen) for c in drawn]
    t_draw = time.perf_counter() - t0
    check(backend, drawn[0], av.device)  # warm-up, untimed: lazy imports and first compiles are not an example's cost
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    verdicts = [check(backend, c, av.device).verdict for c in drawn]
    prof.disable()
    total = time.perf_counter() - t0
    st = _stage_times(pstats.Stats(prof))
    return {"backend": backend.name, "format": fmt, "property": prop, "device": av.device, "examples": n,
            "draw_s": t_draw, "check_s": total, "examples_per_s": n / total if total else 0.0,
            "verdicts": {v: verdicts.count(v) for v in set(verdicts)}, "stages_s": st,
            "mean_tokens": sum(c.tokens for c in drawn) / n, "mean_hidden": sum(c.hidden for c in drawn) / n,
            "drawn": drawn}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", action="append", default=None, help="backend name (repeatable; default torch_grouped_mm)")
    ap.add_argument("--property", action="append", default=None, help="property (repeatable; default all)")
    ap.add_argument("--examples", type=int, default=10, help="drawn examples per (backend, property)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--gen", type=int, choices=(1, 2), default=None,
                    help="build the cases with this generator (1: torch's CPU one, 2: the stream) instead of the profile's")
    ap.add_argument("--kernels", type=int, default=0, help="also print the N costliest torch.profiler ops")
    a = ap.parse_args(argv)
    backends = registry.load_all()
    rows = []
    for name in a.backend or ["torch_grouped_mm"]:
        if name not in backends:
            raise SystemExit(f"moecheck stages: unknown backend {name!r}")
        b = backends[name]
        if not b.availability().ok:
            print(f"{name}: unavailable here: {b.availability().reason}")
            continue
        for prop in a.property or sorted(n for n, p in PROPERTIES.items() if p.applies(b)):
            r = profile(b, prop, a.examples, a.gen)
            drawn = r.pop("drawn")
            rows.append(r)
            share = "  ".join(f"{k} {v / r['check_s']:4.0%}" for k, v in r["stages_s"].items() if r["check_s"])
            print(f"{name:22} {prop:24} {r['device']:4} {r['examples_per_s']:7.1f} ex/s  draw {r['draw_s']:.2f}s  "
                  f"T~{r['mean_tokens']:.0f} H~{r['mean_hidden']:.0f}  {share}", flush=True)
            if a.kernels:
                print(kernel_table(b, drawn, r["device"], a.kernels), flush=True)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
