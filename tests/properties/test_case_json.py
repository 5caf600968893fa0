"""Case JSON is parsed strictly: each field of its JSON type and range, unknown keys and values
rejected, one line naming the field, the value and what is allowed (a replay never runs on a guess)."""
from __future__ import annotations

import pytest
from moecheck.properties.case import Case
from moecheck.reference.errors import MoecheckError

BAD = [  # (case JSON, what the one-line error must say)
    ('{"tokens": true}', 'case field tokens must be an integer, got true'),
    ('{"tokens": 1.0}', 'case field tokens must be an integer, got 1.0'),
    ('{"tokens": null}', 'case field tokens must be an integer, got null'),
    ('{"tokens": -1}', 'case field tokens must be an integer >= 0, got -1'),
    ('{"seed": "abc"}', 'case field seed must be an integer, got "abc"'),
    ('{"seed": -1}', 'case field seed must be an integer >= 0, got -1'),
    ('{"renormalize": "no"}', 'case field renormalize must be true or false, got "no"'),
    ('{"bias": 1}', 'case field bias must be true or false, got 1'),
    ('{"lora_adapters": -1}', 'case field lora_adapters must be an integer >= 0, got -1'),
    ('{"top_k": 5}', 'case field top_k must be an integer in [1, experts=4], got 5'),
    ('{"ep_remote": 4}', 'case field ep_remote must be an integer in [0, experts=4), got 4'),
    ('{"routed_scaling": NaN}', 'case field routed_scaling must be a finite number > 0, got NaN'),
    ('{"routed_scaling": true}', 'case field routed_scaling must be a number, got true'),
    ('{"property": "nosuch"}', 'case field property must be one of "matches_reference", '),
    ('{"format": "bf61"}', 'got "bf61" (did you mean bf16'),
    ('{"activation": "silu2"}', 'case field activation must be one of "silu"'),
    ('{"router": "x"}', 'case field router must be one of "", "softmax_topk"'),
    ('{"gen": 3}', "case field gen must be 1 (torch's CPU generator) or 2 (moecheck's stream), got 3"),
    ('{"tokenz": 1}', "unknown case field 'tokenz' (did you mean tokens?); known: backend, format"),
    ('[1]', "case JSON must be an object, got list"),
    ('{"tokens": ', "case is not valid JSON: Expecting value at line 1 column 12"),
]


@pytest.mark.parametrize("text, says", BAD, ids=[t for t, _ in BAD])
def test_bad_case_json_is_one_line(text, says):
    with pytest.raises(MoecheckError) as info:
        Case.from_json(text)
    msg = str(info.value)
    assert says in msg and "\n" not in msg, msg


def test_every_field_round_trips():
    c = Case(router="deepseek_v3", n_group=2, topk_group=1, experts=8, routed_scaling=2.5, bias=True, lora_adapters=2)
    assert Case.from_json(c.to_json()) == c
    assert Case.from_json('{"routed_scaling": 2}').routed_scaling == 2  # an integer is a number
