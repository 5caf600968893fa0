"""The reference MoE layer: fused_moe / fused_experts, named after vLLM's entry points.

Vectorized over tokens: routed rows are sorted by expert and each expert runs one fp32 GEMM
(tensor-core bf16 GEMMs with fp32 output on CUDA when the dequantized operands are exactly bf16,
which changes nothing but speed). Every rounding point a kernel may have is explicit (Rounding).
With an ErrorBudget the same pass propagates a variance and returns the per-element bound that
backends are judged by (reference/errmodel).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from moecheck.reference import activations as act_mod
from moecheck.reference.activations import ActivationSpec
from moecheck.reference.errmodel.budget import ErrorBudget
from moecheck.reference.errmodel.chains import Spread, gemm_spread, split3
from moecheck.reference.errmodel.propagate import requant_var, round_var
from moecheck.reference.errmodel.underflow import ftz_floor
from moecheck.reference.errors import require
from moecheck.reference.formats import Format
from moecheck.reference.grouped import Groups, grouped_apply, grouped_mm
from moecheck.reference.lora import MoELoRA, lora_w2_delta, lora_w13_delta
from moecheck.reference.qtensor import QTensor
from moecheck.reference.quantize import quantize
from moecheck.reference.routing import RouterSpec, route
from moecheck.reference.spec import ScaleRule

ACT = "act"  # a Rounding field set to ACT rounds to the layer's activation dtype (bf16 or fp16)


@dataclass(frozen=True)
class Rounding:
    """Where a kernel rounds to a narrow dtype; None keeps fp32, ACT the activation dtype."""

    gemm1_out: torch.dtype | None = None  # GEMM1 result stored before the activation
    act_out: torch.dtype | None = None  # activation output stored before GEMM2 / re-quantization
    gemm2_out: torch.dtype | None = None  # per-expert GEMM2 output stored before the top-k sum
    topk_weights: torch.dtype | None = None  # router weights cast before use
    topk_sum: torch.dtype = torch.float32  # accumulator of the k expert outputs, in slot order
    lora_mid: torch.dtype | None = None  # LoRA shrink output stored before the expand GEMM
    pre_bias: torch.dtype | None = None  # GEMM result stored before an unfused bias add (both GEMMs)
    act_gate: torch.dtype | None = None  # gated activations: f(gate) stored before the multiply by up
    # GEMM2's epilogue multiplies by the router weight in fp32 before the gemm2_out store (vLLM Triton's
    # MUL_ROUTED_WEIGHT, matmul_ogs' gammas): one rounding of o*w, not round(o)*w (Marlin's is the latter)
    weighted_store: bool = False
    # the k for which topk_sum applies; other k accumulate in fp32 and round once (vLLM's moe_sum
    # loops in the activation dtype for k in {2, 3, 4} only, else at::sum_out). None: every k
    topk_sum_k: frozenset[int] | None = None
    # the gated kinds whose f(gate) is stored at act_gate (vLLM: silu/gelu_and_mul return f(gate) as T,
    # swigluoai_and_mul keeps glu in fp32 before (up + 1) * glu). None: every gated kind
    act_gate_kinds: frozenset[str] | None = None
    # LoRA deltas rounded to this dtype and added onto the base GEMM's stored output, one more rounding
    # (vLLM's fused_moe_lora expand: store(prev + acc.to(bf16)) into intermediate_cache1/3). None: the
    # deltas join the base product in fp32, before its store
    lora_add: torch.dtype | None = None

    def gate_store(self, kind: str) -> torch.dtype | None:
        """The dtype f(gate) of activation `kind` is stored in before the multiply by up, or None."""
        return self.act_gate if self.act_gate_kinds is None or kind in self.act_gate_kinds else None


ACT_EVERYWHERE = Rounding(ACT, ACT, ACT, None, torch.float32, ACT)  # a typical 16-bit kernel


def resolve(r: Rounding, act_dtype: torch.dtype) -> Rounding:
    """Replace ACT by the concrete activation dtype."""
    from dataclasses import fields, replace

    return replace(r, **{f.name: act_dtype for f in fields(r) if getattr(r, f.name) == ACT})


@dataclass
class MoEResult:
    out: torch.Tensor  # [T, H] in the input dtype
    bound: torch.Tensor | None  # [T, H] fp32 allowed |backend - out|, when a budget was given
    expected_var: torch.Tensor | None = None  # [T, H] float64 expected (backend - out)^2 of a correct kernel
    floor: torch.Tensor | None = None  # [T, H] fp32 the bound's underflow allowance (errmodel/underflow.py)



def _deq(w) -> torch.Tensor:
    """Dequantized weights; plain bf16/fp16/fp32 weights stay in their dtype (every value is exact
    in fp32 anyway, and an fp32 copy of E experts costs the GPU more than the GEMMs themselves)."""
    return w.dequantize() if isinstance(w, QTensor) else w


# The reference accumulates in IEEE fp32 on every device. The bf16 tensor-core path of grouped_mm (exact
# products, but MMA aligns and truncates addends) moved the H200 reference's outputs toward zero by a mean
# 2.4e-4 of the bound over 5e5 elements: a bias the bias verdict judges, so a correct IEEE kernel (Inductor's
# fp32 GEMMs) failed against it (docs/findings/h200-2026-12-03, session 25). Kept for ci/gemm_probe only.
TENSOR_CORE_REFERENCE = False


def _fast(a: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether this GEMM may take the bf16 tensor-core path (never, unless TENSOR_CORE_REFERENCE)."""
    return TENSOR_CORE_REFERENCE and _bf16_exact(a) and _bf16_exact(w)


def _bf16_exact(t: torch.Tensor) -> bool:
    return t.is_cuda and (t.dtype == torch.bfloat16 or bool(torch.equal(t.to(torch.bfloat16).float(), t.float())))


@contextlib.contextmanager
def _ieee_fp32():
    """fp32 GEMMs must be IEEE fp32, not TF32, whatever the caller's global setting."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _grouped(a: torch.Tensor, w: torch.Tensor, counts: list[int] | Groups, fast: bool) -> torch.Tensor:
    """Rows of `a` sorted by expert (counts per expert) times w[e].T, fp32 out."""
    groups = counts if isinstance(counts, Groups) else Groups(counts, a.device, work=a.shape[1] * w.shape[1])
    return grouped_mm(a, w, groups, fast)


def _rnd(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return x if dtype is None else x.to(dtype).float()


def _check(x, w13, w2, topk_weights, topk_ids, fmt: Format, act: ActivationSpec, expert_map, apply_on_input):
    require(x.dim() == 2, f"hidden_states must be [T, H], got shape {tuple(x.shape)}")
    require(x.dtype in (torch.bfloat16, torch.float16, torch.float32), f"hidden_states must be bf16/fp16/fp32, got {x.dtype}")
    s13, s2 = tuple(w13.shape), tuple(w2.shape)
    require(len(s13) == 3 and len(s2) == 3, f"w13 must be [E, 2I, H] and w2 [E, H, I], got {s13} and {s2}")
    H = x.shape[1]
    n_int = s13[1] // 2 if act.gated else s13[1]
    require(s13[2] == H, f"w13 hidden size {s13[2]} != hidden_states hidden size {H}")
    require(not act.gated or s13[1] % 2 == 0, f"gated activation needs an even w13 row count, got {s13[1]}")
    require(s2 == (s13[0], H, n_int), f"w2 must be [E={s13[0]}, H={H}, I={n_int}], got {s2}")
    require(topk_ids.shape == topk_weights.shape and topk_ids.dim() == 2 and topk_ids.shape[0] == x.shape[0],
            f"topk_ids/topk_weights must both be [T={x.shape[0]}, k], got {tuple(topk_ids.shape)} and {tuple(topk_weights.shape)}")
    require(not topk_ids.is_floating_point() and topk_ids.dtype != torch.bool, f"topk_ids must be an integer tensor, got {topk_ids.dtype}")
    require(topk_weights.is_floating_point(), f"topk_weights must be a float tensor, got {topk_weights.dtype}")
    require(topk_ids.shape[1] >= 1, f"top_k must be >= 1, got {topk_ids.shape[1]}")
    require(s13[0] >= 1, f"w13/w2 must hold at least one expert, got E={s13[0]}")
    for name, w in (("w13", w13), ("w2", w2)):
        if fmt.weight is None:
            require(not isinstance(w, QTensor) and w.dtype in (torch.bfloat16, torch.float16, torch.float32),
                    f"format {fmt.name} takes plain bf16/fp16/fp32 {name}, got {type(w).__name__} {getattr(w, 'dtype', '')}")
        else:
            require(isinstance(w, QTensor) and w.spec == fmt.weight,
                    f"format {fmt.name} takes {name} as a QTensor quantized with its weight spec ({fmt.weight.elem}, block {fmt.weight.block})")
    if expert_map is not None:
        require(expert_map.dim() == 1 and expert_map.numel() >= 1 and not expert_map.is_floating_point(),
                f"expert_map must be a non-empty 1-D integer tensor, got shape {tuple(expert_map.shape)} {expert_map.dtype}")
        require(int(expert_map.min()) >= -1, f"expert_map entries must be -1 (not local) or a local id, got {int(expert_map.min())}")
    n_global = expert_map.shape[0] if expert_map is not None else s13[0]
    if topk_ids.numel():
        require(int(topk_ids.min()) >= 0 and int(topk_ids.max()) < n_global, f"topk_ids must lie in [0, {n_global}), got [{int(topk_ids.min())}, {int(topk_ids.max())}]")
    if expert_map is not None:
        require(int(expert_map.max()) < s13[0], f"expert_map points past the {s13[0]} local experts")
    require(not apply_on_input or topk_ids.shape[1] == 1, "apply_router_weight_on_input needs top_k == 1 (as Llama4)")
    fmt.check_sizes(H, n_int)


def _check_extras(x, w13, b13, b2, lora, token_lora):
    E, rows, H = tuple(w13.shape)
    if b13 is not None:
        require(tuple(b13.shape) == (E, rows), f"w13_bias must be [E={E}, {rows}], got {tuple(b13.shape)}")
    if b2 is not None:
        require(tuple(b2.shape) == (E, H), f"w2_bias must be [E={E}, H={H}], got {tuple(b2.shape)}")
    if lora is not None and token_lora is not None:
        L, le, _, lh = lora.gate_a.shape
        require((le, lh) == (E, H), f"LoRA adapters are for E={le}, H={lh}; the weights have E={E}, H={H}")
        require(tuple(token_lora.shape) == (x.shape[0],) and not token_lora.is_floating_point(),
                f"token_lora must be an integer [T={x.shape[0]}] tensor, got {tuple(token_lora.shape)} {token_lora.dtype}")
        if token_lora.numel():
            require(int(token_lora.min()) >= -1 and int(token_lora.max()) < L, f"token_lora must lie in [-1, {L}), got [{int(token_lora.min())}, {int(token_lora.max())}]")


def fused_experts(hidden_states: torch.Tensor, w13, w2, topk_weights: torch.Tensor, topk_ids: torch.Tensor, *,
                  fmt: Format, activation: ActivationSpec, rounding: Rounding = Rounding(),
                  expert_map: torch.Tensor | None = None, w13_bias: torch.Tensor | None = None,
                  w2_bias: torch.Tensor | None = None, a1_scale: torch.Tensor | None = None,
                  a2_scale: torch.Tensor | None = None, apply_router_weight_on_input: bool = False,
                  lora: MoELoRA | None = None, token_lora: torch.Tensor | None = None,
                  budget: ErrorBudget | None = None) -> MoEResult:
    """Experts on precomputed routing. w13 [E, 2I, H] and w2 [E, H, I]: QTensor or plain tensors.

    topk_ids are global expert ids; with expert_map (global -> local id, -1 = not local) only
    local experts contribute. a1/a2_scale are static activation scales (static formats only).
    """
    x = hidden_states
    _check(x, w13, w2, topk_weights, topk_ids, fmt, activation, expert_map, apply_router_weight_on_input)
    _check_extras(x, w13, w13_bias, w2_bias, lora, token_lora)
    static = fmt.act is not None and fmt.act.static
    require(not static or (a1_scale is not None and a2_scale is not None),
            f"format {fmt.name} has static activation scales: pass a1_scale and a2_scale")
    require(static or (a1_scale is None and a2_scale is None),
            f"format {fmt.name} computes its activation scales: a1_scale/a2_scale must be None")
    T, H = x.shape
    k = topk_ids.shape[1]
    out_dtype = x.dtype
    if T == 0:
        z = x.new_zeros(0, H)
        return MoEResult(z, None if budget is None else z.float(), None if budget is None else z.float())
    with _ieee_fp32():
        return _forward(x, _deq(w13), _deq(w2), topk_weights, topk_ids, fmt, activation, resolve(rounding, out_dtype), expert_map,
                        w13_bias, w2_bias, a1_scale, a2_scale, apply_router_weight_on_input, lora, token_lora,
                        budget, T, H, k, out_dtype)


def _forward(x, W13, W2, topk_weights, topk_ids, fmt, act, rnd, expert_map, b13, b2, a1_scale, a2_scale,
             on_input, lora, token_lora, budget, T, H, k, out_dtype):
    dev = x.device
    E = W13.shape[0]
    track = budget is not None
    tw = _rnd(topk_weights.float(), rnd.topk_weights)
    ids = topk_ids.long()
    local = expert_map.to(dev).long()[ids] if expert_map is not None else ids

    xin = (x.float() * tw[:, :1]).to(x.dtype) if on_input else x
    aq = quantize(xin, fmt.act, a1_scale) if fmt.act is not None else None
    a = aq.dequantize() if aq is not None else xin.float()
    var_a = None
    if track and aq is not None:
        # x / scale is exact for power-of-two scales in any implementation; otherwise a kernel may
        # multiply by a reciprocal and break a tie the other way
        rel = 0.0 if fmt.act.rule in (ScaleRule.MX, ScaleRule.UE8M0) else budget.input_rel
        var_a = requant_var(xin, rel * xin.float().abs(), fmt.act, a1_scale, budget, 1.0)  # same in both chains

    # dispatch: one row per (token, slot) routed to a local expert, sorted by expert
    flat = local.flatten()
    slot = torch.arange(T * k, device=dev)
    valid = flat >= 0
    order = torch.argsort(flat[valid], stable=True)
    e_rows, slot_rows = flat[valid][order], slot[valid][order]
    tok_rows = slot_rows // k
    groups = Groups(torch.bincount(e_rows, minlength=E).tolist(), dev, work=W2.shape[1] * W2.shape[2])

    A = a[tok_rows]
    h = _grouped(A, W13, groups, _fast(A, W13))
    var_h = None
    if track:
        vA = var_a[tok_rows] if isinstance(var_a, torch.Tensor) else None
        var_h = _grouped_var(A, None if vA is None else Spread.of(vA), W13.float().square(), groups, budget)
    if b13 is not None:
        if track:
            var_h = var_h.rounded(h, rnd.pre_bias)
        h = _rnd(h, rnd.pre_bias) + b13.float().to(dev)[e_rows]
    adapters = token_lora.to(dev).long()[tok_rows] if (lora is not None and token_lora is not None) else None
    if adapters is not None:
        g, u = lora_w13_delta(lora, xin.float()[tok_rows], e_rows, adapters, rnd.lora_mid)
        d13 = act_mod.join_gate_up(g, u, act) if act.gated else g
        if rnd.lora_add is not None:  # onto the stored base product: round(round(h) + round(d13))
            if track:
                var_h = var_h.rounded(h, rnd.gemm1_out)
            h = _rnd(h, rnd.gemm1_out)
            if track:
                var_h = var_h.plus(round_var(d13, rnd.lora_add))
            d13 = _rnd(d13, rnd.lora_add)
        h = h + d13
        if track:
            var_h = var_h.plus(round_var(d13, rnd.lora_mid) + (budget.lora_rel * d13.double()) ** 2 / 3.0)
    g1_store = rnd.lora_add if (adapters is not None and rnd.lora_add is not None) else rnd.gemm1_out
    if track:
        var_h = var_h.rounded(h, g1_store)
    h = _rnd(h, g1_store)

    y_exact = act_mod.apply(h, act)
    gate_dt = rnd.gate_store(act.kind) if act.gated else None
    y = act_mod.apply(h, act, gate_dt) if gate_dt is not None else y_exact
    var_y = None
    if track:
        dg, du = act_mod.partials(h, act)
        slope = dg.abs() if du is None else dg.abs() + du.abs()

        def through(v, p):  # p = 2: variances; p = 1: mean absolute differences
            if act.gated:
                vg, vu = act_mod.split_gate_up(v, act)
                return dg.abs() ** p * vg + du.abs() ** p * vu
            return dg.abs() ** p * v

        var_y = var_h.map(lambda v: through(v, 2), lambda v: through(v, 1))
        var_y = var_y.plus((budget.act_fn_rel * _act_fn_scale(h, y, act).double()) ** 2 / 3.0)
        if act.gated:  # rounding f(gate) by u moves f(gate) * up by the same relative amount
            var_y = var_y.rounded(y_exact, gate_dt)
        var_y = var_y.rounded(y, rnd.act_out)
    y = _rnd(y, rnd.act_out)
    y_lora_in = y
    if fmt.act is not None and y.shape[0]:
        if track:  # flips found by probing, each chain at its own sigma (an envelope: the RMS verdict is weaker here)
            q = lambda sd: requant_var(y, sd, fmt.act, a2_scale, budget, budget.inter_quant_steps)  # noqa: E731
            var_y = var_y.add_exp(q(var_y.env.sqrt()), q(var_y.exp.sqrt()))
        y = quantize(y, fmt.act, a2_scale).dequantize()

    o = _grouped(y, W2, groups, _fast(y, W2))
    var_o = _grouped_var(y, var_y, W2.float().square(), groups, budget) if track else None
    if b2 is not None:
        if track:
            var_o = var_o.rounded(o, rnd.pre_bias)
        o = _rnd(o, rnd.pre_bias) + b2.float().to(dev)[e_rows]
    if adapters is not None:
        d2 = lora_w2_delta(lora, y_lora_in.to(out_dtype), e_rows, adapters, rnd.lora_mid)
        var_d2 = round_var(d2, rnd.lora_mid) + (budget.lora_rel * d2.double()) ** 2 / 3.0 if track else None
        if rnd.lora_add is None:
            o = o + d2
            if track:
                var_o = var_o.plus(var_d2)
    late_d2 = adapters is not None and rnd.lora_add is not None  # added onto the stored slot below
    # combine: k slots per token, summed in slot order in the declared accumulator dtype
    w_rows = torch.ones_like(tw.flatten()[slot_rows]) if on_input else tw.flatten()[slot_rows]
    wa = w_rows.double().abs()[:, None]
    if rnd.weighted_store and not on_input:
        ow = o * w_rows[:, None]
        slots = var_o.map(lambda v: v * wa * wa, lambda m: m * wa).rounded(ow, rnd.gemm2_out) if track else None
        slot_vals = _rnd(ow, rnd.gemm2_out)
        if late_d2:  # round(round(w*o) + round(w*d2))
            dw = d2 * w_rows[:, None]
            if track:
                slots = slots.plus(var_d2 * wa * wa + round_var(dw, rnd.lora_add))
            slot_vals = slot_vals + _rnd(dw, rnd.lora_add)
            if track:
                slots = slots.rounded(slot_vals, rnd.lora_add)
            slot_vals = _rnd(slot_vals, rnd.lora_add)
    else:
        if track:
            var_o = var_o.rounded(o, rnd.gemm2_out)
        o = _rnd(o, rnd.gemm2_out)
        if late_d2:  # round(round(o) + round(d2)), then the weight
            if track:
                var_o = var_o.plus(var_d2 + round_var(d2, rnd.lora_add))
            o = o + _rnd(d2, rnd.lora_add)
            if track:
                var_o = var_o.rounded(o, rnd.lora_add)
            o = _rnd(o, rnd.lora_add)
        slot_vals = o * w_rows[:, None]
        if track:
            slots = var_o.map(lambda v: v * wa * wa, lambda m: m * wa).rounded(slot_vals, rnd.topk_weights)
    sum_dt = rnd.topk_sum if rnd.topk_sum_k is None or k in rnd.topk_sum_k else torch.float32
    buf = torch.zeros(T * k, H, device=dev, dtype=torch.float32)
    buf[slot_rows] = slot_vals
    buf = buf.view(T, k, H)
    acc = torch.zeros(T, H, device=dev, dtype=sum_dt)
    for j in range(k):
        acc = (acc.float() + buf[:, j]).to(sum_dt)
    out = acc.to(out_dtype)
    if not track:
        return MoEResult(out, None)

    def summed(v):  # [R, H] per routed row -> [T, H]: the k slots of each token
        vbuf = torch.zeros(T * k, H, device=dev, dtype=torch.float64)  # variances in float64 (propagate.gemm_var)
        vbuf[slot_rows] = v
        return vbuf.view(T, k, H).sum(1)

    var = slots.map(summed, summed)
    accf = acc.float()
    for _ in range(k):  # each slot's add, in the declared accumulator
        var = var.rounded(accf, sum_dt)
    env = var.env + 2 * round_var(accf, out_dtype)
    exp = var.rounded(accf, out_dtype).exp
    # LoRA's two small GEMMs per GEMM (H + r and r + I adds) and the bias adds flush too
    extra = int(b13 is not None or b2 is not None) + (4 * (H + W2.shape[2]) if adapters is not None else 0)
    floor = ftz_floor(A, W13, slope, y, W2, e_rows, w_rows, slot_rows, T, k, extra, None if on_input else o)
    bound = (budget.z * env.sqrt()).float() + floor
    return MoEResult(out, bound, exp, floor)  # float64: at tiny values (2^-100) its squares underflow fp32 to 0


def _act_fn_scale(h, y, act: ActivationSpec) -> torch.Tensor:
    """What an activation's evaluation error is relative to: |y|, except for the GELUs, computed as
    0.5 x (1 + erf(..)) (or tanh): 1 + erf cancels in the negative tail, so the error there is a
    fraction of 0.5 |x| (times up), not of the tiny result."""
    if act.kind not in ("gelu", "gelu_tanh"):
        return y
    if not act.gated:
        return torch.maximum(y.abs(), 0.5 * h.abs())
    g, u = act_mod.split_gate_up(h, act)
    return torch.maximum(y.abs(), 0.5 * (g * u).abs())


def _grouped_var(a, var_a: Spread | None, w_sq, groups: Groups, budget) -> Spread:
    if a.shape[0] == 0:
        z = a.new_zeros(0, w_sq.shape[1], dtype=torch.float64)
        return Spread(z, z, z)
    chains = (None, None, None) if var_a is None else (var_a.env, var_a.exp, var_a.m1)
    return split3(grouped_apply(lambda x, ve, vx, vm, w: gemm_spread(x, ve, vx, vm, w, w_sq.shape[2], budget),
                                groups, w_sq, a, *chains))


def fused_moe(hidden_states: torch.Tensor, router_logits: torch.Tensor, w13, w2, *, router: RouterSpec,
              correction_bias: torch.Tensor | None = None, **kw) -> MoEResult:
    """Route with `router`, then fused_experts. Llama4-style routers apply weights on the input."""
    weights, ids = route(router_logits, router, correction_bias)
    kw.setdefault("apply_router_weight_on_input", router.apply_weights_to_input)
    return fused_experts(hidden_states, w13, w2, weights, ids, **kw)
