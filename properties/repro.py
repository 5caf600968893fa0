"""Reproduction: every failure names one command that replays exactly its case.

`moecheck repro FILE` or `moecheck repro --case 'JSON'` rebuilds the case from its structure and
seed, runs the property once on this machine, and exits 0 (pass), 1 (fail) or 125 (cannot run
here: backend unavailable), which is what `git bisect run` expects.
"""
from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

from moecheck.backends import registry
from moecheck.properties.case import Case
from moecheck.reference.errors import MoecheckError, require

REPORT_DIR_ENV = "MOECHECK_REPORT_DIR"


def report_dir() -> Path:
    return Path(os.environ.get(REPORT_DIR_ENV, "moecheck-report"))


def save_case(case: Case) -> Path:
    d = report_dir() / "cases"
    d.mkdir(parents=True, exist_ok=True)
    text = case.to_json()
    path = d / f"{case.backend}-{case.format}-{case.property}-{hashlib.sha1(text.encode()).hexdigest()[:10]}.json"
    path.write_text(text + "\n")
    return path


def repro_command(case: Case) -> str:
    return f"moecheck repro --case {shlex.quote(case.to_json())}"


def load_case(path: str) -> Case:
    p = Path(path)
    require(p.is_file(), f"no case file at {path}")
    return Case.from_json(p.read_text())


def replay(case: Case) -> tuple[str, str]:
    """Run the case's property once; returns (verdict, message)."""
    from moecheck.properties.checks import check

    b = registry.get(case.backend)
    av = b.availability()
    if not av.ok:
        return "skip", f"backend {case.backend} unavailable here: {av.reason}"
    why = b.capability.unsupported(_probe(case, b))
    if why:
        return "skip", f"backend {case.backend} does not support this case: {why}"
    out = check(b, case, av.device)
    return out.verdict, out.message


def _probe(case: Case, b):
    """The problem the backend will see, built small: the padding property runs it padded, so the
    unpadded sizes need not meet the backend's alignment (the strategy draws them so on purpose)."""
    from moecheck.properties.case import build
    from moecheck.properties.checks import padded_sizes

    if case.property == "padded_equals_unpadded":
        hp, ip = padded_sizes(b, case)
        case = case.with_(hidden=hp, inter=ip)
    return build(case.with_(tokens=min(case.tokens, 1)), "cpu")


def replay_file(path: str) -> tuple[str, str]:
    return replay(load_case(path))


EXIT = {"pass": 0, "fail": 1, "skip": 125}


def main(file: str | None, case_json: str | None) -> int:
    try:
        require((file is None) != (case_json is None), "give exactly one of FILE or --case JSON")
        case = load_case(file) if file else Case.from_json(case_json)
        verdict, msg = replay(case)
    except MoecheckError as e:
        print(f"moecheck repro: {e}", flush=True)
        return 2
    print(f"{verdict.upper()}: {case.summary()}\n  {msg}")
    return EXIT[verdict]
