"""Where the source checkout is, for the tests that read it (README, .ci/run, docs/findings).

An installed copy of moecheck.tests has no checkout around it; those tests skip there with this reason.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IS_CHECKOUT = (ROOT / "pyproject.toml").is_file() and (ROOT / "reference").is_dir()
NOT_A_CHECKOUT = f"not a source checkout ({ROOT} has no pyproject.toml): an installed tree"
