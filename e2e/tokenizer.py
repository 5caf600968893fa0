"""The tiny model's tokenizer: word-level, one token per digit, built offline with `tokenizers`.

Pieces are `Question:`/`Answer:`, words, single digits and single punctuation marks, each with its
leading space attached (" has", " 1", "2", " ####"), plus newline. Because the spaces live inside
the tokens, the Fuse decoder (plain concatenation) restores the text exactly: decode(encode(s)) == s
for any text made of known pieces, so `#### 19` comes back as written, not as `# # # # 1 9`.
Digits are separate tokens so the model can learn column arithmetic instead of a table of numbers.

The vocabulary is the set of pieces in a fixed, deterministic corpus of generated problems (both
splits: they share the same words) plus every digit and symbol the gate's prompt can contain.
"""
from __future__ import annotations

from pathlib import Path

from moecheck.e2e import problems
from moecheck.reference.errors import require

EOS, PAD, UNK = "<|endoftext|>", "<|pad|>", "<unk>"
SPECIALS = (PAD, EOS, UNK)  # ids 0, 1, 2
PIECE_PATTERN = r"(?:Question|Answer):| ?[A-Za-z]+| ?[0-9]| ?####| ?[^A-Za-z0-9\s]|\n| "
PROMPT = "Question: {question}\nAnswer:"  # lm-eval gsm8k doc_to_text; the target is " {answer}"
_VOCAB_CORPUS = 4000  # items per split: covers every template word many times over
_ALWAYS = ["Question:", "Answer:", "\n", " ", "####", " ####"] + [p + d for p in ("", " ") for d in "0123456789"] \
    + [p + c for p in ("", " ") for c in ".,:?!+-*/=$%()"]


def prompt(question: str) -> str:
    return PROMPT.format(question=question)


def training_text(item: dict) -> str:
    """The gate's format exactly: prompt, one space, the answer (EOS is appended as a token)."""
    return f"{prompt(item['question'])} {item['answer']}"


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers
    return pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")


def build_vocab() -> dict[str, int]:
    pre = _pre_tokenizer()
    pieces = set(_ALWAYS)
    for split in problems.SPLITS:
        for it in problems.generate(_VOCAB_CORPUS, seed=12345, split=split):
            pieces.update(p for p, _ in pre.pre_tokenize_str(training_text(it)))
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for p in sorted(pieces):  # sorted: ids do not depend on set order
        vocab[p] = len(vocab)
    return vocab


def build_tokenizer():
    """A transformers PreTrainedTokenizerFast wrapping the word-level `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=build_vocab(), unk_token=UNK))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.Fuse()  # concatenate: spaces are inside the pieces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        clean_up_tokenization_spaces=False, model_max_length=256, padding_side="left")


def save_tokenizer(out_dir: str | Path):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    tok.save_pretrained(str(out))
    require((out / "tokenizer.json").is_file(), f"tokenizer.json was not written to {out}")
    return tok
