"""What every FlashInfer adapter shares: requirements, availability gates, call-time module lookup.

FlashInfer functions are always looked up as attributes of their module at call time
(`fused_moe().cutlass_fused_moe(...)`), never bound by a from-import, so the harness' spies
("flashinfer.fused_moe:cutlass_fused_moe") see every call. Nothing here imports flashinfer.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

import torch
from moecheck.backends.base import Availability, Backend, Limitation
from moecheck.backends.problem import MoEProblem
from moecheck.reference.errors import require
from moecheck.reference.moe import ACT, Rounding

# flashinfer-python 0.7.2.post1 imports tvm_ffi (apache-tvm-ffi) at `import flashinfer`
REQUIRES = ("flashinfer", "tvm_ffi")
FUSED_MOE = "flashinfer.fused_moe"
VERSION = "flashinfer-python 0.7.2.post1"
BF16_ROUNDING = Rounding(gemm1_out=ACT, act_out=ACT, gemm2_out=ACT)  # bf16 hand-offs, fp32 finalize

# flashinfer/tllm_enums.py ActivationType (IntEnum); converted with fused_moe().ActivationType at call time
ACTIVATION_CODES = {"silu": 3, "silu_up_gate": 3, "swigluoai": 3, "gelu_tanh": 8, "relu2": 6}
# gpt-oss SwiGLU through swiglu_alpha/beta/limit: X2*sigmoid(alpha*X2)*(X1+beta), X2 <= limit, |X1| <= limit
GPT_OSS = dict(alpha=1.702, beta=1.0, limit=7.0)


def module(name: str = FUSED_MOE):
    return importlib.import_module(name)


def fused_moe():
    return module(FUSED_MOE)


def activation_type(p: MoEProblem):
    require(p.activation_name in ACTIVATION_CODES, f"no FlashInfer ActivationType for activation {p.activation_name!r}")
    return fused_moe().ActivationType(ACTIVATION_CODES[p.activation_name])


def swiglu_params(p: MoEProblem, experts: int) -> dict:
    """swiglu_alpha/beta/limit tensors [E] (fp32) for gpt-oss; {} for the other activations."""
    if p.activation_name != "swigluoai":
        return {}
    a = p.activation
    mk = lambda v: torch.full((experts,), float(v), dtype=torch.float32, device=p.device)  # noqa: E731
    return dict(swiglu_alpha=mk(a.alpha), swiglu_beta=mk(GPT_OSS["beta"]), swiglu_limit=mk(a.limit))


class Refused(Exception):
    """FlashInfer raised on a call: the message is FlashInfer's first line, prefixed by the function."""


def call(mod, attr: str, *a, **k):
    """mod.attr(*a, **k), looked up at call time; any exception comes back as Refused."""
    fn = getattr(mod, attr)
    try:
        return fn(*a, **k)
    except Exception as e:  # noqa: BLE001 - what FlashInfer raises is the finding; keep its first line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise Refused(f"{mod.__name__}.{attr}: {type(e).__name__}: {first}") from e


def first_output(res, out: torch.Tensor | None) -> torch.Tensor:
    """FlashInfer MoE calls return the output, or a list whose first element is the output."""
    t = res[0] if isinstance(res, (list, tuple)) else res
    if out is not None and t.data_ptr() != out.data_ptr():
        out.copy_(t)
        return out
    return t


@dataclass
class FlashInferBackend(Backend):
    """A FlashInfer adapter. `gates` map an arch to (env var, why): on that arch the backend is
    unavailable unless the env var is "1" (JIT modules too large to build within one GPU session).
    `not_wired` makes it unavailable everywhere with that reason (an adapter kept for the record)."""

    gates: dict = field(default_factory=dict)
    not_wired: str = ""

    def availability(self) -> Availability:
        av = super().availability()
        if not av.ok:
            return av
        if self.not_wired:
            return Availability(False, self.not_wired)
        if av.device == "cuda":
            cc = torch.cuda.get_device_capability()
            if cc in self.gates:
                env, why = self.gates[cc]
                if os.environ.get(env) != "1":
                    return Availability(False, f"{why}; set {env}=1 to build it")
        return av


SM90_MOE_GATE = {(9, 0): ("FLASHINFER_BUILD_SM90_MOE",
                          "JIT module fused_moe_90 (248 compile units; 34 done after 9.5 min on 16 cores) not built")}
SM90_MOE_LIMIT = Limitation(
    "on sm_90 cutlass_fused_moe JIT-builds fused_moe_90 (248 CUDA compile units): more than one GPU session "
    "of compile time on 16 cores; not built here, so nothing on sm_90 is verified",
    "https://github.com/flashinfer-ai/flashinfer/blob/main/flashinfer/jit/fused_moe.py")
UNVERIFIED = Limitation(f"not verified on hardware: written against {VERSION} sources and tests only")
