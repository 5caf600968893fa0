"""The one table of exit codes every `moecheck` command speaks (README "Exit codes" mirrors it).

1 always means "a kernel was wrong" so CI and `git bisect` can trust it; the tool's own crashes
get 3, never 1.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    value: int
    name: str
    meaning: str


PASS = Code(0, "pass", "every result passed (refused edges are valid outcomes)")
FAILED = Code(1, "failed", "a kernel failed, crashed or hung on at least one case")
USAGE = Code(2, "usage", "bad input: unknown backend/format/property, malformed case, plugin that does not load, "
             "--require unmet, a selection that matches no test")
INTERNAL = Code(3, "internal", "moecheck itself crashed (a bug of ours; rerun with MOECHECK_TRACEBACK=1)")
CANNOT_RUN = Code(125, "cannot-run", "nothing could run here (backend unavailable, no GPU, a plugin that fails to import "
                 "at this commit); git bisect skips")
ABORT = Code(128, "abort", "bisect-run only: the case file is missing or malformed, or a --plugin does not exist; "
            "aborts git bisect")
INTERRUPTED = Code(130, "interrupted", "the run was interrupted (SIGINT/SIGTERM); completed results are kept")

TABLE = (PASS, FAILED, USAGE, INTERNAL, CANNOT_RUN, ABORT, INTERRUPTED)


def markdown() -> str:
    """The table as README's "Exit codes" section holds it (tests/ci/test_bad_input.py compares them)."""
    rows = [f"| {c.value} | `{c.name}` | {c.meaning} |" for c in TABLE]
    return "\n".join(["| exit | name | meaning |", "| --- | --- | --- |", *rows])


def epilog() -> str:
    """The table as argparse epilog text."""
    return "exit codes: " + "; ".join(f"{c.value} {c.name}" for c in TABLE)
