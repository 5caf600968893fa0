"""Plugin backends with one realistic bug each, planted in the README's example backend (toy_moe).

The power meta-tests (test_power.py) run them with the pinned cases off: drawn examples alone must
catch each, in the ci profile. ci/power.py measures the share of drawn examples that catch each.
  - pl_transposed_block_scales: 128x128 weight block scales read transposed (fp8_block)
  - pl_router_weight_twice:     Llama4's router weight applied to the input and again to the output
  - pl_batch_tile_t16:          from 16 tokens on, a bf16-accumulating tile for the second GEMM
  - pl_topk_sum_bf16:           the top-k sum accumulated in bf16 (the record says fp32)
  - pl_token_order_combine:     a combine that runs over tokens in order, in bf16 (a prefix sum)
  - pl_unwritten_workspace:     the last output row of a fresh torch.empty left unwritten (CPU)
  - pl_correct:                 the same code with no bug (the control: must pass everything)
"""
import torch
from moecheck.backends import Capability, register
from moecheck.backends.dispatch import dispatch, scaled_input
from moecheck.reference import activations
from moecheck.reference.moe import ACT, Rounding
from moecheck.reference.qtensor import expand_blocks
from moecheck.reference.quantize import fake_quantize
from moecheck.tests.backends import example_plugin as E
from moecheck.tests.backends.example_plugin import ToyMoE

ROUNDING = Rounding(gemm1_out=ACT, act_out=ACT, gemm2_out=ACT)  # as toy_moe stores them
SPIES = ("moecheck.tests.backends.example_plugin:toy_gemm",)


def _bf16_chunked(y, w, expert, chunk=32):
    """The second GEMM with a bf16 accumulator, chunk by chunk over K."""
    acc = torch.zeros(y.shape[0], w.shape[1], dtype=torch.bfloat16)
    for s in range(0, y.shape[1], chunk):
        acc = (acc.float() + torch.einsum("rk,rnk->rn", y[:, s:s + chunk].float(), w[expert][..., s:s + chunk].float())).bfloat16()
    return acc


class Planted(ToyMoE):
    bug: str = ""

    def prepare(self, p):
        if self.bug == "transposed_block_scales" and p.fmt.quantized:
            out = []
            for q in (p.w13, p.w2):
                s = q.scale_values()
                flipped = s.transpose(-1, -2).reshape(s.shape)  # read [j, i] where [i, j] is stored
                out.append(q.element_values() * expand_blocks(flipped, q.shape, *q.block))
            return tuple(out)
        return super().prepare(p)

    def run(self, w, p, out=None):
        r = dispatch(p)
        dt = p.hidden_states.dtype
        a = fake_quantize(scaled_input(p), p.fmt.act, p.a1_scale)
        h = E.toy_gemm(a[r.tok], w[0], r.expert).to(dt)
        y = activations.apply(h, p.activation).to(dt)
        y = fake_quantize(y, p.fmt.act, p.a2_scale) if y.shape[0] else y.float()
        if self.bug == "batch_tile_t16" and p.tokens >= 16:
            o = _bf16_chunked(y.to(dt), w[1], r.expert).to(dt)
        else:
            o = E.toy_gemm(y, w[1], r.expert).to(dt)
        T, H, k = p.tokens, p.hidden, p.top_k
        wt = p.topk_weights.float().flatten()[r.slot]
        if p.apply_router_weight_on_input and self.bug != "router_weight_twice":
            wt = torch.ones_like(wt)
        buf = torch.zeros(T * k, H)
        buf[r.slot] = o.float() * wt[:, None]
        buf = buf.view(T, k, H)
        acc_dt = torch.bfloat16 if self.bug == "topk_sum_bf16" else torch.float32
        acc = buf[:, 0].to(acc_dt)
        for j in range(1, k):
            acc = (acc.float() + buf[:, j]).to(acc_dt)
        res = acc.to(dt)
        if self.bug == "token_order_combine" and T:
            run = torch.cumsum(res.float(), 0).bfloat16().float()  # one running bf16 sum over the tokens
            res = torch.cat([run[:1], run[1:] - run[:-1]]).to(dt)
        if self.bug == "unwritten_workspace":
            ws = torch.empty(T, H, dtype=dt)
            ws[:-1] = res[:-1]
            res = ws
        if out is None:
            return res
        out.copy_(res)
        return out


def _make(bug: str, **cap) -> Planted:
    b = Planted(name=f"pl_{bug}", spies=SPIES, capability=Capability(
        devices=frozenset({"cpu", "cuda"}), activations=frozenset({"silu"}), rounding=ROUNDING,
        **{"formats": frozenset({"bf16"}), **cap}))
    b.bug = bug
    return b


# (backend, the property that must catch it, the cases where the record lets the bug's structure appear)
PLANTED = [
    (_make("transposed_block_scales", formats=frozenset({"fp8_block"})), "matches_reference",
     lambda c: c.hidden >= 256 or c.inter >= 256),
    (_make("router_weight_twice", weights_on_input=True), "matches_reference", lambda c: c.weights_on_input),
    (_make("batch_tile_t16"), "matches_reference", lambda c: c.tokens >= 16),
    (_make("topk_sum_bf16"), "matches_reference", lambda c: c.top_k >= 3),
    (_make("token_order_combine"), "permutation_equivariant", lambda c: c.tokens >= 2),
    (_make("unwritten_workspace"), "output_contract", lambda c: c.tokens >= 1),
]
CONTROL = _make("correct", formats=frozenset({"bf16", "fp8_block"}), weights_on_input=True)  # no bug: must pass
BACKENDS = [b for b, _, _ in PLANTED] + [CONTROL]
for _b in BACKENDS:
    register(_b)
