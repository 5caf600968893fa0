"""`moecheck audit`: try what each record says is unsupported."""
from __future__ import annotations


def _audit(args) -> int:
    from moecheck.backends import registry
    from moecheck.properties.audit import audit_backend

    bs = registry.load_all(tuple(args.plugin))
    names = args.backend or sorted(bs)
    print(f"{'backend':24s} {'probe':26s} {'outcome':15s} detail")
    worst = 0
    for n in names:
        for r in audit_backend(registry.get(n)):
            print(f"{r.backend:24s} {r.probe:26s} {r.outcome:15s} {r.detail[:100]}")
            worst = max(worst, int(r.outcome in ("silently wrong", "non-finite")))
    return worst


def register(sub) -> None:
    p = sub.add_parser("audit", help="try what each record says is unsupported")
    p.add_argument("--backend", action="append", default=[], help="only this backend (repeatable; default: every backend)")
    p.add_argument("--plugin", action="append", default=[], help="module defining extra backends (repeatable)")
    p.set_defaults(fn=_audit)
