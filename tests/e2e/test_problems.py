"""gsm8k-format problems: format, arithmetic, determinism, disjoint splits, the shipped test file."""
import re

import pytest
from moecheck.e2e import problems
from moecheck.reference.errors import MoecheckError

_CALC = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@pytest.fixture(scope="module")
def train():
    return problems.generate(3000, 7, "train")


def test_format_and_arithmetic(train):
    for it in train:
        assert set(it) == {"question", "answer"}
        *reasoning, last = it["answer"].split("\n")
        assert len(reasoning) == 1 and re.fullmatch(r"#### \d+", last), it
        calcs = _CALC.findall(reasoning[0])
        assert calcs, it
        for a, op, b, c in calcs:  # every written calculation is right
            assert _OPS[op](int(a), int(b)) == int(c), it
        assert int(calcs[-1][3]) == problems.answer_number(it["answer"])  # #### N is the last result
        assert all(1 <= int(n) <= problems.MAX_NUMBER for n in re.findall(r"\d+", it["question"] + it["answer"]))


def test_every_template_and_two_step_problems_appear(train):
    assert {len(_CALC.findall(it["answer"])) for it in train} == {1, 2}
    ops = {op for it in train for _, op, _, _ in _CALC.findall(it["answer"])}
    assert ops == {"+", "-", "*"}


def test_deterministic():
    assert problems.generate(200, 3, "test") == problems.generate(200, 3, "test")
    assert problems.generate(200, 3, "train") != problems.generate(200, 4, "train")


def test_splits_disjoint(train):
    test = problems.generate(2000, 7, "test")  # same seed as train: the split rule alone separates them
    assert not {it["question"] for it in train} & {it["question"] for it in test}
    assert all(problems.split_of(it["question"]) == "train" for it in train)
    assert all(problems.split_of(it["question"]) == "test" for it in test)
    assert len({it["question"] for it in train}) == len(train)  # no duplicates within a split


def test_shipped_test_file_is_the_regeneration(tmp_path):
    shipped = problems.read_jsonl(problems.TEST_FILE)
    assert len(shipped) == problems.TEST_N
    assert shipped == problems.generate(problems.TEST_N, problems.TEST_SEED, "test")
    problems.regenerate_test_file(tmp_path / "t.jsonl")  # byte-identical, not just equal as data
    assert (tmp_path / "t.jsonl").read_bytes() == problems.TEST_FILE.read_bytes()


@pytest.mark.parametrize("kw, msg", [
    (dict(n=5, seed=0, split="dev"), "unknown split"),
    (dict(n=-1, seed=0, split="train"), "n must be"),
    (dict(n=5, seed="0", split="train"), "seed must be"),
])
def test_bad_input(kw, msg):
    with pytest.raises(MoecheckError, match=msg):
        problems.generate(**kw)


def test_answer_number_needs_the_marker():
    with pytest.raises(MoecheckError, match="last line"):
        problems.answer_number("so 3 + 4 = 7.")
