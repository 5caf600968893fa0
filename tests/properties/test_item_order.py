"""Template items run round robin by backend, so a run cut short by its time limit has reached every backend."""
from types import SimpleNamespace as N

from moecheck.properties.pytest_plugin import interleave


def test_template_items_interleave_by_backend_keeping_each_backends_order():
    ids = [f"t.py::test_property[{b}-bf16-{p}]" for b in ("slow", "fast") for p in ("a", "b", "c")] + ["t.py::test_other"]
    got = [it.nodeid for it in interleave([N(nodeid=i) for i in ids])]
    assert got == ["t.py::test_other"] + [f"t.py::test_property[{b}-bf16-{p}]" for p in "abc" for b in ("slow", "fast")]
