"""ci/compile_stages.py splits torch_compile's dense MoE into stages: chained eagerly, the stages must give
dense_moe's output exactly, or a stage it blames could be one it made up (run on CPU, torch.compile stubbed)."""
from __future__ import annotations

import pytest
import torch
from moecheck.backends import torch_compile as tc
from moecheck.ci import compile_stages
from moecheck.properties.repro import load_case
from moecheck.tests.checkout import IS_CHECKOUT, NOT_A_CHECKOUT, ROOT

CASE = ROOT / "docs" / "findings" / "h200-2026-12-03" / "open" / "torch_compile-fp8_token_channel-matches_reference-2a1346d4c4.json"


@pytest.mark.skipif(not CASE.exists(), reason=NOT_A_CHECKOUT if not IS_CHECKOUT else f"{CASE.name} is gone")
@pytest.mark.parametrize("fmt,bias", [("fp8_token_channel", False), ("bf16", True), ("int4_w_g32", True)])
def test_the_stages_chained_are_dense_moe(fmt, bias, tmp_path, monkeypatch, capsys):
    small = tmp_path / "case.json"
    small.write_text(load_case(str(CASE)).with_(format=fmt, hidden=64, inter=32, tokens=12, bias=bias).to_json())
    monkeypatch.setattr(compile_stages, "DEV", "cpu")
    monkeypatch.setattr(torch, "compile", lambda f, **kw: f)
    monkeypatch.setattr(tc, "_compiled", lambda *a: tc.dense_moe(*a))
    (whole, chained), = list(compile_stages.run([str(small)]))
    assert torch.equal(whole, chained)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) in (8, 10) and all("identical" in line for line in lines[1:]), lines
