"""Plugin backends that misbehave in one place and are correct everywhere else (isolation meta-tests).

Each is the README's example backend (toy_moe) plus one fault, so every other test item of theirs
must pass: one finding must not hide the rest.
  - mb_refuses_t0:  ValueError on an empty batch (a clean refusal)
  - mb_cuda_t0:     a CUDA-style RuntimeError on an empty batch (vLLM 0.24 fused_experts does this)
  - mb_segfault:    a real segfault (NULL read through ctypes) on one shape only
  - mb_hang:        sleeps forever on that shape (the watchdog must end it)
  - mb_slow:        correct, 0.1 s per call (runs long enough to be killed at chosen moments)
"""
import ctypes
import time

from moecheck.backends import register
from moecheck.tests.backends.example_plugin import CAP, ToyMoE

DEADLY = (5, 96)  # (T, H) of the pinned unaligned case: the drawn examples almost never hit it


class Misbehaving(ToyMoE):
    fault: str = ""

    def run(self, w, p, out=None):
        if p.tokens == 0 and self.fault == "refuses_t0":
            raise ValueError("num_tokens must be > 0")
        if p.tokens == 0 and self.fault == "cuda_t0":
            raise RuntimeError("CUDA error: invalid argument\nCUDA kernel errors might be asynchronously reported")
        if (p.tokens, p.hidden) == DEADLY and self.fault == "segfault":
            ctypes.string_at(0)
        if (p.tokens, p.hidden) == DEADLY and self.fault == "hang":
            time.sleep(10**6)
        if self.fault == "slow":
            time.sleep(0.1)
        return super().run(w, p, out)


def _make(fault: str) -> Misbehaving:
    b = Misbehaving(name=f"mb_{fault}", capability=CAP, spies=("moecheck.tests.backends.example_plugin:toy_gemm",))
    b.fault = fault
    return b


BACKENDS = [_make(f) for f in ("refuses_t0", "cuda_t0", "segfault", "hang", "slow")]
for _b in BACKENDS:
    register(_b)
