"""`moecheck repro FILE | --case JSON`: replay one case (exit 0 pass, 1 fail, 125 cannot run here)."""
from __future__ import annotations

def _repro(args) -> int:
    from moecheck.properties.repro import main

    return main(args.file, args.case)


def register(sub) -> None:
    p = sub.add_parser("repro", help="replay one case: exit 0 pass, 1 fail, 125 cannot run here")
    p.add_argument("file", nargs="?", default=None)
    p.add_argument("--case", default=None, help="the case as JSON")
    p.set_defaults(fn=_repro)
