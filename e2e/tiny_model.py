"""The shipped offline default model of the e2e gate: where it lives, its shapes, how to load it.

A Qwen3-MoE trained from scratch on moecheck.e2e.problems (e2e/train_tiny.py). Shapes
are chosen for the quantized formats: hidden = moe_intermediate = 128 is a multiple of every
format's K block (128 for fp8_block/int4 g128, 32 for MX, 16 for NVFP4). Every layer is MoE.
"""
from __future__ import annotations

import json
from pathlib import Path

from moecheck.reference.errors import require

MODEL_DIR = Path(__file__).parent / "models" / "tiny_qwen3_moe"

SHAPES = dict(
    hidden_size=128, moe_intermediate_size=128, intermediate_size=256,  # intermediate_size: unused (no dense layers)
    num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
    decoder_sparse_step=1, mlp_only_layers=[],  # every layer is an MoE layer
)

# Accuracy the shipped model must keep on the first FLOOR_N test questions (tests read it here).
# Set below the measured fp32 accuracy (train_log.json) so only a real regression trips it.
ACCURACY_FLOOR = 0.9
FLOOR_N = 40


def make_config(vocab_size: int, eos_id: int, pad_id: int):
    from transformers import Qwen3MoeConfig
    return Qwen3MoeConfig(
        vocab_size=vocab_size, max_position_embeddings=256, tie_word_embeddings=True,
        rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False, attention_dropout=0.0,
        router_aux_loss_coef=0.01, output_router_logits=False,
        eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None, **SHAPES)


def load(model_dir: str | Path = MODEL_DIR):
    """(model, tokenizer) from a local directory, fp32, eval mode; never touches the network."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d = Path(model_dir)
    require((d / "config.json").is_file(), f"no config.json in {d}: run python -m moecheck.e2e.train_tiny --out {d}")
    tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(d), local_files_only=True, dtype="float32")
    return model.eval(), tok


def train_log(model_dir: str | Path = MODEL_DIR) -> dict:
    p = Path(model_dir) / "train_log.json"
    require(p.is_file(), f"no train_log.json in {model_dir}")
    return json.loads(p.read_text())
