"""A slow e2e backend for the interrupt test: cpu_loop that says when it first runs, then takes its time.
Load as a plugin: `moecheck e2e --plugin moecheck.tests.e2e.slow_backends --backend e2e_slow`."""
from __future__ import annotations

import sys
import time

from moecheck.backends.cpu_loop import BACKENDS as _CPU
from moecheck.backends.cpu_loop import CpuLoop

MARKER = "e2e_slow: first run"
PAUSE_S = 0.5  # per layer call: a gate takes seconds, long enough to be interrupted mid-gate


class Slow(CpuLoop):
    started = False

    def run(self, w, p, out=None):
        if not Slow.started:
            Slow.started = True
            print(MARKER, file=sys.stderr, flush=True)
        time.sleep(PAUSE_S)
        return super().run(w, p, out)


BACKENDS = [Slow(name="e2e_slow", description="cpu_loop, slowly", capability=_CPU[0].capability,
                 spies=_CPU[0].spies, router_spies=_CPU[0].router_spies)]
