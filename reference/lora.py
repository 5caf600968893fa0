"""MoE-LoRA: per adapter and expert low-rank A/B on the gate and up slices of w13 and on w2.

delta(row) = scaling * B[adapter, expert] @ (A[adapter, expert] @ input_row); a token whose
adapter id is -1 gets no delta. LoRA reads the unquantized activations (the layer input for w13,
the activation output for w2), as vLLM's FusedMoE-LoRA does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from moecheck.reference.errors import require


@dataclass
class MoELoRA:
    gate_a: torch.Tensor  # [L, E, r, H]
    gate_b: torch.Tensor  # [L, E, I, r]
    up_a: torch.Tensor  # [L, E, r, H]
    up_b: torch.Tensor  # [L, E, I, r]
    down_a: torch.Tensor  # [L, E, r, I]
    down_b: torch.Tensor  # [L, E, H, r]
    scaling: float = 1.0

    def __post_init__(self):
        L, E, r, H = self.gate_a.shape
        I = self.gate_b.shape[2]
        want = {"gate_b": (L, E, I, r), "up_a": (L, E, r, H), "up_b": (L, E, I, r), "down_a": (L, E, r, I), "down_b": (L, E, H, r)}
        for name, shp in want.items():
            got = tuple(getattr(self, name).shape)
            require(got == shp, f"LoRA {name} must have shape {shp} (from gate_a {tuple(self.gate_a.shape)}), got {got}")

    @property
    def num_adapters(self) -> int:
        return self.gate_a.shape[0]

    def to(self, device) -> "MoELoRA":
        t = {k: getattr(self, k).to(device) for k in ("gate_a", "gate_b", "up_a", "up_b", "down_a", "down_b")}
        return MoELoRA(**t, scaling=self.scaling)


def _delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, expert: torch.Tensor, adapter: torch.Tensor,
           scaling: float, mid_dtype: torch.dtype | None) -> torch.Tensor:
    """Per-row delta, looping over the (adapter, expert) pairs present: memory stays O(rows)."""
    out = x.new_zeros(x.shape[0], b.shape[2], dtype=torch.float32)
    has = adapter >= 0
    if not bool(has.any()):
        return out
    key = adapter.clamp(min=0) * a.shape[1] + expert
    for kk in torch.unique(key[has]).tolist():
        rows = (key == kk) & has
        li, ei = divmod(kk, a.shape[1])
        mid = x[rows].float() @ a[li, ei].float().T
        if mid_dtype is not None:
            mid = mid.to(mid_dtype).float()
        out[rows] = scaling * (mid @ b[li, ei].float().T)
    return out


def lora_w13_delta(lora: MoELoRA, x_rows, expert, adapter, mid_dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate delta, up delta), each [rows, I], for rows of layer input x."""
    g = _delta(x_rows, lora.gate_a, lora.gate_b, expert, adapter, lora.scaling, mid_dtype)
    u = _delta(x_rows, lora.up_a, lora.up_b, expert, adapter, lora.scaling, mid_dtype)
    return g, u


def lora_w2_delta(lora: MoELoRA, y_rows, expert, adapter, mid_dtype=None) -> torch.Tensor:
    return _delta(y_rows, lora.down_a, lora.down_b, expert, adapter, lora.scaling, mid_dtype)
