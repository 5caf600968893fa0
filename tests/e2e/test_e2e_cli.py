"""`moecheck e2e` end to end on a random tiny model saved to disk: table, JSONL, store, exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

for _v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_v] = "1"
torch = pytest.importorskip("torch")
pytest.importorskip("transformers", reason="the e2e gate needs transformers (pip install -e '.[e2e]')")
pytest.importorskip("lm_eval", reason="the e2e gate needs lm-eval (pip install -e '.[e2e]')")
pytest.importorskip("accelerate", reason="lm-eval's HF model needs accelerate (pip install -e '.[e2e]')")

from moecheck.ci.cli import main  # noqa: E402
from moecheck.ci.results.store import ResultStore  # noqa: E402
from moecheck.e2e import problems  # noqa: E402

LIMIT = 6


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory) -> Path:
    """A random Qwen3-MoE with the e2e tokenizer, saved like a checkpoint (it answers nothing right)."""
    from moecheck.e2e.tokenizer import build_tokenizer
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    d = tmp_path_factory.mktemp("random_qwen3_moe")
    tok = build_tokenizer()
    cfg = Qwen3MoeConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, moe_intermediate_size=32, intermediate_size=64,
                         num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, max_position_embeddings=256,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _config(tmp_path: Path, model_dir: Path, **over) -> Path:
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in problems.generate(LIMIT + 2, seed=7, split="test")))
    keys = dict(model_path=str(model_dir), family="qwen3_moe", dtype="bfloat16", device="cpu", task="local",
                data=str(data), n_questions=LIMIT, batch_size=4, max_gen_toks=12, alpha=0.05,
                formats=["bf16"], backends=["cpu_loop"], floor=0.0)
    keys.update(over)
    p = tmp_path / "random.toml"
    p.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))
    return p


def test_gate_runs_writes_results_and_stores_them(tmp_path, random_model_dir, capsys):
    cfg = _config(tmp_path, random_model_dir)
    out, db = tmp_path / "out", tmp_path / "s.sqlite"
    rc = main(["e2e", "--config", str(cfg), "--out", str(out), "--store", str(db), "--backend", "cpu_loop",
               "--backend", "torch_compile"])
    cap = capsys.readouterr()
    assert rc == 0, cap.out + cap.err
    assert "random" in cap.out and "cpu_loop" in cap.out and "pass" in cap.out
    assert f"{LIMIT}/{LIMIT} questions" in cap.err and "q/s" in cap.err and "ETA" in cap.err  # progress
    rows = [json.loads(x) for x in (out / "random__bf16__cpu_loop.jsonl").read_text().splitlines()]
    assert [r["doc_id"] for r in rows] == list(range(LIMIT))
    assert all({"question", "response", "correct", "reference_correct", "discordant"} <= set(r) for r in rows)
    assert (out / "random__bf16__baseline-reference.jsonl").is_file()
    summary = {(s["backend"]): s for s in map(json.loads, (out / "summary.jsonl").read_text().splitlines())}
    assert summary["cpu_loop"]["verdict"] == "pass" and summary["cpu_loop"]["calls"] > 0
    assert summary["torch_compile"]["verdict"] == "skip" and "unavailable" in summary["torch_compile"]["message"]
    with ResultStore(db, create=False) as store:
        recs = {r.backend: r for r in store.e2e()}
    assert recs["cpu_loop"].verdict == "pass" and recs["cpu_loop"].n_questions == LIMIT
    assert recs["cpu_loop"].per_question_path.endswith("random__bf16__cpu_loop.jsonl")
    assert recs["torch_compile"].verdict == "skip"


def test_store_defaults_to_moecheck_store_as_the_nightly_sets_it(tmp_path, random_model_dir, monkeypatch, capsys):
    db = tmp_path / "nightly.sqlite"
    monkeypatch.setenv("MOECHECK_STORE", str(db))
    rc = main(["e2e", "--config", str(_config(tmp_path, random_model_dir)), "--out", str(tmp_path / "o"),
               "--limit", "2", "--backend", "reference"])
    assert rc == 0, capsys.readouterr().err
    with ResultStore(db, create=False) as store:
        (rec,) = store.e2e()
    assert (rec.backend, rec.verdict, rec.n_questions) == ("reference", "pass", 2)


def test_gates_join_the_nightly_property_run_so_the_dashboard_shows_both(tmp_path, random_model_dir, capsys):
    db = tmp_path / "n.sqlite"
    with ResultStore(db) as store:
        night = store.start_run(profile="nightly", command="moecheck run")
        store.finish_run(night)
    argv = ["e2e", "--config", str(_config(tmp_path, random_model_dir)), "--out", str(tmp_path / "o"), "--limit", "2",
            "--backend", "reference", "--store", str(db)]
    assert main(argv) == 0 and main([*argv, "--attach", "new"]) == 0, capsys.readouterr().err
    with ResultStore(db, create=False) as store:
        assert [r.backend for r in store.e2e(night)] == ["reference"]
        (own,) = [r for r in store.runs() if r.run_id != night]
        assert own.profile == "e2e" and [r.backend for r in store.e2e(own.run_id)] == ["reference"]


def test_missing_model_is_a_skip_with_its_reason(tmp_path, capsys):
    cfg = _config(tmp_path, tmp_path / "no_model_here")
    rc = main(["e2e", "--config", str(cfg), "--out", str(tmp_path / "o")])
    cap = capsys.readouterr()
    assert rc == 0 and "skip" in cap.out and "no_model_here" in cap.out and "no config.json" in cap.out


@pytest.mark.parametrize("args, over, why", [
    (["--config", "no_such_config"], {}, "no gate config named 'no_such_config'"),
    (["--backend", "no_such_backend"], {}, "unknown backend 'no_such_backend'"),
    (["--format", "no_such_format"], {}, "unknown format 'no_such_format'"),
    (["--limit", "0"], {}, "--limit must be >= 1"),
    ([], {"bogus": 1}, "unknown keys bogus"),
    ([], {"floor": 2}, "floor must be a number in [0, 1]"),
    ([], {"backends": ["nope"]}, "unknown backend 'nope'"),
    ([], {"task": "mmlu"}, "task must be 'local' or 'gsm8k'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, random_model_dir, capsys, args, over, why):
    argv = ["e2e", "--out", str(tmp_path / "o"), *args]
    if "--config" not in args:
        argv += ["--config", str(_config(tmp_path, random_model_dir, **over))]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and why in err and len(err.splitlines()) == 1, err


def test_nightly_detects_the_command():
    """nightly.sh runs `moecheck e2e` iff `moecheck e2e --help` exits 0."""
    done = subprocess.run([sys.executable, "-c", "import sys; from moecheck.ci.cli import main; sys.exit(main())", "e2e", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--config" in done.stdout


def test_every_shipped_config_parses_and_an_absent_model_skips_with_its_id():
    from moecheck.e2e.config import all_configs, load_config, locate_model
    from moecheck.e2e.families import FAMILIES

    names = set()
    for path in all_configs():
        cfg = load_config(path)
        names.add(cfg.name)
        assert cfg.family in FAMILIES
        where, why = locate_model(cfg)
        if cfg.model_id is not None and why is not None:
            assert cfg.model_id in why and "not in the local HF cache" in why
        else:
            assert (where is None) == (why is not None)
    assert {"tiny_qwen3_moe", "mixtral_8x7b", "qwen3_30b_a3b", "moonlight_16b_a3b", "gpt_oss_20b", "olmoe_1b_7b"} <= names


def test_a_broken_plugin_backend_exits_1_naming_backend_format_and_questions(tmp_path, capsys):
    from moecheck.e2e.config import load_config, locate_model

    _, why = locate_model(load_config("tiny_qwen3_moe"))
    if why is not None:
        pytest.skip(f"shipped tiny model missing: {why}")
    rc = main(["e2e", "--config", "tiny_qwen3_moe", "--plugin", "moecheck.tests.e2e.broken_backends", "--backend",
               "e2e_broken_swapped_gate_up", "--format", "bf16", "--limit", "40", "--out", str(tmp_path)])
    cap = capsys.readouterr()
    assert rc == 1, cap.out + cap.err
    fail = [line for line in cap.err.splitlines() if line.startswith("FAIL ")]
    assert len(fail) == 1 and "tiny_qwen3_moe / bf16 / e2e_broken_swapped_gate_up" in fail[0]
    assert "Discordant questions: #" in fail[0] and "fail" in cap.out
    (repro,) = [line for line in cap.out.splitlines() if "reproduce: " in line]
    cmd = repro.split("reproduce: ", 1)[1]
    assert cmd.startswith("moecheck e2e --config ") and "tiny_qwen3_moe.toml --format bf16 --backend e2e_broken_swapped_gate_up" in cmd
    assert "--plugin moecheck.tests.e2e.broken_backends --limit 40" in cmd
