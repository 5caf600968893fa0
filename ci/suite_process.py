"""The pytest process behind `moecheck run`: its report folder, its process group, its signals.

- Each run owns its report folder. The default is a fresh `moecheck-report/<time>-<pid>/` with
  `moecheck-report/latest` pointing at it; a folder named with --report is locked (flock) for the
  run, and a second run on the same folder is refused, so two runs never mix their results.
- pytest runs in a process group of its own and dies with us (PR_SET_PDEATHSIG on Linux): SIGTERM
  or SIGINT to `moecheck run` goes to the whole tree, and SIGKILL of `moecheck run` leaves no orphan.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from moecheck.reference.errors import MoecheckError

DEFAULT_ROOT = Path("moecheck-report")
_FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass
class ReportDir:
    path: Path
    lock_fd: int

    def release(self) -> None:
        os.close(self.lock_fd)


def lock(path: Path) -> int:
    """An exclusive lock on `path` (a folder) for this process, or a one-line error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as e:
        raise MoecheckError(f"cannot use report folder {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise MoecheckError(f"report folder {path} is in use by another moecheck run; give another --report") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def claim_report_dir(requested: str | None, locked: bool = True) -> ReportDir:
    """A folder for this run alone: the one asked for (locked), else a fresh one under moecheck-report/.
    Shards share a folder and lock their own subfolder instead (locked=False here)."""
    if requested:
        path = Path(requested)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = DEFAULT_ROOT / f"{stamp}-{os.getpid()}"
    if locked:
        fd = lock(path)
    else:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY)
    if not requested:
        latest = DEFAULT_ROOT / "latest"
        tmp = DEFAULT_ROOT / f".latest-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(path.name)
        os.replace(tmp, latest)  # atomic: a reader sees the old run or the new one
    for stale in ("results.jsonl", "run.json"):
        (path / stale).unlink(missing_ok=True)
    return ReportDir(path, fd)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, even by SIGKILL (Linux only)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


@dataclass
class Finished:
    returncode: int | None  # None: stopped by a signal we forwarded
    signal: str = ""


def run_suite(cmd: list[str], env: dict[str, str]) -> Finished:
    """Run pytest in its own process group; forward SIGTERM/SIGINT/SIGHUP to the whole group."""
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)
    got: list[int] = []

    def forward(signum, _frame):
        got.append(signum)
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    saved = {s: signal.signal(s, forward) for s in _FORWARD}
    try:
        while True:
            try:
                rc = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                continue
        _reap_group(proc.pid)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    if got:
        return Finished(None, signal.Signals(got[0]).name)
    return Finished(rc)


def _reap_group(pgid: int, grace_s: float = 5.0) -> None:
    """pytest is gone: give what is left of its group (xdist workers) a moment, then kill it."""
    deadline = time.time() + grace_s
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
