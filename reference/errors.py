"""One error type for bad input: its message is one line naming the violated constraint."""
from __future__ import annotations

import difflib
from typing import Callable, Iterable


class MoecheckError(ValueError):
    """Raised for invalid input to moecheck (references, cases, CLI). The message is the whole story."""


def require(cond: bool, msg: str | Callable[[], str]) -> None:
    """Raise MoecheckError(msg) unless cond. A message that formats tensor sizes goes as a lambda: under
    torch.compile an f-string of a size makes that size a constant of the graph (a recompile per size)."""
    if not cond:
        raise MoecheckError(msg() if callable(msg) else msg)


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """' (did you mean a or b?)' for the known names close to `name` (a typo), else ''."""
    close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def unknown(what: str, name: object, known: Iterable[str]) -> MoecheckError:
    """"unknown backend 'cpu_lop' (did you mean cpu_loop?); known: ..." as one error to raise."""
    known = sorted(known)
    return MoecheckError(f"unknown {what} {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}")
