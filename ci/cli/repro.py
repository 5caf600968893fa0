"""`moecheck repro FILE | --case JSON`: replay one case (exit 0 pass, 1 fail, 125 cannot run here,
2 a malformed case or a plugin that does not load)."""
from __future__ import annotations


def _repro(args) -> int:
    from moecheck.ci.cli import inputs
    from moecheck.properties.repro import main

    inputs.load_plugins(args.plugin)  # here, not in the replay's child: a typo is exit 2, not a skip or a crash
    return main(args.file, args.case, tuple(args.plugin), args.timeout, not args.unclaimed)


def register(sub) -> None:
    p = sub.add_parser("repro", help="replay one case: exit 0 pass, 1 fail, 125 cannot run here, 2 bad case")
    p.add_argument("file", nargs="?", default=None, metavar="FILE", help="case JSON file (as written under moecheck-report/cases/)")
    p.add_argument("--case", default=None, help="the case as JSON")
    p.add_argument("--plugin", action="append", default=[], help="module defining the case's backend (repeatable)")
    p.add_argument("--timeout", type=float, default=None, help="seconds before the replay counts as a hang (default 300)")
    p.add_argument("--unclaimed", action="store_true",
                   help="replay even where the record no longer claims the case (open findings under docs/findings/*/open/)")
    p.set_defaults(fn=_repro)
