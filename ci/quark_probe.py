"""Can vllm_modular_ocp_mx_emul run here? amd-quark's MXFP4 dequantizer as vLLM calls it, timed and checked.

    QUARK_MXFP4_IMPL=triton python -m moecheck.ci.quark_probe

vLLM 0.24.0 `quantization/utils/mxfp4_utils.py::_dequant_mxfp4` does `from quark.torch.kernel import mx` and
`mx.dq_mxfp4(x, scale, float_dtype)`. This prints how long that import takes (amd-quark JIT-builds its C++
extension on import), which modules it lacked, and whether `dq_mxfp4` decodes moecheck's MXFP4 codes bit for
bit as the reference does, on CUDA (quark's default implementation is a HIP kernel: on NVIDIA only its Triton
one can run, chosen by QUARK_MXFP4_IMPL=triton).
"""
from __future__ import annotations

import os
import sys
import time

import torch


def main() -> int:
    os.environ.setdefault("QUARK_MXFP4_IMPL", "triton")
    t0 = time.perf_counter()
    try:
        from quark.torch.kernel import mx
    except Exception as e:  # noqa: BLE001 - report what the import lacked, whatever it raised
        print(f"quark import FAILED after {time.perf_counter() - t0:.1f} s: {type(e).__name__}: {e}")
        return 1
    print(f"quark import {time.perf_counter() - t0:.1f} s; dq_mxfp4 = {mx.dq_mxfp4.__name__}")
    from moecheck.reference.formats import FORMATS
    from moecheck.reference.quantize import quantize

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=gen) * torch.logspace(-3, 3, 64)[:, None]
    q = quantize(x, FORMATS["mxfp4_bf16"].weight)
    ref = q.dequantize().to(torch.bfloat16)
    got = mx.dq_mxfp4(q.codes.to(dev), q.scales.to(dev), torch.bfloat16).cpu()
    same = got.shape == ref.shape and torch.equal(got.view(torch.int16), ref.view(torch.int16))
    diff = (got.float() - ref.float()).abs().max().item() if got.shape == ref.shape else float("nan")
    print(f"dq_mxfp4 on {dev}: shape {tuple(got.shape)} (reference {tuple(ref.shape)}); "
          f"{'bit-identical to the reference decode' if same else f'DIFFERS, max |diff| {diff:.3g}'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
