"""One plugin backend that fails matches_reference on every example: the README's toy_moe with its
top-k weights scaled by 0.8 (a missing renormalization), bf16 only. Load with --plugin."""
from dataclasses import replace

from moecheck.tests.backends.example_plugin import CAP, ToyMoE

_b = ToyMoE(name="toy_renorm_bug", capability=replace(CAP, formats=frozenset({"bf16"})),
            spies=("moecheck.tests.backends.example_plugin:toy_gemm",))
_b.bug = "missing_renorm"
BACKENDS = [_b]
