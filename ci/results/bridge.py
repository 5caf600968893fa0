"""From `moecheck run` report rows (results.jsonl) to results-store records.

One row per (backend, format, property) test: its verdict, the worst normalized error over the
examples that ran, the shape of the worst case and the one command that reproduces it. The run is
started in the store before the suite, so a killed suite leaves a run that readers report as
interrupted rather than no trace at all.
"""
from __future__ import annotations

import json
import os

from moecheck.ci.results.schema import RUN_ID_ENV, CaseRecord
from moecheck.ci.results.store import ResultStore

OUTCOME_VERDICT = {"passed": "pass", "failed": "fail", "skipped": "skip", "error": "error", "refused": "refused",
                   "crashed": "crashed"}
SHAPE_KEYS = (("T", "tokens"), ("H", "hidden"), ("I", "inter"), ("E", "experts"), ("k", "top_k"))  # Case fields


def shape_of(case: dict) -> str:
    return " ".join(f"{label}={case[key]}" for label, key in SHAPE_KEYS if key in case)


def case_record(row: dict) -> CaseRecord:
    """A report row as a CaseRecord; an unknown outcome (collection error) is an 'error' verdict."""
    worst = json.loads(row["worst_case"]) if row.get("worst_case") else {}
    repro = row.get("repro") or (f"pytest '{row['nodeid']}'" if row.get("nodeid") else "")
    return CaseRecord(
        backend=str(row.get("backend", "unknown")), format=str(row.get("format", "unknown")),
        property=str(row.get("property", "unknown")), shape=shape_of(worst),
        verdict=OUTCOME_VERDICT.get(row.get("outcome", ""), "error"), max_norm_err=row.get("max_norm_err"),
        rms_err=row.get("rms_norm_err"), where=None if row.get("where") is None else str(tuple(row["where"])),
        bias=row.get("bias"), bound=row.get("bound"),
        duration_s=float(row.get("duration_s") or 0.0), repro=repro, message=str(row.get("message", "")),
        case_json=row.get("worst_case"),
    )


def start_run(store: str, command: str, profile: str = "") -> str:
    """A new run; its id is $MOECHECK_RUN_ID when set (`moecheck run --run-id`, shared by shards), else fresh."""
    with ResultStore(store) as s:
        return s.start_run(command=command, profile=profile, run_id=os.environ.get(RUN_ID_ENV, ""))


def finish_run(store: str, run_id: str, rows: list[dict], interrupted: bool = False) -> int:
    """Append the rows and close the run; returns how many rows were stored."""
    with ResultStore(store) as s:
        n = s.add_cases(run_id, [case_record(r) for r in rows])
        s.finish_run(run_id, "interrupted" if interrupted else "finished")
    return n


def close_run(store: str, run_id: str, interrupted: bool = False) -> None:
    """Close a run whose rows were committed one by one as its tests ended (ci/store_plugin.py)."""
    with ResultStore(store) as s:
        s.finish_run(run_id, "interrupted" if interrupted else "finished")
