"""CPU tests of the matmul_ogs MXFP4 adapter (backends/vllm/triton_kernels_ogs.py) with vLLM stubbed.

What vLLM 0.24 hands `_swizzle_mxfp4` (quantization/mxfp4.py create_weights, then oracle/mxfp4.py
convert_to_mxfp4_moe_kernel_format, TRITON_BACKENDS branch): the checkpoint tensors as registered,
w13_weight [E, 2I, H/2] uint8 (gate/up rows interleaved, element 2i of a byte pair in the low nibble),
w13_weight_scale [E, 2I, H/32] uint8 E8M0, w2_weight [E, H, I/2], w2_weight_scale [E, H, I/32]; biases
fp32 [E, 2I] and [E, H] go to mxfp4_w4a16_moe_quant_config. The stub records what the adapter passes.
"""
from __future__ import annotations

import sys
import types

import torch
from moecheck.backends import registry
from moecheck.backends.vllm import triton_kernels_ogs as OGS
from moecheck.properties.case import Case, build
from moecheck.reference.activations import ACTIVATIONS, split_gate_up
from moecheck.reference.codecs import e8m0_decode
from moecheck.reference.layouts import unpack_nibbles


def _stub_vllm(monkeypatch) -> dict:
    seen: dict = {"swizzle": [], "qc": None}

    def swizzle(quant_tensor, scale, num_warps=8):
        seen["swizzle"].append((quant_tensor, scale, num_warps))
        return ("W", quant_tensor.shape), "flex", ("S", scale.shape)

    def quant_config(**kw):
        seen["qc"] = kw
        return kw

    mods = {
        "vllm.utils.import_utils": {"has_triton_kernels": lambda: True},
        "triton_kernels.matmul_ogs": {"PrecisionConfig": lambda **kw: kw, "FlexCtx": lambda **kw: kw},
        OGS.MXFP4_UTILS: {"_swizzle_mxfp4": swizzle},
        OGS.CONFIG: {"mxfp4_w4a16_moe_quant_config": quant_config},
    }
    for name, attrs in mods.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    return seen


def _problem(H=192, I=128, E=3, bias=True):
    return build(Case(backend="vllm_ogs_mxfp4", format="mxfp4_bf16", tokens=5, hidden=H, inter=I, experts=E,
                      top_k=2, activation="swigluoai", bias=bias))


def test_swizzle_gets_vllm_checkpoint_orientation(monkeypatch):
    seen = _stub_vllm(monkeypatch)
    H, I, E = 192, 128, 3
    p = _problem(H, I, E)
    _, _, qc = OGS.mxfp4_quant_config(p)
    (c13, s13, nw13), (c2, s2, nw2) = seen["swizzle"]
    # [E, N, K/2] codes and [E, N, K/32] scales, uint8 both, contiguous: vLLM's registered parameters
    assert c13.shape == (E, 2 * I, H // 2) and s13.shape == (E, 2 * I, H // 32)
    assert c2.shape == (E, H, I // 2) and s2.shape == (E, H, I // 32)
    for t in (c13, s13, c2, s2):
        assert t.dtype == torch.uint8 and t.is_contiguous()
    assert nw13 == nw2 == 8  # _swizzle_mxfp4's default, vLLM's non-batched num_warps
    # the codes decode, low nibble first, to the weights the reference multiplies (same K axis, same rows)
    for q, codes, scales in ((p.w13, c13, s13), (p.w2, c2, s2)):
        vals = q.spec.codec.decode_codes(unpack_nibbles(codes))
        deq = vals * e8m0_decode(scales).repeat_interleave(32, dim=-1)
        assert torch.equal(deq, q.dequantize())
    # biases: fp32, [E, 2I] and [E, H], in checkpoint (interleaved) order
    assert qc["w1_bias"].dtype == torch.float32 and qc["w1_bias"].shape == (E, 2 * I)
    assert qc["w2_bias"].dtype == torch.float32 and qc["w2_bias"].shape == (E, H)
    assert torch.equal(qc["w1_bias"], p.w13_bias.float()) and torch.equal(qc["w2_bias"], p.w2_bias.float())


def test_swigluoai_rows_interleave_like_gpt_oss():
    # gpt-oss swiglu (and triton_kernels swiglu_fn): x[..., ::2] is the gate (clamped above at 7),
    # x[..., 1::2] the linear part (clamped to [-7, 7], then + 1)
    spec = ACTIVATIONS["swigluoai"]
    h = torch.arange(8.0).view(1, 8)
    gate, up = split_gate_up(h, spec)
    assert gate.tolist() == [[0, 2, 4, 6]] and up.tolist() == [[1, 3, 5, 7]]
    assert spec.alpha == 1.702 and spec.limit == 7.0


def test_records_state_hopper_limits():
    suite = registry.suite(())
    for name in ("vllm_ogs_mxfp4", "vllm_ogs_mxfp4_unfused"):
        cap = suite[name].capability
        assert cap.hidden_align == 64 and cap.min_hidden == 192 and cap.min_inter == 128
        assert cap.rounding.weighted_store  # matmul_ogs: out *= gammas before the store
        why = cap.unsupported(_problem(H=128, I=128))
        assert why == "hidden 128 below 192"
        assert cap.unsupported(_problem(H=256, I=64)) == "intermediate 64 below 128"
        assert cap.unsupported(_problem(H=224, I=128)) == "hidden 224 not a multiple of 64"
    assert suite["vllm_ogs_mxfp4_unfused"].capability.rounding.topk_sum_k == frozenset({2, 3, 4})
