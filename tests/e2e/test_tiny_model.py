"""The shipped tiny Qwen3-MoE: loads offline, has the quantization-friendly shapes, still answers."""
import pytest

pytest.importorskip("transformers", reason="the e2e tiny model needs transformers (pip install -e '.[e2e]')")

from moecheck.e2e import problems, tiny_eval, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def loaded():
    import os
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return tiny_model.load()


def test_config_is_qwen3_moe_with_the_shapes(loaded):
    model, _ = loaded
    cfg = model.config
    assert cfg.model_type == "qwen3_moe" and type(model).__name__ == "Qwen3MoeForCausalLM"
    for k, v in tiny_model.SHAPES.items():
        assert getattr(cfg, k) == v, k
    for layer in model.model.layers:  # every layer MoE, experts fused [E, 2I, H] / [E, H, I] in memory
        ex = layer.mlp.experts
        assert tuple(ex.gate_up_proj.shape) == (8, 2 * 128, 128)
        assert tuple(ex.down_proj.shape) == (8, 128, 128)


def test_weights_are_small():
    size = sum(p.stat().st_size for p in tiny_model.MODEL_DIR.iterdir())
    assert size < 10 * 2**20


def test_greedy_accuracy_above_floor(loaded):
    model, tok = loaded
    items = problems.read_jsonl(problems.TEST_FILE)[:tiny_model.FLOOR_N]
    acc = tiny_eval.accuracy(model, tok, items, batch_size=tiny_model.FLOOR_N)
    assert acc >= tiny_model.ACCURACY_FLOOR, f"greedy accuracy {acc:.3f} < floor {tiny_model.ACCURACY_FLOOR}"


def test_train_log_records_the_run():
    log = tiny_model.train_log()
    assert log["accuracy_fp32"] >= tiny_model.ACCURACY_FLOOR
    assert log["test_questions"] == problems.TEST_N
    assert "int4_w_g128" in log["accuracy_by_format"]
