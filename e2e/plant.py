"""A planted bug in a checkpoint: a copy whose experts have gate and up swapped, to serve and gate.

A served gate can only be trusted if a wrong server fails it. `swap_gate_up(SRC, DST)` writes DST,
a copy of the checkpoint directory SRC whose every expert's gate and up projection weights are
exchanged (silu(up) * gate instead of silu(gate) * up): serve DST with any engine and the gate must
fail. Per-expert layouts only (Qwen-MoE/OLMoE/DeepSeek `gate_proj`/`up_proj`, Mixtral `w1`/`w3`);
a checkpoint with fused `gate_up_proj` tensors is refused.

    python -m moecheck.e2e.plant SRC DST
"""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from moecheck.reference.errors import MoecheckError, require

PAIRS = (("gate_proj", "up_proj"), ("w1", "w3"))  # (gate, up) names of per-expert weights
_EXPERT = re.compile(r"\.experts\.\d+\.")


def _partner(key: str) -> str | None:
    if not _EXPERT.search(key):
        return None
    for gate, up in PAIRS:
        for a, b in ((gate, up), (up, gate)):
            if f".{a}." in key:
                return key.replace(f".{a}.", f".{b}.")
    return None


def swap_gate_up(src: str | Path, dst: str | Path) -> int:
    """Write the planted copy; returns how many expert tensors were swapped."""
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    files = sorted(src.glob("*.safetensors"))
    require(bool(files), f"{src} holds no *.safetensors checkpoint")
    require(not dst.exists() or not any(dst.iterdir()), f"{dst} exists and is not empty")
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, dst / f.name)
    tensors = {}
    where = {}
    for f in files:
        for k, v in load_file(str(f)).items():
            tensors[k], where[k] = v, f.name
    require(not any("gate_up_proj" in k for k in tensors), f"{src} has fused gate_up_proj tensors: not supported")
    swapped = {}
    for k, v in tensors.items():
        other = _partner(k)
        if other is not None:
            require(other in tensors and tensors[other].shape == v.shape, f"{src}: {k} has no same-shaped partner {other}")
            swapped[k] = tensors[other]
    require(bool(swapped), f"{src}: no per-expert gate/up weights found (names {PAIRS})")
    for f in files:
        part = {k: swapped.get(k, v).contiguous() for k, v in tensors.items() if where[k] == f.name}
        save_file(part, str(dst / f.name), metadata={"format": "pt"})
    return len(swapped)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m moecheck.e2e.plant SRC DST", file=sys.stderr)
        return 2
    try:
        n = swap_gate_up(*argv)
    except (MoecheckError, OSError) as e:
        print(f"moecheck plant: {e}", file=sys.stderr)
        return 2
    print(f"wrote {argv[1]}: gate and up swapped in {n} expert tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
