"""`moecheck backends`: every backend, available first, then the unavailable ones with why."""
from __future__ import annotations

WHY_MAX = 60  # a reason longer than this is cut in the table (-v prints records in full)
FORMATS_MAX = 70


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _backends(args) -> int:
    from moecheck.ci import table
    from moecheck.ci.cli import inputs

    bs = inputs.load_plugins(args.plugin)
    why = {n: b.availability() for n, b in bs.items()}
    order = sorted(bs, key=lambda n: (not why[n].ok, n))  # available first, each group by name
    if args.available:
        order = [n for n in order if why[n].ok]
    rows = [("backend", "status", "where / why", "formats")]
    for name in order:
        b, av = bs[name], why[name]
        fm = _cut(",".join(sorted(b.capability.formats)) or "-", FORMATS_MAX)
        verified = "" if b.capability.verified else "  [not verified on hardware]"
        rows.append((name, "available" if av.ok else "unavailable", _cut(av.reason, WHY_MAX), fm + verified))
    lines = table.align(rows)
    print(lines[0])
    for name, line in zip(order, lines[1:]):
        print(line)
        if args.verbose:
            for v in bs[name].capability.verified:
                print(f"    verified: {v}")
            for lim in bs[name].capability.limitations:
                print(f"    limitation: {lim.text} {lim.link}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("backends", help="list backends, available ones first, then the unavailable with why")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="module defining extra backends (repeatable); one that does not import is exit 2")
    p.add_argument("--available", action="store_true", help="list only the backends available here")
    p.add_argument("-v", "--verbose", action="store_true", help="also each record's hardware verifications and limitations")
    p.set_defaults(fn=_backends)
