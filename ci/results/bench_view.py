"""The dashboard's benchmark section: one row per (backend, format, property, device) with its latest
examples/s, the change from the run before, and a small inline SVG trend over the runs that hold
benchmark rows (any profile: a benchmark is a timing, not a verdict; the device keeps CPU and GPU
apart). The GEMM row shows the reference / torch._grouped_mm time ratio instead.

No slowdown is flagged: run-to-run noise of examples/s is not measured yet, and a threshold without
that data would be a guess. The change column and the trend are there to read.
"""
from __future__ import annotations

import math
from html import escape

from moecheck.ci.results.schema import GEMM_RATIO, BenchRecord, RunRecord
from moecheck.ci.results.store import ResultStore

SPARK_W, SPARK_H, SPARK_PAD = 120, 28, 3  # px: a trend beside a table row, not a plot to read values from


def sparkline(values: list[float | None], tips: list[str]) -> str:
    """One polyline over the run positions (a run without this row is left out, the line joins its neighbours); a
    point's tooltip names its run."""
    pts = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if not pts:
        return ""
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    n = len(values)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = SPARK_PAD + (SPARK_W - 2 * SPARK_PAD) * (i / (n - 1) if n > 1 else 0.5)
        t = (v - lo) / (hi - lo) if hi > lo else 0.5
        return x, SPARK_PAD + (SPARK_H - 2 * SPARK_PAD) * (1 - t)

    coords = [xy(i, v) for i, v in pts]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="#0969da"><title>{escape(f"{v:.4g} ({tips[i]})")}'
                   f"</title></circle>" for (x, y), (i, v) in zip(coords, pts))
    return (f'<svg class="spark" width="{SPARK_W}" height="{SPARK_H}" viewBox="0 0 {SPARK_W} {SPARK_H}" role="img" '
            f'aria-label="trend"><polyline fill="none" stroke="#0969da" stroke-width="1.5" points="{line}"/>{dots}</svg>')


def _change(values: list[float | None]) -> str:
    have = [v for v in values if v is not None]
    if len(have) < 2 or not have[-2]:
        return "-"
    return f"{(have[-1] / have[-2] - 1) * 100:+.0f}%"


def _tip(r: RunRecord) -> str:
    return f"run {r.run_id[:8]} {r.started_at[:16].replace('T', ' ')} UTC {(r.revision or '')[:12]}".rstrip()


def bench_section(store: ResultStore, max_runs: int) -> str:
    runs = store.bench_runs(max_runs)[::-1]  # oldest first
    if not runs:
        return "<p>No benchmark numbers yet (<code>moecheck bench --store</code>).</p>"
    per_run: list[dict[tuple, BenchRecord]] = [{(b.backend, b.format, b.property, b.device): b
                                                for b in store.bench(r.run_id)} for r in runs]
    keys = sorted({k for rows in per_run for k in rows}, key=lambda k: (k[2] != GEMM_RATIO, k))
    tips = [_tip(r) for r in runs]
    head = "".join(f"<th>{h}</th>" for h in ("backend", "format", "property", "device", "latest", "unit",
                                              "vs previous", f"trend ({len(runs)} runs)"))
    body = []
    for key in keys:
        values = [rows[key].value if key in rows else None for rows in per_run]
        latest = next((v for v in reversed(values) if v is not None), None)
        unit = "reference / grouped_mm time" if key[2] == GEMM_RATIO else "examples/s"
        cells = "".join(f"<td>{escape(k)}</td>" for k in key)
        body.append(f'<tr data-key="{escape(" / ".join(key))}">{cells}<td>{"-" if latest is None else f"{latest:.4g}"}</td>'
                    f"<td>{unit}</td><td>{_change(values)}</td><td>{sparkline(values, tips)}</td></tr>")
    return f'<table class="bench"><tr>{head}</tr>{"".join(body)}</table>'
