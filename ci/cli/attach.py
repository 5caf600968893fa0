"""Which run of a results store a later step's rows join (`moecheck e2e --store`, `moecheck bench --store`)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Callable

ATTACH_WITHIN = timedelta(hours=12)  # a nightly's property run and its later steps start within one night


def append_to_run(store, attach: str, command: str, profile: str, add: Callable[[str], object]) -> str:
    """`add(run_id)` onto the store's newest run if `attach` is "latest" and that run started within
    ATTACH_WITHIN (the dashboard then shows one night together); else onto a finished run of its own.
    Returns the run, described."""
    latest = store.latest_runs(1) if attach == "latest" else []
    if latest and datetime.now(timezone.utc) - datetime.fromisoformat(latest[0].started_at) < ATTACH_WITHIN:
        add(latest[0].run_id)
        return f"{latest[0].run_id} (appended to the newest run)"
    rid = store.start_run(command=command, profile=profile)
    add(rid)
    store.finish_run(rid)
    return f"{rid} (a new run)"
