"""The repository's shape is the design card's, and imports only run downwards.

Read from the files, not from a list kept by hand: every import statement of every module (also the
ones inside functions) is parsed, mapped to its part, and held against the layer order
reference <- backends <- properties <- e2e <- ci (tests may import anything).
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from moecheck.tests.checkout import IS_CHECKOUT, NOT_A_CHECKOUT, ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

LAYERS = {"reference": 0, "backends": 1, "properties": 2, "e2e": 3, "ci": 4, "tests": 5}
ROOT_ALLOWED = {"pyproject.toml", "README.md", ".gitignore", ".ci", "docs", *LAYERS}
pytestmark = pytest.mark.skipif(not IS_CHECKOUT, reason=NOT_A_CHECKOUT)


def _modules():
    for part in LAYERS:
        for path in sorted((ROOT / part).rglob("*.py")):
            yield part, path


def _imports(path: Path):
    """(line, imported module, level) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, 0
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.module or "", node.level


def _part_of(module: str) -> str | None:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 and bits[0] == "moecheck" and bits[1] in LAYERS else None


def test_root_holds_the_design_cards_parts_and_nothing_else():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode:
        pytest.skip(f"not a git checkout: {tracked.stderr.strip()}")
    top = {line.split("/")[0] for line in tracked.stdout.splitlines() if line}
    assert top <= ROOT_ALLOWED, f"unexpected at the root: {sorted(top - ROOT_ALLOWED)}"
    assert set(LAYERS) <= top, f"missing parts: {sorted(set(LAYERS) - top)}"


def test_imports_run_only_downwards():
    bad = []
    for part, path in _modules():
        for line, mod, level in _imports(path):
            target = _part_of(mod) if level == 0 else None
            if target is not None and LAYERS[target] > LAYERS[part]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({part}) imports {mod} ({target})")
    assert not bad, "imports that run back up:\n" + "\n".join(bad)


def test_no_relative_imports():
    """pytest imports test files by path (tests.x, properties.test_x); absolute `moecheck.` imports keep
    every module one object whatever name its file was first reached under."""
    bad = [f"{path.relative_to(ROOT)}:{line}" for _, path in _modules() for line, _, level in _imports(path) if level]
    assert not bad, "relative imports: " + ", ".join(bad)


def test_the_layer_rule_catches_an_import_that_runs_back_up(tmp_path):
    """The check above can fail: a reference module importing properties is seen."""
    f = tmp_path / "bad.py"
    f.write_text("def f():\n    from moecheck.properties.case import Case\n")
    (line, mod, level), = _imports(f)
    assert (_part_of(mod), level, line) == ("properties", 0, 2) and LAYERS["properties"] > LAYERS["reference"]


def test_every_package_folder_is_in_the_build():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = cfg["package-dir"]
    assert set(dirs) == {f"moecheck.{p}" for p in LAYERS} and all(dirs[f"moecheck.{p}"] == p for p in LAYERS)
    on_disk = {"moecheck." + ".".join(p.parent.relative_to(ROOT).parts)
               for part in LAYERS for p in (ROOT / part).rglob("__init__.py")}
    assert set(cfg["packages"]) == on_disk, (f"not built: {sorted(on_disk - set(cfg['packages']))}; "
                                             f"listed without a folder: {sorted(set(cfg['packages']) - on_disk)}")


@pytest.mark.slow
def test_the_wheel_installs_moecheck_and_nothing_else(tmp_path):
    """`pip install .` puts only moecheck/ and its dist-info in site-packages, with the e2e data inside."""
    src = tmp_path / "src"  # a copy: setuptools writes build/ beside the sources, and stale files there ship
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".hypothesis",
                                                              "moecheck-report*", ".device*", ".whl"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
    if r.returncode and "No module named" in r.stderr:
        pytest.skip(f"cannot build here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = tmp_path.glob("moecheck-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"moecheck", whl.name.split("-")[0] + "-" + whl.name.split("-")[1] + ".dist-info"}, sorted(top)
    for needed in ("moecheck/e2e/models/tiny_qwen3_moe/model.safetensors", "moecheck/e2e/tasks/moecheck_gsm8k_local.yaml",
                   "moecheck/e2e/data/arith_test.jsonl", "moecheck/e2e/configs/tiny_qwen3_moe.toml",
                   "moecheck/properties/test_properties.py", "moecheck/ci/gpu_env.sh"):
        assert needed in names, f"{needed} missing from the wheel"
    assert "moecheck/__init__.py" not in names  # a namespace: the parts are the packages
