"""The poison bit patterns: quiet NaNs with a payload that no computation produces.

The harness fills output buffers and recycled allocations with them; adapters that own a workspace
(vLLM's workspace manager) fill it too. Kept here, below both, so each reads the same pattern.
"""
from __future__ import annotations

import torch

POISON = {torch.bfloat16: 0x7FA5, torch.float16: 0x7E5A}


def pattern_i16(dtype: torch.dtype) -> int:
    """The pattern as a signed int16, for `int16` views and fills."""
    v = POISON[dtype]
    return v - 65536 if v > 32767 else v


def poisoned(t: torch.Tensor) -> torch.Tensor:
    """Mask of elements still holding the poison pattern."""
    return t.view(torch.int16) == pattern_i16(t.dtype)
