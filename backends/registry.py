"""Backend registry: built-ins, entry-point plugins, and modules named at run time.

An out-of-tree backend is one file: a module that calls `moecheck.backends.register(...)` (or
defines BACKENDS = [...]) and is named by the entry-point group `moecheck.backends`, by
MOECHECK_PLUGINS=mod1,mod2, or by `--moecheck-plugin mod` / `moecheck run --plugin mod`.
A plugin that fails to import is listed as unavailable with its error, never silently dropped.
"""
from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from moecheck.backends.base import Availability, Backend, Capability
from moecheck.reference.errors import require, unknown

ENTRY_POINT_GROUP = "moecheck.backends"
ENV_VAR = "MOECHECK_PLUGINS"
BUILTIN_MODULES = ("moecheck.backends.cpu_loop", "moecheck.backends.cpu_router", "moecheck.backends.torch_grouped", "moecheck.backends.torch_compile", "moecheck.backends.vllm",
                   "moecheck.backends.flashinfer")

_REGISTRY: dict[str, Backend] = {}
_ORIGIN: dict[str, str] = {}  # backend name -> the module that registered it
_LOADED: set[str] = set()
_LOAD_ERRORS: dict[str, str] = {}  # plugin module -> "ExcType: first line" of why its import failed
_LOADING: list[str] = []  # modules being imported by _load_module, innermost last


def register(backend: Backend) -> Backend:
    require(isinstance(backend, Backend), f"register() needs a moecheck.backends.Backend, got {type(backend).__name__}")
    require(backend.name not in _REGISTRY or _REGISTRY[backend.name] is backend, f"backend name {backend.name!r} registered twice")
    _REGISTRY[backend.name] = backend
    _ORIGIN.setdefault(backend.name, _LOADING[-1] if _LOADING else getattr(type(backend), "__module__", ""))
    return backend


def plugin_of(name: str) -> str | None:
    """The plugin module a replay must load to find backend `name`; None for built-ins."""
    mod = _ORIGIN.get(name)
    if mod is None or any(mod == b or mod.startswith(b + ".") for b in BUILTIN_MODULES):
        return None
    return mod


class _Broken(Backend):
    def __init__(self, name: str, why: str):
        super().__init__(name=name, capability=Capability(formats=frozenset()), description=why)

    def availability(self) -> Availability:
        return Availability(False, self.description)


def _load_module(mod: str) -> None:
    if mod in _LOADED:
        return
    _LOADED.add(mod)
    _LOADING.append(mod)
    try:
        try:
            m = importlib.import_module(mod)
        except (Exception, SystemExit) as e:  # a broken plugin must show up, with why, not vanish (nor exit us)
            _LOAD_ERRORS[mod] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
            register(_Broken(f"plugin:{mod}", f"import failed: {_LOAD_ERRORS[mod]}"))
            return
        for b in getattr(m, "BACKENDS", ()):
            if b.name not in _REGISTRY:
                register(b)
    finally:
        _LOADING.pop()


def load_error(mod: str) -> str | None:
    """Why plugin module `mod` did not import ("ModuleNotFoundError: ..."), None if it did (or was not tried)."""
    return _LOAD_ERRORS.get(mod)


def backends_of(mod: str) -> list[str]:
    """The backends plugin module `mod` (or a submodule of it) registered."""
    return sorted(n for n, o in _ORIGIN.items() if (o == mod or o.startswith(mod + ".")) and not n.startswith("plugin:"))


def plugin_modules(extra: tuple[str, ...] = ()) -> list[str]:
    env = [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]
    eps = [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return list(dict.fromkeys([*eps, *env, *extra]))


def load_all(extra: tuple[str, ...] = ()) -> dict[str, Backend]:
    for mod in (*BUILTIN_MODULES, *plugin_modules(extra)):
        _load_module(mod)
    return dict(_REGISTRY)


def suite(extra: tuple[str, ...] = ()) -> dict[str, Backend]:
    """The backends the property template runs: the built-ins and the plugins asked for (entry points,
    MOECHECK_PLUGINS, --plugin), not whatever else a process happened to import and register (a test's
    helper module with planted bugs)."""
    mods = (*BUILTIN_MODULES, *plugin_modules(extra))
    return {n: b for n, b in load_all(extra).items()
            if any(_ORIGIN.get(n, "") == m or _ORIGIN.get(n, "").startswith(m + ".") for m in mods)
            or n.startswith("plugin:")}


def get(name: str) -> Backend:
    load_all()
    if name not in _REGISTRY:
        raise unknown("backend", name, _REGISTRY)
    return _REGISTRY[name]
