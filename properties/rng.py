"""Random tensors for building cases: torch's CPU generator, or a counter-based stream made on the device.

`TorchRNG` is torch.Generator on the CPU: cases recorded before 2026-12-03 (`Case.gen == 1`) rebuild
bit for bit with it. Drawing a GPU profile's weights there cost seconds per example (randn and the
quantizer on the host, then a copy), so GPU draws use `Stream` (`gen == 2`): each value is a hash
of (seed, draw number, index), computed with integer ops and one exactly rounded fp32 multiply, so
it is the same bits on every CPU and GPU (torch's CUDA generator is not: its stream depends on the
launch grid, so on the GPU model). Its normals are Irwin-Hall sums of four 16-bit uniforms: mean 0,
variance 1, bounded at +-sqrt(12) (randn passes that 1 time in 2000; outliers are drawn on purpose).
"""
from __future__ import annotations

import functools
import math

import torch

M32 = 0xFFFFFFFF
CHUNK = 1 << 24  # elements hashed at a time: bounds the int64 temporaries to a few hundred MB


SD = math.sqrt(12.0 / (65536.0**2 - 1)) / 2  # 1 / the standard deviation of a sum of four uniforms on 0..65535


@functools.cache
def _triton():
    """properties/rng_triton.py where Triton imports (one launch per draw on CUDA), else None."""
    try:
        from moecheck.properties import rng_triton
    except ImportError:
        return None
    return rng_triton


def _mix(x):
    """A 32-bit integer hash (xor-shift-multiply); on Python ints or int64 tensors holding [0, 2^32).
    Both multipliers are below 2^31, so no product leaves int64."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & M32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & M32
    return x ^ (x >> 15)


class TorchRNG:
    """torch.Generator on the CPU; tensors are made there and moved by the caller."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def randn(self, *shape, device=None) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g)

    def rand(self, *shape, device=None) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g)

    def randint(self, lo: int, hi: int, shape, device=None) -> torch.Tensor:
        return torch.randint(lo, hi, shape, generator=self.g)

    def randperm(self, n: int, device=None) -> torch.Tensor:
        return torch.randperm(n, generator=self.g)

    def magnitudes(self, *shape, device=None) -> torch.Tensor:
        """2^U(-2, 2)."""
        return torch.exp2(torch.rand(*shape, generator=self.g) * 4 - 2)


class Stream:
    """Counter-based: draw number d of seed s, element i, is a hash of (s, d, i), wherever it is made."""

    def __init__(self, seed: int, device="cpu"):
        self.key = _mix(_mix(seed & M32) ^ ((seed >> 32) & M32))
        self.draws = 0
        self.device = torch.device(device)

    def _next_key(self) -> int:
        k = _mix((self.key + _mix(self.draws)) & M32)
        self.draws += 1
        return k

    @staticmethod
    def _words(n: int, per: int) -> None:
        if n * per >= 1 << 32:  # indices are 32-bit: a longer draw would repeat itself
            raise ValueError(f"a Stream draw holds at most 2^32 words, asked for {n} x {per}")

    def _bits(self, n: int, per: int, device) -> torch.Tensor:
        """[n, per] 32-bit uniform integers (int64) of the next draw."""
        self._words(n, per)
        k = self._next_key()
        dev = torch.device(device) if device is not None else self.device
        out = torch.empty(n * per, dtype=torch.int64, device=dev)
        for s in range(0, n * per, CHUNK):
            i = torch.arange(s, min(s + CHUNK, n * per), dtype=torch.int64, device=dev)
            out[s:s + i.numel()] = _mix((_mix(i) + k) & M32)
        return out.view(n, per)

    def randn(self, *shape, device=None) -> torch.Tensor:
        n = math.prod(shape)
        dev = torch.device(device) if device is not None else self.device
        if dev.type == "cuda" and _triton() is not None:
            self._words(n, 2)
            out = torch.empty(shape, dtype=torch.float32, device=dev)
            _triton().randn_into(out, self._next_key(), SD)
            return out
        b = self._bits(n, 2, dev)
        s = (b & 0xFFFF).sum(1) + (b >> 16).sum(1) - 2 * 0xFFFF  # 4 uniforms on 0..65535, centered: exact
        return (s.float() * torch.tensor(SD, dtype=torch.float32, device=s.device)).view(shape)  # |s| < 2^18: exact

    def rand(self, *shape, device=None) -> torch.Tensor:
        """Uniform [0, 1) on a 2^-24 grid (exact in fp32)."""
        b = self._bits(math.prod(shape), 1, device)
        return torch.ldexp((b >> 8).float().view(shape), torch.tensor(-24, device=b.device))

    def randint(self, lo: int, hi: int, shape, device=None) -> torch.Tensor:
        if not hi > lo:
            raise ValueError(f"randint needs hi > lo, got [{lo}, {hi})")
        return (self._bits(math.prod(shape), 1, device) % (hi - lo) + lo).view(shape)

    def randperm(self, n: int, device=None) -> torch.Tensor:
        return torch.argsort(self._bits(n, 1, device).view(n) * n + torch.arange(n, device=device or self.device))

    def magnitudes(self, *shape, device=None) -> torch.Tensor:
        """m * 2^e, m uniform in [1, 2), e in {-2, -1, 0, 1}: magnitudes over [1/4, 4) with no
        transcendental function, whose last bit could differ between devices."""
        m = 1.0 + self.rand(*shape, device=device)
        e = self.randint(-2, 2, shape, device=device)
        return torch.ldexp(m, e)


GENERATORS = {1: "torch's CPU generator", 2: "moecheck's counter-based stream"}  # Case.gen


def rng(gen: int, seed: int, device):
    """gen 1: tensors made on the CPU (and moved); gen 2: made on `device`, the same bits on any device."""
    return TorchRNG(seed) if gen == 1 else Stream(seed, device)
