"""The offline gate on the shipped tiny model, through lm-eval on CPU: correct backends pass, broken ones fail.

Uses the config's own n_questions (e2e/configs/tiny_qwen3_moe.toml), so what CI checks is
what the nightly gates. Six evaluations (reference twice, cpu_loop, two broken backends, the mxfp8
reference); a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import json
import os

import pytest

for _v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_v] = "1"
pytest.importorskip("torch")
pytest.importorskip("transformers", reason="the e2e gate needs transformers (pip install -e '.[e2e]')")
pytest.importorskip("lm_eval", reason="the e2e gate needs lm-eval (pip install -e '.[e2e]')")
pytest.importorskip("accelerate", reason="lm-eval's HF model needs accelerate (pip install -e '.[e2e]')")

from moecheck.backends import registry  # noqa: E402
from moecheck.e2e import lmeval_run  # noqa: E402
from moecheck.e2e.config import load_config, locate_model  # noqa: E402
from moecheck.e2e.gate import MESSAGE_QUESTIONS  # noqa: E402
from moecheck.e2e.runner import ConfigRunner  # noqa: E402
from moecheck.tests.e2e import broken_backends as bb  # noqa: E402

CFG = load_config("tiny_qwen3_moe")
_, _WHY = locate_model(CFG)
if _WHY is not None:
    pytest.skip(f"shipped tiny model missing: {_WHY}", allow_module_level=True)
SCALE_FORMAT = "mxfp8"  # power-of-two block scales: "one step" is exactly x2
assert SCALE_FORMAT in CFG.formats and SCALE_FORMAT in bb.POW2_SCALE_FORMATS


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    registry.load_all((bb.__name__,))
    return ConfigRunner(CFG, tmp_path_factory.mktemp("e2e_tiny"))


def _rows(g):
    return [json.loads(x) for x in g.per_question.read_text().splitlines()]


def test_reference_against_itself_passes_exactly(runner):
    g = runner.run_gate("bf16", "reference")
    assert g.verdict == "pass", g.message
    r = g.result
    assert (r.b, r.c, r.p_value) == (0, 0, 1.0), "the reference is not deterministic across two runs"
    assert r.n == CFG.n_questions and r.accuracy >= CFG.floor_for("bf16") and g.calls > 0


def test_cpu_loop_passes(runner):
    g = runner.run_gate("bf16", "cpu_loop")
    assert g.verdict == "pass", g.message
    assert g.calls > 0 and g.result.n == CFG.n_questions
    rows = _rows(g)
    assert len(rows) == CFG.n_questions and sum(r["discordant"] for r in rows) == g.result.b + g.result.c
    print(f"\n{g.message}")


def _assert_fails_loudly(g, fmt, backend, calls_before):
    assert g.verdict == "fail", g.message
    assert bb.CALLS[backend] > calls_before and g.calls == bb.CALLS[backend] - calls_before, "broken backend never ran"
    r = g.result
    assert r.p_value < CFG.alpha and r.b > r.c
    head = g.message.split("Discordant questions:")[0]
    assert all(s in head for s in (CFG.name, fmt, backend)), g.message
    rows = {x["doc_id"]: x for x in _rows(g)}
    for doc in r.discordant[:MESSAGE_QUESTIONS]:
        assert f"#{doc} " in g.message and rows[doc]["discordant"]
        assert rows[doc]["question"][:40] in g.message
    print(f"\n{g.message}")


def test_swapped_gate_up_fails_the_gate(runner):
    before = bb.CALLS[bb.SWAPPED]
    _assert_fails_loudly(runner.run_gate("bf16", bb.SWAPPED), "bf16", bb.SWAPPED, before)


def test_scales_one_step_off_fail_the_gate(runner):
    before = bb.CALLS[bb.SCALE_STEP]
    _assert_fails_loudly(runner.run_gate(SCALE_FORMAT, bb.SCALE_STEP), SCALE_FORMAT, bb.SCALE_STEP, before)


def test_standard_gsm8k_runs_only_from_the_cache():
    why = lmeval_run.skip_reason(lmeval_run.TaskSpec("gsm8k"))
    if why is not None:  # this machine: not cached, and the reason says so in one line
        assert "openai/gsm8k" in why and "cache" in why and "\n" not in why
    else:  # a runner with the dataset cached: it must load offline
        import datasets

        assert len(datasets.load_dataset(*lmeval_run.GSM8K, split="test")) > 0
