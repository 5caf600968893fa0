"""Crash isolation: what a worker leaves behind when a backend kills it, and how it knows to die.

Under `moecheck run` (pytest-xdist) each example writes an in-flight record (test id, case, repro)
and points faulthandler at a file beside it, with a watchdog: a segfault, an abort or a hang past the
timeout ends the worker with its traceback in that file. xdist reports the test as crashed and starts
a fresh worker for the rest; the controller (pytest_plugin) turns the in-flight record into a
`crashed` result with the message, the case and its repro. A CUDA error that leaves the context
unusable is made into the same kind of exit on purpose, after the finding is written, so no later
test inherits a dead context. Records go under the report folder, `inflight/`.
"""
from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

REPORT_DIR_ENV = "MOECHECK_REPORT_DIR"
DEFAULT_TIMEOUT_S = 300.0  # per example; first JIT builds of a kernel can take minutes
TIMEOUT_ENV = "MOECHECK_EXAMPLE_TIMEOUT"
# texts of errors raised by the device or its runtime, as opposed to a library's own argument checks
_DEVICE_ERROR = re.compile(
    r"CUDA error|CUDA_ERROR|cudaError|illegal memory access|device-side assert|unspecified launch failure|"
    r"misaligned address|illegal instruction|CUBLAS_STATUS_EXECUTION_FAILED|Triton Error \[CUDA\]|"
    r"an illegal|hardware exception", re.IGNORECASE)


def report_dir() -> Path:
    return Path(os.environ.get(REPORT_DIR_ENV, "moecheck-report"))


def timeout_s() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def is_device_error(exc: BaseException) -> bool:
    accel = getattr(__import__("torch"), "AcceleratorError", None)
    return (accel is not None and isinstance(exc, accel)) or bool(_DEVICE_ERROR.search(str(exc)))


def device_healthy(device) -> tuple[bool, str]:
    """A tiny kernel and a synchronize: False with the error once the context is broken."""
    import torch

    if torch.device(device).type != "cuda":
        return True, "cpu"
    try:
        x = torch.arange(64, device=device, dtype=torch.float32)
        ok = float((x * 2).sum().item()) == 4032.0
        torch.cuda.synchronize()
        return ok, "ok" if ok else "wrong result from a probe kernel"
    except Exception as e:  # noqa: BLE001  the probe's whole point
        return False, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def _key(nodeid: str) -> str:
    return hashlib.sha1(nodeid.encode()).hexdigest()[:16]


def inflight_path(nodeid: str) -> Path:
    return report_dir() / "inflight" / f"{_key(nodeid)}.json"


def fault_path(nodeid: str) -> Path:
    return report_dir() / "inflight" / f"{_key(nodeid)}.fault"


def under_xdist() -> bool:
    return os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw")


@contextlib.contextmanager
def example(nodeid: str, case_json: str, repro: str):
    """Around one example: the in-flight record, faulthandler to its file, and the hang watchdog."""
    path, fault = inflight_path(nodeid), fault_path(nodeid)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = timeout_s()
    path.write_text(json.dumps({"nodeid": nodeid, "case": case_json, "repro": repro, "started": time.time(),
                                "timeout_s": t, "worker": os.environ.get("PYTEST_XDIST_WORKER", "")}))
    fh = open(fault, "w")
    faulthandler.enable(file=fh, all_threads=True)
    if t > 0:
        faulthandler.dump_traceback_later(t, exit=True, file=fh)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        faulthandler.enable(file=sys.__stderr__, all_threads=True)
        fh.close()


def done(nodeid: str) -> None:
    """The test ended in its own process: nothing to recover."""
    for p in (inflight_path(nodeid), fault_path(nodeid)):
        p.unlink(missing_ok=True)


def die_after_device_error(nodeid: str, message: str) -> None:
    """The finding is in the in-flight record; end this worker so xdist starts a clean one.

    Outside xdist there is no one to restart us: the caller records a failure and goes on.
    """
    path = inflight_path(nodeid)
    rec = json.loads(path.read_text()) if path.is_file() else {"nodeid": nodeid}
    rec["message"] = f"{message} (the CUDA context was unusable afterwards: the worker was restarted)"
    path.write_text(json.dumps(rec))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(70)


def recover(nodeid: str) -> dict | None:
    """Controller side, after xdist reported `nodeid` crashed: what its worker left behind."""
    path = inflight_path(nodeid)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        rec = {"nodeid": nodeid}
    fault = fault_path(nodeid)
    text = fault.read_text(errors="replace").strip() if fault.is_file() else ""
    if "message" not in rec:
        first = text.splitlines()[0] if text else ""
        if first.startswith("Timeout"):
            rec["message"] = f"hang: no result after {rec.get('timeout_s', '?')} s ({first})"
        elif first:
            rec["message"] = first  # e.g. "Fatal Python error: Segmentation fault"
        else:
            rec["message"] = "the worker died without a Python-level trace (killed, or out of memory)"
    rec["traceback"] = text[-4000:]
    for p in (path, fault):
        p.unlink(missing_ok=True)
    return rec


def note_crash(nodeid: str, message: str) -> None:
    """Controller side: every worker probes its device before its next test (probe_after_crash)."""
    with open(report_dir() / "crashes.jsonl", "a") as fh:
        fh.write(json.dumps({"nodeid": nodeid, "message": message, "at": time.time()}) + "\n")


_SEEN = {"crashes": 0}


def probe_after_crash() -> tuple[bool, str] | None:
    """Worker side, before each test: after a crash anywhere in the run, probe this worker's GPU once
    per crash and log it (health.jsonl); returns the probe's answer, or None if nothing new."""
    path = report_dir() / "crashes.jsonl"
    try:
        n = path.stat().st_size
    except OSError:
        return None
    if n == _SEEN["crashes"] or "torch" not in sys.modules:
        return None
    _SEEN["crashes"] = n
    import torch

    if not torch.cuda.is_available():
        return None
    ok, why = device_healthy("cuda")
    with open(report_dir() / "health.jsonl", "a") as fh:
        fh.write(json.dumps({"worker": os.environ.get("PYTEST_XDIST_WORKER", ""), "ok": ok, "why": why,
                             "device": torch.cuda.get_device_name(), "at": time.time()}) + "\n")
    return ok, why
