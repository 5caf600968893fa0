"""Meta-tests: the properties catch planted bugs in a toy backend and pass the correct one."""
import dataclasses
import os
import subprocess
import sys

import pytest
from moecheck.backends import registry
from moecheck.properties.case import Case
from moecheck.properties.checks import check
from moecheck.tests.backends import example_plugin  # noqa: F401  (registers toy_moe)
from moecheck.tests.checkout import IS_CHECKOUT, NOT_A_CHECKOUT, ROOT

CASES = [Case(tokens=t, hidden=64, inter=32, experts=4, top_k=2, seed=s) for t, s in ((9, 1), (17, 2), (5, 3))]


def _toy(bug):
    b = dataclasses.replace(registry.get("toy_moe"))
    b.bug = bug
    return b


@pytest.mark.parametrize("fmt", ["bf16", "fp8_token_channel"])
@pytest.mark.parametrize("prop", ["matches_reference", "output_contract", "kernel_ran"])
def test_correct_toy_passes(fmt, prop):
    for c in CASES:
        assert check(_toy(""), c.with_(backend="toy_moe", format=fmt, property=prop), "cpu").verdict == "pass"


@pytest.mark.parametrize("bug,fmt,prop", [
    ("swapped_scales", "fp8_token_channel", "matches_reference"),
    ("missing_renorm", "bf16", "matches_reference"),
    ("unwritten_last_rows", "bf16", "output_contract"),
])
def test_planted_bug_is_caught(bug, fmt, prop):
    outs = [check(_toy(bug), c.with_(backend="toy_moe", format=fmt, property=prop), "cpu") for c in CASES]
    assert all(o.verdict == "fail" for o in outs), [o.message for o in outs]


def test_kernel_not_called_is_caught(monkeypatch):
    b = _toy("")
    b.spies = ("moecheck.tests.backends.example_plugin:ToyMoE",)  # never called during run
    out = check(b, CASES[0].with_(backend="toy_moe", property="kernel_ran"), "cpu")
    assert out.verdict == "fail" and "never entered" in out.message


def test_plugin_loads_through_env_and_lists():
    env = dict(os.environ, MOECHECK_PLUGINS="moecheck.tests.backends.example_plugin")
    res = subprocess.run([sys.executable, "-m", "moecheck.ci.cli", "backends"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "toy_moe" in res.stdout


def test_broken_plugin_is_listed_unavailable():
    env = dict(os.environ, MOECHECK_PLUGINS="no_such_module_xyz")
    res = subprocess.run([sys.executable, "-m", "moecheck.ci.cli", "backends"], capture_output=True, text=True, env=env)
    assert "plugin:no_such_module_xyz" in res.stdout and "unavailable" in res.stdout


def _bash_block(readme: str, heading: str) -> list[str]:
    section = readme.split(f"## {heading}\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_commands_match_ci():
    """.ci/run runs the README's install and test commands, as written there and in that order."""
    if not IS_CHECKOUT:
        pytest.skip(NOT_A_CHECKOUT)
    readme = (ROOT / "README.md").read_text()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    want = _bash_block(readme, "Install") + _bash_block(readme, "Test")
    assert any("pip install" in line for line in want) and any(line.startswith("pytest") for line in want)
    at = [ci.index(line) for line in want]  # ValueError names a README line .ci/run lacks
    assert at == sorted(at), f"{want} run out of order in .ci/run"


def test_worker_gpu_pinning_round_robin():
    from moecheck.properties.pytest_plugin import pin_worker_gpu

    envs = [{"PYTEST_XDIST_WORKER": f"gw{i}", "CUDA_VISIBLE_DEVICES": "0,1"} for i in range(4)]
    assert [pin_worker_gpu(e) for e in envs] == ["0", "1", "0", "1"]
    assert pin_worker_gpu({"PYTEST_XDIST_WORKER": "gw3", "MOECHECK_GPUS": "3", "CUDA_VISIBLE_DEVICES": ""}) == "0"
    assert pin_worker_gpu({}) is None


def test_workers_share_the_cores_instead_of_each_taking_all():
    import os

    import torch
    from moecheck.properties.pytest_plugin import share_cpu_threads

    cores, before = len(os.sched_getaffinity(0)), torch.get_num_threads()
    try:
        assert share_cpu_threads({"PYTEST_XDIST_WORKER_COUNT": str(cores)}) == 1
        assert share_cpu_threads({"PYTEST_XDIST_WORKER_COUNT": "1"}) == cores
        assert share_cpu_threads({"PYTEST_XDIST_WORKER_COUNT": "2", "OMP_NUM_THREADS": "4"}) is None  # the user's
        assert share_cpu_threads({}) is None  # not an xdist worker: left alone
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("workers, gpus, share", [(12, 1, 12), (8, 4, 2), (3, 2, 2), (1, 1, None)])
def test_workers_on_one_gpu_split_its_memory(monkeypatch, workers, gpus, share):
    import torch
    from moecheck.properties import pytest_plugin as pp

    got = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, *a: got.append(f))
    monkeypatch.setattr(pp, "_GPUS", [gpus])
    monkeypatch.setattr(pp, "_SHARED", [])
    frac = pp.share_gpu_memory({"PYTEST_XDIST_WORKER_COUNT": str(workers)})
    want = None if share is None else pp.GPU_SHARE / share
    assert frac == want and got == ([] if want is None else [want])
    assert pp.share_gpu_memory({"PYTEST_XDIST_WORKER_COUNT": str(workers)}) == frac and len(got) <= 1  # once


@pytest.mark.parametrize("workers, gpus, share, want", [(4, 1, "0.5", 0.5 / 4), (8, 4, "0.3", 0.3 / 2), (1, 1, "0.25", 0.25),
                                                        (0, 1, "0.4", 0.4), (2, 1, "", 0.95 / 2)])
def test_suites_sharing_a_gpu_split_their_share(monkeypatch, workers, gpus, share, want):
    """MOECHECK_GPU_SHARE is this suite's fraction of the GPU, split among its workers (a lone one too)."""
    import torch
    from moecheck.properties import pytest_plugin as pp

    got = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, *a: got.append(f))
    monkeypatch.setattr(pp, "_GPUS", [gpus])
    monkeypatch.setattr(pp, "_SHARED", [])
    env = {"PYTEST_XDIST_WORKER_COUNT": str(workers), "MOECHECK_GPU_SHARE": share}
    assert pp.share_gpu_memory(env) == pytest.approx(want) and got == [pytest.approx(want)]


@pytest.mark.parametrize("share", ["0", "1.5", "half", "nan"])
def test_a_bad_gpu_share_is_an_error(monkeypatch, share):
    from moecheck.properties import pytest_plugin as pp

    monkeypatch.setattr(pp, "_SHARED", [])
    with pytest.raises(ValueError, match="MOECHECK_GPU_SHARE"):
        pp.share_gpu_memory({"PYTEST_XDIST_WORKER_COUNT": "4", "MOECHECK_GPU_SHARE": share})


def test_workers_ask_for_expandable_segments_unless_the_user_chose(tmp_path):
    """A fresh interpreter importing the plugin: the allocator setting is there, and a user's own wins."""
    code = "import os, moecheck.properties.pytest_plugin; print(os.environ['PYTORCH_CUDA_ALLOC_CONF'])"
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert got.stdout.strip() == "expandable_segments:True"
    env["PYTORCH_CUDA_ALLOC_CONF"] = "max_split_size_mb:64"
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert got.stdout.strip() == "max_split_size_mb:64"
