"""CPU meta-tests of the FlashInfer comparisons and adapters, against stand-in flashinfer modules.

The stand-ins implement the documented contracts (fused_moe/core.py, quantization/*.py docstrings and
the upstream tests) in torch: a correct stand-in must pass, planted bugs must be caught. This checks
our side of the wiring (layouts, scale products, un-swizzling, padding checks, tie rules); whether
FlashInfer itself keeps those contracts is what the GPU tests find out.
"""
import enum
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from moecheck.backends.flashinfer import common as C
from moecheck.backends.flashinfer import cutlass, routing
from moecheck.backends.flashinfer import quant as Q
from moecheck.properties.case import Case
from moecheck.properties.checks import check
from moecheck.reference.codecs import E2M1, E4M3, e8m0_decode
from moecheck.reference.formats import FORMATS
from moecheck.reference.layouts import swizzle_128x4, unpack_nibbles, unswizzle_128x4
from moecheck.reference.qtensor import expand_blocks
from moecheck.reference.quantize import quantize
from moecheck.reference.routing import RouterSpec, route
from moecheck.reference.spec import MXScaleMode
from moecheck.tests.backends._flashinfer_gpu import (
    route_and_compare as _route_and_compare,
)


def _x(m, k, seed=0, zero_blocks=False):
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed))
    if zero_blocks:
        x.view(m, k // 32, 32)[:, 1::2] = 0
    return x.to(torch.bfloat16)


# ------------------------------------------------------------------ quantizer stand-ins

def _fp8_module(bug=""):
    def mxfp8_quantize(x, is_sf_swizzled_layout=True, alignment=32, **_):
        m, k = x.shape
        kp = k if x.dtype == torch.float32 else -(-k // alignment) * alignment  # the host path does not pad
        mode = MXScaleMode.FLOOR if bug == "floor" else MXScaleMode.RCEIL
        q = quantize(F.pad(x.float(), (0, kp - k)), FORMATS["mxfp8"].act.with_(mx_mode=mode))  # pad blocks: 0, 0x00
        codes, sc = q.codes.view(torch.uint8).clone(), q.scales.clone()
        if bug == "pad_codes":
            codes[:, k:] = 1
        if bug == "pad_scales":
            sc[:, k // 32:] = 127
        if bug == "unwritten":
            codes[-1, :8] = Q.FLOOD
        flat = swizzle_128x4(sc) if is_sf_swizzled_layout else sc.flatten()
        if bug == "swizzle_pad":
            flat[-1] = 9
        return codes.view(torch.float8_e4m3fn), flat
    return types.SimpleNamespace(__name__=Q.FP8_MOD, mxfp8_quantize=mxfp8_quantize)


def _fp4_module(bug=""):
    def fp4_quantize(x, global_scale=None, sf_vec_size=16, sf_use_ue8m0=False, is_sf_swizzled_layout=True, **_):
        if sf_use_ue8m0:
            q = quantize(x, FORMATS["mxfp4_bf16_rceil"].weight)
        else:  # global_scale is the quant-direction global (2688 / amax): the dequant global is its inverse
            q = quantize(x, FORMATS["nvfp4"].act, (1.0 / global_scale.float()).reshape(()))
        codes = q.codes.clone()
        sc = q.scales.view(torch.uint8).clone() if not sf_use_ue8m0 else q.scales.clone()
        if bug == "scale_plus_one":
            sc = sc + 1
        if bug == "flip_element":
            codes[0, 0] ^= 0x01
        if is_sf_swizzled_layout:
            return codes, swizzle_128x4(sc).view(-1, -(-sc.shape[1] // 4) * 4)
        return codes, sc
    return types.SimpleNamespace(__name__=Q.FP4_MOD, fp4_quantize=fp4_quantize)


@pytest.mark.parametrize("swizzled", [True, False])
@pytest.mark.parametrize("m,k,alignment", [(5, 96, 32), (5, 96, 128), (130, 256, 512), (3, 64, 64)])
def test_mxfp8_comparison_passes_a_correct_quantizer(monkeypatch, m, k, alignment, swizzled):
    monkeypatch.setitem(sys.modules, Q.FP8_MOD, _fp8_module())
    d = Q.compare_mxfp8(_x(m, k, zero_blocks=True), alignment, swizzled)
    assert d.exact and d.ok, d.summary()
    assert d.n_codes == m * k and d.n_scales == m * k // 32


def test_mxfp8_host_comparison(monkeypatch):
    monkeypatch.setitem(sys.modules, Q.FP8_MOD, _fp8_module())
    d = Q.compare_mxfp8(_x(7, 96, zero_blocks=True), 128, True, host=True)
    assert d.exact and d.n_codes == 7 * 96 and "host" in d.name, d.summary()


@pytest.mark.parametrize("bug,field", [("floor", "scale_mismatch"), ("pad_codes", "pad_codes_nonzero"),
                                       ("pad_scales", "pad_scales_nonzero"), ("unwritten", "code_mismatch"),
                                       ("swizzle_pad", "pad_scales_nonzero")])
def test_mxfp8_comparison_catches_planted_bugs(monkeypatch, bug, field):
    monkeypatch.setitem(sys.modules, Q.FP8_MOD, _fp8_module(bug))
    x = _x(5, 96, seed=3) * 3  # FLOOR and RCEIL differ on most blocks of random data
    d = Q.compare_mxfp8(x, 128, swizzled=True)
    assert not d.ok and getattr(d, field) > 0, d.summary()


@pytest.mark.parametrize("swizzled", [True, False])
@pytest.mark.parametrize("kind", ["nvfp4", "mxfp4"])
def test_fp4_comparison_passes_a_correct_quantizer(monkeypatch, kind, swizzled):
    monkeypatch.setitem(sys.modules, Q.FP4_MOD, _fp4_module())
    d = Q.compare_fp4(_x(130, 256, seed=5), kind, swizzled)
    assert d.exact, d.summary()


@pytest.mark.parametrize("kind", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("bug", ["scale_plus_one", "flip_element"])
def test_fp4_comparison_catches_planted_bugs(monkeypatch, kind, bug):
    monkeypatch.setitem(sys.modules, Q.FP4_MOD, _fp4_module(bug))
    d = Q.compare_fp4(_x(7, 64, seed=6), kind, True)
    assert not d.ok, d.summary()


def test_refusal_comes_back_as_refused(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("mxfp8 quantization needs sm_100\nmore")
    monkeypatch.setitem(sys.modules, Q.FP8_MOD, types.SimpleNamespace(__name__=Q.FP8_MOD, mxfp8_quantize=boom))
    with pytest.raises(C.Refused, match="mxfp8_quantize: RuntimeError: mxfp8 quantization needs sm_100$"):
        Q.compare_mxfp8(_x(2, 32))


# ------------------------------------------------------------------ routing stand-in

def _routing_module(bug=""):
    def fused_topk_deepseek(scores, bias, n_group, topk_group, topk, f, vals, idx, *a, **k):
        spec = RouterSpec("deepseek_v3", topk, renormalize=True, n_group=n_group, topk_group=topk_group, routed_scaling_factor=f)
        w, ids = route(scores.float(), spec, bias.float())
        if bug == "no_scaling":
            w = w / f
        if bug == "wrong_expert":
            ids = ids.clone()
            ids[0, 0] = (ids[0, 0] + 1) % scores.shape[1] if (ids[0, 0] + 1) % scores.shape[1] not in ids[0] else (ids[0, 0] + 2) % scores.shape[1]
        order = torch.randperm(topk, generator=torch.Generator().manual_seed(0))  # kernels need not sort
        vals.copy_(w[:, order].to(vals.dtype))
        idx.copy_(ids[:, order].to(idx.dtype))
    return types.SimpleNamespace(__name__=C.FUSED_MOE, fused_topk_deepseek=fused_topk_deepseek)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bug", ["", "no_scaling", "wrong_expert"])
def test_routing_comparison(monkeypatch, bug, dtype):
    monkeypatch.setattr(C, "fused_moe", lambda: _routing_module(bug))
    spec = RouterSpec("deepseek_v3", 8, renormalize=True, n_group=8, topk_group=4, routed_scaling_factor=2.5)
    logits, bias = routing.inputs(64, 256, seed=1, dtype=dtype, device="cpu")
    d = _route_and_compare(logits, bias, spec)
    assert d.passed == (bug == ""), d.summary()
    assert d.ambiguous < 64



# ------------------------------------------------------------------ cutlass_fused_moe stand-in (documented contract)

class _Act(enum.IntEnum):
    Swiglu = 3
    Relu2 = 6
    GegluTanh = 8


def _fp4_values(packed: torch.Tensor) -> torch.Tensor:
    return E2M1.decode_codes(unpack_nibbles(packed.contiguous().view(torch.uint8)))


def _unswizzled(sf: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[E,] 128x4-swizzled scale bytes (any shape) -> [E,] rows x cols uint8."""
    b = sf.contiguous().view(torch.uint8)
    lead = b.shape[:-2] if b.dim() == 3 else ()
    return unswizzle_128x4(b.reshape(*lead, -1), rows, cols)


def _expand(s: torch.Tensor, shape, br, bc):
    return expand_blocks(s, shape, br, bc)


def _cutlass_inputs(x, fc1, fc2, qs, input_sf, flags):
    """The documented argument contract -> (x values, W1 values [E, 2I, H], W2 values, per-expert multipliers
    (m1, m2) applied to the GEMM outputs, and the intermediate re-quantizer)."""
    E = fc1.shape[0]
    if flags.get("use_deepseek_fp8_block_scale"):
        a = quantize(x, FORMATS["fp8_block"].act).dequantize()
        w1 = fc1.float() * _expand(qs[0], fc1.shape, 128, 128)
        w2 = fc2.float() * _expand(qs[1], fc2.shape, 128, 128)
        return a, w1, w2, torch.ones(E), torch.ones(E), lambda y: quantize(y, FORMATS["fp8_block"].act).dequantize()
    if flags.get("use_mxfp8_act_scaling"):
        T, H = x.shape
        a = x.float() * _expand(e8m0_decode(_unswizzled(input_sf, T, H // 32)), x.shape, 1, 32)
        w1c, w2c = _fp4_values(fc1), _fp4_values(fc2)
        w1 = w1c * _expand(e8m0_decode(_unswizzled(qs[0], w1c.shape[1], w1c.shape[2] // 32)), w1c.shape, 1, 32)
        w2 = w2c * _expand(e8m0_decode(_unswizzled(qs[2], w2c.shape[1], w2c.shape[2] // 32)), w2c.shape, 1, 32)
        return a, w1, w2, qs[1], qs[3], lambda y: quantize(y, FORMATS["mxfp4_mxfp8_rceil"].act).dequantize()
    if x.dtype == torch.uint8:  # NVFP4: values are code x block scale; the alphas carry the globals
        xc = _fp4_values(x)
        T, H = xc.shape
        a = xc * _expand(E4M3.decode_codes(_unswizzled(input_sf, T, H // 16)), xc.shape, 1, 16)
        w1c, w2c = _fp4_values(fc1), _fp4_values(fc2)
        w1 = w1c * _expand(E4M3.decode_codes(_unswizzled(qs[1], w1c.shape[1], w1c.shape[2] // 16)), w1c.shape, 1, 16)
        w2 = w2c * _expand(E4M3.decode_codes(_unswizzled(qs[4], w2c.shape[1], w2c.shape[2] // 16)), w2c.shape, 1, 16)
        a2 = (1.0 / qs[3].float()).reshape(())
        return a, w1, w2, qs[2], qs[5], lambda y: quantize(y, FORMATS["nvfp4"].act, a2).dequantize() / a2
    if x.dtype == torch.float8_e4m3fn:
        return (x.float(), fc1.float(), fc2.float(), qs[0], qs[2],
                lambda y: (y * qs[1]).clamp(-448, 448).to(torch.float8_e4m3fn).float())
    return x.float(), fc1.float(), fc2.float(), torch.ones(E), torch.ones(E), None


def _cutlass_module(bug=""):
    def cutlass_fused_moe(x, ids, w, fc1, fc2, out_dtype, quant_scales=None, output=None, activation_type=_Act.Swiglu,
                          swiglu_alpha=None, swiglu_beta=None, swiglu_limit=None, fc1_expert_biases=None,
                          fc2_expert_biases=None, input_sf=None, **flags):
        a, w1, w2, m1, m2, requant = _cutlass_inputs(x, fc1, fc2, quant_scales, input_sf, flags)
        if bug == "fc1_dequant_ignored":
            m1 = torch.ones_like(m1)
        T, k = ids.shape
        res = torch.zeros(T, w2.shape[1], dtype=torch.float32)
        for t in range(T):
            for j in range(k):
                e = int(ids[t, j])
                h = ((a[t] @ w1[e].T) * m1[e]).to(out_dtype).float()  # GemmOutputType
                n = h.shape[0] // 2
                lin, gate = (h[:n], h[n:]) if bug != "gate_first" else (h[n:], h[:n])
                if int(activation_type) == _Act.Relu2:
                    y = F.relu(h) ** 2
                elif swiglu_alpha is not None:
                    lim = float(swiglu_limit[e])
                    g = gate.clamp(max=lim)
                    y = g * torch.sigmoid(float(swiglu_alpha[e]) * g) * (lin.clamp(-lim, lim) + float(swiglu_beta[e]))
                elif int(activation_type) == _Act.GegluTanh:
                    y = F.gelu(gate, approximate="tanh") * lin
                else:
                    y = F.silu(gate) * lin
                y = y.to(out_dtype).float()
                if requant is not None:
                    y = requant(y[None])[0]
                o = (y @ w2[e].T) * m2[e]
                res[t] += float(w[t, j]) * o.to(out_dtype).float()
        if output is None:
            return [res.to(out_dtype)]
        output.copy_(res)
        return [output]
    return types.SimpleNamespace(__name__=C.FUSED_MOE, cutlass_fused_moe=cutlass_fused_moe, ActivationType=_Act)


CASES = [Case(tokens=6, hidden=128, inter=128, experts=3, top_k=2, seed=s) for s in (1, 2)]
CASES_T0 = CASES + [Case(tokens=0, hidden=128, inter=128, experts=3, top_k=2, seed=3)]


@pytest.mark.parametrize("name,fmt,act", [
    ("flashinfer_cutlass_bf16", "bf16", "silu"), ("flashinfer_cutlass_bf16", "bf16", "silu_up_gate"),
    ("flashinfer_cutlass_bf16", "bf16", "swigluoai"), ("flashinfer_cutlass_bf16", "bf16", "relu2"),
    ("flashinfer_cutlass_bf16", "bf16", "gelu_tanh"), ("flashinfer_cutlass_fp8_tensor", "fp8_tensor_static", "silu"),
    ("flashinfer_cutlass_fp8_block", "fp8_block", "silu"), ("flashinfer_cutlass_nvfp4", "nvfp4", "silu"),
    ("flashinfer_cutlass_nvfp4", "nvfp4", "relu2"), ("flashinfer_cutlass_mxfp8_mxfp4", "mxfp4_mxfp8_rceil", "swigluoai")])
@pytest.mark.parametrize("prop", ["matches_reference", "kernel_ran", "output_contract"])
def test_cutlass_adapter_against_the_documented_contract(monkeypatch, name, fmt, act, prop):
    monkeypatch.setitem(sys.modules, C.FUSED_MOE, _cutlass_module())
    b = next(x for x in cutlass.BACKENDS if x.name == name)
    for c in CASES_T0:
        out = check(b, c.with_(backend=name, format=fmt, activation=act, property=prop), "cpu")
        assert out.verdict == "pass", out.message


@pytest.mark.parametrize("bug,name,fmt", [("gate_first", "flashinfer_cutlass_bf16", "bf16"),
                                          ("gate_first", "flashinfer_cutlass_nvfp4", "nvfp4"),
                                          ("fc1_dequant_ignored", "flashinfer_cutlass_fp8_tensor", "fp8_tensor_static")])
def test_cutlass_adapter_stand_in_bugs_are_caught(monkeypatch, bug, name, fmt):
    monkeypatch.setitem(sys.modules, C.FUSED_MOE, _cutlass_module(bug))
    b = next(x for x in cutlass.BACKENDS if x.name == name)
    outs = [check(b, c.with_(backend=name, format=fmt, property="matches_reference"), "cpu") for c in CASES]
    assert all(o.verdict == "fail" for o in outs), [o.message for o in outs]


# ------------------------------------------------------------------ bgmv_moe LoRA stand-in (moe_lora_delta.py docstrings)

def _lora_module(bug=""):
    from moecheck.backends.flashinfer import lora

    banks = {}

    def fill_w_ptr(w_ptr, weights, num_experts, slice_id):
        banks[weights.data_ptr()] = weights
        w_ptr[slice_id, :num_experts] = weights.data_ptr() + torch.arange(num_experts) * weights.stride(1) * weights.element_size()
        return weights.stride(0)

    def bank(ptr, s):
        return banks[int(ptr[s, 0])].float()

    def compiled_only(*sizes, rank):  # "Dimension pair not compiled" (moe_bgmv_config.h)
        if rank not in lora.RANKS or any(n not in lora.WIDTHS for n in sizes):
            raise RuntimeError(f"BGMV MoE shrink failed. feat_in={sizes} feat_out={rank}. Dimension pair not compiled.")

    def gemm1(x, pa, sa, pb, sb, topk_ids, lora_ids, rank, inter, *, lora_dtype, scale, out_dtype):
        compiled_only(x.shape[1], inter, rank=rank)
        T, k = topk_ids.shape
        out = torch.zeros(T, k, 2 * inter)
        for t in range(T):
            lid = int(lora_ids[t])
            if lid < 0:
                continue
            for j in range(k):
                e = int(topk_ids[t, j])
                for s in range(2):
                    mid = (bank(pa, s)[lid, e] @ x[t].to(lora_dtype).float()).to(lora_dtype).float()
                    out[t, j, s * inter:(s + 1) * inter] = scale * (bank(pb, s)[lid, e] @ mid)
        if bug == "halves_swapped":
            out = torch.cat([out[..., inter:], out[..., :inter]], -1)
        return out.to(out_dtype)

    def gemm2(act, perm, pa, sa, pb, sb, topk_ids, topk_weights, lora_ids, rank, hidden, *, lora_dtype, scale, out_dtype):
        compiled_only(act.shape[1], hidden, rank=rank)
        T, k = topk_ids.shape
        out = torch.zeros(T, hidden)
        for t in range(T):
            lid = int(lora_ids[t])
            if lid < 0:
                continue
            for j in range(k):
                p = int(perm[t * k + j]) if bug != "perm_ignored" else t * k + j
                if p < 0 or p >= act.shape[0]:
                    continue
                e = int(topk_ids[t, j])
                mid = (bank(pa, 0)[lid, e] @ act[p].to(lora_dtype).float()).to(lora_dtype).float()
                out[t] += float(topk_weights[t, j]) * scale * (bank(pb, 0)[lid, e] @ mid)
        return out.to(out_dtype)

    return types.SimpleNamespace(__name__=C.FUSED_MOE, fill_w_ptr=fill_w_ptr, bgmv_moe_gemm1_lora_delta=gemm1,
                                 bgmv_moe_gemm2_lora_delta=gemm2)


LORA_CASES = [Case(tokens=7, hidden=64, inter=32, experts=4, top_k=2, lora_adapters=2, lora_rank=4, seed=s) for s in (1, 2)]


@pytest.mark.parametrize("act", ["silu", "silu_up_gate", "swigluoai"])
@pytest.mark.parametrize("prop", ["matches_reference", "kernel_ran", "output_contract"])
def test_lora_adapter_against_the_documented_contract(monkeypatch, act, prop):
    from moecheck.backends.flashinfer import lora

    monkeypatch.setitem(sys.modules, C.FUSED_MOE, _lora_module())
    b = lora.BACKENDS[0]
    for c in [*LORA_CASES, LORA_CASES[0].with_(lora_adapters=0)]:
        out = check(b, c.with_(backend=b.name, activation=act, property=prop), "cpu")
        assert out.verdict == "pass", out.message


@pytest.mark.parametrize("bug", ["halves_swapped", "perm_ignored"])
def test_lora_stand_in_bugs_are_caught(monkeypatch, bug):
    from moecheck.backends.flashinfer import lora

    monkeypatch.setitem(sys.modules, C.FUSED_MOE, _lora_module(bug))
    b = lora.BACKENDS[0]
    outs = [check(b, c.with_(backend=b.name, lora_rank=8, property="matches_reference"), "cpu") for c in LORA_CASES]
    assert all(o.verdict == "fail" for o in outs), [o.message for o in outs]


def test_host_dequantizer_comparison_against_flashinfers_own_cpu_fallback(monkeypatch):
    """flashinfer's pure-torch _e2m1_and_ufp8sf_scale_to_float_cpu (linear layout) is the contract we expect."""
    def e2m1_and_ufp8sf_scale_to_float(e2m1, sf, gs, vec, ufp8_type, swizzled):
        assert not swizzled
        m = e2m1.shape[0]
        vals = E2M1.decode_codes(unpack_nibbles(e2m1))
        s = sf.view(torch.float8_e4m3fn).float() if ufp8_type == 1 else torch.pow(2.0, sf.float() - 127.0)
        return vals * s.view(m, -1).repeat_interleave(vec, dim=-1) * gs.float().item()
    monkeypatch.setitem(sys.modules, Q.FP4_MOD, types.SimpleNamespace(
        __name__=Q.FP4_MOD, e2m1_and_ufp8sf_scale_to_float=e2m1_and_ufp8sf_scale_to_float))
    for kind in ("nvfp4", "mxfp4"):
        d = Q.compare_fp4_dequantize_host(_x(7, 96, seed=8), kind, swizzled=False)
        assert d.exact, d.summary()
