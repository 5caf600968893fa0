"""pytest options and Hypothesis profiles: the property suite's entry, loaded as
`-p moecheck.properties.pytest_plugin` (pyproject's addopts, and `moecheck run`).

Profiles: dev (quick, local), ci (CPU CI: meaningful counts, bounded time), gpu (GPU runners),
nightly (long, with a persistent example database). Pick one with --hypothesis-profile NAME
(Hypothesis' own option) or MOECHECK_PROFILE=NAME; the default is ci under CI=true, else dev.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

_COMMON = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
settings.register_profile("dev", max_examples=15, **_COMMON)
settings.register_profile("ci", max_examples=10, derandomize=True, **_COMMON)  # 2-core CI: ~220 property tests
settings.register_profile("gpu", max_examples=150, **_COMMON)
settings.register_profile(
    "nightly", max_examples=2000,
    database=DirectoryBasedExampleDatabase(os.environ.get("MOECHECK_EXAMPLE_DB", ".hypothesis/nightly")),
    **_COMMON,
)


def default_profile() -> str:
    if os.environ.get("MOECHECK_PROFILE"):
        return os.environ["MOECHECK_PROFILE"]
    return "ci" if os.environ.get("CI") else "dev"


settings.load_profile(default_profile())
if os.environ.get("MOECHECK_MAX_EXAMPLES"):  # a run-time cap, e.g. for slow-compiling backends
    settings.register_profile("_capped", parent=settings.get_profile(default_profile()),
                              max_examples=int(os.environ["MOECHECK_MAX_EXAMPLES"]))
    settings.load_profile("_capped")


# --- GPU pinning: each xdist worker takes one GPU, round-robin, before anything touches CUDA ---
def pin_worker_gpu(environ=os.environ) -> str | None:
    """gwN -> visible device N mod count (of CUDA_VISIBLE_DEVICES if set, else MOECHECK_GPUS or nvidia-smi)."""
    worker = environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return None
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible:
        n = int(environ.get("MOECHECK_GPUS", "0") or 0) or _count_gpus()
        visible = [str(i) for i in range(n)]
    if not visible:
        return None
    dev = visible[int(worker[2:]) % len(visible)]
    environ["CUDA_VISIBLE_DEVICES"] = dev
    return dev


def _count_gpus() -> int:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


pin_worker_gpu()


def pytest_addoption(parser):
    g = parser.getgroup("moecheck")
    g.addoption("--moecheck-plugin", action="append", default=[], help="module defining extra backends (repeatable)")
    g.addoption("--moecheck-report", default=None, help="directory for results.jsonl and failing case files")


def pytest_configure(config):
    import json  # noqa: F401  (used by the hooks below)

    mods = config.getoption("--moecheck-plugin", default=[])
    if mods:  # through the environment so xdist workers load them too
        prev = [m for m in os.environ.get("MOECHECK_PLUGINS", "").split(",") if m]
        os.environ["MOECHECK_PLUGINS"] = ",".join(dict.fromkeys([*prev, *mods]))
    rep = config.getoption("--moecheck-report", default=None)
    if rep:
        os.environ["MOECHECK_REPORT_DIR"] = rep


def pytest_runtest_logreport(report):
    """Controller side (or a plain run): one JSON line per property test, for `moecheck run`."""
    if os.environ.get("PYTEST_XDIST_WORKER") or report.when not in ("call", "setup"):
        return
    if report.when == "setup" and not report.skipped:
        return
    props = dict(report.user_properties)
    rec = props.get("moecheck")
    if rec is None:
        if "test_property[" not in report.nodeid:
            return
        inner = report.nodeid.split("[", 1)[1].rstrip("]")
        b, f, p = (inner.removesuffix("-unavailable"), "-", "-") if inner.endswith("-unavailable") else inner.split("-", 2)
        rec = {"backend": b, "format": f, "property": p, "max_norm_err": None}
    import json
    from pathlib import Path

    out = Path(os.environ.get("MOECHECK_REPORT_DIR", "moecheck-report"))
    out.mkdir(parents=True, exist_ok=True)
    msg = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        msg = report.longrepr[2].removeprefix("Skipped: ")
    elif report.failed:
        msg = str(report.longrepr).strip().splitlines()[-1][:500] if report.longrepr else ""
    rec = {**rec, "outcome": report.outcome, "message": msg, "duration_s": round(report.duration, 3),
           "repro": props.get("moecheck_repro"), "nodeid": report.nodeid}
    with open(out / "results.jsonl", "a") as fh:
        fh.write(json.dumps(rec) + "\n")
