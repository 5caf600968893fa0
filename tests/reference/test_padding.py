"""Padding hidden/intermediate sizes: the padded problem returns exactly the unpadded answer.

pad_w13 pads gate and up separately (each half keeps its place), pad_w2/pad_hidden add zero
columns/rows. With zero padding a kernel adds only exact zeros: x + 0*w = x, act(0) * 0 = 0, and
whole zero blocks leave every other block's scale alone (per-tensor and per-row amax, the NVFP4
global amax included). So the unpadded columns must be bit-identical for every format, and the
padded ones exactly zero. The planted bug — [gate|up] padded as one block at the end — must not be.

Bit-identical only if the GEMM's summation order does not change with K: MKL's AVX-512 sgemm orders
a zero-padded K differently (the last fp32 bit moved on such a host, not on AVX2 ones), so here the
reference's GEMM sums exact fp32 products in float64 and rounds once: the same on every host.
"""
from __future__ import annotations

import pytest
import torch
from moecheck.reference.activations import ACTIVATIONS, ActivationSpec, split_gate_up
from moecheck.reference.formats import FORMATS
from moecheck.reference.moe import ACT_EVERYWHERE, Rounding, fused_experts
from moecheck.reference.padding import pad_bias13, pad_hidden, pad_w2, pad_w13, round_up
from moecheck.reference.quantize import quantize
from moecheck.tests.reference.errmodel.dense import one_torch_thread  # noqa: F401 (autouse)


def _order_free_mm(a, w, groups, fast):
    cast = (lambda t: t.to(torch.bfloat16).double()) if fast else (lambda t: t.double())
    out, s = a.new_empty(a.shape[0], w.shape[1], dtype=torch.float32), 0
    for e, c in enumerate(groups.counts):
        if c:
            out[s:s + c] = (cast(a[s:s + c]) @ cast(w[e]).T).float()
            s += c
    return out


@pytest.fixture(autouse=True)
def order_free_gemm(monkeypatch):
    monkeypatch.setattr("moecheck.reference.moe.grouped_mm", _order_free_mm)

LAYOUTS = {
    "gate_up": ACTIVATIONS["silu"],
    "up_gate": ACTIVATIONS["silu_up_gate"],
    "interleaved": ACTIVATIONS["swigluoai"],
    "interleaved_up_gate": ActivationSpec("swigluoai", interleaved=True, order="up_gate"),
    "ungated": ACTIVATIONS["relu2"],
}
T, E, K = 10, 4, 2


def _blocks(fmt):
    """(hidden, inter, pad unit): sizes and padding made of whole blocks of every spec involved."""
    unit = max(fmt.k_multiple, 16)
    for spec in (fmt.weight, fmt.act):
        if spec is not None:
            unit = max([unit] + [b for b in spec.block if b is not None])
    return 2 * unit if unit < 128 else unit, unit, unit


def _problem(fmt, act, seed=0):
    H, I, unit = _blocks(fmt)
    g = torch.Generator().manual_seed(seed)
    rows = 2 * I if act.gated else I
    w13, w2 = torch.randn(E, rows, H, generator=g) / H**0.5, torch.randn(E, H, I, generator=g) / I**0.5
    return dict(x=torch.randn(T, H, generator=g).to(fmt.act_dtype), w13=w13, w2=w2,
                b13=torch.randn(E, rows, generator=g) * 0.1, b2=torch.randn(E, H, generator=g) * 0.1,
                weights=torch.rand(T, K, generator=g), ids=torch.randint(0, E, (T, K), generator=g),
                Hp=H + unit, Ip=I + unit)


def _run(fmt, act, x, w13, w2, b13, b2, weights, ids, rounding=Rounding()):
    q = (lambda w: quantize(w, fmt.weight)) if fmt.weight is not None else (lambda w: w.to(fmt.act_dtype))
    kw = {}
    if fmt.act is not None and fmt.act.static:
        kw = dict(a1_scale=torch.tensor(2.0**-7), a2_scale=torch.tensor(2.0**-6))
    return fused_experts(x, q(w13), q(w2), weights, ids, fmt=fmt, activation=act, w13_bias=b13, w2_bias=b2,
                         rounding=rounding, **kw).out


def _padded(p, act, bad=False):
    Hp, Ip = p["Hp"], p["Ip"]
    if bad:  # the planted bug: the concatenated [gate|up] rows padded as one block at the end
        rows = 2 * Ip if act.gated else Ip
        w13 = torch.nn.functional.pad(p["w13"], (0, Hp - p["w13"].shape[2], 0, rows - p["w13"].shape[1]))
        b13 = torch.nn.functional.pad(p["b13"], (0, rows - p["b13"].shape[1]))
    else:
        w13, b13 = pad_w13(p["w13"], Ip, Hp, act), pad_bias13(p["b13"], Ip, act)
    return dict(x=pad_hidden(p["x"], Hp), w13=w13, w2=pad_w2(p["w2"], Hp, Ip), b13=b13,
                b2=pad_hidden(p["b2"], Hp), weights=p["weights"], ids=p["ids"])


def _unpadded(p):
    return {k: p[k] for k in ("x", "w13", "w2", "b13", "b2", "weights", "ids")}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
def test_padding_is_exact(fmt_name, layout):
    fmt, act = FORMATS[fmt_name], LAYOUTS[layout]
    p = _problem(fmt, act)
    H = p["x"].shape[1]
    rounding = ACT_EVERYWHERE if fmt_name in ("bf16", "mxfp8") else Rounding()
    want = _run(fmt, act, **_unpadded(p), rounding=rounding)
    got = _run(fmt, act, **_padded(p, act), rounding=rounding)
    assert torch.equal(got[:, :H], want), f"max diff {(got[:, :H].float() - want.float()).abs().max().item()}"
    assert torch.equal(got[:, H:], torch.zeros_like(got[:, H:]))


@pytest.mark.parametrize("layout", ["gate_up", "up_gate"])
@pytest.mark.parametrize("fmt_name", ["bf16", "fp8_tensor", "mxfp4_mxfp8", "nvfp4", "int4_w_g64"])
def test_padding_concatenated_halves_is_caught(fmt_name, layout):
    fmt, act = FORMATS[fmt_name], LAYOUTS[layout]
    p = _problem(fmt, act, seed=1)
    H = p["x"].shape[1]
    want = _run(fmt, act, **_unpadded(p))
    got = _run(fmt, act, **_padded(p, act, bad=True))
    assert not torch.equal(got[:, :H], want)
    assert (got[:, :H].float() - want.float()).abs().max() > want.float().abs().max() * 2.0**-4


@pytest.mark.parametrize("layout", ["interleaved", "interleaved_up_gate", "ungated"])
def test_end_padding_is_right_when_halves_interleave(layout):
    """Interleaved pairs (and ungated rows) are one block: padding at the end is the right answer,
    so the planted bug above only exists for split halves."""
    act = LAYOUTS[layout]
    p = _problem(FORMATS["bf16"], act, seed=2)
    assert torch.equal(_padded(p, act, bad=True)["w13"], _padded(p, act)["w13"])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_pad_w13_keeps_each_half_in_place(layout):
    act = LAYOUTS[layout]
    w = torch.randn(3, 2 * 8 if act.gated else 8, 16)
    wp = pad_w13(w, 12, 24, act)
    assert wp.shape == (3, 2 * 12 if act.gated else 12, 24)
    assert torch.equal(wp[..., 16:], torch.zeros_like(wp[..., 16:]))
    if not act.gated:
        assert torch.equal(wp[:, :8, :16], w) and not bool(wp[:, 8:].any())
        return
    for old, new in zip(split_gate_up(w.transpose(1, 2), act), split_gate_up(wp.transpose(1, 2), act)):
        assert torch.equal(new[:, :16, :8], old)  # [E, H, I] views: the half's first I columns
        assert not bool(new[:, :, 8:].any())


def test_pad_sizes_and_errors():
    from moecheck.reference.errors import MoecheckError

    assert [round_up(n, 32) for n in (1, 32, 33, 64)] == [32, 32, 64, 64]
    with pytest.raises(MoecheckError, match="alignment must be >= 1"):
        round_up(5, 0)
    with pytest.raises(MoecheckError, match="cannot pad"):
        pad_w2(torch.zeros(2, 8, 8), 4, 8)
    with pytest.raises(MoecheckError, match="cannot pad hidden 8 down to 4"):
        pad_hidden(torch.zeros(2, 8), 4)
