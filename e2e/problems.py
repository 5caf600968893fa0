"""gsm8k-format arithmetic word problems, generated deterministically, for the offline e2e gate.

Each item is `{"question": str, "answer": str}` as in gsm8k: the answer is one or two sentences
with the calculation written out (`12 + 7 = 19`) and a last line `#### N`. Every number that
appears (operands, intermediate and final results) lies in [1, 99], so a model of a few MB can
learn the arithmetic reliably: what the gate measures is the MoE kernel, not the model's ceiling.

Splits are disjoint by construction: a question belongs to "test" iff the first byte of the
SHA-256 of its text is < TEST_BYTES (a fixed 20% of question space), else to "train".
`generate` draws from one template stream per (split, seed) and keeps only its split's questions,
deduplicated, so the same text can never be in both.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Callable, Iterable

from moecheck.reference.errors import require

SPLITS = ("train", "test")
TEST_BYTES = 52  # first sha256 byte < 52: ~20% of questions are test questions
MAX_NUMBER = 99
ANSWER_PREFIX = "#### "

# (name, subject pronoun, possessive): pronouns vary with the name so the model reads the name
_NAMES = (
    ("Tom", "he", "his"), ("Anna", "she", "her"), ("Ben", "he", "his"), ("Lily", "she", "her"),
    ("Sam", "he", "his"), ("Mia", "she", "her"), ("Jack", "he", "his"), ("Emma", "she", "her"),
    ("Leo", "he", "his"), ("Sara", "she", "her"), ("Max", "he", "his"), ("Nora", "she", "her"),
    ("Omar", "he", "his"), ("Rosa", "she", "her"), ("Paul", "he", "his"), ("Kate", "she", "her"),
)
_OBJECTS = ("apples", "pencils", "marbles", "stickers", "books", "cookies", "coins", "cards",
            "shells", "stamps", "toys", "balloons", "eggs", "candies", "flowers", "beads")
_CONTAINERS = ("boxes", "bags", "jars", "baskets", "packs")  # plural; singular is [:-1] or [:-2]
_BUY = ("buys", "finds", "gets", "picks up", "wins")
_LOSE = ("loses", "uses", "sells", "gives away", "drops")


def _singular(container: str) -> str:
    return container[:-2] if container.endswith("xes") else container[:-1]


def _n(rng: random.Random, lo: int, hi: int) -> int:
    return rng.randint(lo, min(hi, MAX_NUMBER))


def _people(rng: random.Random):
    a, b = rng.sample(_NAMES, 2)
    return a, b


# --- templates: each returns (question, reasoning, result) with every number in [1, 99] ---

def _add_buy(rng):
    (name, he, _), _ = _people(rng)
    obj, verb = rng.choice(_OBJECTS), rng.choice(_BUY)
    a = _n(rng, 1, 98)
    b = _n(rng, 1, MAX_NUMBER - a)
    c = a + b
    q = f"{name} has {a} {obj}. {he.capitalize()} {verb} {b} more. How many {obj} does {name} have now?"
    r = f"{name} has {a} {obj} and {verb} {b} more, so {he} has {a} + {b} = {c} {obj}."
    return q, r, c


def _add_gift(rng):
    (name, he, _), (other, _, _) = _people(rng)
    obj = rng.choice(_OBJECTS)
    a = _n(rng, 1, 98)
    b = _n(rng, 1, MAX_NUMBER - a)
    c = a + b
    q = f"{name} has {a} {obj}. {other} gives {name} {b} {obj}. How many {obj} does {name} have now?"
    r = f"{name} gets {b} {obj} from {other}, so {he} has {a} + {b} = {c} {obj}."
    return q, r, c


def _add_together(rng):
    (name, _, _), (other, _, _) = _people(rng)
    obj = rng.choice(_OBJECTS)
    a = _n(rng, 1, 98)
    b = _n(rng, 1, MAX_NUMBER - a)
    c = a + b
    q = f"{name} has {a} {obj} and {other} has {b} {obj}. How many {obj} do they have together?"
    r = f"Together they have {a} + {b} = {c} {obj}."
    return q, r, c


def _sub_lose(rng):
    (name, he, _), _ = _people(rng)
    obj, verb = rng.choice(_OBJECTS), rng.choice(_LOSE)
    a = _n(rng, 2, 99)
    b = _n(rng, 1, a - 1)
    c = a - b
    q = f"{name} has {a} {obj}. {he.capitalize()} {verb} {b} of them. How many {obj} does {name} have left?"
    r = f"{name} {verb} {b} of {a} {obj}, so {he} has {a} - {b} = {c} {obj} left."
    return q, r, c


def _sub_give(rng):
    (name, he, _), (other, _, _) = _people(rng)
    obj = rng.choice(_OBJECTS)
    a = _n(rng, 2, 99)
    b = _n(rng, 1, a - 1)
    c = a - b
    q = f"{name} had {a} {obj} and gave {b} to {other}. How many {obj} does {name} have left?"
    r = f"{name} gave {b} {obj} to {other}, so {he} has {a} - {b} = {c} {obj} left."
    return q, r, c


def _sub_compare(rng):
    (name, _, _), (other, _, _) = _people(rng)
    obj = rng.choice(_OBJECTS)
    a = _n(rng, 2, 99)
    b = _n(rng, 1, a - 1)
    c = a - b
    q = f"{name} has {a} {obj} and {other} has {b} {obj}. How many more {obj} does {name} have than {other}?"
    r = f"{name} has {a} - {b} = {c} more {obj} than {other}."
    return q, r, c


def _mul_containers(rng):
    (name, he, _), _ = _people(rng)
    obj, box = rng.choice(_OBJECTS), rng.choice(_CONTAINERS)
    a = _n(rng, 2, 9)
    b = _n(rng, 2, MAX_NUMBER // a)
    c = a * b
    q = f"{name} has {a} {box} with {b} {obj} in each {_singular(box)}. How many {obj} does {name} have?"
    r = f"{name} has {a} {box} of {b} {obj}, so {he} has {a} * {b} = {c} {obj}."
    return q, r, c


def _mul_days(rng):
    (name, he, _), _ = _people(rng)
    obj, verb = rng.choice(_OBJECTS), rng.choice(_BUY)
    a = _n(rng, 2, 9)
    b = _n(rng, 2, MAX_NUMBER // a)
    c = a * b
    q = f"{name} {verb} {b} {obj} every day. How many {obj} does {he} get in {a} days?"
    r = f"In {a} days {he} gets {a} * {b} = {c} {obj}."
    return q, r, c


def _two_step_add_sub(rng):
    (name, he, _), (other, _, _) = _people(rng)
    obj, verb = rng.choice(_OBJECTS), rng.choice(_BUY)
    a = _n(rng, 1, 97)
    b = _n(rng, 1, MAX_NUMBER - a)
    s = a + b
    d = _n(rng, 1, s - 1)
    c = s - d
    q = (f"{name} has {a} {obj}. {he.capitalize()} {verb} {b} more and then gives {d} to {other}. "
         f"How many {obj} does {name} have now?")
    r = f"After that {name} has {a} + {b} = {s} {obj}. Then {he} has {s} - {d} = {c} {obj}."
    return q, r, c


def _two_step_mul_add(rng):
    (name, he, _), _ = _people(rng)
    obj, box = rng.choice(_OBJECTS), rng.choice(_CONTAINERS)
    a = _n(rng, 2, 9)
    b = _n(rng, 2, (MAX_NUMBER - 1) // a)
    s = a * b
    d = _n(rng, 1, MAX_NUMBER - s)
    c = s + d
    q = (f"{name} has {a} {box} with {b} {obj} in each {_singular(box)} and {d} more {obj}. "
         f"How many {obj} does {name} have in total?")
    r = f"The {box} hold {a} * {b} = {s} {obj}, so {he} has {s} + {d} = {c} {obj}."
    return q, r, c


TEMPLATES: dict[str, Callable] = {f.__name__.lstrip("_"): f for f in (
    _add_buy, _add_gift, _add_together, _sub_lose, _sub_give, _sub_compare,
    _mul_containers, _mul_days, _two_step_add_sub, _two_step_mul_add)}


def split_of(question: str) -> str:
    """The split a question belongs to, from its text alone (so splits are disjoint by definition)."""
    return "test" if hashlib.sha256(question.encode()).digest()[0] < TEST_BYTES else "train"


def make_item(template: str, rng: random.Random) -> dict:
    require(template in TEMPLATES, f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
    q, reasoning, result = TEMPLATES[template](rng)
    return {"question": q, "answer": f"{reasoning}\n{ANSWER_PREFIX}{result}"}


def generate(n: int, seed: int, split: str) -> list[dict]:
    """`n` distinct items of `split`, deterministic in (n, seed, split); templates drawn uniformly."""
    require(split in SPLITS, f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    require(isinstance(n, int) and n >= 0, f"n must be an int >= 0, got {n!r}")
    require(isinstance(seed, int), f"seed must be an int, got {seed!r}")
    rng = random.Random(f"moecheck-arith:{split}:{seed}")  # str seeds hash with sha512: stable across runs
    names, seen, out = list(TEMPLATES), set(), []
    for _ in range(50 * n + 1000):  # the question space is huge; the cap only guards against a bug
        if len(out) == n:
            break
        item = make_item(rng.choice(names), rng)
        if item["question"] not in seen and split_of(item["question"]) == split:
            seen.add(item["question"])
            out.append(item)
    require(len(out) == n, f"could only draw {len(out)} distinct {split} items of {n}")
    return out


def answer_number(answer: str) -> int:
    """N from the last line `#### N`."""
    last = answer.rsplit("\n", 1)[-1]
    require(last.startswith(ANSWER_PREFIX), f"answer's last line must start with {ANSWER_PREFIX!r}, got {last!r}")
    return int(last[len(ANSWER_PREFIX):])


def write_jsonl(path: str | Path, items: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps({"question": it["question"], "answer": it["answer"]}) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# The shipped test file is exactly this regeneration (a test checks it)
TEST_FILE = Path(__file__).parent / "data" / "arith_test.jsonl"
TEST_N, TEST_SEED = 250, 0


def regenerate_test_file(path: str | Path = TEST_FILE) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, generate(TEST_N, TEST_SEED, "test"))


if __name__ == "__main__":
    regenerate_test_file()
    print(f"wrote {TEST_FILE}")
