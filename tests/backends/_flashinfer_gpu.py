"""Shared skip logic and inputs of the FlashInfer GPU tests (not a test module)."""
from __future__ import annotations

import functools
import importlib
import importlib.util

import pytest
import torch


@functools.cache
def why_not() -> str | None:
    """None when FlashInfer can be called here, else the exact reason."""
    for mod in ("flashinfer", "tvm_ffi"):
        try:
            if importlib.util.find_spec(mod) is None:
                return f"package {mod!r} not installed"
        except (ImportError, ValueError):
            return f"package {mod!r} not installed"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU, none visible"
    try:
        importlib.import_module("flashinfer")
    except Exception as e:  # noqa: BLE001 - any import failure is the reason to skip
        return f"import flashinfer failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def need_flashinfer():
    why = why_not()
    if why:
        pytest.skip(why)


def arch() -> str:
    cc = torch.cuda.get_device_capability()
    return f"sm_{cc[0]}{cc[1]}"


# e8m0_underflow: block amax / 448 below 2^-127, so the E8M0 scale clamps to code 0 (2^-127, an fp32
# subnormal): the case of flashinfer issue #2440 (mxfp8_quantize gave +-448 / NaN for tiny inputs)
VALUE_KINDS = ("normal", "outliers", "zero_blocks", "tiny", "e8m0_underflow", "boundary")


def values(m: int, k: int, kind: str, seed: int, elem_max: float, block: int) -> torch.Tensor:
    """bf16 [m, k] inputs that hit the quantizers' edge cases (block = the scale block along K)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    if kind == "outliers":
        x[:, torch.randint(0, k, (max(1, k // 64),), generator=g)] *= 100.0
    elif kind == "zero_blocks":  # every other scale block all zero (MX: E8M0 code 0, codes 0)
        x.view(m, k // block, block)[:, 1::2] = 0.0
    elif kind == "tiny":
        x = x * 2.0**-100
    elif kind == "e8m0_underflow":
        x = x * 2.0**-126
    elif kind == "boundary":  # block maxima exactly elem_max * 2^j (RCEIL/FLOOR agree), or one bf16 ulp above
        nb = k // block
        top = elem_max * torch.exp2(torch.randint(-4, 4, (m, nb), generator=g).float())
        xb = x.view(m, nb, block)
        xb = xb / xb.abs().amax(-1, keepdim=True).clamp(min=1e-30) * top[..., None] * 0.5
        bump = torch.rand(m, nb, generator=g) < 0.5
        xb[..., 0] = torch.where(bump, top * (1 + 2.0**-7), top)  # bf16 keeps 7 fraction bits: the next value up
        x = xb.reshape(m, k)
    return x.to(torch.bfloat16).cuda()


def route_and_compare(logits, bias, spec):
    """The router backend on a problem carrying only logits, judged by the shared routing error model."""
    from moecheck.backends.problem import MoEProblem
    from moecheck.reference.errmodel.routing import compare_routing
    from moecheck.reference.formats import get_format

    t, e = logits.shape
    p = MoEProblem(hidden_states=torch.zeros(t, 8, dtype=torch.bfloat16, device=logits.device), topk_weights=None,
                   topk_ids=None, w13=torch.zeros(e, 2, 8), w2=torch.zeros(e, 8, 1), fmt=get_format("bf16"),
                   router_logits=logits, router=spec, router_bias=bias)
    from moecheck.backends.flashinfer import routing

    w, ids = routing.TOPK_DEEPSEEK.route(None, p)
    return compare_routing(w, ids, logits.float(), spec, bias.float(), routing.TOPK_DEEPSEEK.capability.budget("bf16"))
