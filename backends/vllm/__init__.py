"""vLLM 0.24 MoE kernels as moecheck backends: one module per kernel family, each backend a record.

Importing this package never imports vLLM: every adapter imports its vLLM modules inside
prepare/run, and `requires=("vllm",)` makes the backend unavailable with that reason where vLLM is
not installed (CI). The pure-torch layout conversions live in layouts.py and are tested on CPU.
"""
from moecheck.backends.vllm import (
    cutlass_fp8,
    lora,
    marlin,
    modular,
    routers,
    triton_fused,
    triton_kernels_ogs,
)

BACKENDS = [
    *triton_fused.BACKENDS,
    *modular.BACKENDS,
    *cutlass_fp8.BACKENDS,
    *marlin.BACKENDS,
    *triton_kernels_ogs.BACKENDS,
    *lora.BACKENDS,
    *routers.BACKENDS,
]
