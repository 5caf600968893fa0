"""What a command line names, checked in the CLI process before any work starts.

Plugins must import, --backend/--format/--property names and patterns must be known, and with
--require every named backend must be able to run here. Each failure raises one MoecheckError line
(exit 2): a typo is the user's to fix, never a failed kernel (1) nor a silent skip.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable

from moecheck.reference.errors import MoecheckError, unknown

GLOB = "*?["


def load_plugins(plugins: Iterable[str]) -> dict:
    """The registry with `plugins` loaded; MoecheckError if one does not import or registers nothing.

    Plugins from MOECHECK_PLUGINS or entry points stay listed as unavailable with their error (the
    registry's rule); one named on the command line was asked for, so it must load."""
    from moecheck.backends import registry

    plugins = tuple(plugins)
    backends = registry.load_all(plugins)
    for mod in plugins:
        err = registry.load_error(mod)
        if err:
            raise MoecheckError(f"cannot load plugin {mod!r}: {err}")
        if not registry.backends_of(mod):
            raise MoecheckError(f"plugin {mod!r} imports but registers no backend "
                                "(call moecheck.backends.register(...) or define BACKENDS = [...])")
    return backends


def match(kind: str, patterns: Iterable[str], known: Iterable[str]) -> dict[str, list[str]]:
    """Each exact name or fnmatch pattern -> the known names it selects; none is a usage error."""
    known = sorted(known)
    out = {}
    for p in patterns:
        hits = [n for n in known if fnmatchcase(n, p)]
        if not hits and any(c in p for c in GLOB):
            raise MoecheckError(f"{kind} pattern {p!r} matches no known {kind}; known: {', '.join(known)}")
        if not hits:
            raise unknown(kind, p, known)
        out[p] = hits
    return out


def require_available(selected: dict[str, list[str]], plugins: Iterable[str], backends: dict) -> None:
    """--require: each exact --backend name, at least one backend of each --backend pattern, and every
    (selected) backend of each --plugin must be available here; else one line with each reason."""
    from moecheck.backends import registry

    plugins = tuple(plugins)
    if not selected and not plugins:
        raise MoecheckError("--require names nothing to require: add --backend NAME or --plugin MODULE")
    why = {n: b.availability() for n, b in backends.items()}
    missing: dict[str, str] = {}
    for pattern, hits in selected.items():
        if not any(c in pattern for c in GLOB):
            missing.update({n: why[n].reason for n in hits if not why[n].ok})
        elif not any(why[n].ok for n in hits):
            missing[pattern] = "no match available: " + ", ".join(f"{n} ({why[n].reason})" for n in hits)
    for mod in plugins:
        for n in registry.backends_of(mod):
            if not why[n].ok and (not selected or any(n in hits for hits in selected.values())):
                missing[n] = why[n].reason
    if missing:
        raise MoecheckError("--require: not available here: " + "; ".join(f"{n}: {r}" for n, r in missing.items()))
