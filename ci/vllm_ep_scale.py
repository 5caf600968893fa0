"""Does vLLM fused_experts' output depend on memory it never wrote? (H200 finding of 2026-12-02)

With an expert map, _prepare_expert_assignment(ignore_invalid_experts=True) drops the slots of remote
experts, so GEMM1 never writes their rows of intermediate_cache1 (torch.empty). The dynamic per-tensor
FP8 quantization of intermediate_cache2 then takes its scale over every row, unwritten ones included.
This runs one case three times, the CUDA caching allocator flooded before each call with a different
fill, and prints whether the output is finite and how far it is from the reference. A correct kernel
prints the same line three times. Usage (GPU, vLLM staged): python3 -m moecheck.ci.vllm_ep_scale CASE.json
"""
from __future__ import annotations

import sys

import torch
from moecheck.backends import registry
from moecheck.properties.case import build
from moecheck.properties.repro import load_case

FILLS = {"zeros": 0.0, "ones": 1.0, "1e4": 1e4, "nan": float("nan")}


def _flood(value: float) -> None:
    """Both pools of the caching allocator: blocks under 1 MB come from 2 MB small-pool segments."""
    sizes = [1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 19] * 64 + [1 << 22, 1 << 24, 1 << 26] * 4  # elements
    blocks = [torch.full((n,), value, dtype=torch.bfloat16, device="cuda") for n in sizes]
    torch.cuda.synchronize()
    del blocks  # back to the cache with their contents: fused_experts' torch.empty sees them


def main(argv: list[str]) -> int:
    case = load_case(argv[0])
    if case.property == "padded_equals_unpadded":  # the sizes the failing call saw
        from moecheck.properties.checks import padded_sizes

        hp, ip = padded_sizes(registry.get(case.backend), case)
        case = case.with_(hidden=hp, inter=ip)
    b = registry.get(case.backend)
    p = build(case, "cuda")
    want = p.reference(b.capability.rounding).out.float()
    w = b.prepare(p)
    outs = {}
    for name, v in FILLS.items():
        _flood(v)
        out = b.run(w, p).float()
        torch.cuda.synchronize()
        outs[name] = out
        fin = out.isfinite()
        err = (out - want).abs()[fin].max().item() if fin.any() else float("nan")
        print(f"flood {name:>5}: finite {int(fin.sum())}/{out.numel()}, max |out - ref| {err:.4g} "
              f"(max |ref| {want.abs().max().item():.4g})")
    base = outs["zeros"]
    same = all(torch.equal(base.isnan(), o.isnan()) and torch.equal(base.nan_to_num(), o.nan_to_num()) for o in outs.values())
    print("output independent of unwritten memory" if same else "OUTPUT DEPENDS ON UNWRITTEN MEMORY")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
