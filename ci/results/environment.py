"""What a run was measured on: package versions, GPU, driver, host, code revision.

Versions come from installed distribution metadata, so torch, vllm etc. are never imported here
(importing them costs seconds, and CUDA initialised in a parent process breaks forked workers).
"""
from __future__ import annotations

import functools
import os
import platform
import shutil
import socket
import subprocess
import sys
from importlib import metadata

# reported name -> distribution names to try, first installed wins
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "triton": ("triton", "pytorch-triton"),
    "flashinfer": ("flashinfer-python", "flashinfer"),
    "vllm": ("vllm",),
    "lm_eval": ("lm-eval", "lm_eval"),
    "moecheck": ("moecheck",),
}


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name, dists in DISTRIBUTIONS.items():
        for dist in dists:
            try:
                found[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    found.setdefault("moecheck", "uninstalled checkout")  # on PYTHONPATH through ci/gpu_env.sh
    return found


def _run(cmd: list[str], cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


@functools.cache
def gpu_and_driver() -> tuple[str | None, str | None]:
    """(GPU name, driver version); torch.cuda only when torch is already imported (see module doc)."""
    name = driver = None
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                name = torch.cuda.get_device_name(0)
        except Exception:  # a broken CUDA setup must not stop results from being recorded
            name = None
    if shutil.which("nvidia-smi"):
        line = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
        if line:
            smi_name, _, smi_driver = line.splitlines()[0].rpartition(",")
            name = name or smi_name.strip() or None
            driver = smi_driver.strip() or None
    return name, driver


def code_revision(cwd: str | None = None) -> str | None:
    """MOECHECK_REVISION if set, else the git commit checked out in cwd (the tree under test)."""
    if os.environ.get("MOECHECK_REVISION"):
        return os.environ["MOECHECK_REVISION"]
    if not shutil.which("git"):
        return None
    return _run(["git", "rev-parse", "HEAD"], cwd=cwd)


def environment_fields() -> dict:
    """RunRecord fields describing this process's machine; start_run fills the ones not given."""
    gpu, driver = gpu_and_driver()
    return dict(
        revision=code_revision(), versions=package_versions(), gpu_name=gpu, driver=driver,
        hostname=socket.gethostname(), profile=os.environ.get("MOECHECK_PROFILE", ""),
        command=" ".join(sys.argv),
    )
