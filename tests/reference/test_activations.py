"""Activations at hand-computed points; `partials` against torch.autograd (an independent oracle)."""
import math

import pytest
import torch
from moecheck.reference.activations import (
    ACTIVATIONS,
    ActivationSpec,
    apply,
    get_activation,
    partials,
    split_gate_up,
)
from moecheck.reference.errors import MoecheckError
from torch.testing import assert_close


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def _silu(x):
    return x / (1 + math.exp(-x))


GELU_1 = 0.8413447460685429  # x * Phi(x) at 1: 0.5 * (1 + erf(1 / sqrt 2))
GELU_TANH_1 = 0.8411919906082768  # 0.5 * (1 + tanh(sqrt(2 / pi) * 1.044715))
GELU_M1 = -0.15865525393145707  # -Phi(-1)


# --- values ---

def test_silu_gate_up_halves():
    # gate = [1, -2], up = [3, 0.5]
    assert_close(apply(_t([[1.0, -2.0, 3.0, 0.5]]), ACTIVATIONS["silu"]), _t([[3 * _silu(1), 0.5 * _silu(-2)]]))


def test_up_gate_order_swaps_the_halves():
    h = _t([[1.0, -2.0, 3.0, 0.5]])  # gate = [3, 0.5], up = [1, -2]
    out = apply(h, ACTIVATIONS["silu_up_gate"])
    assert_close(out, _t([[_silu(3), -2 * _silu(0.5)]]))
    assert not torch.equal(out, apply(h, ACTIVATIONS["silu"]))
    swapped = torch.cat([h[..., 2:], h[..., :2]], dim=-1)
    assert torch.equal(out, apply(swapped, ACTIVATIONS["silu"]))


def test_interleaved_takes_even_as_gate_and_odd_as_up():
    h = _t([[1.0, -2.0, 3.0, 0.5]])  # gate = [1, 3], up = [-2, 0.5]
    assert_close(apply(h, ActivationSpec("silu", interleaved=True)), _t([[-2 * _silu(1), 0.5 * _silu(3)]]))
    # up_gate + interleaved: even = up, odd = gate
    assert_close(apply(h, ActivationSpec("silu", order="up_gate", interleaved=True)),
                 _t([[1 * _silu(-2), 3 * _silu(0.5)]]))


def test_split_gate_up_returns_views_in_the_input_dtype():
    h = torch.arange(8, dtype=torch.bfloat16).reshape(1, 8)
    gate, up = split_gate_up(h, ACTIVATIONS["silu"])
    assert gate.dtype == torch.bfloat16 and gate.data_ptr() == h.data_ptr()
    assert torch.equal(gate, h[:, :4]) and torch.equal(up, h[:, 4:])
    gate, up = split_gate_up(h, ACTIVATIONS["swigluoai"])
    assert gate.tolist() == [[0, 2, 4, 6]] and up.tolist() == [[1, 3, 5, 7]]


def test_gelu_exact_and_tanh_gated():
    h = _t([[1.0, -1.0, 2.0, 3.0]])  # gate = [1, -1], up = [2, 3]
    assert_close(apply(h, ACTIVATIONS["gelu"]), _t([[2 * GELU_1, 3 * GELU_M1]]))
    assert_close(apply(_t([[1.0, 1.0]]), ACTIVATIONS["gelu_tanh"]), _t([[GELU_TANH_1]]))
    assert apply(_t([[1.0, 1.0]]), ACTIVATIONS["gelu"]) != apply(_t([[1.0, 1.0]]), ACTIVATIONS["gelu_tanh"])


def test_ungated_silu_and_gelu():
    assert_close(apply(_t([1.0, -2.0]), ActivationSpec("silu", gated=False)), _t([_silu(1), _silu(-2)]))
    assert_close(apply(_t([1.0, -1.0]), ActivationSpec("gelu", gated=False)), _t([GELU_1, GELU_M1]))


def test_relu2_is_ungated_squared_relu():
    spec = ACTIVATIONS["relu2"]
    assert not spec.gated
    h = _t([-2.0, 0.0, 0.5, 3.0])
    assert torch.equal(apply(h, spec), _t([0.0, 0.0, 0.25, 9.0]))
    d, none = partials(h, spec)
    assert none is None and torch.equal(d, _t([0.0, 0.0, 1.0, 6.0]))


def _oai(gate, up, alpha=1.702):
    return (up + 1) * gate / (1 + math.exp(-alpha * gate))


def test_swigluoai_values_and_clamps():
    spec = ACTIVATIONS["swigluoai"]
    assert (spec.interleaved, spec.alpha, spec.limit) == (True, 1.702, 7.0)
    # interleaved (gate, up) pairs: plain; gate clamped to 7; gate below -7 NOT clamped, up clamped to 7;
    # up clamped to -7
    h = _t([[1.0, 2.0, 10.0, 0.0, -10.0, 9.0, 0.5, -9.0]])
    expected = [[_oai(1, 2), _oai(7, 0), _oai(-10, 7), _oai(0.5, -7)]]
    assert_close(apply(h, spec), _t(expected))


def test_swigluoai_partials_vanish_where_clamped():
    spec = ACTIVATIONS["swigluoai"]
    d_gate, d_up = partials(_t([[10.0, 9.0, -10.0, -9.0, 1.0, 2.0]]), spec)
    assert d_gate[0, 0] == 0 and d_up[0, 0] == 0  # gate 10 > limit, up 9 > limit
    assert d_gate[0, 1] != 0 and d_up[0, 1] == 0  # gate -10: no lower clamp; up -9 < -limit
    assert d_gate[0, 2] != 0 and d_up[0, 2] != 0


def test_swigluoai_halves_differ_from_interleaved():
    h = _t([[1.0, 2.0, 3.0, -1.0]])
    halves = apply(h, ActivationSpec("swigluoai"))  # gate = [1, 2], up = [3, -1]
    assert_close(halves, _t([[_oai(1, 3), _oai(2, -1)]]))
    assert not torch.equal(halves, apply(h, ACTIVATIONS["swigluoai"]))


# --- partials vs autograd ---

_SPECS = sorted(ACTIVATIONS.items()) + [
    ("silu_ungated", ActivationSpec("silu", gated=False)),
    ("gelu_ungated", ActivationSpec("gelu", gated=False)),
    ("gelu_tanh_ungated", ActivationSpec("gelu_tanh", gated=False)),
    ("relu2_gated", ActivationSpec("relu2")),
    ("gelu_tanh_interleaved_up_gate", ActivationSpec("gelu_tanh", order="up_gate", interleaved=True)),
    ("swigluoai_small_limit", ActivationSpec("swigluoai", interleaved=True, alpha=1.0, limit=1.5)),
]


@pytest.mark.parametrize("name, spec", _SPECS, ids=[n for n, _ in _SPECS])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partials_match_autograd(name, spec, seed):
    # scale 5: swigluoai points land on both sides of its clamps
    h = (torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(seed)) * 5).requires_grad_()
    apply(h, spec).sum().backward()  # each output depends on one (gate, up) pair: grad = the partials
    d = partials(h.detach(), spec)
    if spec.gated:
        g_gate, g_up = split_gate_up(h.grad, spec)
        assert_close(d[0], g_gate)
        assert_close(d[1], g_up)
    else:
        assert d[1] is None
        assert_close(d[0], h.grad)


# --- dtypes, shapes, bad input ---

@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_float32_math_for_low_precision_input(name):
    spec = ACTIVATIONS[name]
    h = torch.randn(4, 8, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    out = apply(h, spec)
    assert out.dtype == torch.float32 and out.shape == (4, 4 if spec.gated else 8)
    assert torch.equal(out, apply(h.float(), spec))
    assert all(p is None or p.dtype == torch.float32 for p in partials(h, spec))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_empty_inputs(name):
    spec = ACTIVATIONS[name]
    assert apply(torch.zeros(0, 8), spec).shape == (0, 4 if spec.gated else 8)
    assert apply(torch.zeros(3, 0), spec).shape == (3, 0)


@pytest.mark.parametrize("make, match", [
    (lambda: ActivationSpec("swiglu"), "unknown activation kind"),
    (lambda: ActivationSpec("silu", order="gateup"), "unknown gate/up order"),
    (lambda: ActivationSpec("silu", gated=False, interleaved=True), "needs a gated activation"),
    (lambda: ActivationSpec("swigluoai", gated=False), "gated only"),
    (lambda: get_activation("swish"), "unknown activation preset"),
    (lambda: apply(torch.zeros(2, 7), ACTIVATIONS["silu"]), "even last dim"),
    (lambda: partials(torch.zeros(2, 7), ACTIVATIONS["swigluoai"]), "even last dim"),
    (lambda: apply(torch.zeros(2, 8, dtype=torch.int32), ACTIVATIONS["silu"]), "float tensor"),
    (lambda: apply(torch.tensor(1.0), ACTIVATIONS["relu2"]), "at least one dim"),
    (lambda: split_gate_up(torch.zeros(2, 8), ACTIVATIONS["relu2"]), "needs a gated activation"),
])
def test_bad_input(make, match):
    with pytest.raises(MoecheckError, match=match):
        make()


def test_ungated_odd_dim_is_fine():
    assert apply(torch.ones(2, 7), ACTIVATIONS["relu2"]).shape == (2, 7)
