"""Train the offline default model of the e2e gate: `python -m moecheck.e2e.train_tiny --out DIR`.

A Qwen3-MoE (tiny_model.SHAPES) from scratch on CPU, on the train split of moecheck.e2e.problems,
in the gate's exact format `Question: q\\nAnswer: a<EOS>` (loss on the answer and EOS only).
Deterministic: fixed seeds, deterministic algorithms, one fixed stream of fresh training items
(no item is seen twice, so the model learns the arithmetic rather than memorizing).
It ends by scoring greedy exact match on the shipped test split, in fp32 and with every expert
weight fake-quantized by moecheck's reference quantizers, and writes DIR/train_log.json.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path

import torch
from moecheck.e2e import problems, tiny_eval, tiny_model
from moecheck.e2e.tokenizer import build_tokenizer, prompt, training_text
from moecheck.reference.errors import require

QUANT_FORMATS = ("fp8_tensor", "fp8_token_channel", "fp8_block", "int8_w_g128", "mxfp8", "int4_w_g128",
                 "int4_zp_w_g128", "int4_w_g32", "mxfp4_bf16", "nvfp4")
DEFAULTS = dict(steps=3000, batch=64, lr=2e-3, warmup=100, min_lr_frac=0.05, weight_decay=0.1,
                clip=1.0, seed=0, data_seed=1, eval_every=500)
BUCKET = 16  # batches per length bucket: sorting a pool by length cuts padding (CPU time) by ~20%


def encode(tok, items: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per item; labels mask the prompt so the loss is on ` answer<EOS>`."""
    out = []
    for it in items:
        p = tok(prompt(it["question"]))["input_ids"]
        ids = tok(training_text(it))["input_ids"] + [tok.eos_token_id]
        require(ids[:len(p)] == p, f"prompt tokens are not a prefix of the training text: {it['question']!r}")
        out.append((ids, [-100] * len(p) + ids[len(p):]))
    return out


def collate(rows, pad_id: int) -> dict:
    n = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), n), pad_id)
    labels = torch.full((len(rows), n), -100)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (x, y) in enumerate(rows):  # right padding: training never sees pad positions
        ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return dict(input_ids=ids, labels=labels, attention_mask=mask)


def batches(data: list, batch: int, seed: int) -> list[list]:
    """Consecutive pools of BUCKET batches, each pool sorted by length then cut into batches; the
    batch order is shuffled by a seeded generator, so the schedule is deterministic."""
    out = []
    pool = batch * BUCKET
    for i in range(0, len(data) - batch + 1, pool):
        chunk = sorted(data[i:i + pool], key=lambda r: len(r[0]))
        out += [chunk[j:j + batch] for j in range(0, len(chunk) - batch + 1, batch)]
    g = torch.Generator().manual_seed(seed)
    return [out[k] for k in torch.randperm(len(out), generator=g).tolist()]


def lr_at(step: int, a) -> float:
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    t = (step - a.warmup) / max(1, a.steps - a.warmup)
    return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def optimizer(model, a):
    # decay matrices (experts, attention, router, embeddings) but not norms: small, smooth weights
    # quantize better, which keeps correct int4/fp4 kernels from looking broken
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=a.lr, betas=(0.9, 0.98), eps=1e-8)


def quantized_accuracies(model, tok, test: list[dict], ref: list[bool]) -> dict[str, dict]:
    """Accuracy with every expert weight fake-quantized per format (rest fp32), and with the whole
    model in bf16 (the gate's dtype); `flips`: questions whose correctness differs from fp32."""
    from moecheck.reference.formats import FORMATS
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = {}
    for name in ("model_bf16", "bf16") + QUANT_FORMATS:
        with torch.no_grad():
            if name == "model_bf16":
                model.to(torch.bfloat16)
            elif name == "bf16":
                for p in tiny_eval.expert_params(model):
                    p.copy_(p.bfloat16().float())
            else:
                tiny_eval.fake_quantize_experts(model, FORMATS[name])
        ok = tiny_eval.correct(model, tok, test)
        res[name] = {"accuracy": sum(ok) / len(ok), "flips": sum(a != b for a, b in zip(ok, ref))}
        print(f"  {name:16s} accuracy {res[name]['accuracy']:.3f}  flips vs fp32 {res[name]['flips']}", flush=True)
        with torch.no_grad():
            model.float()
            for n, p in model.named_parameters():
                p.copy_(base[n])
    return res


def train(a) -> dict:
    t0 = time.time()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    torch.use_deterministic_algorithms(True)
    from transformers import Qwen3MoeForCausalLM

    tok = build_tokenizer()
    vocab = -(-len(tok) // 32) * 32  # pad the embedding table to a multiple of 32
    model = Qwen3MoeForCausalLM(tiny_model.make_config(vocab, tok.eos_token_id, tok.pad_token_id)).float()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Qwen3-MoE {n_params / 1e6:.2f}M params, vocab {len(tok)} (table {vocab})", flush=True)

    train_items = problems.generate(a.steps * a.batch, a.data_seed, "train")
    data = encode(tok, train_items)
    val = problems.generate(200, a.data_seed + 1000, "train")[:100]  # progress only; test is scored at the end
    seen = {it["question"] for it in train_items}
    val = [it for it in val if it["question"] not in seen]
    test = problems.read_jsonl(problems.TEST_FILE)
    print(f"{len(data)} training items, {len(val)} validation, {len(test)} test ({time.time() - t0:.0f}s)", flush=True)

    schedule = batches(data, a.batch, a.seed)
    require(len(schedule) == a.steps, f"{len(schedule)} batches for {a.steps} steps")
    opt = optimizer(model, a)
    curve, window = [], []
    model.train()
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        batch = collate(schedule[step], tok.pad_token_id)
        out = model(**batch, output_router_logits=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        window.append(out.loss.item() - model.config.router_aux_loss_coef * out.aux_loss.item())
        if (step + 1) % 100 == 0:
            curve.append({"step": step + 1, "loss": round(sum(window) / len(window), 4), "s": round(time.time() - t0)})
            window = []
            c = curve[-1]
            print(f"step {step + 1:5d}  loss {c['loss']:.4f}  lr {lr_at(step, a):.2e}  {c['s']}s", flush=True)
        if a.eval_every and (step + 1) % a.eval_every == 0 and step + 1 < a.steps:
            model.eval()
            print(f"  validation accuracy {tiny_eval.accuracy(model, tok, val):.3f}", flush=True)
            model.train()
    train_s = time.time() - t0

    model.eval()
    ref = tiny_eval.correct(model, tok, test)
    acc = sum(ref) / len(ref)
    print(f"test accuracy (fp32, greedy, {len(test)} questions): {acc:.3f}", flush=True)
    quant = quantized_accuracies(model, tok, test, ref) if a.quant_eval else {}

    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    import tokenizers
    import transformers
    log = {
        "command": command(a),
        "hparams": {k: getattr(a, k) for k in DEFAULTS},
        "params": n_params, "train_items": len(data), "data_seed": a.data_seed,
        "test_file": str(problems.TEST_FILE.relative_to(Path(problems.__file__).parents[1])),
        "loss_curve": curve, "final_loss": curve[-1]["loss"] if curve else None,
        "accuracy_fp32": acc, "test_questions": len(test),
        "accuracy_by_format": quant,
        "accuracy_by_format_note": ("expert weights fake-quantized by moecheck.reference.quantize (rest fp32); "
                                    "model_bf16: whole model in bf16; "
                                    "flips: questions whose correctness differs from fp32"),
        "train_seconds": round(train_s), "total_seconds": round(time.time() - t0), "threads": a.threads,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
    }
    (out_dir / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"wrote {out_dir} in {log['total_seconds']}s", flush=True)
    return log


def command(a) -> str:
    """The command line that reproduces this run (non-default options only)."""
    opts = [f"--{k.replace('_', '-')} {getattr(a, k)}" for k, v in DEFAULTS.items() if getattr(a, k) != v]
    opts += [f"--threads {a.threads}"] if a.threads != 2 else []
    return " ".join(["python -m moecheck.e2e.train_tiny --out", str(a.out)] + opts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory (model, tokenizer, train_log.json)")
    for k, v in DEFAULTS.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-quant-eval", dest="quant_eval", action="store_false",
                    help="skip the fake-quantized evaluations")
    a = ap.parse_args(argv)
    if a.steps <= 0 or a.batch <= 0 or a.threads <= 0:
        ap.error(f"--steps, --batch and --threads must be > 0, got {a.steps}, {a.batch}, {a.threads}")
    train(a)


if __name__ == "__main__":
    main()
