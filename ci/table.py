"""The backend x format table of a run, from its results.jsonl rows, and what a reader of it needs next.

Columns count test items by outcome; below the table every failure and crash gets one line with
its message and the one command that reproduces it, so nothing needs the pytest log to triage.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

COLUMNS = (("pass", "passed"), ("fail", "failed"), ("crash", "crashed"), ("error", "error"),
           ("refused", "refused"), ("skip", "skipped"))
BAD = ("failed", "crashed", "error")
KEYS = ("backend", "format", "property", "outcome")  # a row without these (as strings) is unreadable


def read_rows(path: Path) -> tuple[list[dict], int]:
    """Rows of a results.jsonl and how many lines could not be read (a run killed mid-write)."""
    rows, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict) and all(isinstance(row.get(k), str) for k in KEYS):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def align(rows: list[tuple[str, ...]], gap: str = "  ") -> list[str]:
    """Rows as lines, each column but the last padded to its longest cell (a long name shifts the
    columns after it, never into them)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [gap.join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]).rstrip() for r in rows]


def _first(text: str, n: int = 160) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= n else line[: n - 3] + "..."


def render(rows: list[dict]) -> str:
    cells: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    notes: dict[tuple[str, str], str] = {}
    for r in rows:
        key = (r["backend"], r["format"])
        cells[key][r["outcome"]] += 1
    for key in cells:
        mine = [r for r in rows if (r["backend"], r["format"]) == key]
        bad = [f"{r['outcome'].upper()} {r['property']}" for r in mine if r["outcome"] in BAD]
        refused = [r["property"] for r in mine if r["outcome"] == "refused"]
        skips = [r for r in mine if r["outcome"] == "skipped"]
        if bad:
            notes[key] = ", ".join(bad)
        elif refused:
            notes[key] = "refused: " + ", ".join(refused)
        elif skips and not cells[key]["passed"]:
            notes[key] = _first(skips[0].get("message", ""), 90)
    worst = {key: _worst([r for r in rows if (r["backend"], r["format"]) == key]) for key in cells}
    wb = max([len("backend"), *(len(b) for b, _ in cells)])
    wf = max([len("format"), *(len(f) for _, f in cells)])
    head = (f"{'backend':{wb}s}  {'format':{wf}s}  " + " ".join(f"{c:>{max(4, len(c))}s}" for c, _ in COLUMNS)
            + f"  {'max':>6s} {'rms':>6s} {'bias':>7s}  note")
    lines = [head]
    for (b, f), c in sorted(cells.items()):
        nums = " ".join(f"{c[o]:>{max(4, len(name))}d}" for name, o in COLUMNS)
        lines.append(f"{b:{wb}s}  {f:{wf}s}  {nums}  {worst[(b, f)]}  {notes.get((b, f), '')}".rstrip())
    return "\n".join(lines)


# the closing table's columns: the numerics properties by name, every edge:* and pinned:* item in one column
_SHORT = {"matches_reference": "match", "padded_equals_unpadded": "padded", "permutation_equivariant": "perm",
          "deterministic": "det", "batch_invariant": "batch", "output_contract": "out", "kernel_ran": "ran"}
_MARK = {"passed": "P", "failed": "F", "crashed": "C", "error": "E", "refused": "R", "skipped": "-"}


def _column(prop: str) -> str:
    return prop.split(":", 1)[0] if ":" in prop else _SHORT.get(prop, prop)


def by_property(rows: list[dict]) -> str:
    """backend x format rows, one column per property: P20 (passed, 20 examples run), F3 (failed at the third),
    C/E/R/- (crashed, error, refused, skipped), . (not in the run); the edge and pinned columns count passed of run, each
    item that did not pass named after the row."""
    cols = sorted({_column(r["property"]) for r in rows if r["property"] != "-"},
                  key=lambda c: (c in ("edge", "pinned"), list(_SHORT.values()).index(c) if c in _SHORT.values() else 99, c))
    grid: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["property"] != "-":
            grid[(r["backend"], r["format"])][_column(r["property"])].append(r)
    out = [("backend", "format", *cols, "not passed")]
    for key in sorted(grid):
        cells, misses = [], []
        for c in cols:
            got = grid[key].get(c, [])
            if c in ("edge", "pinned"):
                ran = [r for r in got if r["outcome"] != "skipped"]
                cells.append(f"{sum(r['outcome'] == 'passed' for r in ran)}/{len(ran)}" if got else ".")
            else:
                cells.append("".join(f"{_MARK.get(r['outcome'], '?')}{r.get('examples_run') or ''}" for r in got) or ".")
            misses += [f"{r['outcome'].upper()} {r['property']}" for r in got if r["outcome"] in (*BAD, "refused")]
        out.append((*key, *cells, ", ".join(misses)))
    return "\n".join(align(out))


def _worst(rows: list[dict]) -> str:
    """The worst max and RMS normalized errors and the largest bias over a backend x format's tests."""
    def stat(key, fn):
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and r[key] == r[key]]
        return fn(vals) if vals else None

    mx, rms = stat("max_norm_err", max), stat("rms_norm_err", max)
    bias = stat("bias", lambda v: max(v, key=abs))
    f = lambda v, w, spec: f"{'-':>{w}s}" if v is None else f"{v:{spec}}"  # noqa: E731
    return f"{f(mx, 6, '6.3g')} {f(rms, 6, '6.3g')} {f(bias, 7, '+7.2g')}"


def findings(rows: list[dict]) -> str:
    """One block per failure or crash: what, the message, and the command that reproduces it."""
    out = []
    for r in rows:
        if r["outcome"] not in BAD:
            continue
        out.append(f"{r['outcome'].upper()} {r['backend']} {r['format']} {r['property']}: {_first(r.get('message'), 300)}")
        if r.get("repro"):
            out.append(f"  reproduce: {r['repro']}")
        elif r.get("nodeid"):
            out.append(f"  reproduce: pytest '{r['nodeid']}'")
        if r.get("case_file"):
            out.append(f"  case file: {r['case_file']}")
    return "\n".join(out)


def health(report: Path) -> str:
    path = report / "health.jsonl"
    if not path.is_file():
        return ""
    probes = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            probes.append(json.loads(line))
        except json.JSONDecodeError:  # a worker killed mid-write: that probe is lost, not the report
            continue
    probes = [p for p in probes if isinstance(p, dict)]
    bad = [p for p in probes if not p.get("ok")]
    return (f"device health after crashes: {len(probes) - len(bad)} of {len(probes)} probes ok"
            + "".join(f"\n  worker {p.get('worker')}: {p.get('why')}" for p in bad))
