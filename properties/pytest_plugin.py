"""pytest options and Hypothesis profiles: the property suite's entry, loaded as
`-p moecheck.properties.pytest_plugin` (pyproject's addopts, and `moecheck run`).

Profiles: quick (a first try: a few minutes on 2 cores), dev (local), ci (CPU CI: meaningful counts, bounded time), gpu (GPU runners),
nightly (long, with a persistent example database). Pick one with --hypothesis-profile NAME
(Hypothesis' own option) or MOECHECK_PROFILE=NAME; the default is ci under CI=true, else dev.
"""
from __future__ import annotations

import os
import sys

# Examples draw a new size each time: with fixed segments the caching allocator fragments, and workers
# capped at their share of the GPU ran out of memory holding free blocks (H200, 2026-12-03: OOM at 17.3
# GiB in use, 51 GiB free). Read at CUDA's first allocation, so set before any; a user's setting wins.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis.database import DirectoryBasedExampleDatabase

_COMMON = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
settings.register_profile("quick", max_examples=3, derandomize=True, **_COMMON)  # every test once or so
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
_cap = {}
if os.environ.get("MOECHECK_MAX_EXAMPLES"):  # a run-time cap, e.g. for slow-compiling backends
    _cap["max_examples"] = int(os.environ["MOECHECK_MAX_EXAMPLES"])
if os.environ.get("MOECHECK_NO_SHRINK") == "1":  # GPU minutes: report the failing example as drawn
    from hypothesis import Phase

    _cap["phases"] = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
if _cap:
    settings.register_profile("_capped", parent=settings.get_profile(default_profile()), **_cap)
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
    _GPUS[:] = [len(visible)]
    return dev


_GPUS: list[int] = []  # how many GPUs the workers were spread over
GPU_SHARE = 0.95  # of a GPU's memory, split among the workers on it (the rest: the driver, other processes)


def share_gpu_memory(environ=os.environ) -> float | None:
    """Cap this worker's CUDA memory at its share of the GPU it shares with other workers. Without a cap
    each process's caching allocator keeps what its largest case needed, and twelve workers on one
    H200 ran each other out of memory. Called once, when a worker first runs a CUDA test (not at
    import: CUDA would then be initialized before isolation's children fork).

    MOECHECK_GPU_SHARE: the fraction of each GPU's memory for this whole suite (default GPU_SHARE),
    split among its workers on that GPU. Suites that run at once on one GPU each need a smaller one
    (gpu_session.sh's a+b phases give each 0.95 / n); when it is set, a lone worker is capped too."""
    n = int(environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    share = environ.get("MOECHECK_GPU_SHARE", "")
    if (n < 2 and not share) or _SHARED:
        return _SHARED[0] if _SHARED else None
    suite_share = _gpu_share(share)
    import torch

    per_gpu = -(-max(1, n) // max(1, _GPUS[0] if _GPUS else 1))
    frac = min(1.0, suite_share / per_gpu)
    torch.cuda.set_per_process_memory_fraction(frac)
    _SHARED.append(frac)
    return frac


_SHARED: list[float] = []


def _gpu_share(value: str) -> float:
    if not value:
        return GPU_SHARE
    try:
        f = float(value)
    except ValueError:
        f = 0.0
    if not 0.0 < f <= 1.0:
        raise ValueError(f"MOECHECK_GPU_SHARE={value!r}: want a fraction of the GPU's memory, 0 < f <= 1")
    return f


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


def share_cpu_threads(environ=os.environ) -> int | None:
    """Each xdist worker gets cores // workers intra-op threads. By default every worker takes all the
    cores, and on 2 cores 2 workers ran the same selection 9x slower than one worker did (spinning
    OpenMP threads fight over the cores). OMP_NUM_THREADS, where set, wins."""
    n = int(environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if n < 1 or environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    import torch

    torch.set_num_threads(max(1, cores // n))
    return torch.get_num_threads()


share_cpu_threads()


_CONFIG: list = []


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
    _CONFIG[:] = [config]  # logreport has no config argument; the result hook needs it


def pytest_runtest_setup(item):
    """After a crash anywhere in the run, this worker checks its GPU before going on (and says so)."""
    from moecheck.properties import isolation

    probe = isolation.probe_after_crash()
    if probe is not None and not probe[0]:
        import pytest

        pytest.skip(f"this worker's GPU failed its health probe after a crash: {probe[1]}")


def pytest_runtest_teardown(item):
    """After a failed test, free what its traceback holds before the next one runs. pytest keeps the last
    failure in sys.last_value / last_traceback (for post-mortem debugging), and its frames hold the case's
    tensors: on a GPU worker that is gigabytes, and every later test of the worker then ran out of memory
    (H200 2026-12-03: one OOM became 30, down to 20 MiB allocations)."""
    release_failure(sys)


def release_failure(mod) -> bool:
    """Drop mod.last_* (sys: the last failure's exception and frames); then collect and, where CUDA is in
    use, hand the cached blocks back. True when there was a failure to release."""
    if getattr(mod, "last_value", None) is None and getattr(mod, "last_exc", None) is None:
        return False
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(mod, name):
            delattr(mod, name)
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return True


class Hooks:
    @staticmethod
    def pytest_moecheck_result(row: dict, config) -> None:
        """Called on the controller with each result row, just before it is written to results.jsonl
        (the results store and the progress display listen here; see ci/)."""


def pytest_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(Hooks)


_KIND = {"test_property": "", "test_edge": "edge:", "test_pinned": "pinned:"}


def _from_nodeid(nodeid: str) -> dict | None:
    """backend, format, property of a template item, from its id alone (crashes and collection errors)."""
    name, _, inner = nodeid.rpartition("::")[2].partition("[")
    if name not in _KIND or not inner or inner.startswith("NOTSET"):  # NOTSET: an empty selection
        return None
    inner = inner.rstrip("]")
    if inner.endswith("-unavailable"):
        return {"backend": inner.removesuffix("-unavailable"), "format": "-", "property": "-"}
    b, f, p = (inner.split("-", 2) + ["?", "?"])[:3]
    return {"backend": b, "format": f, "property": _KIND[name] + p}


def _message(report) -> str:
    lr = report.longrepr
    if report.skipped and isinstance(lr, tuple):
        return lr[2].removeprefix("Skipped: ")
    crash = getattr(lr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", ""):
        return " | ".join(crash.message.strip().splitlines()[:3])[:1000]  # "ExcType: first lines"
    text = str(lr) if lr else ""
    # pytest's own "E   ExcType: message" lines, never the last line ("test_x.py:91: AssertionError")
    err = [line[1:].strip() for line in text.splitlines() if line.startswith("E ") and line[1:].strip()]
    return " | ".join(err[:3])[:1000] if err else (text.strip().splitlines() or [""])[-1][:1000]


def _crashed(report, rec: dict) -> dict:
    """xdist lost the worker while it ran this test: recover what the worker left (isolation.py)."""
    from moecheck.properties import isolation
    from moecheck.properties.case import Case
    from moecheck.properties.repro import save_case

    left = isolation.recover(report.nodeid) or {}
    isolation.note_crash(report.nodeid, left.get("message", ""))
    row = {**rec, "outcome": "crashed", "message": left.get("message", "the worker crashed and left no record"),
           "traceback": left.get("traceback", ""), "repro": left.get("repro")}
    if left.get("case"):
        row["worst_case"] = left["case"]
        try:
            row["case_file"] = str(save_case(Case.from_json(left["case"])))
        except Exception as e:  # noqa: BLE001  a half-written record still leaves its message
            row["case_file"] = f"not saved: {e}"
    return row


def pytest_runtest_logreport(report):
    """Controller side (or a plain run): one JSON line per template test, for `moecheck run`."""
    crashed = report.when == "???"  # how xdist reports a test whose worker died
    if os.environ.get("PYTEST_XDIST_WORKER") or report.when not in ("call", "setup", "???"):
        return
    if report.when == "setup" and report.passed:
        return
    props = dict(report.user_properties)
    rec = props.get("moecheck") or _from_nodeid(report.nodeid)
    if rec is None:
        return
    import json
    from pathlib import Path

    if crashed:
        row = _crashed(report, rec)
    else:
        outcome = "error" if report.when == "setup" and report.failed else rec.get("outcome") or report.outcome
        if outcome == "refused" and not report.passed:
            outcome = report.outcome  # a refusal that also failed elsewhere is that failure
        # the test's own words where it left them (failure, refusal), else what pytest saw
        msg = rec.get("message") or ("" if report.passed else _message(report))
        row = {**rec, "outcome": outcome, "message": msg, "repro": props.get("moecheck_repro")}
    row.update(duration_s=round(report.duration, 3), nodeid=report.nodeid)
    for config in _CONFIG:  # the store first: whatever results.jsonl shows is already committed there
        config.hook.pytest_moecheck_result(row=row, config=config)
    out = Path(os.environ.get("MOECHECK_REPORT_DIR", "moecheck-report"))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def interleave(items: list) -> list:
    """Template items round robin by backend, each backend's own order kept; other items first. A run cut
    short by its time limit has then reached every backend, not only the first few in name order (on the
    H200 a 5-minute run of the three torch backends spent it all on torch_compile's 27 formats)."""
    queues: dict[str, list] = {}
    rest = []
    for it in items:
        rec = _from_nodeid(it.nodeid)
        (queues.setdefault(rec["backend"], []) if rec else rest).append(it)
    out, cols = rest, list(queues.values())
    for i in range(max(map(len, cols), default=0)):
        out += [q[i] for q in cols if i < len(q)]
    return out


def pytest_collection_modifyitems(session, config, items):
    items[:] = interleave(items)
