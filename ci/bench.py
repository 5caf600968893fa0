"""Benchmarks (not timed tests): reference MoE vs torch._grouped_mm, and examples/s per property.

    python -m moecheck.ci.bench [--out FILE] [--examples N] [--store FILE [--attach latest|new]]
(the same as `moecheck bench`, ci/cli/bench.py). Writes JSON; prints a short table; with --store the
numbers become BenchRecords of a run (results/schema.py). Timing: CUDA events via
torch.utils.benchmark-style median of repeats after warm-up; on CPU, perf_counter.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
import warnings

import torch
from hypothesis.errors import NonInteractiveExampleWarning
from moecheck.backends import registry
from moecheck.properties.checks import PROPERTIES, check
from moecheck.properties.strategies import cases, fit
from moecheck.reference import moe as ref_moe


def _time(fn, reps=20) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b) / 1e3)
        return statistics.median(ts)
    ts = []
    for _ in range(max(3, reps // 5)):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def gemm_vs_reference(E=128, K=2048, N=768, rows=32768) -> dict:
    """One expert GEMM over `rows` routed rows: reference grouped path vs torch._grouped_mm."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        E, rows = 16, 2048
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(rows, K, device=dev, generator=g).to(torch.bfloat16)
    w = (torch.randn(E, N, K, device=dev, generator=g) / K**0.5).to(torch.bfloat16)
    counts = [rows // E] * E
    offs = torch.cumsum(torch.tensor(counts, device=dev), 0).to(torch.int32)
    wt = w.transpose(1, 2)
    t_gmm = _time(lambda: torch._grouped_mm(a, wt, offs=offs))
    af = a.float()  # activations reach the reference GEMM in fp32; bf16 weights stay bf16 (moe._deq)
    fast = ref_moe._fast(af, w)  # what the reference does (IEEE fp32 unless TENSOR_CORE_REFERENCE)
    with ref_moe._ieee_fp32():
        t_ref = _time(lambda: ref_moe._grouped(af, w, counts, fast))
    flops = 2 * rows * K * N
    return {"device": dev, "E": E, "K": K, "N": N, "rows": rows, "grouped_mm_ms": t_gmm * 1e3,
            "reference_ms": t_ref * 1e3, "ratio": t_ref / t_gmm, "grouped_mm_tflops": flops / t_gmm / 1e12,
            "reference_fast_path": fast}


def _line(r: dict) -> str:
    return f"{r['backend']:24s} {r['format']:18s} {r['property']:24s} {r['device']:5s} {r['examples_per_s']:8.1f} ex/s"


def examples_per_second(n: int, backends: list[str] | None = None, echo=None) -> list[dict]:
    """examples/s per (backend, property) for the backends named (all when None); echo(line) as each row
    is measured, so a benchmark cut short keeps what it measured."""
    out = []
    with warnings.catch_warnings():  # .example() outside @given is the point here: draws timed apart from checks
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        for name, b in sorted(registry.load_all().items()):
            if backends is not None and name not in backends:
                continue
            _measure(name, b, n, out, echo)
    return out


def _measure(name: str, b, n: int, out: list[dict], echo) -> None:
    av = b.availability()
    if not av.ok or not b.capability.formats:
        return
    fmt = "bf16" if "bf16" in b.capability.formats else sorted(b.capability.formats)[0]
    for prop in [k for k, p in PROPERTIES.items() if p.applies(b)]:  # a router property needs a router
        strat = cases(b, fmt, prop, av.device)
        drawn = [fit(strat.example(), b) for _ in range(n)]
        check(b, fit(strat.example(), b), av.device)  # warm-up, untimed: imports, first compiles and launches
        t0 = time.perf_counter()
        for c in drawn:
            check(b, c, av.device)
        dt = time.perf_counter() - t0
        out.append({"backend": name, "format": fmt, "property": prop, "device": av.device,
                    "examples": n, "examples_per_s": n / dt})
        if echo is not None:
            echo(_line(out[-1]))


def records(res: dict) -> list:
    """The JSON of one benchmark as store rows: one per property, and the GEMM ratio (schema.BenchRecord)."""
    from moecheck.ci.results.schema import GEMM_RATIO, BenchRecord

    g = res["gemm"]
    rows = [BenchRecord(backend="reference", format="bf16", property=GEMM_RATIO, device=g["device"], ratio=g["ratio"],
                        detail=json.dumps({k: v for k, v in g.items() if k not in ("device", "ratio")}, sort_keys=True))]
    return rows + [BenchRecord(**r) for r in res["properties"]]


def measure(examples: int, backends: list[str] | None = None, echo=None) -> dict:
    return {"gemm": gemm_vs_reference(), "properties": examples_per_second(examples, backends, echo)}


def table(res: dict) -> str:
    g = res["gemm"]
    lines = [f"GEMM E={g['E']} K={g['K']} N={g['N']} rows={g['rows']} on {g['device']}: torch._grouped_mm "
             f"{g['grouped_mm_ms']:.3f} ms ({g['grouped_mm_tflops']:.0f} TFLOP/s), reference {g['reference_ms']:.3f} ms, "
             f"ratio {g['ratio']:.2f}"]
    lines += [_line(r) for r in res["properties"]]
    return "\n".join(lines)


def main() -> None:
    from moecheck.ci.cli import main as cli_main

    sys.exit(cli_main(["bench", *sys.argv[1:]]))  # one parser and one bad-input path with `moecheck bench`


if __name__ == "__main__":
    main()
