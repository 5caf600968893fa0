"""On a machine with several GPUs, under pytest -n N: each xdist worker sees exactly the one GPU that
round-robin assigns it (gwK -> GPU K mod count), checked by UUID against nvidia-smi. Run with
`pytest -n 4 tests/backends/test_gpu_pinning.py` (docs/gpu-plan.md, step 7)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import torch


def _smi_uuids() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    return re.findall(r"\(UUID: (GPU-[0-9a-f-]+)\)", out)


@pytest.mark.gpu
@pytest.mark.parametrize("i", range(4))  # several tests, so every worker gets at least one
def test_worker_sees_its_round_robin_gpu(i):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        pytest.skip("not under pytest-xdist: nothing was pinned")
    uuids = _smi_uuids()
    if len(uuids) < 2:
        pytest.skip(f"needs >= 2 GPUs, nvidia-smi lists {len(uuids)}")
    want = int(worker[2:]) % len(uuids)
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == str(want)
    assert torch.cuda.device_count() == 1
    got = str(torch.cuda.get_device_properties(0).uuid)
    assert uuids[want].removeprefix("GPU-") == got.removeprefix("GPU-"), f"{worker}: sees {got}, want {uuids[want]}"
