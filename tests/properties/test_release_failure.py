"""A failed test's frames (and the case tensors they hold) are freed before the worker's next test: pytest
keeps the last failure in sys.last_* for post-mortem debugging, which on a GPU worker held gigabytes."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

FAILING_THEN_CHECK = textwrap.dedent('''
    import gc, weakref

    class Big:  # stands in for a case's tensors
        pass

    REF = []

    def test_a_fails_holding_a_case():
        case = Big()
        REF.append(weakref.ref(case))
        assert case is None  # fails; its frame holds `case`

    def test_b_the_case_is_gone():
        assert REF and REF[0]() is None, "the failed test's frame still holds its case"
''')


def _run(tmp_path, *plugin_args):
    (tmp_path / "test_leak.py").write_text(FAILING_THEN_CHECK)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           *plugin_args, str(tmp_path / "test_leak.py")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_the_plugin_frees_a_failed_tests_frames(tmp_path):
    with_plugin = _run(tmp_path, "-p", "moecheck.properties.pytest_plugin")
    assert "1 failed, 1 passed" in with_plugin.stdout, with_plugin.stdout[-2000:]
    without = _run(tmp_path)  # planted: plain pytest keeps them, so the check above can fail
    assert "2 failed" in without.stdout and "still holds its case" in without.stdout, without.stdout[-2000:]


def test_release_failure_only_acts_after_a_failure():
    from types import SimpleNamespace

    from moecheck.properties.pytest_plugin import release_failure

    assert not release_failure(SimpleNamespace())
    mod = SimpleNamespace(last_type=ValueError, last_value=ValueError("x"), last_traceback=None)
    assert release_failure(mod) and not hasattr(mod, "last_value") and not hasattr(mod, "last_type")
