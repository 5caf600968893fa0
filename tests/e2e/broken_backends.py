"""Deliberately broken backends for the e2e gate's meta-tests: the gate must fail them.

Both are cpu_loop with one plausible kernel bug planted in `prepare`, and count their run() calls
(CALLS) so a test can prove the broken kernel actually computed the experts the gate judged.
Load as a plugin: registry.load_all(("moecheck.tests.e2e.broken_backends",)), or
`moecheck e2e --plugin moecheck.tests.e2e.broken_backends`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import torch
from moecheck.backends.cpu_loop import _W, CpuLoop
from moecheck.backends.cpu_loop import BACKENDS as _CPU

CALLS: Counter = Counter()
SWAPPED = "e2e_broken_swapped_gate_up"
SCALE_STEP = "e2e_broken_scale_step"
POW2_SCALE_FORMATS = frozenset({"mxfp8", "mxfp4_bf16", "mxfp4_mxfp8", "fp8_block_ue8m0"})  # one scale step = x2


class _Counted(CpuLoop):
    def run(self, w, p, out=None):
        CALLS[self.name] += 1
        return super().run(w, p, out)


class SwappedGateUp(_Counted):
    """w13 read as [up; gate] instead of [gate; up]: act(up) * gate."""

    def prepare(self, p):
        w = super().prepare(p)
        i = w.w13.shape[1] // 2
        return _W(torch.cat([w.w13[:, i:], w.w13[:, :i]], dim=1), w.w2)


class ScaleOffByOneStep(_Counted):
    """Down-projection block scales decoded one E8M0/UE8M0 step too large (exponent + 1: every w2 value x2)."""

    def prepare(self, p):
        w = super().prepare(p)
        return _W(w.w13, p.w2.dequantize() * 2.0)


_cap = _CPU[0].capability
BACKENDS = [
    SwappedGateUp(name=SWAPPED, capability=_cap, description="cpu_loop with gate/up swapped (planted bug)",
                  spies=_CPU[0].spies),
    ScaleOffByOneStep(name=SCALE_STEP, capability=replace(_cap, formats=POW2_SCALE_FORMATS),
                      description="cpu_loop with w2 scales one step off (planted bug)", spies=_CPU[0].spies),
]
