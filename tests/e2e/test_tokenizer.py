"""The tiny model's tokenizer: exact round trip, digits as tokens, offline load via AutoTokenizer."""
import pytest

pytest.importorskip("transformers", reason="the e2e tokenizer needs transformers (pip install -e '.[e2e]')")

from moecheck.e2e import problems, tiny_eval, tiny_model  # noqa: E402
from moecheck.e2e.tokenizer import EOS, build_tokenizer, prompt, training_text  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_round_trip_on_generated_data(tok):
    for split in problems.SPLITS:
        for it in problems.generate(300, 11, split):
            for s in (training_text(it), prompt(it["question"]), " " + it["answer"]):
                ids = tok(s)["input_ids"]
                assert tok.unk_token_id not in ids, s
                assert tok.decode(ids) == s


def test_digits_are_single_tokens_and_the_answer_survives_decoding(tok):
    pieces = tok.convert_ids_to_tokens(tok("#### 107")["input_ids"])
    assert pieces == ["####", " 1", "0", "7"]
    assert tiny_eval.extract(tok.decode(tok(" so 3 + 4 = 7.\n#### 7")["input_ids"])) == "7"


def test_prompt_words_and_eos_are_in_the_vocab(tok):
    vocab = tok.get_vocab()
    for w in ("Question:", "Answer:", "####", "\n", EOS):
        assert w in vocab, w
    assert tok.eos_token == EOS


def test_prompt_tokens_prefix_the_training_text(tok):
    it = problems.generate(1, 0, "test")[0]
    p = tok(prompt(it["question"]))["input_ids"]
    assert tok(training_text(it))["input_ids"][:len(p)] == p


def test_shipped_tokenizer_loads_offline(monkeypatch):
    from transformers import AutoTokenizer
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = AutoTokenizer.from_pretrained(str(tiny_model.MODEL_DIR), local_files_only=True)
    assert t.get_vocab() == build_tokenizer().get_vocab()
    s = training_text(problems.read_jsonl(problems.TEST_FILE)[0])
    assert t.decode(t(s)["input_ids"]) == s
