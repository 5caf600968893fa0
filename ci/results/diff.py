"""What changed between two runs, per (backend, format, property).

Hypothesis draws different shapes every run, so a case's identity across runs is its key without
the shape; a key fails in a run if any of its examples failed (or errored), and the worst failing
example (largest max_norm_err) stands for it, with its repro command.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from moecheck.ci.results.schema import FAILING, CaseRecord

Key = tuple[str, str, str]


def _badness(c: CaseRecord) -> float:
    err = c.max_norm_err
    if err is None:
        return -math.inf
    return math.inf if math.isnan(err) else err  # NaN output is the worst possible result


def representative(cases: list[CaseRecord]) -> CaseRecord:
    """The case that stands for a key: worst failure, else first pass, else first skip."""
    failing = [c for c in cases if c.verdict in FAILING]
    if failing:
        return max(failing, key=_badness)
    for verdict in ("pass", "skip"):
        for c in cases:
            if c.verdict == verdict:
                return c
    return cases[0]


def by_key(cases: list[CaseRecord]) -> dict[Key, CaseRecord]:
    groups: dict[Key, list[CaseRecord]] = {}
    for c in cases:
        groups.setdefault(c.key, []).append(c)
    return {k: representative(v) for k, v in sorted(groups.items())}


@dataclass(frozen=True)
class Change:
    key: Key
    prev: CaseRecord | None  # None: the key was not run in the previous run
    cur: CaseRecord | None  # None: the key was not run in the current run


@dataclass(frozen=True)
class RunDiff:
    prev_run_id: str | None
    cur_run_id: str
    new_failures: list[Change]  # failing now, not failing before (including keys new in this run)
    fixed: list[Change]  # failing before, passing now
    not_rerun: list[Change]  # failing before, skipped or absent now: not known to be fixed
    still_failing: list[Change]
    new_cases: list[Change]  # keys absent before and not failing now

    def sections(self) -> list[tuple[str, list[Change]]]:
        """Titled sections in reading order: what needs attention first."""
        return [
            ("new failures", self.new_failures), ("fixed", self.fixed),
            ("failing before, not re-run", self.not_rerun), ("still failing", self.still_failing),
            ("new cases", self.new_cases),
        ]


def diff_cases(prev_run_id: str | None, prev: list[CaseRecord], cur_run_id: str, cur: list[CaseRecord]) -> RunDiff:
    p, c = by_key(prev), by_key(cur)
    out: dict[str, list[Change]] = {name: [] for name in ("new", "fixed", "not_rerun", "still", "added")}
    for key in sorted(set(p) | set(c)):
        before, now = p.get(key), c.get(key)
        was_bad = before is not None and before.verdict in FAILING
        is_bad = now is not None and now.verdict in FAILING
        change = Change(key, before, now)
        if is_bad:
            out["still" if was_bad else "new"].append(change)
        elif was_bad:
            out["fixed" if now is not None and now.verdict == "pass" else "not_rerun"].append(change)
        elif before is None:
            out["added"].append(change)
    return RunDiff(prev_run_id, cur_run_id, out["new"], out["fixed"], out["not_rerun"], out["still"], out["added"])
