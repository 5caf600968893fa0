"""Which vLLM the adapters were written against and verified with, and the version check.

The check never refuses: with a vLLM other than the ones an adapter was verified with, the adapter
still runs and its availability line says so (the suite then shows whether it still holds). The
version is read from the installed distribution's metadata, without importing vLLM (importing its
fused-MoE package takes ~20 s and initialises CUDA state).
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from moecheck.backends.base import Availability, Backend, _device_for

WRITTEN_AGAINST = "0.24.0"  # the vLLM whose source every adapter here was read from
_WARNED: set[str] = set()


def installed_version() -> str | None:
    try:
        return version("vllm")
    except PackageNotFoundError:
        return None


def version_note(installed: str | None, verified: tuple[str, ...]) -> str:
    """A short line leading the availability reason (the table shows 44 characters of it)."""
    if installed is None:
        return "vllm version unknown"
    if installed in verified:
        return f"vllm {installed} verified"
    if installed.split("+")[0] == WRITTEN_AGAINST:
        return f"vllm {installed} unverified"
    return f"vllm {installed} UNTESTED (adapters target {WRITTEN_AGAINST}, verified: {', '.join(verified) or 'none'})"


def vmod(name: str):
    """Import a vLLM module at run time (never at moecheck import time: CI has no vLLM)."""
    return importlib.import_module(name)


@dataclass
class VllmBackend(Backend):
    """A Backend over a vLLM kernel: availability adds the version line, prepare/run import lazily."""

    vllm_verified: tuple[str, ...] = ()  # vLLM versions this adapter passed the suite with on hardware
    audit_safe: bool = False  # kernels that may fault the device are not poked by the audit

    def availability(self) -> Availability:
        dev = _device_for(self.capability)
        if not dev.ok and dev.reason.startswith("needs sm_"):  # the GPU rules it out whatever is installed
            return dev
        av = super().availability()
        if not av.ok:
            return av
        v = installed_version()
        note = version_note(v, self.vllm_verified)
        if "UNTESTED" in note and v not in _WARNED:
            _WARNED.add(v)
            warnings.warn(f"moecheck vLLM adapters: {note}", stacklevel=2)
        return Availability(True, f"{note}; {av.reason}", av.device)
