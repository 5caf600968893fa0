"""How often drawn examples alone catch a planted bug: the suite's power, per (backend, property).

    python -m moecheck.ci.power [--plugin MOD] [--examples N] [--device cpu|cuda] [--out FILE.json]

For every (backend, property) the plugin module lists in PLANTED (default: the meta-tests' planted
bugs, moecheck.tests.properties.planted), N examples are drawn from the property's strategy (pinned
cases play no part: they are test items of their own) and each is checked; the share that fail is
the kill rate. Draws are derandomized, so two versions of the suite are compared on equal terms.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from hypothesis import HealthCheck, Phase, given, settings
from moecheck.backends import registry
from moecheck.properties.checks import check
from moecheck.properties.strategies import cases, fit


def kill_rate(backend, fmt: str, prop: str, n: int, device: str = "cpu", applies=None) -> dict:
    """Over n drawn examples: how many ran and failed, and the same among those where the bug's
    structure appears (`applies(case)`)."""
    seen = {"fail": 0, "ran": 0, "fail_s": 0, "ran_s": 0}

    @settings(max_examples=n, phases=[Phase.generate], database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=cases(backend, fmt, prop, device))
    def draw(case):
        case = fit(case.with_(backend=backend.name, format=fmt, property=prop), backend)
        out = check(backend, case, device)
        if out.verdict != "skip":
            seen["ran"] += 1
            seen["fail"] += out.verdict == "fail"
            if applies is None or applies(case):
                seen["ran_s"] += 1
                seen["fail_s"] += out.verdict == "fail"

    draw()
    return seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moecheck.ci.power", description=__doc__.splitlines()[0])
    ap.add_argument("--plugin", default="moecheck.tests.properties.planted", help="module with PLANTED = [(backend, property)]")
    ap.add_argument("--examples", type=int, default=100, help="drawn examples per (backend, property)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="also write the rates as JSON here")
    a = ap.parse_args(argv)
    mod = importlib.import_module(a.plugin)
    registry.load_all((a.plugin,))
    rows = []
    rate = lambda f, r: round(f / r, 3) if r else None  # noqa: E731
    print(f"{'backend':28s} {'format':10s} {'property':24s} {'caught/run':>10s} {'rate':>6s} {'where it applies':>18s}")
    for entry in mod.PLANTED:
        b, prop, applies = (*entry, None)[:3]
        for fmt in sorted(b.capability.formats):
            s = kill_rate(b, fmt, prop, a.examples, a.device, applies)
            rows.append({"backend": b.name, "format": fmt, "property": prop, "caught": s["fail"], "ran": s["ran"],
                         "rate": rate(s["fail"], s["ran"]), "caught_where_applies": s["fail_s"],
                         "ran_where_applies": s["ran_s"], "rate_where_applies": rate(s["fail_s"], s["ran_s"])})
            r = rows[-1]
            print(f"{b.name:28s} {fmt:10s} {prop:24s} {s['fail']:4d}/{s['ran']:<5d} {str(r['rate']):>6s} "
                  f"{s['fail_s']:4d}/{s['ran_s']:<4d} {str(r['rate_where_applies']):>6s}", flush=True)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
