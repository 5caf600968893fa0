"""Reproduction: every failure names one command that replays exactly its case.

`moecheck repro FILE` or `moecheck repro --case 'JSON'` rebuilds the case from its structure and
seed, runs the property once on this machine, and exits 0 (pass), 1 (fail, or crashed) or 125
(cannot run here: backend unavailable), which is what `git bisect run` expects. The case runs in a
child process with a timeout, so a kernel that segfaults or hangs is a `crashed` verdict (exit 1),
not a dead or stuck repro.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from moecheck.backends import registry
from moecheck.properties.case import Case
from moecheck.properties.isolation import report_dir
from moecheck.reference.errors import MoecheckError, require


def save_case(case: Case) -> Path:
    d = report_dir() / "cases"
    d.mkdir(parents=True, exist_ok=True)
    text = case.to_json()
    path = d / f"{case.backend}-{case.format}-{case.property}-{hashlib.sha1(text.encode()).hexdigest()[:10]}.json"
    path.write_text(text + "\n")
    return path


def repro_command(case: Case) -> str:
    """The one command that replays `case` as printed: it names the plugin that defines its backend."""
    from moecheck.properties.isolation import TIMEOUT_ENV

    plugin = registry.plugin_of(case.backend)
    extra = f" --plugin {shlex.quote(plugin)}" if plugin else ""
    if os.environ.get(TIMEOUT_ENV):  # the run's watchdog, so a hang replays as one
        extra += f" --timeout {shlex.quote(os.environ[TIMEOUT_ENV])}"
    return f"moecheck repro{extra} --case {shlex.quote(case.to_json())}"


def load_case(path: str) -> Case:
    """The case of a file, through the same checks as --case JSON; MoecheckError names the file."""
    p = Path(path)
    require(p.is_file(), f"no case file at {path}" + (" (a directory)" if p.is_dir() else ""))
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MoecheckError(f"cannot read case file {path}: {type(e).__name__}: {e}") from None
    try:
        return Case.from_json(text)
    except MoecheckError as e:
        raise MoecheckError(f"case file {path}: {e}") from None


def replay(case: Case, claimed: bool = True) -> tuple[str, str]:
    """Run the case's property once; returns (verdict, message). claimed=False runs it even where the
    record no longer claims the case: an open finding whose limit the record now states."""
    from moecheck.properties.checks import check

    b = registry.get(case.backend)
    av = b.availability()
    if not av.ok:
        return "skip", f"backend {case.backend} unavailable here: {av.reason}"
    why = b.capability.unsupported(_probe(case, b)) if claimed else None
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


def replay_file(path: str, plugins: tuple[str, ...] = ()) -> tuple[str, str]:
    return replay_isolated(load_case(path), plugins)


_CHILD = "from moecheck.properties.repro import _child; _child()"


def _child() -> None:
    """In the child: load the plugins, replay, print the verdict as the last stdout line."""
    import faulthandler

    faulthandler.enable(all_threads=True)
    job = json.loads(sys.stdin.read())
    try:
        registry.load_all(tuple(job["plugins"]))
        verdict, msg = replay(Case.from_json(job["case"]), job.get("claimed", True))
        res = {"verdict": verdict, "message": msg}
    except MoecheckError as e:
        res = {"error": str(e)}
    sys.stdout.flush()
    print("\n" + json.dumps(res), flush=True)


def replay_isolated(case: Case, plugins: tuple[str, ...] = (), timeout: float | None = None,
                    claimed: bool = True) -> tuple[str, str]:
    """replay() in a child process: a segfault, abort or hang there is ('crashed', why)."""
    from moecheck.properties.isolation import timeout_s

    timeout = timeout_s() if timeout is None else timeout
    job = json.dumps({"case": case.to_json(), "plugins": list(plugins), "claimed": claimed})
    try:
        r = subprocess.run([sys.executable, "-c", _CHILD], input=job, capture_output=True, text=True,
                           timeout=timeout if timeout > 0 else None)
    except subprocess.TimeoutExpired:
        return "crashed", f"hang: no result after {timeout:g} s"
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    try:
        res = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        res = None
    if isinstance(res, dict) and "error" in res:
        raise MoecheckError(res["error"])
    if isinstance(res, dict) and r.returncode == 0:
        return res["verdict"], res["message"]
    fatal = [line for line in r.stderr.splitlines() if line.startswith("Fatal Python error")]
    how = (f"killed by {signal.Signals(-r.returncode).name}" if r.returncode < 0 and -r.returncode in signal.Signals._value2member_map_
           else f"exit status {r.returncode}")
    tail = fatal[0] if fatal else (r.stderr.strip().splitlines() or [""])[-1][:300]
    return "crashed", f"the replay process died ({how}){': ' + tail if tail else ''}"


EXIT = {"pass": 0, "refused": 0, "fail": 1, "crashed": 1, "skip": 125}


def main(file: str | None, case_json: str | None, plugins: tuple[str, ...] = (), timeout: float | None = None,
         claimed: bool = True) -> int:
    try:
        require((file is None) != (case_json is None), "give exactly one of FILE or --case JSON")
        case = load_case(file) if file else Case.from_json(case_json)
        verdict, msg = replay_isolated(case, plugins, timeout, claimed)
    except MoecheckError as e:
        print(f"moecheck repro: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"{verdict.upper()}: {case.summary()}\n  {msg}")
    return EXIT[verdict]
