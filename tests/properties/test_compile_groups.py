"""A backend that compiles per format (Capability.compiles) has its tests of one format on one xdist
worker: `moecheck run` distributes by group, so each graph compiles once per run, not once per worker."""
import dataclasses
from types import SimpleNamespace

from moecheck.backends import registry
from moecheck.ci.cli import run as cli_run
from moecheck.properties import test_properties as tp


def _groups(params) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for p in params:
        names = [m.args[0] for m in p.marks if m.name == "xdist_group"]
        out.setdefault(p.values[0], set()).update(names or ["-"])
    return out


def test_a_compiling_backends_tests_are_grouped_by_format_and_others_are_not(monkeypatch):
    base = registry.get("cpu_loop")
    cap = dataclasses.replace(base.capability, compiles=True, formats=frozenset({"bf16", "fp8_block"}))
    jit = dataclasses.replace(base, name="jit_toy", capability=cap)
    monkeypatch.setattr(registry, "suite", lambda *a: {"cpu_loop": base, "jit_toy": jit})
    for kind in ("property", "edge", "pinned"):
        groups = _groups(tp._params(kind))
        assert groups["jit_toy"] == {"jit_toy:bf16", "jit_toy:fp8_block"}, kind
        assert groups["cpu_loop"] == {"-"}, kind


def test_moecheck_run_distributes_by_group(tmp_path):
    args = SimpleNamespace(profile=None, plugin=[], timeout=None, junitxml=None, workers="2", backend=[], format=[],
                           property=[])
    cmd, _ = cli_run._pytest_cmd(args, tmp_path)
    assert cmd[cmd.index("--dist") + 1] == "loadgroup"


def test_a_grouped_items_id_is_printed_as_pytest_takes_it():
    from moecheck.properties.pytest_plugin import _from_nodeid, plain_nodeid

    grouped = "test_properties.py::test_property[jit_toy-bf16-deterministic]@jit_toy:bf16"
    assert plain_nodeid(grouped) == "test_properties.py::test_property[jit_toy-bf16-deterministic]"
    assert plain_nodeid("a.py::t[x@y]") == "a.py::t[x@y]"  # an @ inside the parameters stays
    assert _from_nodeid(grouped) == {"backend": "jit_toy", "format": "bf16", "property": "deterministic"}


def test_template_items_interleave_by_backend_keeping_each_backends_order():
    from types import SimpleNamespace as N

    from moecheck.properties.pytest_plugin import interleave

    ids = [f"t.py::test_property[{b}-bf16-{p}]" for b in ("slow", "fast") for p in ("a", "b", "c")] + ["t.py::test_other"]
    got = [it.nodeid for it in interleave([N(nodeid=i) for i in ids])]
    assert got == ["t.py::test_other"] + [f"t.py::test_property[{b}-bf16-{p}]" for p in "abc" for b in ("slow", "fast")]
