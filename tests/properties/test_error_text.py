"""What a result keeps of a backend's exception: enough to triage without the log (the H200 runs of
2026-12-02/03 kept 'AssertionError' alone, and the code excerpt of a Triton compile error, not its assert)."""
from __future__ import annotations

from moecheck.properties.harness import BackendRaised, first_lines


def _raise(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the exception under test
        return e
    raise AssertionError("did not raise")


def test_a_bare_assert_names_the_line_that_raised():
    def bare():
        x = 3
        if x % 64:  # what a library's bare `assert` raises (pytest rewrites asserts in this file)
            raise AssertionError

    text = first_lines(_raise(bare))
    assert text.startswith("AssertionError: at ") and "test_error_text.py:" in text and "raise AssertionError" in text
    assert "if x % 64" not in text and "raise AssertionError" in str(BackendRaised("prepare", _raise(bare)))


def test_a_long_message_keeps_its_end():
    code = "\n".join(f"    line {i} of the kernel" for i in range(12))
    e = _raise(lambda: (_ for _ in ()).throw(RuntimeError(f"at 56:8:\n{code}\n    ^\nstatic_assert BLOCK_N % 256 == 0 failed")))
    text = first_lines(e)
    assert text.startswith("RuntimeError: at 56:8: | line 0") and text.endswith("static_assert BLOCK_N % 256 == 0 failed")
    assert "..." in text and "line 6 of" not in text


def test_a_short_message_is_kept_whole():
    assert first_lines(ValueError("one\ntwo")) == "ValueError: one | two"
    assert first_lines(ValueError()) == "ValueError"  # no text and no traceback: the name alone
