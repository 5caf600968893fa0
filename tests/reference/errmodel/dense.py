"""A dense per-token MoE, written from the layer's definition, and the problems it is run on.

Shared by tests/reference/test_moe_dense.py, test_lora.py (float64: an independent oracle) and
tests/errmodel/test_meta.py (the same math "computed another way": fp32 with the slot order
reversed, K split into chunks). It uses nothing of moecheck.reference.moe: weights come through
QTensor.dequantize, activations through quantize() with the format's activation spec (whole-tensor
scales see the whole [T, H] input and the stacked intermediate of all routed rows), the activation
through activations.apply, and everything else is explicit loops over tokens and slots.
"""
from __future__ import annotations

import pytest
import torch
from moecheck.reference import activations as act_mod
from moecheck.reference.formats import Format
from moecheck.reference.lora import MoELoRA
from moecheck.reference.qtensor import QTensor
from moecheck.reference.quantize import calibrate, quantize
from moecheck.reference.routing import RouterSpec, route


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Import into a test module to run its tests on one intra-op thread: these shapes are tiny, and
    on a busy 2-core machine torch's second OpenMP thread made each small GEMM ~100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _deq(w, dt):
    return (w.dequantize() if isinstance(w, QTensor) else w.float()).to(dt)


def _dot(v: torch.Tensor, w: torch.Tensor, k_split: int) -> torch.Tensor:
    """w [N, K] times v [K], K cut into k_split chunks whose partial sums are added afterwards."""
    K = v.shape[0]
    cuts = [K * i // k_split for i in range(k_split + 1)]
    parts = [torch.einsum("nk,k->n", w[:, a:b], v[a:b]) for a, b in zip(cuts, cuts[1:]) if b > a]
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def _lora(x, a, b, scaling):
    return scaling * (b @ (a @ x))


def dense_moe(x, w13, w2, topk_weights, topk_ids, *, fmt: Format, activation, acc=torch.float64,
              expert_map=None, w13_bias=None, w2_bias=None, a1_scale=None, a2_scale=None,
              apply_router_weight_on_input=False, lora: MoELoRA | None = None, token_lora=None,
              k_split: int = 1, reverse_slots: bool = False) -> torch.Tensor:
    """[T, H] in `acc` dtype. Routed rows to experts mapped to -1 contribute nothing."""
    T, H = x.shape
    k = topk_ids.shape[1]
    W13, W2 = _deq(w13, acc), _deq(w2, acc)
    tw = topk_weights.float()
    # Llama4: the router weight scales the input in fp32, stored in the activation dtype
    xin = (x.float() * tw[:, :1]).to(x.dtype) if apply_router_weight_on_input else x
    a = (quantize(xin, fmt.act, a1_scale).dequantize() if fmt.act is not None else xin.float()).to(acc)
    xl = xin.to(acc)
    rows = []  # (token, slot, local expert, activation output)
    for t in range(T):
        for j in range(k):
            g = int(topk_ids[t, j])
            e = int(expert_map[g]) if expert_map is not None else g
            if e < 0:
                continue
            h = _dot(a[t], W13[e], k_split)
            if w13_bias is not None:
                h = h + w13_bias[e].to(acc)
            ad = int(token_lora[t]) if (lora is not None and token_lora is not None) else -1
            if ad >= 0:
                dg = _lora(xl[t], lora.gate_a[ad, e].to(acc), lora.gate_b[ad, e].to(acc), lora.scaling)
                if activation.gated:
                    du = _lora(xl[t], lora.up_a[ad, e].to(acc), lora.up_b[ad, e].to(acc), lora.scaling)
                    gate, up = act_mod.split_gate_up(h.clone(), activation)
                    gate += dg
                    up += du  # views into a fresh copy: written back in the activation's own layout
                    h = act_mod.join_gate_up(gate, up, activation)
                else:
                    h = h + dg
            rows.append((t, j, e, ad, act_mod.apply(h, activation).to(acc)))
    out = torch.zeros(T, H, dtype=acc)
    if not rows:
        return out
    Y = torch.stack([r[4] for r in rows])
    Yq = (quantize(Y, fmt.act, a2_scale).dequantize() if fmt.act is not None else Y.float()).to(acc)
    contrib = {}
    for (t, j, e, ad, y), yq in zip(rows, Yq):
        o = _dot(yq, W2[e], k_split)
        if w2_bias is not None:
            o = o + w2_bias[e].to(acc)
        if ad >= 0:  # LoRA reads the activation output as stored in the activation dtype
            o = o + _lora(y.to(x.dtype).to(acc), lora.down_a[ad, e].to(acc), lora.down_b[ad, e].to(acc), lora.scaling)
        w = 1.0 if apply_router_weight_on_input else tw[t, j].to(acc)
        contrib[(t, j)] = o * w
    for t in range(T):
        slots = range(k - 1, -1, -1) if reverse_slots else range(k)
        for j in slots:
            if (t, j) in contrib:
                out[t] = out[t] + contrib[(t, j)]
    return out


# --- problems -----------------------------------------------------------------------------------

def sizes_for(fmt: Format) -> tuple[int, int]:
    """Smallest (H, I) the format takes; 128x128 weight blocks get 256 so block grids are 2x2."""
    if fmt.weight is not None and fmt.weight.block == (128, 128):
        return 256, 128
    m = max(fmt.k_multiple, 32)
    return max(64, m), max(32, m)


def make_problem(fmt: Format, act_name: str = "silu", *, T=12, H=None, I=None, E=4, k=2, seed=0,
                 dead_experts=(), bias=False, router: RouterSpec | None = None, x_dtype=None, remote=0):
    """Keyword arguments for fused_experts / dense_moe. Weight rows and K-blocks get different
    magnitudes (2^-2..2^2), as real checkpoints have, so permuted scales change the numbers.
    E experts are local; with `remote` > 0 the router sees E + remote global experts and an
    expert_map sends the remote ones to -1. `dead_experts` (global ids) are never chosen."""
    from moecheck.reference.activations import ACTIVATIONS

    act = ACTIVATIONS[act_name]
    dH, dI = sizes_for(fmt)
    H, I = H or dH, I or dI
    g = torch.Generator().manual_seed(seed)
    dt = x_dtype or fmt.act_dtype
    rows13 = 2 * I if act.gated else I

    def weight(n, kk):
        w = torch.randn(E, n, kk, generator=g) / kk**0.5
        row = torch.exp2(torch.randint(-2, 3, (E, n, 1), generator=g).float())
        blk = torch.exp2(torch.randint(-2, 3, (E, 1, -(-kk // 16)), generator=g).float())
        # 128x128 tiles at 2^((i + 2j) % 3 - 1): tile (0,1) differs from (1,0), so a transposed
        # scale grid of 128x128-block formats is never a no-op
        i, j = torch.arange(n)[:, None] // 128, torch.arange(kk)[None, :] // 128
        return w * row * blk.repeat_interleave(16, -1)[..., :kk] * torch.exp2(((i + 2 * j) % 3 - 1).float())

    w13, w2 = weight(rows13, H), weight(H, I)
    x = torch.randn(T, H, generator=g).to(dt)
    logits = torch.randn(T, E + remote, generator=g)
    for d in dead_experts:
        logits[:, d] = -1e4
    weights, ids = route(logits, router or RouterSpec("softmax_topk", k, renormalize=True))
    kw = dict(fmt=fmt, activation=act)
    if remote:
        emap = torch.full((E + remote,), -1, dtype=torch.int64)
        emap[torch.randperm(E + remote, generator=g)[:E]] = torch.arange(E)
        kw["expert_map"] = emap
    if bias:
        kw["w13_bias"] = torch.randn(E, rows13, generator=g) * 0.1
        kw["w2_bias"] = torch.randn(E, H, generator=g) * 0.1
    if fmt.act is not None and fmt.act.static:
        kw["a1_scale"] = calibrate(x, fmt.act)
        kw["a2_scale"] = torch.tensor(2.0**-6)
    q = (lambda w: quantize(w, fmt.weight)) if fmt.weight is not None else (lambda w: w.to(dt))
    return dict(hidden_states=x, w13=q(w13), w2=q(w2), topk_weights=weights, topk_ids=ids, **kw)


def oracle_kwargs(p: dict) -> dict:
    """fused_experts keyword arguments -> dense_moe's (same names, first five positional)."""
    d = dict(p)
    return dict(args=(d.pop("hidden_states"), d.pop("w13"), d.pop("w2"), d.pop("topk_weights"), d.pop("topk_ids")), kw=d)


def run_oracle(p: dict, **opts) -> torch.Tensor:
    o = oracle_kwargs(p)
    return dense_moe(*o["args"], **o["kw"], **opts)
