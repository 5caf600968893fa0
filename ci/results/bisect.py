"""Exit codes for `git bisect run moecheck bisect-run CASE`.

git bisect run reads the script's exit status as: 0 good, 1..127 except 125 bad, 125 skip (this
commit cannot be tested), anything else (128..255) aborts the whole bisect. So:

- pass (or a clean refusal of an edge case) -> 0, fail or crashed (segfault, hang, device error) -> 1,
  skip (backend unavailable, no GPU, ...) -> 125;
- replay raising anything but MoecheckError (a library that does not import or build at this
  commit, an environment problem) -> 125: we learned nothing about the regression here;
- a missing or malformed case file, a case this moecheck rejects (MoecheckError), or an unknown
  verdict -> 128: the bisect itself is broken. The usual CLI code 2 would be read as "bad" and
  silently walk the bisect to a wrong commit; aborting is the only honest answer.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from moecheck.reference.errors import MoecheckError

GOOD, BAD, SKIP, ABORT = 0, 1, 125, 128
VERDICT_CODES = {"pass": GOOD, "refused": GOOD, "fail": BAD, "crashed": BAD, "error": BAD, "skip": SKIP}

Replay = Callable[[str], tuple[str, str]]  # case path -> (verdict, message)


@dataclass(frozen=True)
class BisectStep:
    code: int  # exit status for git bisect run
    verdict: str  # replay's verdict, or 'invalid' / 'untestable' when replay gave none
    message: str  # one line


def one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def validate_case_file(case_path: str | Path) -> dict:
    """The case as a JSON object; MoecheckError (one line) if missing, unreadable or not JSON."""
    p = Path(case_path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MoecheckError(f"no case file at {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MoecheckError(f"cannot read case file {p}: {one_line(e)}") from None
    try:
        case = json.loads(text)
    except json.JSONDecodeError as e:
        raise MoecheckError(f"case file {p} is not valid JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(case, dict):
        raise MoecheckError(f"case file {p} must hold a JSON object, got {type(case).__name__}")
    return case


def bisect_step(replay: Replay, case_path: str | Path) -> BisectStep:
    try:
        validate_case_file(case_path)
    except MoecheckError as e:
        return BisectStep(ABORT, "invalid", one_line(e))
    try:
        verdict, message = replay(str(case_path))
    except MoecheckError as e:
        return BisectStep(ABORT, "invalid", one_line(e))
    except Exception as e:  # e.g. the kernel library fails to import at this commit
        return BisectStep(SKIP, "untestable", one_line(f"{type(e).__name__}: {e}"))
    if verdict not in VERDICT_CODES:
        return BisectStep(ABORT, "invalid", f"replay returned unknown verdict {verdict!r}")
    return BisectStep(VERDICT_CODES[verdict], verdict, one_line(message))


def bisect_exit_code(replay: Replay, case_path: str | Path) -> int:
    """Replay one case and return its git-bisect-run exit code, printing one line to stderr."""
    step = bisect_step(replay, case_path)
    print(f"moecheck bisect-run: {step.verdict} (exit {step.code}): {step.message}", file=sys.stderr)
    return step.code
