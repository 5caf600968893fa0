"""pytest options and Hypothesis profiles for moecheck (loaded by the repo's conftest.py).

Profiles: dev (quick, local), ci (CPU CI: meaningful counts, bounded time), gpu (GPU runners),
nightly (long, with a persistent example database). Pick one with --hypothesis-profile NAME
(Hypothesis' own option) or MOECHECK_PROFILE=NAME; the default is ci under CI=true, else dev.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)
settings.register_profile("dev", max_examples=15, **_COMMON)
settings.register_profile("ci", max_examples=40, derandomize=True, **_COMMON)
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
