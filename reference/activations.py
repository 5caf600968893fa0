"""Expert activations between the two GEMMs: GEMM1 output h -> activation -> GEMM2 input.

Gated kinds split h [..., 2I] into gate and up halves (in either order, or interleaved as gpt-oss
checkpoints store them) and return f(gate) * up; ungated kinds return f(h). Each kind is a record of
elementwise functions: f and f' on the gate, and an optional transform (with derivative) of the up
half, which only swigluoai uses. All math is float32 and results are float32: where a kernel rounds
the intermediate (bf16, or a re-quantization) is the caller's decision.

`partials` gives the elementwise derivatives of the output with respect to gate and up, for error
models that linearize the activation: d_out ~ d_out/d_gate * d_gate + d_out/d_up * d_up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from moecheck.reference.errors import require

Tensor = torch.Tensor
_ORDERS = ("gate_up", "up_gate")


@dataclass(frozen=True)
class ActivationSpec:
    kind: str  # a key of _KINDS: silu, gelu, gelu_tanh, relu2, swigluoai
    gated: bool = True
    order: str = "gate_up"  # gated: GEMM1 output is [gate | up] ("gate_up") or [up | gate] ("up_gate")
    interleaved: bool = False  # gpt-oss checkpoints: gate/up alternate along the last dim (order picks which is even)
    alpha: float = 1.702  # swigluoai: sigmoid slope
    limit: float = 7.0  # swigluoai: clamp

    def __post_init__(self):
        require(self.kind in _KINDS, f"unknown activation kind {self.kind!r}; known: {', '.join(sorted(_KINDS))}")
        require(self.order in _ORDERS, f"unknown gate/up order {self.order!r}; known: {', '.join(_ORDERS)}")
        require(self.gated or not self.interleaved, "interleaved gate/up needs a gated activation")
        require(self.gated or not _KINDS[self.kind].gated_only, f"activation {self.kind!r} is gated only")


def _sigmoid_grad(s: Tensor) -> Tensor:
    return s * (1 - s)


def _silu_grad(x, spec):
    s = torch.sigmoid(x)
    return s + x * _sigmoid_grad(s)


_INV_SQRT2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_TANH_C = math.sqrt(2 / math.pi)  # the tanh approximation: 0.5 x (1 + tanh(c (x + 0.044715 x^3)))
_TANH_A = 0.044715


def _gelu_grad(x, spec):
    cdf = 0.5 * (1 + torch.erf(x * _INV_SQRT2))
    return cdf + x * torch.exp(-0.5 * x * x) * _INV_SQRT_2PI


def _gelu_tanh_grad(x, spec):
    t = torch.tanh(_TANH_C * (x + _TANH_A * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _TANH_C * (1 + 3 * _TANH_A * x * x)


def _oai_gate(x, spec):
    c = x.clamp(max=spec.limit)
    return c * torch.sigmoid(spec.alpha * c)


def _oai_gate_grad(x, spec):
    # clamp passes the gradient on [.., limit] inclusive, as torch's clamp backward does
    c = x.clamp(max=spec.limit)
    s = torch.sigmoid(spec.alpha * c)
    return (s + spec.alpha * c * _sigmoid_grad(s)) * (x <= spec.limit)


def _oai_up(u, spec):
    return u.clamp(-spec.limit, spec.limit) + 1  # gpt-oss: the "+ 1" is part of the checkpoint's math


def _oai_up_grad(u, spec):
    return ((u >= -spec.limit) & (u <= spec.limit)).to(u.dtype)


def _identity(u, spec):
    return u


def _ones(u, spec):
    return torch.ones_like(u)


@dataclass(frozen=True)
class _Kind:
    f: Callable[[Tensor, ActivationSpec], Tensor]  # on the gate (ungated: on h)
    df: Callable[[Tensor, ActivationSpec], Tensor]
    up: Callable[[Tensor, ActivationSpec], Tensor] = _identity  # gated: out = f(gate) * up(up)
    dup: Callable[[Tensor, ActivationSpec], Tensor] = _ones
    gated_only: bool = False


_KINDS: dict[str, _Kind] = {
    "silu": _Kind(lambda x, s: F.silu(x), _silu_grad),
    "gelu": _Kind(lambda x, s: F.gelu(x), _gelu_grad),  # exact (erf)
    "gelu_tanh": _Kind(lambda x, s: F.gelu(x, approximate="tanh"), _gelu_tanh_grad),
    "relu2": _Kind(lambda x, s: F.relu(x) ** 2, lambda x, s: 2 * F.relu(x)),  # squared ReLU (Nemotron-H)
    "swigluoai": _Kind(_oai_gate, _oai_gate_grad, _oai_up, _oai_up_grad, gated_only=True),  # gpt-oss
}


def _check(h: Tensor, spec: ActivationSpec) -> None:
    require(h.is_floating_point(), f"activation input must be a float tensor, got {h.dtype}")
    require(h.dim() >= 1, "activation input must have at least one dim")
    if spec.gated:
        require(h.shape[-1] % 2 == 0, lambda: f"gated activation needs an even last dim (2I), got {h.shape[-1]}")


def split_gate_up(h: Tensor, spec: ActivationSpec) -> tuple[Tensor, Tensor]:
    """[..., 2I] -> (gate [..., I], up [..., I]) as views in h's dtype: halves, or even/odd if interleaved."""
    require(spec.gated, f"split_gate_up needs a gated activation, got ungated {spec.kind!r}")
    _check(h, spec)
    if spec.interleaved:
        first, second = h[..., 0::2], h[..., 1::2]
    else:
        i = h.shape[-1] // 2
        first, second = h[..., :i], h[..., i:]
    return (first, second) if spec.order == "gate_up" else (second, first)


def _halves(h: Tensor, spec: ActivationSpec) -> tuple[Tensor, Tensor]:
    # contiguous: torch's CPU kernels (erf, at least) can differ by an ulp between strided and dense
    # inputs, and a reference should not depend on the memory layout it was handed
    return tuple(t.float().contiguous() for t in split_gate_up(h, spec))


def apply(h: Tensor, spec: ActivationSpec, gate_dtype: torch.dtype | None = None) -> Tensor:
    """GEMM1 output [..., 2I] (gated) or [..., I] (ungated) -> [..., I] float32. gate_dtype: f(gate)
    is stored in that dtype before the multiply by up (vLLM's silu_and_mul rounds it to bf16)."""
    _check(h, spec)
    k = _KINDS[spec.kind]
    if not spec.gated:
        return k.f(h.float().contiguous(), spec)
    gate, up = _halves(h, spec)
    f = k.f(gate, spec)
    return (f if gate_dtype is None else f.to(gate_dtype).float()) * k.up(up, spec)


def partials(h: Tensor, spec: ActivationSpec) -> tuple[Tensor, Tensor | None]:
    """Elementwise (d out/d gate, d out/d up), each [..., I] float32; ungated: (d out/d x, None)."""
    _check(h, spec)
    k = _KINDS[spec.kind]
    if not spec.gated:
        return k.df(h.float().contiguous(), spec), None
    gate, up = _halves(h, spec)
    return k.df(gate, spec) * k.up(up, spec), k.f(gate, spec) * k.dup(up, spec)


ACTIVATIONS: dict[str, ActivationSpec] = {
    "silu": ActivationSpec("silu"),  # SwiGLU: Mixtral, Qwen-MoE, DeepSeek, Llama 4
    "silu_up_gate": ActivationSpec("silu", order="up_gate"),  # kernels whose w13 stacks up before gate
    "gelu": ActivationSpec("gelu"),  # GeGLU (erf)
    "gelu_tanh": ActivationSpec("gelu_tanh"),  # GeGLU, tanh approximation
    "swigluoai": ActivationSpec("swigluoai", interleaved=True),  # gpt-oss: alpha 1.702, limit 7
    "relu2": ActivationSpec("relu2", gated=False),  # ungated squared ReLU (Nemotron-H MoE)
}


def get_activation(name: str) -> ActivationSpec:
    require(name in ACTIVATIONS, f"unknown activation preset {name!r}; known: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def join_gate_up(gate: Tensor, up: Tensor, spec: ActivationSpec) -> Tensor:
    """Inverse of split_gate_up: (gate, up) [..., I] -> [..., 2I] in the spec's layout."""
    require(spec.gated, f"join_gate_up needs a gated activation, got ungated {spec.kind!r}")
    first, second = (gate, up) if spec.order == "gate_up" else (up, gate)
    if spec.interleaved:
        return torch.stack([first, second], dim=-1).flatten(-2)
    return torch.cat([first, second], dim=-1)
