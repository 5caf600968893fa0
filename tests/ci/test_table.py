"""The run table: one row per backend x format with outcome counts, the worst max / rms / bias, and a
line per failure or crash with its message and repro; columns fit the longest names."""
from __future__ import annotations

from moecheck.ci import table

ROWS = [
    {"backend": "a_backend_with_a_rather_long_name", "format": "mxfp4_mxfp8_rceil", "property": "matches_reference",
     "outcome": "failed", "max_norm_err": 1.5, "rms_norm_err": 0.2, "bias": -0.01, "message": "MAX max normalized error 1.5",
     "repro": "moecheck repro --case '{}'"},
    {"backend": "a_backend_with_a_rather_long_name", "format": "mxfp4_mxfp8_rceil", "property": "edge:empty_batch",
     "outcome": "refused", "message": "ValueError: no tokens"},
    {"backend": "b", "format": "bf16", "property": "pinned:x", "outcome": "crashed", "message": "Fatal Python error: Segmentation fault",
     "repro": "moecheck repro --case '{\"a\": 1}'", "case_file": "cases/x.json"},
    {"backend": "b", "format": "bf16", "property": "kernel_ran", "outcome": "passed", "max_norm_err": None},
]


def test_rows_align_and_carry_the_worst_numbers():
    lines = table.render(ROWS).splitlines()
    head = lines[0]
    assert all(line.index(" ") >= 0 for line in lines)
    col = head.index("format")
    assert all(line[col - 2:col] == "  " for line in lines[1:])  # the format column starts in the same place
    assert "1.5" in lines[1] and "0.2" in lines[1] and "-0.01" in lines[1] and "FAILED matches_reference" in lines[1]
    assert "CRASHED pinned:x" in lines[2]


def test_findings_give_message_repro_and_case_file():
    text = table.findings(ROWS)
    assert "FAILED a_backend_with_a_rather_long_name mxfp4_mxfp8_rceil matches_reference: MAX" in text
    assert "CRASHED b bf16 pinned:x: Fatal Python error: Segmentation fault" in text
    assert text.count("reproduce: moecheck repro") == 2 and "case file: cases/x.json" in text


def test_by_property_grid_gives_examples_per_property_and_names_what_did_not_pass():
    rows = [*ROWS, {"backend": "b", "format": "bf16", "property": "edge:one_token", "outcome": "passed"},
            {"backend": "b", "format": "bf16", "property": "matches_reference", "outcome": "passed", "examples_run": 20}]
    lines = table.by_property(rows).splitlines()
    head = lines[0].split()
    assert head[:4] == ["backend", "format", "match", "ran"] and head[-4:-2] == ["edge", "pinned"]
    a, b = lines[1].split(), lines[2].split()
    assert a[2:6] == ["F", ".", "0/1", "."] and "REFUSED edge:empty_batch" in lines[1]  # refused: run, not passed
    assert b[2] == "P20" and b[3] == "P" and b[4] == "1/1" and b[5] == "0/1" and "CRASHED pinned:x" in lines[2]
