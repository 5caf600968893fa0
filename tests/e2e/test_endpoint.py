"""`moecheck e2e --endpoint`: the gsm8k gate against real OpenAI-compatible servers on 127.0.0.1.

`transformers serve` serves the shipped tiny model (its word-level tokenizer included) and a copy
with every expert's gate and up swapped (e2e/plant.py); lm-eval's local-completions asks both.
The served model passes against the in-process reference; the planted one fails against the
reference server, and against that server's saved per-question answers (--baseline).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

for _v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_v] = "1"
for _mod in ("torch", "transformers", "lm_eval", "fastapi", "uvicorn", "aiohttp", "tenacity"):
    pytest.importorskip(_mod, reason=f"the endpoint gate and its test server need {_mod} (pip install -e '.[e2e]')")

from moecheck.ci.cli import main  # noqa: E402
from moecheck.ci.results.store import ResultStore  # noqa: E402
from moecheck.e2e.endpoint import ServerConfig, base_url, load_baseline, server_configs  # noqa: E402
from moecheck.e2e.lmeval_run import TaskSpec  # noqa: E402
from moecheck.e2e.plant import swap_gate_up  # noqa: E402
from moecheck.e2e.tiny_model import MODEL_DIR  # noqa: E402
from moecheck.tests.e2e.served import free_port, transformers_server  # noqa: E402

LIMIT = 40  # questions per evaluation: the 2-core CI budget
SERVER = "transformers"  # [servers.transformers] of e2e/configs/tiny_qwen3_moe.toml


@pytest.fixture(scope="module")
def reference_url(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "reference.log"
    with transformers_server(MODEL_DIR, log) as url:
        yield url


@pytest.fixture(scope="module")
def planted_url(tmp_path_factory):
    d = tmp_path_factory.mktemp("planted")
    assert swap_gate_up(MODEL_DIR, d / "model") == 4 * 8 * 2  # layers x experts x (gate, up)
    with transformers_server(d / "model", d / "serve.log") as url:
        yield url


def _e2e(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["e2e", "--config", "tiny_qwen3_moe", "--limit", str(LIMIT), *map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _row(out: str, backend: str) -> list[str]:
    (line,) = [x for x in out.splitlines() if x.startswith("tiny_qwen3_moe") and x.split()[2] == backend]
    return line.split()


def test_the_served_tiny_model_passes_against_the_in_process_reference(reference_url, tmp_path, capsys):
    out, db = tmp_path / "out", tmp_path / "s.sqlite"
    rc, text, err = _e2e(capsys, "--endpoint", f"{SERVER}={reference_url}", "--out", out, "--store", db)
    assert rc == 0, text + err[-3000:]
    row = _row(text, SERVER)
    assert row[1] == "bf16" and row[3] == "pass" and row[6] == str(LIMIT)
    assert "servers, each against the in-process reference (bf16):" in text and "transformers serve --device cpu" in text
    rows = [json.loads(x) for x in (out / f"tiny_qwen3_moe__served__{SERVER}.jsonl").read_text().splitlines()]
    assert [r["doc_id"] for r in rows] == list(range(LIMIT))
    # the server's own tokenizer (word-level, Fuse decoder) round-trips the answer format the task parses
    answered = [r for r in rows if re.search(r"#### -?\d+", r["response"])]
    assert len(answered) >= 0.9 * LIMIT and all("Question:" not in r["response"] for r in rows)
    assert all({"reference_correct", "discordant", "extracted:strict-match"} <= set(r) for r in rows)
    with ResultStore(db, create=False) as s:
        (rec,) = s.e2e()
    assert (rec.model, rec.format, rec.backend, rec.verdict, rec.n_questions) == ("tiny_qwen3_moe", "bf16", SERVER, "pass", LIMIT)
    assert "server: transformers serve --device cpu" in rec.message


def test_a_planted_server_fails_with_its_discordant_questions(reference_url, planted_url, tmp_path, capsys):
    out = tmp_path / "out"
    rc, text, err = _e2e(capsys, "--endpoint", f"{SERVER}={planted_url}", "--reference-endpoint",
                         f"{SERVER}={reference_url}", "--out", out)
    assert rc == 1, text + err[-3000:]
    assert _row(text, SERVER)[3] == "fail"
    (fail,) = [x for x in err.splitlines() if x.startswith("FAIL ")]
    assert "tiny_qwen3_moe / bf16 / transformers" in fail and f"vs server {SERVER}" in fail
    b, c = map(int, re.search(r"McNemar b=(\d+) c=(\d+)", fail).groups())
    assert b > c and "Discordant questions: #" in fail
    rows = [json.loads(x) for x in (out / f"tiny_qwen3_moe__served__{SERVER}.jsonl").read_text().splitlines()]
    assert sum(r["discordant"] for r in rows) == b + c
    (repro,) = [x for x in text.splitlines() if "reproduce: " in x]
    assert f"--endpoint {SERVER}={planted_url} --reference-endpoint {SERVER}={reference_url} --limit {LIMIT}" in repro
    # the reference server's answers were kept: the planted server fails against them alone too
    saved = out / f"tiny_qwen3_moe__served__reference-{SERVER}.jsonl"
    rc, text, err = _e2e(capsys, "--endpoint", f"{SERVER}={planted_url}", "--baseline", saved, "--out", tmp_path / "o2")
    assert rc == 1 and f"McNemar b={b} c={c}" in err and f"vs baseline {saved.name}" in err  # same answers, same counts


def test_a_server_that_does_not_answer_is_an_error_gate_in_one_line(tmp_path, capsys):
    base = tmp_path / "base.jsonl"
    base.write_text("".join(json.dumps({"doc_id": i, "correct": True}) + "\n" for i in range(LIMIT)))
    rc, text, err = _e2e(capsys, "--endpoint", f"{SERVER}=http://127.0.0.1:{free_port()}", "--baseline", base,
                         "--out", tmp_path / "o")
    assert rc == 1 and _row(text, SERVER)[3] == "error"
    (line,) = [x for x in err.splitlines() if x.startswith("ERROR ")]
    assert f"server {SERVER} at http://127.0.0.1:" in line and "does not answer" in line


@pytest.mark.parametrize("argv, why", [
    (["--endpoint", "http://127.0.0.1:1", "--config", "tiny_qwen3_moe"], "--endpoint needs exactly one --config"),
    (["--endpoint", "nope=http://127.0.0.1:1"], "no server 'nope' in the config's [servers]; known: transformers"),
    (["--endpoint", "ftp://127.0.0.1:1"], "endpoint URL must start with http:// or https://"),
    (["--baseline", "x.jsonl"], "--reference-endpoint/--baseline need --endpoint"),
    (["--endpoint", "http://127.0.0.1:1", "--backend", "cpu_loop"], "--backend/--format/--plugin pick in-process gates"),
    (["--endpoint", "http://127.0.0.1:1", "--baseline", "missing.jsonl"], "no baseline file missing.jsonl"),
])
def test_bad_endpoint_input_is_one_line_and_exit_2(tmp_path, capsys, argv, why):
    rc, _, err = _e2e(capsys, *argv, "--out", tmp_path / "o")
    assert rc == 2 and why in err and len(err.strip().splitlines()) == 1, err


def test_server_tables_are_checked_like_the_rest_of_a_config():
    assert set(server_configs({"a": {"engine": "vllm serve M", "args": ["--moe-backend", "triton"]}}, "c")) == {"a"}
    for bad, why in [({"a": {"moe_backend": "x"}}, "servers.a: unknown keys moe_backend"),
                     ({"a": {"args": "--x"}}, "args must be a list of strings"),
                     ({"a": {"concurrency": 0}}, "concurrency must be an integer >= 1")]:
        with pytest.raises(ValueError, match=re.escape(why)):
            server_configs(bad, "c")


def test_urls_and_settings():
    assert {base_url(u) for u in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/completions",
                                  "http://h:8000/v1/chat/completions")} == {"http://h:8000/v1"}
    s = ServerConfig(name="x", engine="vllm serve Qwen/Qwen3-30B-A3B", args=("--moe-backend", "flashinfer_cutlass"),
                     env={"VLLM_USE_FLASHINFER_MOE_FP16": "1"})
    assert s.settings == "VLLM_USE_FLASHINFER_MOE_FP16=1 vllm serve Qwen/Qwen3-30B-A3B --moe-backend flashinfer_cutlass"


def test_a_baseline_must_be_a_per_question_file(tmp_path):
    spec = TaskSpec("local", Path("x.jsonl"))
    p = tmp_path / "b.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ({"doc_id": 1, "correct:strict-match": False}, {"doc_id": 0, "correct": True})))
    run = load_baseline(p, spec, 10)
    assert [(a.doc_id, a.correct) for a in run.answers] == [(0, True), (1, False)] and run.accuracy == 0.5
    p.write_text('{"question": "no id"}\n')
    with pytest.raises(ValueError, match="not a moecheck e2e per-question JSONL"):
        load_baseline(p, spec, 10)
