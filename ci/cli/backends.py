"""`moecheck backends`: every backend, available or not, with why and its limitations."""
from __future__ import annotations


def _backends(args) -> int:
    from moecheck.backends import registry

    bs = registry.load_all(tuple(args.plugin))
    w = max([26, *map(len, bs)]) + 1
    print(f"{'backend':{w}s} {'status':12s} {'where / why':44s} formats")
    for name, b in sorted(bs.items()):
        av = b.availability()
        verified = "" if b.capability.verified else "  [not verified on hardware]"
        fm = ",".join(sorted(b.capability.formats)) or "-"
        fm = fm if len(fm) < 70 else fm[:67] + "..."
        print(f"{name:{w}s} {'available' if av.ok else 'unavailable':12s} {av.reason[:44]:44s} {fm}{verified}")
        if args.verbose:
            for v in b.capability.verified:
                print(f"    verified: {v}")
            for lim in b.capability.limitations:
                print(f"    limitation: {lim.text} {lim.link}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("backends", help="list backends, available or not, with the reason")
    p.add_argument("--plugin", action="append", default=[], help="module defining extra backends")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=_backends)
