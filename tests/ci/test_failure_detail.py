"""A failure on the dashboard is one case (the one its repro replays) with its own numbers; schema v1 -> v2;
trend points told apart by date, time and run id; pytest's error text, never its location line."""
from __future__ import annotations

import re
import sqlite3
from types import SimpleNamespace

from moecheck.ci.results import bridge
from moecheck.ci.results.dashboard import render_dashboard
from moecheck.ci.results.schema import MIGRATIONS, SCHEMA_VERSION
from moecheck.ci.results.store import ResultStore
from moecheck.properties.pytest_plugin import _message
from moecheck.tests.ci.factories import case, run_record

NOW = dict(err=6.17, rms_err=1.0, bias=-0.5, bound=0.0057, where="(1, 0)",
           message="AssertionError: MAX max normalized error 6.17 at (1, 0)", repro="moecheck repro NOW.json",
           case_json='{"seed": 1}')
BEFORE = dict(err=20.5, rms_err=3.0, where="(4, 9)", message="max normalized error 20.5", repro="moecheck repro BEFORE.json",
              case_json='{"seed": 2}')


def _two_runs(path, **now_over):
    store = ResultStore(path)
    for day, kw in (("2026-03-01T01:00:00.000+00:00", BEFORE), ("2026-03-01T13:30:00.000+00:00", {**NOW, **now_over})):
        rid = store.start_run(run_record(started_at=day))
        kw = dict(kw)
        store.add_cases(rid, [case("toy", "bf16", "matches_reference", "fail", kw.pop("err"), **kw)])
        store.finish_run(rid)
    return store


def _entry(html: str) -> str:
    changes = html[html.index('id="changes"'):html.index('id="e2e"')]
    (entry,) = re.findall(r'<div class="change[^"]*" data-kind="still failing">.*?</div></div>', changes)
    return entry


def test_a_failure_shows_one_case_with_its_own_numbers(tmp_path):
    store = _two_runs(tmp_path / "s.sqlite")
    entry = _entry(render_dashboard(store, tmp_path / "d.html").read_text(encoding="utf-8"))
    assert entry.count('class="repro"') == 1 and "NOW.json" in entry and "BEFORE.json" not in entry
    numbers = re.search(r'<div class="numbers">(.*?)</div>', entry).group(1)
    for text in ("max normalized error 6.17", "rms 1", "bias -0.5", "at <code>(1, 0)</code>", "bound 0.0057"):
        assert text in numbers, numbers
    assert "AssertionError: MAX max normalized error 6.17" in entry
    assert "(4, 9)" not in entry  # the earlier failure is one brief line, with none of its detail
    assert re.search(r'<div class="brief"><b>before</b> fail, run <code>\w+</code>, max normalized error 20.5</div>', entry)


def test_bias_and_bound_are_left_out_when_not_recorded(tmp_path):
    store = _two_runs(tmp_path / "s.sqlite", bias=None, bound=None)
    numbers = re.search(r'<div class="numbers">(.*?)</div>', _entry(render_dashboard(store, tmp_path / "d.html").read_text()))
    assert "bias" not in numbers.group(1) and "bound" not in numbers.group(1)


def test_report_rows_carry_bias_and_bound_into_the_store():
    row = {"backend": "toy", "format": "bf16", "property": "matches_reference", "outcome": "failed",
           "max_norm_err": 6.17, "rms_norm_err": 1.0, "bias": -0.5, "bound": 0.0057, "where": [1, 0]}
    r = bridge.case_record(row)
    assert (r.max_norm_err, r.rms_err, r.bias, r.bound, r.where) == (6.17, 1.0, -0.5, 0.0057, "(1, 0)")


def test_trend_points_carry_date_time_and_run_id(tmp_path):
    store = _two_runs(tmp_path / "s.sqlite")
    html = render_dashboard(store, tmp_path / "d.html").read_text(encoding="utf-8")
    trends = html[html.index('id="trends"'):html.index('id="history"')]
    ids = [r.run_id[:8] for r in store.runs()]
    for hhmm, rid in (("01:00", ids[1]), ("13:30", ids[0])):  # two runs of one day, told apart
        assert f">03-01 {hhmm}</tspan>" in trends and f">{rid}</tspan>" in trends
        assert re.search(rf"<title>toy / bf16: [\d.]+ \(run {rid} 2026-03-01 {hhmm}:00 UTC", trends)


def test_a_v1_store_is_migrated_and_keeps_its_cases(tmp_path):
    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    for sql in MIGRATIONS[0]:
        conn.execute(sql)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute("INSERT INTO runs VALUES ('r1', '2026-01-01T00:00:00+00:00', '2026-01-01T01:00:00+00:00', NULL, '{}', "
                 "NULL, NULL, 'h', 'nightly', 'moecheck run', 'finished', 1, '2026-01-01T01:00:00+00:00')")
    conn.execute("INSERT INTO cases (run_id, backend, format, property, shape, verdict, max_norm_err, rms_err, location, "
                 "duration_s, repro, message) VALUES ('r1', 'b', 'f', 'p', '', 'fail', 3.0, 1.0, '(0, 1)', 0.5, 'x', 'm')")
    conn.commit()
    conn.close()
    with ResultStore(path) as store:
        (old,) = store.cases("r1")
        assert (old.max_norm_err, old.where, old.bias, old.bound) == (3.0, "(0, 1)", None, None)
        rid = store.start_run(run_record())
        store.add_cases(rid, [case("b", "f", "p", "fail", 2.0, bias=0.25, bound=0.5)])
        (new,) = store.cases(rid)
        assert (new.bias, new.bound) == (0.25, 0.5)
    assert sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_error_text_is_the_exception_not_the_location_line():
    text = ("    def test_x():\n>       check()\n\nE   ValueError: hidden 36 not a multiple of 8\nE   second line\n\n"
            "test_properties.py:91: ValueError")
    report = SimpleNamespace(longrepr=text, skipped=False)
    assert _message(report) == "ValueError: hidden 36 not a multiple of 8 | second line"
