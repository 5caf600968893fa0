"""Padding rules: hidden/intermediate sizes padded to an alignment, the unpadded result the truth.

Gate and up are padded separately: padding the concatenated [gate|up] rows at the end would shift
the up half (a real bug family). Padded weights and activations are zero, so a correct kernel on
padded operands returns, in the unpadded columns, exactly the unpadded answer.
"""
from __future__ import annotations

import torch
from moecheck.reference.activations import ActivationSpec, join_gate_up, split_gate_up
from moecheck.reference.errors import require


def round_up(n: int, align: int) -> int:
    require(align >= 1, f"alignment must be >= 1, got {align}")
    return -(-n // align) * align


def _pad_last2(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    require(rows >= t.shape[-2] and cols >= t.shape[-1], f"cannot pad {tuple(t.shape[-2:])} down to {(rows, cols)}")
    return torch.nn.functional.pad(t, (0, cols - t.shape[-1], 0, rows - t.shape[-2]))


def pad_w13(w13: torch.Tensor, inter: int, hidden: int, act: ActivationSpec) -> torch.Tensor:
    """[E, 2I, H] (or [E, I, H] ungated) -> padded to I=inter, H=hidden, halves kept in place."""
    if not act.gated:
        return _pad_last2(w13, inter, hidden)
    g, u = split_gate_up(w13.transpose(-1, -2), act)  # split along the 2I axis, moved last
    g, u = (_pad_last2(t.transpose(-1, -2), inter, hidden) for t in (g, u))
    return join_gate_up(g.transpose(-1, -2), u.transpose(-1, -2), act).transpose(-1, -2)


def pad_w2(w2: torch.Tensor, hidden: int, inter: int) -> torch.Tensor:
    return _pad_last2(w2, hidden, inter)


def pad_bias13(b: torch.Tensor, inter: int, act: ActivationSpec) -> torch.Tensor:
    if not act.gated:
        return torch.nn.functional.pad(b, (0, inter - b.shape[-1]))
    g, u = split_gate_up(b, act)
    g, u = (torch.nn.functional.pad(t, (0, inter - t.shape[-1])) for t in (g, u))
    return join_gate_up(g, u, act)


def pad_hidden(x: torch.Tensor, hidden: int) -> torch.Tensor:
    require(hidden >= x.shape[-1], f"cannot pad hidden {x.shape[-1]} down to {hidden}")
    return torch.nn.functional.pad(x, (0, hidden - x.shape[-1]))
