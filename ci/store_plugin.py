"""pytest plugin for `moecheck run --store`: each result row is committed to the store as its test ends.

Loaded by `moecheck run` (-p moecheck.ci.store_plugin) in the pytest controller, with the store and
the run id in MOECHECK_STORE_RUN=PATH::RUN_ID. A run killed by SIGTERM, SIGKILL or the OOM killer
keeps every result that completed; `moecheck run` (or a reader, once the owner is gone) marks the run
interrupted.
"""
from __future__ import annotations

import os
import sys

ENV = "MOECHECK_STORE_RUN"
_STATE: dict = {}


def _store():
    if "store" not in _STATE:
        from moecheck.ci.results.store import ResultStore

        path, _, run_id = os.environ[ENV].rpartition("::")
        _STATE.update(store=ResultStore(path), run_id=run_id)
    return _STATE["store"], _STATE["run_id"]


def pytest_moecheck_result(row: dict, config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") or not os.environ.get(ENV):
        return
    from moecheck.ci.results.bridge import case_record

    try:
        store, run_id = _store()
        store.add_cases(run_id, [case_record(row)])
    except Exception as e:  # noqa: BLE001  results.jsonl still has the row; say so once per failure
        print(f"moecheck: result not stored ({type(e).__name__}: {e}); it is in results.jsonl", file=sys.stderr)


def pytest_unconfigure(config) -> None:
    store = _STATE.pop("store", None)
    if store is not None:
        store.close()
