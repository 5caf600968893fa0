"""The static dashboard: content, ordering, escaping, and nothing fetched from the network."""
from __future__ import annotations

import re
from html import escape

from moecheck.ci.results.dashboard import render_dashboard
from moecheck.ci.results.store import ResultStore
from moecheck.tests.ci.factories import (
    FIXED,
    HOSTILE,
    NEW_FAILURES,
    NIGHTS,
    populated_store,
)

EXTERNAL = re.compile(r"""(?:src|href|xlink:href|action|poster|data)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:|//)""", re.I)


def render(tmp_path) -> str:
    store, _ = populated_store(tmp_path / "s.sqlite")
    out = render_dashboard(store, tmp_path / "out" / "dash.html")
    return out.read_text(encoding="utf-8")


def test_grid_counts_and_failing_properties(tmp_path):
    html = render(tmp_path)
    cell = re.search(r'<td class="cell fail" data-backend="flashinfer" data-format="nvfp4">(.*?)</td>', html).group(1)
    assert "1 pass" in cell and "1 fail" in cell and "<li>matches_reference</li>" in cell
    assert '<td class="cell pass" data-backend="flashinfer" data-format="fp8">1 pass</td>' in html
    assert 'class="cell skip" data-backend="vllm" data-format="mxfp4"' in html
    assert 'class="cell none" data-backend="vllm" data-format="fp8"' in html


def test_new_failures_come_first_with_repro(tmp_path):
    html = render(tmp_path)
    changes = html[html.index('id="changes"'):html.index('id="e2e"')]
    kinds = re.findall(r'data-kind="([^"]+)"', changes)
    assert kinds == ["new failures"] * len(NEW_FAILURES) + ["fixed"] * len(FIXED)
    first_fixed = changes.index('data-kind="fixed"')
    for backend, fmt, prop in NEW_FAILURES:
        repro = f'<code class="repro">moecheck repro {backend}-{fmt}-{prop}.json</code>'
        assert changes.index(repro) < first_fixed
    assert "vllm / mxfp4 / matches_reference" in changes  # listed as a new case
    assert "expert 3, row 5, col 17" in changes


def test_strings_are_escaped(tmp_path):
    html = render(tmp_path)
    assert HOSTILE not in html and escape(HOSTILE) in html
    assert "<script" not in html


def test_self_contained(tmp_path):
    html = render(tmp_path)
    assert not EXTERNAL.search(html)
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "@import" not in html and "url(" not in html


def test_trends_are_inline_svg(tmp_path):
    html = render(tmp_path)
    trends = html[html.index('id="trends"'):html.index('id="history"')]
    assert trends.count("<svg") == 2 and "<img" not in trends
    assert "flashinfer / nvfp4" in trends and "qwen3-30b-a3b / flashinfer / nvfp4" in trends
    # one point per nightly run for the always-present series; the dev run is another profile
    assert trends.count("flashinfer / fp8: ") == len(NIGHTS)
    assert "triton / fp8: inf" in trends  # non-finite errors are drawn, not dropped


def test_empty_store_renders(tmp_path):
    out = render_dashboard(ResultStore(tmp_path / "s.sqlite"), tmp_path / "d.html")
    assert "No runs recorded" in out.read_text(encoding="utf-8")


def test_interrupted_run_is_flagged(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    rid = store.start_run(profile="x", command="test")
    store.finish_run(rid, "interrupted")
    html = render_dashboard(store, tmp_path / "d.html").read_text(encoding="utf-8")
    assert 'class="status-interrupted">interrupted' in html
