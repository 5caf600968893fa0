"""Test durations from the results store, as the JSON `moecheck run --shard` balances with.

pytest-split's format: {node id: seconds}. Per (backend, format, property) the median duration over
the latest `runs` finished runs (of `profile` when it has any, else of every profile): a median, so
one slow night does not reshuffle every shard. A sharded night's own run is left out with
`exclude_run`, so shards that read copies of one store plan alike whenever each of them starts.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

from moecheck.ci.results.store import ResultStore
from moecheck.ci.shard import nodeid

DEFAULT_RUNS = 5


def durations_from_store(store: str | os.PathLike, *, runs: int = DEFAULT_RUNS, profile: str | None = None,
                         exclude_run: str | None = None) -> dict[str, float]:
    with ResultStore(store, create=False) as s:
        finished = [r for r in s.runs() if r.status == "finished" and r.run_id != exclude_run]
        if profile and any(r.profile == profile for r in finished):
            finished = [r for r in finished if r.profile == profile]
        seen: dict[str, list[float]] = {}
        for r in finished[:runs]:  # newest first
            for c in s.cases(r.run_id):
                if c.verdict != "error":  # a collection error's duration says nothing about the test
                    seen.setdefault(nodeid(*c.key), []).append(c.duration_s)
    return {k: round(statistics.median(v), 3) for k, v in sorted(seen.items())}


def export_durations(store: str | os.PathLike, out: str | os.PathLike, **kw) -> int:
    """Write the durations JSON atomically; returns how many tests it names."""
    d = durations_from_store(store, **kw)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(d, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return len(d)
