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
from moecheck.properties.case import build, digest
from moecheck.properties.checks import _compare, _reference, check
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
    print(f"allow_tf32={torch.backends.cuda.matmul.allow_tf32} precision={torch.get_float32_matmul_precision()}")
    for path in paths:  # which side moved: the device's reference, or the backend, against the CPU reference
        case = load_case(path)
        if case.gen != 2:
            continue
        tc._compiled = lambda *a: tc.dense_moe(*a)
        p_dev, p_cpu = build(case, dev), build(case, "cpu")
        out = b.run(b.prepare(p_dev), p_dev).cpu()
        r_dev, r_cpu = _reference(b, p_dev), _reference(b, p_cpu)
        name = path.rsplit("/", 1)[-1][:40]
        print(f"{name} eager backend on {dev} vs reference on cpu: {_compare(b, p_cpu, out, r_cpu).summary()[:150]}")
        print(f"{name} reference on {dev} vs reference on cpu: {_compare(b, p_cpu, r_dev.out.cpu(), r_cpu).summary()[:150]}")
        print(f"{name} inputs equal: {digest(p_dev) == digest(p_cpu)}")
    tc._compiled = compiled


if __name__ == "__main__":
    main()
