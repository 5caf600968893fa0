"""Tiny randomly initialised transformers MoE models, one per family, built from configs (no download)."""
from __future__ import annotations

import torch

# sizes: hidden 64 and intermediate 32 keep every block format's K multiple (32) satisfied
_COMMON = dict(vocab_size=160,  # >= the e2e tokenizer (151 pieces)
               hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=256, initializer_range=0.2, tie_word_embeddings=False)


def _configs():
    import transformers as tf

    return {
        "mixtral": lambda: tf.MixtralConfig(**_COMMON, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2),
        "qwen2_moe": lambda: tf.Qwen2MoeConfig(**_COMMON, moe_intermediate_size=32, intermediate_size=64,
                                               shared_expert_intermediate_size=48, num_experts=8, num_experts_per_tok=2),
        "qwen3_moe": lambda: tf.Qwen3MoeConfig(**_COMMON, moe_intermediate_size=32, intermediate_size=64, num_experts=8,
                                               num_experts_per_tok=2, norm_topk_prob=True, head_dim=16),
        "olmoe": lambda: tf.OlmoeConfig(**_COMMON, intermediate_size=32, num_experts=8, num_experts_per_tok=2),
        # 8 experts in 4 groups, best 2 groups kept: the grouped top-k actually drops experts
        "deepseek_v3": lambda: tf.DeepseekV3Config(**_COMMON, moe_intermediate_size=32, intermediate_size=64,
                                                   n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
                                                   n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=None,
                                                   kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                                   v_head_dim=16, routed_scaling_factor=2.5),
        "gpt_oss": lambda: tf.GptOssConfig(**_COMMON, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2,
                                           head_dim=16),
    }


FAMILY_NAMES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss")


def tiny_model(family: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A random CausalLM of `family` with HF's eager experts loop (the implementation HF documents)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = _configs()[family]()
    model = AutoModelForCausalLM.from_config(cfg, experts_implementation="eager").to(dtype).eval()
    if family == "deepseek_v3":  # a non-zero correction bias, so the test sees it steer the choice
        for m in model.modules():
            if hasattr(m, "e_score_correction_bias"):
                m.e_score_correction_bias.copy_(torch.randn_like(m.e_score_correction_bias) * 0.1)
    if family == "gpt_oss":  # router and expert biases non-zero (HF initialises some to zero)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.data.normal_(0.0, 0.2)
    return model
