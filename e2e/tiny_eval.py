"""Greedy exact-match accuracy of a causal LM on gsm8k-format items, and expert fake-quantization.

This is the tiny model's own sanity metric (training log, tests), scored like lm-eval's gsm8k
"strict-match": the first `#### N` in the generated continuation, cut at "Question:", must equal
the reference N. The gate itself goes through lm-eval; this only needs HF generate.
"""
from __future__ import annotations

import re

import torch
from moecheck.e2e import problems
from moecheck.e2e.tokenizer import prompt
from moecheck.reference.errors import require

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")  # lm-eval gsm8k strict-match
STOP = "Question:"
MAX_NEW_TOKENS = 48  # the longest answer is ~40 tokens


def extract(text: str) -> str | None:
    m = STRICT.search(text.split(STOP, 1)[0])
    return m.group(1).replace(",", "").rstrip(".") if m else None


@torch.no_grad()
def generate_answers(model, tok, questions: list[str], batch_size: int = 125) -> list[str]:
    """Greedy continuations of `Question: q\\nAnswer:` (left-padded batches), decoded."""
    stop_ids = [tok.eos_token_id, tok.convert_tokens_to_ids(STOP)]
    tok.padding_side = "left"
    outs = []
    for i in range(0, len(questions), batch_size):
        enc = tok([prompt(q) for q in questions[i:i + batch_size]], return_tensors="pt", padding=True).to(model.device)
        gen = model.generate(**enc, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                             eos_token_id=stop_ids, pad_token_id=tok.pad_token_id)
        outs += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return outs


def correct(model, tok, items: list[dict], batch_size: int = 125) -> list[bool]:
    """Per item: does the strict-match answer of the greedy continuation equal the reference N?"""
    require(len(items) > 0, "scoring needs at least one item")
    preds = generate_answers(model, tok, [it["question"] for it in items], batch_size)
    gold = [str(problems.answer_number(it["answer"])) for it in items]
    return [extract(p) == g for p, g in zip(preds, gold)]


def accuracy(model, tok, items: list[dict], batch_size: int = 125) -> float:
    ok = correct(model, tok, items, batch_size)
    return sum(ok) / len(ok)


def expert_params(model) -> list[torch.nn.Parameter]:
    """The 3-D expert weights [E, N, K] (K = input dim, last) of every MoE layer, in memory (5.x)."""
    ps = [p for n, p in model.named_parameters() if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    require(len(ps) > 0, "model has no fused expert parameters (experts.gate_up_proj / experts.down_proj)")
    return ps


@torch.no_grad()
def fake_quantize_experts(model, fmt) -> None:
    """In place: every expert weight -> moecheck's reference quantize(w, fmt.weight).dequantize().

    gate_up_proj [E, 2I, H] is quantized as one tensor per expert, as moecheck's w13 [E, 2I, K]."""
    from moecheck.reference.quantize import quantize
    require(fmt.weight is not None, f"format {fmt.name} has no weight quantization")
    for p in expert_params(model):
        p.copy_(quantize(p.detach().float(), fmt.weight).dequantize().to(p.dtype))
