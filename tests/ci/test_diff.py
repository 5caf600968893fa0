"""Run diffs: keyed by (backend, format, property), new failures listed first."""
from __future__ import annotations

import math

from moecheck.ci.results.diff import by_key, diff_cases
from moecheck.tests.ci.factories import FIXED, NEW_FAILURES, case, populated_store


def test_sections_put_new_failures_first():
    prev = [case("a", "f", "fixed", "fail", 2.0), case("a", "f", "broke", "pass", 0.1),
            case("a", "f", "stuck", "fail", 3.0), case("a", "f", "gone", "fail", 4.0),
            case("a", "f", "skipped", "error")]
    cur = [case("a", "f", "fixed", "pass", 0.1), case("a", "f", "broke", "fail", 5.0),
           case("a", "f", "stuck", "fail", 3.5), case("a", "f", "skipped", "skip"),
           case("a", "f", "added_bad", "error"), case("a", "f", "added_ok", "pass")]
    d = diff_cases("p", prev, "c", cur)
    titles = [title for title, _ in d.sections()]
    assert titles[0] == "new failures" and titles[1] == "fixed"
    assert [c.key[2] for c in d.new_failures] == ["added_bad", "broke"]
    assert d.new_failures[0].prev is None  # a case failing on its first appearance is a new failure
    assert [c.key[2] for c in d.fixed] == ["fixed"]
    assert [c.key[2] for c in d.not_rerun] == ["gone", "skipped"]
    assert [c.key[2] for c in d.still_failing] == ["stuck"]
    assert [c.key[2] for c in d.new_cases] == ["added_ok"]


def test_worst_example_stands_for_its_key():
    examples = [case("a", "f", "p", "pass", 0.2, shape="T=1"), case("a", "f", "p", "fail", 2.0, shape="T=2"),
                case("a", "f", "p", "fail", math.nan, shape="T=3"), case("a", "f", "p", "fail", 9.0, shape="T=4")]
    assert by_key(examples)[("a", "f", "p")].shape == "T=3"  # NaN is worse than any finite error


def test_first_run_has_no_previous():
    d = diff_cases(None, [], "c", [case("a", "f", "p", "fail", 2.0), case("a", "f", "q", "pass")])
    assert [c.key for c in d.new_failures] == [("a", "f", "p")] and len(d.new_cases) == 1


def test_store_diff_between_nights(tmp_path):
    store, ids = populated_store(tmp_path / "s.sqlite")
    d = store.diff(ids[-2], ids[-1])
    assert [c.key for c in d.new_failures] == NEW_FAILURES
    assert [c.key for c in d.fixed] == FIXED
    assert d.still_failing == [] and [c.key for c in d.new_cases] == [("vllm", "mxfp4", "matches_reference")]
