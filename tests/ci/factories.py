"""Records and stores for the results tests: fixed environments, so nothing probes the machine."""
from __future__ import annotations

import math

from moecheck.ci.results.schema import CaseRecord, E2ERecord, RunRecord
from moecheck.ci.results.store import ResultStore

HOSTILE = '<script>alert("x")</script> & "quotes"'  # must come out escaped


def run_record(profile: str = "nightly", started_at: str = "", **kw) -> RunRecord:
    return RunRecord(started_at=started_at, revision=kw.pop("revision", "abc123"),
                     versions={"python": "3.11", "torch": "2.13"}, gpu_name="Test GPU", driver="999.1",
                     hostname=kw.pop("hostname", ""), profile=profile, command="moecheck run", **kw)


def case(backend: str, fmt: str, prop: str, verdict: str, err: float | None = None, **kw) -> CaseRecord:
    return CaseRecord(backend=backend, format=fmt, property=prop, shape=kw.pop("shape", "T=7 H=256 I=128 E=8 k=2"),
                      verdict=verdict, max_norm_err=err,
                      repro=kw.pop("repro", f"moecheck repro {backend}-{fmt}-{prop}.json"), **kw)


def e2e(acc: float, verdict: str = "pass") -> E2ERecord:
    return E2ERecord(model="qwen3-30b-a3b", format="nvfp4", backend="flashinfer", accuracy=acc, n_questions=250,
                     verdict=verdict)


# three nightly runs, oldest first: (cases, e2e accuracy)
NIGHTS = [
    ([case("flashinfer", "fp8", "matches_reference", "pass", 0.1),
      case("flashinfer", "nvfp4", "matches_reference", "pass", 0.2),
      case("flashinfer", "nvfp4", "routing", "pass", 0.0),
      case("triton", "fp8", "matches_reference", "fail", 3.0),
      case("triton", "fp8", "routing", "pass", 0.3)], 0.90),
    ([case("flashinfer", "fp8", "matches_reference", "pass", 0.1),
      case("flashinfer", "nvfp4", "matches_reference", "pass", 0.25),
      case("flashinfer", "nvfp4", "routing", "pass", 0.0),
      case("triton", "fp8", "matches_reference", "fail", 2.5),
      case("triton", "fp8", "routing", "pass", 0.3)], 0.91),
    ([case("flashinfer", "fp8", "matches_reference", "pass", 0.1),
      case("flashinfer", "nvfp4", "matches_reference", "fail", 7.5, message=HOSTILE, where="expert 3, row 5, col 17"),
      case("flashinfer", "nvfp4", "routing", "pass", 0.0),
      case("triton", "fp8", "matches_reference", "pass", 0.5),
      case("triton", "fp8", "routing", "fail", math.inf, message="output has inf"),
      case("vllm", "mxfp4", "matches_reference", "skip", message="vllm not installed")], 0.85),
]
NEW_FAILURES = [("flashinfer", "nvfp4", "matches_reference"), ("triton", "fp8", "routing")]
FIXED = [("triton", "fp8", "matches_reference")]


def populated_store(path) -> tuple[ResultStore, list[str]]:
    """A store with an older dev run and the three NIGHTS; returns the nightly run ids, oldest first."""
    store = ResultStore(path)
    dev = store.start_run(run_record(profile="dev", started_at="2026-01-01T00:00:00.000+00:00"))
    store.add_cases(dev, [case("triton", "fp8", "routing", "fail", 9.0)])
    store.finish_run(dev)
    ids = []
    for day, (cases, acc) in enumerate(NIGHTS, start=2):
        rid = store.start_run(run_record(started_at=f"2026-01-0{day}T03:00:00.000+00:00", revision=f"rev{day}"))
        store.add_cases(rid, cases)
        store.add_e2e(rid, [e2e(acc, "pass" if acc >= 0.88 else "fail")])
        store.finish_run(rid)
        ids.append(rid)
    return store, ids
