"""`moecheck audit`: try what each record leaves out (properties/audit.py has the outcomes)."""
from __future__ import annotations

import argparse

WIDTHS = (32, 28, 15)  # backend, probe, outcome


def _audit(args) -> int:
    from moecheck.backends import registry
    from moecheck.properties.audit import AuditState, audit_backend, exit_code

    # the built-ins and the plugins asked for, not whatever this process imported (a test's planted backends)
    bs = registry.suite(tuple(args.plugin))
    names = args.backend or sorted(bs)
    wb, wp, wo = WIDTHS
    print(f"{'backend':{wb}s} {'probe':{wp}s} {'outcome':{wo}s} detail")
    rows, state = [], AuditState()
    for n in names:
        for r in audit_backend(registry.get(n), state):
            print(f"{r.backend:{wb}s} {r.probe:{wp}s} {r.outcome:{wo}s} {r.detail[:args.width]}", flush=True)
            rows.append(r)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    code = exit_code(rows)
    print(f"\n{len(names)} backends, {len(rows)} rows: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
          + f"; exit {code}")
    return code


def _epilog() -> str:
    from moecheck.properties.audit import OUTCOMES

    lines = ["outcomes:"] + [f"  {k:15s} {v}" for k, v in OUTCOMES.items()]
    lines += ["exit codes: 0 nothing silently wrong, non-finite or an adapter error; 1 a library returned a wrong",
              "  or non-finite result without complaint (silently wrong / non-finite); 3 no wrong result, but an",
              "  adapter error or internal error (a bug of ours or of a plugin's adapter); 2 bad input"]
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("audit", help="try what each record says is unsupported: refused / works / silently wrong",
                       description="Every registered backend, available or not; for each available, audit-safe one, "
                                   "small cases outside its record, where the adapter passes them on to the library.",
                       epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", action="append", default=[], help="audit only this backend (repeatable)")
    p.add_argument("--plugin", action="append", default=[], help="module defining extra backends (repeatable)")
    p.add_argument("--width", type=int, default=160, help="characters of each row's detail (default 160)")
    p.set_defaults(fn=_audit)
