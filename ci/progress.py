"""pytest plugin for `moecheck run`: tests done / total, elapsed, an estimate, per backend.

pytest's own -q line gives a percentage for the whole run only; a kernel engineer waiting on one
slow backend wants to see it move. Totals come from the collection (xdist: the workers' collection),
counts from the result rows; a line goes out at most every MOECHECK_PROGRESS_S seconds (default 15)
and once at the end.
"""
from __future__ import annotations

import os
import re
import time
from collections import Counter

_ID = re.compile(r"::test_(?:property|edge|pinned)\[([^-\]]+)")
_S: dict = {"t0": time.time(), "last": 0.0, "total": Counter(), "done": Counter()}


def _every() -> float:
    try:
        return float(os.environ.get("MOECHECK_PROGRESS_S", "15"))
    except ValueError:
        return 15.0


def _count(nodeids) -> None:
    if _S["total"]:
        return  # every xdist worker reports the same collection
    for n in nodeids:
        m = _ID.search(n)
        _S["total"][m.group(1).removesuffix("-unavailable") if m else "other"] += 1


def pytest_collection_finish(session) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        _count(item.nodeid for item in session.items)


def pytest_xdist_node_collection_finished(node, ids) -> None:
    _count(ids)


def _line() -> str:
    total, done = sum(_S["total"].values()), sum(_S["done"].values())
    el = time.time() - _S["t0"]
    eta = f", ~{_fmt(el / done * (total - done))} left" if done and total > done else ""
    busy = [f"{b} {_S['done'][b]}/{n}" for b, n in sorted(_S["total"].items()) if 0 < _S["done"][b] < n]
    return (f"moecheck progress: {done}/{total} tests, {_fmt(el)} elapsed{eta}"
            + (f" | {', '.join(busy[:6])}" + (" ..." if len(busy) > 6 else "") if busy else ""))


def _fmt(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s" if s >= 60 else f"{s:.0f}s"


def pytest_moecheck_result(row: dict, config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    _S["done"][row.get("backend", "other")] += 1
    now = time.time()
    if now - _S["last"] >= _every():
        _S["last"] = now
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(_line())


def pytest_terminal_summary(terminalreporter) -> None:
    if sum(_S["total"].values()):
        terminalreporter.write_line(_line())
