"""A complete out-of-tree backend in one file (the README's example), with plantable bugs for meta-tests."""
import torch
from moecheck.backends import Backend, Capability, register
from moecheck.backends.dispatch import combine, dispatch, scaled_input
from moecheck.reference import activations
from moecheck.reference.moe import ACT, Rounding
from moecheck.reference.quantize import fake_quantize


def toy_gemm(x, w, expert):
    """Row r times w[expert[r]].T, in fp32, stored in the activation dtype."""
    return torch.einsum("rk,rnk->rn", x.float(), w[expert].float()).to(x.dtype)


class ToyMoE(Backend):
    bug: str = ""  # "", "swapped_scales", "missing_renorm", "unwritten_last_rows"

    def prepare(self, p):
        if p.fmt.quantized:
            w13, w2 = p.w13.dequantize(), p.w2.dequantize()
            if self.bug == "swapped_scales":  # each expert dequantized with its neighbour's scales
                s = p.w13.scale_values()
                w13 = p.w13.element_values() * s.roll(1, 0).repeat_interleave(w13.shape[1] // s.shape[1], 1)
            return w13, w2
        return p.w13, p.w2

    def run(self, w, p, out=None):
        r = dispatch(p)
        dt = p.hidden_states.dtype
        a = fake_quantize(scaled_input(p), p.fmt.act, p.a1_scale)  # the format's dynamic activation quant
        h = toy_gemm(a[r.tok], w[0], r.expert).to(dt)
        y = activations.apply(h, p.activation).to(dt)
        y = fake_quantize(y, p.fmt.act, p.a2_scale) if y.shape[0] else y.float()
        o = toy_gemm(y, w[1], r.expert).to(dt)
        if self.bug == "missing_renorm":  # un-renormalized top-k weights sum to less than 1
            p = p.with_(topk_weights=p.topk_weights * 0.8)
        res = combine(o, r, p, None)
        if self.bug == "unwritten_last_rows" and out is not None:
            out[:-1].copy_(res[:-1])
            return out
        return combine(o, r, p, out)


CAP = Capability(formats=frozenset({"bf16", "fp8_token_channel"}), devices=frozenset({"cpu", "cuda"}),
                 activations=frozenset({"silu"}), out_buffer=True, rounding=Rounding(gemm1_out=ACT, act_out=ACT, gemm2_out=ACT))
register(ToyMoE(name="toy_moe", capability=CAP, spies=("moecheck.tests.backends.example_plugin:toy_gemm",)))
