"""A backend's budget follows from what its record declares, never from its name."""
from __future__ import annotations

import dataclasses

import pytest
from moecheck.backends import Capability, registry
from moecheck.reference.errmodel import budget_for
from moecheck.reference.formats import FORMATS

BACKENDS = sorted(registry.load_all())


@pytest.mark.parametrize("name", BACKENDS)
def test_renaming_a_backend_changes_nothing(name):
    b = registry.get(name)
    for new in ("x", "my_vllm_lora_torch_compile_moe", "flashinfer_cutlass_fp8_plugin"):
        renamed = dataclasses.replace(b, name=new)
        for fmt in FORMATS:
            assert renamed.capability.budget(fmt) == b.capability.budget(fmt), (name, new, fmt)


@pytest.mark.parametrize("name", ["vllm_lora_plugin", "torch_compile_lookalike", "vllm_triton_fp8_clone"])
def test_a_plugin_named_like_a_builtin_gets_the_baseline(name):
    cap = Capability(formats=frozenset(FORMATS))
    for fmt in FORMATS:
        assert cap.budget(fmt) == budget_for(fmt)


def test_every_declared_loosening_loosens_and_says_why():
    base = budget_for("bf16")
    fields = [f.name for f in dataclasses.fields(base) if f.name != "false_alarm"]
    seen = 0
    for name in BACKENDS:
        for d in registry.get(name).capability.numerics:
            seen += 1
            assert d.why.strip() and any(getattr(d.budget, f) > getattr(base, f) for f in fields), (name, d.why)
    assert seen, "no record declares anything: the test would prove nothing"
