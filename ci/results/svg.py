"""Inline SVG line plots for the dashboard: no plotting library, no scripts, no external fonts.

A plot is a record (LinePlot) of named series over shared x positions (runs); render() returns one
<figure> with the SVG and an HTML legend. Non-finite values (NaN/inf errors) are drawn on the top
edge as crosses, since "the kernel produced NaN" must stay visible on a log axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

# no pure green/red: those mean pass/fail on the page (and tests look for them in screenshots)
PALETTE = ("#0969da", "#bc4c00", "#8250df", "#1b7c83", "#bf3989", "#4d2d00", "#6e7781", "#953800", "#0550ae",
           "#7d4e00")
WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 28, 12, 36  # margins around the plot area
MAX_X_LABELS = 6  # "MM-DD HH:MM" labels are ~70 px wide: at most this many on the axis
LOG_FLOOR = 1e-4  # errors below this fraction of the bound are drawn on the floor of a log axis


@dataclass
class LinePlot:
    title: str
    x_labels: list[str]  # one per x position (run), oldest first
    x_tooltips: list[str] = field(default_factory=list)
    series: dict[str, list[float | None]] = field(default_factory=dict)  # name -> value per x (None: absent)
    log_y: bool = False
    ref_y: float | None = None  # dashed reference line, e.g. the error bound at 1.0
    y_label: str = ""


def _y_range(p: LinePlot) -> tuple[float, float]:
    vals = [v for s in p.series.values() for v in s if v is not None and math.isfinite(v)]
    if p.ref_y is not None:
        vals.append(p.ref_y)
    if p.log_y:
        vals = [max(v, LOG_FLOOR) for v in vals] or [LOG_FLOOR, 1.0]
        # half a decade of headroom: the top edge is kept for non-finite values
        return math.floor(math.log10(min(vals)) - 0.25), math.ceil(math.log10(max(vals)) + 1e-9) + 0.5
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
    return lo - pad, hi + pad


def _ticks(p: LinePlot, lo: float, hi: float) -> list[tuple[float, str]]:
    if p.log_y:
        step = max(1, math.ceil((hi - lo) / 6))
        decades = range(math.ceil(lo), math.floor(hi) + 1, step)
        return [(e, str(10 ** e) if e in (0, 1) else f"1e{e:d}") for e in decades]
    return [(lo + (hi - lo) * i / 4, f"{lo + (hi - lo) * i / 4:.3g}") for i in range(5)]


def render(p: LinePlot) -> str:
    lo, hi = _y_range(p)
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = len(p.x_labels)

    def x_of(i: int) -> float:
        return LEFT + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y_of(v: float) -> float:
        if not math.isfinite(v):
            return TOP
        t = math.log10(max(v, LOG_FLOOR)) if p.log_y else v
        return TOP + ph * (1 - (t - lo) / ((hi - lo) or 1.0))

    out = [f'<svg width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(p.title)}">',
           f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fff" stroke="#d0d7de"/>']
    for t, label in _ticks(p, lo, hi):
        y = TOP + ph * (1 - (t - lo) / ((hi - lo) or 1.0))
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>'
                   f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">{escape(label)}</text>')
    if any(v is not None and not math.isfinite(v) for s in p.series.values() for v in s):
        out.append(f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" class="tick">NaN/inf</text>')
    if p.ref_y is not None:
        y = y_of(p.ref_y)
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#cf222e" '
                   f'stroke-dasharray="4 3"/>')
    every = max(1, math.ceil(n / MAX_X_LABELS))
    for i, label in enumerate(p.x_labels):
        if (n - 1 - i) % every == 0:  # counted from the newest run, which is always labelled
            lines = "".join(f'<tspan x="{x_of(i):.1f}" dy="{0 if k == 0 else 12}">{escape(t)}</tspan>'
                            for k, t in enumerate(label.split("\n")))  # "\n" in a label: a second line
            out.append(f'<text x="{x_of(i):.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle" '
                       f'class="tick">{lines}</text>')
    if p.y_label:
        out.append(f'<text x="12" y="{TOP + ph / 2:.1f}" transform="rotate(-90 12 {TOP + ph / 2:.1f})" '
                   f'text-anchor="middle" class="tick">{escape(p.y_label)}</text>')
    for k, (name, values) in enumerate(p.series.items()):
        color = PALETTE[k % len(PALETTE)]
        segments, cur = [], []
        for i, v in enumerate(values):
            if v is None:
                segments, cur = segments + [cur] if cur else segments, []
            else:
                cur.append(f"{x_of(i):.1f},{y_of(v):.1f}")
        segments += [cur] if cur else []
        for seg in segments:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(seg)}"/>')
        for i, v in enumerate(values):
            if v is None:
                continue
            tip = escape(f"{name}: {v:.4g}" + (f" ({p.x_tooltips[i]})" if i < len(p.x_tooltips) else ""))
            x, y = x_of(i), y_of(v)
            if math.isfinite(v):
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"><title>{tip}</title></circle>')
            else:
                out.append(f'<path d="M{x - 4:.1f},{y - 4:.1f}l8,8m0,-8l-8,8" stroke="{color}" stroke-width="2">'
                           f'<title>{tip}</title></path>')
    out.append("</svg>")
    legend = "".join(f'<li><span class="swatch" style="background:{PALETTE[k % len(PALETTE)]}"></span>'
                     f'{escape(name)}</li>' for k, name in enumerate(p.series))
    return (f'<figure class="plot"><figcaption>{escape(p.title)}</figcaption>{"".join(out)}'
            f'<ul class="legend">{legend}</ul></figure>')
