"""The one tolerance table: ErrorBudget entries keyed by (format, backend), merged by max.

Lookup takes every entry whose format and backend patterns match (fnmatch) and merges them with
ErrorBudget.merge, so a specific entry can only loosen a general one, never tighten it silently.
Every loosening says why, next to it. Tests never carry tolerance literals: they call budget_for.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from moecheck.errmodel.budget import ErrorBudget


@dataclass(frozen=True)
class Entry:
    formats: str  # fnmatch pattern over format names
    backends: str  # fnmatch pattern over backend names
    budget: ErrorBudget
    why: str


TABLE: list[Entry] = [
    Entry("*", "*", ErrorBudget(), "baseline: fp32 accumulation, one code step per re-quantization, z=6"),
    Entry("*", "torch_compile*", ErrorBudget(act_fn_rel=2.0**-18),
          "Inductor fuses the activation with its own exp/sigmoid (libdevice fast paths)"),
    Entry("fp8*", "torch_scaled_grouped_mm", ErrorBudget(acc_unit=2.0**-13),
          "Hopper FP8 WGMMA accumulates in a ~14-bit-mantissa register before promotion "
          "(DeepSeek-V3 report, sec. 3.3.2); torch's row-wise FP8 grouped GEMM inherits it"),
    Entry("*", "*lora*", ErrorBudget(lora_rel=2.0**-7),
          "LoRA shrink output is stored in bf16 before the expand GEMM (vLLM punica kernels)"),
]


def budget_for(fmt: str, backend: str) -> ErrorBudget:
    out = None
    for e in TABLE:
        if fnmatchcase(fmt, e.formats) and fnmatchcase(backend, e.backends):
            out = e.budget if out is None else out.merge(e.budget)
    return out if out is not None else ErrorBudget()


def reasons_for(fmt: str, backend: str) -> list[str]:
    return [e.why for e in TABLE if fnmatchcase(fmt, e.formats) and fnmatchcase(backend, e.backends)]
