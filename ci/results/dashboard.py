"""render_dashboard: one static, self-contained HTML page from a results store.

Works offline and from file://: inline CSS and SVG only, no scripts, fonts or external URLs. Every
string from the store goes through html.escape. Scope: the runs of one Hypothesis profile (the
latest run's unless given), so a quick dev run never reads as a regression against a nightly one.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections import Counter
from html import escape
from pathlib import Path

from moecheck.ci.results.bench_view import bench_section
from moecheck.ci.results.diff import Change, RunDiff, by_key
from moecheck.ci.results.schema import FAILING, CaseRecord, RunRecord
from moecheck.ci.results.store import ResultStore
from moecheck.ci.results.svg import LinePlot, render

# cell class -> background; tests read these to find the colors in a screenshot
CELL_COLORS = {"pass": "#1a7f37", "fail": "#cf222e", "skip": "#8c959f", "none": "#f6f8fa"}
CELL_SIZE = (140, 48)  # minimum px of a grid cell: big enough to read at a glance
MAX_CASE_JSON = 20_000  # larger case files are left out of the page; the repro command still names them

CSS = f"""
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1f2328; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 18px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #d0d7de; padding: 6px 10px; text-align: left; }}
.grid td.cell {{ min-width: {CELL_SIZE[0]}px; height: {CELL_SIZE[1]}px; color: #fff; vertical-align: top; }}
.grid td.pass {{ background: {CELL_COLORS['pass']}; }} .grid td.fail {{ background: {CELL_COLORS['fail']}; }}
.grid td.skip {{ background: {CELL_COLORS['skip']}; }}
.grid td.none {{ background: {CELL_COLORS['none']}; color: #57606a; }}
.grid ul {{ margin: 4px 0 0; padding-left: 16px; }}
.meta td:first-child {{ font-weight: 600; }}
.change {{ border-left: 4px solid #d0d7de; padding: 4px 10px; margin: 8px 0; }}
.change.bad {{ border-color: {CELL_COLORS['fail']}; }} .change.good {{ border-color: {CELL_COLORS['pass']}; }}
pre {{ background: #f6f8fa; padding: 6px 8px; overflow-x: auto; margin: 4px 0; }}
code.repro {{ user-select: all; }}  /* one click selects the whole command */
.status-interrupted, .status-running {{ color: #9a6700; font-weight: 600; }}
.plot {{ display: inline-block; margin: 0 16px 16px 0; vertical-align: top; }}
.plot figcaption {{ font-weight: 600; }} .tick {{ font-size: 11px; fill: #57606a; }}
.legend {{ list-style: none; padding: 0; margin: 4px 0; max-width: 640px; }}
.legend li {{ display: inline-block; margin-right: 12px; font-size: 12px; }}
.bench td {{ vertical-align: middle; }} .spark {{ display: block; }}
.swatch {{ display: inline-block; width: 10px; height: 10px; margin-right: 4px; }}
"""


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return "NaN" if math.isnan(v) else f"{v:.4g}"


def _cell_class(counts: Counter) -> str:
    if counts["fail"] or counts["error"]:
        return "fail"
    return "pass" if counts["pass"] else ("skip" if counts["skip"] else "none")


def status_grid(cases: list[CaseRecord]) -> str:
    backends = sorted({c.backend for c in cases})
    formats = sorted({c.format for c in cases})
    counts: dict[tuple[str, str], Counter] = {}
    failing: dict[tuple[str, str], set[str]] = {}
    for c in cases:
        counts.setdefault((c.backend, c.format), Counter())[c.verdict] += 1
        if c.verdict in FAILING:
            failing.setdefault((c.backend, c.format), set()).add(c.property)
    head = "".join(f"<th>{escape(f)}</th>" for f in formats)
    rows = []
    for b in backends:
        cells = []
        for f in formats:
            n = counts.get((b, f), Counter())
            text = " · ".join(f"{n[v]} {v}" for v in ("pass", "fail", "error", "skip") if n[v]) or "not run"
            props = "".join(f"<li>{escape(p)}</li>" for p in sorted(failing.get((b, f), ())))
            cells.append(f'<td class="cell {_cell_class(n)}" data-backend="{escape(b)}" data-format="{escape(f)}">'
                         f'{text}{f"<ul>{props}</ul>" if props else ""}</td>')
        rows.append(f"<tr><th>{escape(b)}</th>{''.join(cells)}</tr>")
    if not rows:
        return "<p>No cases recorded in this run.</p>"
    return f'<table class="grid"><tr><th>backend \\ format</th>{head}</tr>{"".join(rows)}</table>'


def _numbers(c: CaseRecord) -> list[str]:
    """The case's own numbers: max and rms normalized error, bias, where, and the bound there."""
    return [f"max normalized error {_fmt(c.max_norm_err)}" if c.max_norm_err is not None else "",
            f"rms {_fmt(c.rms_err)}" if c.rms_err is not None else "",
            f"bias {_fmt(c.bias)}" if c.bias is not None else "",
            f"at <code>{escape(c.where)}</code>" if c.where else "",
            f"bound {_fmt(c.bound)}" if c.bound is not None else ""]


def _case_detail(c: CaseRecord, label: str) -> str:
    """One case in full: the one its repro command replays, with that case's numbers and error text."""
    parts = [f"<b>{escape(label)}</b> {escape(c.verdict)}",
             f"shape <code>{escape(c.shape)}</code>" if c.shape else "", *_numbers(c)]
    html = '<div class="numbers">' + ", ".join(p for p in parts if p) + "</div>"
    if c.message:
        html += f'<div class="message">{escape(c.message)}</div>'
    if c.repro:
        html += f'<pre><code class="repro">{escape(c.repro)}</code></pre>'
    if c.case_json and len(c.case_json) <= MAX_CASE_JSON:
        html += f"<details><summary>case JSON</summary><pre><code>{escape(c.case_json)}</code></pre></details>"
    return html


def _brief(c: CaseRecord, label: str) -> str:
    """The other side of a change in one line: no repro, so an entry never shows two cases to replay."""
    parts = [f"<b>{escape(label)}</b> {escape(c.verdict)}", f"run <code>{escape(c.run_id[:8])}</code>" if c.run_id else "",
             f"max normalized error {_fmt(c.max_norm_err)}" if c.max_norm_err is not None else ""]
    return '<div class="brief">' + ", ".join(p for p in parts if p) + "</div>"


def _change(kind: str, ch: Change) -> str:
    tone = "bad" if kind in ("new failures", "still failing") else ("good" if kind == "fixed" else "")
    # in full: the failing case (now, else the one that failed before); the other side briefly
    full, other = ((ch.cur, ch.prev) if ch.cur is not None and (ch.cur.verdict in FAILING or ch.prev is None)
                   else (ch.prev, ch.cur))
    labels = {id(ch.cur): "now", id(ch.prev): "before"}
    body = _case_detail(full, labels[id(full)]) + (_brief(other, labels[id(other)]) if other is not None else "")
    return (f'<div class="change {tone}" data-kind="{escape(kind)}"><b>{escape(" / ".join(ch.key))}</b>'
            f"{body}</div>")


def changes_section(d: RunDiff) -> str:
    against = f"run <code>{escape(d.prev_run_id)}</code>" if d.prev_run_id else "nothing (first run of this profile)"
    out = [f"<p>Compared with {against}.</p>"]
    for title, changes in d.sections():
        if not changes:
            continue
        out.append(f'<h3>{escape(title)} ({len(changes)})</h3>')
        if title == "new cases":  # passing additions need no detail, just their names
            out.append("<ul>" + "".join(f"<li>{escape(' / '.join(c.key))}</li>" for c in changes) + "</ul>")
        else:
            out.extend(_change(title, c) for c in changes)
    if len(out) == 1:
        out.append("<p>No changes.</p>")
    return "".join(out)


def _x_axis(runs: list[RunRecord]) -> tuple[list[str], list[str]]:
    """Label per run: date and time (UTC, several runs a day are told apart) over the run id."""
    labels = [f"{r.started_at[5:10]} {r.started_at[11:16]}\n{r.run_id[:8]}" for r in runs]
    tips = [f"run {r.run_id[:8]} {r.started_at[:19].replace('T', ' ')} UTC {(r.revision or '')[:12]}".rstrip() for r in runs]
    return labels, tips


def trend_plots(store: ResultStore, runs: list[RunRecord]) -> str:
    labels, tips = _x_axis(runs)
    errors = [store.worst_errors(r.run_id) for r in runs]
    err_plot = LinePlot("worst max_norm_err per backend / format (1 = bound)", labels, tips, log_y=True, ref_y=1.0,
                        y_label="|backend - ref| / bound")
    for key in sorted({k for e in errors for k in e}):
        err_plot.series[" / ".join(key)] = [e.get(key) for e in errors]
    acc_plot = LinePlot("E2E accuracy (gsm8k) per model / backend / format", labels, tips, y_label="accuracy")
    per_run = [{(e.model, e.backend, e.format): e.accuracy for e in store.e2e(r.run_id)} for r in runs]
    for key in sorted({k for acc in per_run for k in acc}):
        acc_plot.series[" / ".join(key)] = [acc.get(key) for acc in per_run]
    figures = [render(p) for p in (err_plot, acc_plot) if p.series]
    return "".join(figures) or "<p>No numeric results yet.</p>"


def e2e_table(store: ResultStore, run: RunRecord) -> str:
    rows = store.e2e(run.run_id)
    if not rows:
        return "<p>No E2E gates in this run.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("model", "format", "backend", "accuracy", "n", "verdict", "note"))
    head = f"<tr>{head}</tr>"
    body = "".join(
        f'<tr class="{escape(e.verdict)}"><td>{escape(e.model)}</td><td>{escape(e.format)}</td>'
        f"<td>{escape(e.backend)}</td><td>{_fmt(e.accuracy)}</td><td>{e.n_questions}</td>"
        f"<td>{escape(e.verdict)}</td><td>{escape(e.message)}</td></tr>" for e in rows)
    return f"<table>{head}{body}</table>"


def run_meta(run: RunRecord) -> str:
    items = [("run", run.run_id), ("status", run.status), ("started", run.started_at),
             ("finished", run.finished_at or "-"), ("revision", run.revision or "-"), ("profile", run.profile),
             ("GPU", run.gpu_name or "-"), ("driver", run.driver or "-"), ("host", run.hostname),
             ("command", run.command),
             ("versions", ", ".join(f"{k} {v}" for k, v in sorted(run.versions.items())))]
    rows = "".join(f'<tr><td>{escape(k)}</td><td class="{"status-" + escape(v) if k == "status" else ""}">'
                   f"{escape(v)}</td></tr>" for k, v in items)
    return f'<table class="meta">{rows}</table>'


def history_table(store: ResultStore, runs: list[RunRecord]) -> str:
    head = "<tr><th>started</th><th>run</th><th>status</th><th>revision</th><th>pass</th><th>fail</th>" \
           "<th>error</th><th>skip</th></tr>"
    body = []
    for r in runs:
        n = store.counts(r.run_id)
        body.append(f"<tr><td>{escape(r.started_at)}</td><td><code>{escape(r.run_id[:8])}</code></td>"
                    f'<td class="status-{escape(r.status)}">{escape(r.status)}</td>'
                    f"<td><code>{escape((r.revision or '-')[:12])}</code></td>"
                    + "".join(f"<td>{n.get(v, 0)}</td>" for v in ("pass", "fail", "error", "skip")) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def dashboard_html(store: ResultStore, *, profile: str | None = None, max_runs: int = 30) -> str:
    latest = store.latest_runs(1, profile)
    if not latest:
        body = "<h1>moecheck</h1><p>No runs recorded in this store yet.</p>"
        return _page(body)
    run = latest[0]
    runs = store.latest_runs(max_runs, run.profile)  # newest first
    prev = store.previous_run(run.run_id)
    cases = store.cases(run.run_id)
    failing = [c for c in by_key(cases).values() if c.verdict in FAILING]
    body = (f"<h1>moecheck: {escape(run.profile or 'default profile')}</h1>{run_meta(run)}"
            f'<section id="status"><h2>Latest status ({len(failing)} failing)</h2>{status_grid(cases)}</section>'
            f'<section id="changes"><h2>Changed since previous run</h2>'
            f"{changes_section(store.diff(prev.run_id if prev else None, run.run_id))}</section>"
            f'<section id="e2e"><h2>E2E gates</h2>{e2e_table(store, run)}</section>'
            f'<section id="trends"><h2>Trends over the last {len(runs)} runs</h2>'
            f"{trend_plots(store, runs[::-1])}</section>"
            f'<section id="bench"><h2>Benchmarks</h2>{bench_section(store, max_runs)}</section>'
            f'<section id="history"><h2>Runs</h2>{history_table(store, runs)}</section>')
    return _page(body)


def _page(body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>moecheck dashboard</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


def render_dashboard(store: ResultStore, out_path: str | os.PathLike, *, profile: str | None = None,
                     max_runs: int = 30) -> Path:
    """Write the dashboard to out_path (atomically: a web server may be serving the old one)."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    html = dashboard_html(store, profile=profile, max_runs=max_runs)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(html)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the page from a web server user
    os.replace(tmp, out)
    return out
