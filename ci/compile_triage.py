"""Triage a torch_compile finding: the same case compiled, eager on the same device, and with the other
generator, so a failure is pinned on Inductor's kernels, on the device's reference, or on the draw.

    python -m moecheck.ci.compile_triage CASE.json [CASE.json ...]

Prints one line per (case, mode, gen): verdict and the comparison's summary.
"""
from __future__ import annotations

import sys

import torch
from moecheck.backends import registry
from moecheck.backends import torch_compile as tc
from moecheck.properties.checks import check
from moecheck.properties.repro import load_case


def main(argv=None) -> None:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        raise SystemExit("usage: python -m moecheck.ci.compile_triage CASE.json [CASE.json ...]")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    b = registry.load_all()["torch_compile"]
    compiled = tc._compiled
    for path in paths:
        case = load_case(path)
        for mode in ("compiled", "eager"):
            tc._compiled = compiled if mode == "compiled" else (lambda *a: tc.dense_moe(*a))
            for gen in (case.gen, 3 - case.gen):
                o = check(b, case.with_(gen=gen), dev)
                print(f"{path.rsplit('/', 1)[-1][:56]:56s} {mode:8s} gen{gen} {o.verdict:5s} {o.message[:160]}", flush=True)
    tc._compiled = compiled


if __name__ == "__main__":
    main()
