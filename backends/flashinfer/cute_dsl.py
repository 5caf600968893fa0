"""CuTe-DSL fused MoE: flashinfer.fused_moe.cute_dsl_fused_moe_bf16 (SM90) and the SM100 block-scaled variants.

Signature read in site-packages/flashinfer/fused_moe/cute_dsl/sm90_fused_moe.py (0.7.2.post1):
cute_dsl_fused_moe_bf16(x, token_selected_experts [T,k] int32, token_final_scales [T,k] fp32 (normalized),
w1_weight [E, 2I, H] "up/gate interleaved at 32 columns", w2_weight [E, H, I], num_experts, top_k,
num_local_experts=None, local_expert_offset=0, use_fused_finalize=True, moe_output=None, enable_pdl=True,
activation_type=Swiglu, swiglu_alpha=1.0, swiglu_beta=0.0, swiglu_limit=FLT_MAX, ...). Supported:
SM90 only, bf16/fp16, hidden % 8 == 0, I % 32 == 0 (gated). use_fused_finalize=False is the documented
deterministic path: GEMM2 scatters unscaled rows, moe_unpermute combines in fp32, one rounding.
The activation is fused into GEMM1's epilogue (fp32 accumulator -> activation -> bf16 intermediate).
It is exported by flashinfer.fused_moe only when the CuTe DSL (nvidia-cutlass-dsl: `cutlass.cute`) imports.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from moecheck.backends.base import Capability, Limitation
from moecheck.backends.flashinfer import common as C
from moecheck.backends.flashinfer import layouts as L
from moecheck.backends.problem import MoEProblem
from moecheck.reference.errors import require
from moecheck.reference.moe import ACT, Rounding

REQUIRES = (*C.REQUIRES, "cutlass.cute")
_DSL = Limitation("needs nvidia-cutlass-dsl (module cutlass.cute), which the device bundle of flashinfer-python + "
                  "apache-tvm-ffi does not bring; flashinfer.fused_moe exports the CuTe-DSL MoE only when it imports",
                  "https://pypi.org/project/nvidia-cutlass-dsl/")
_SRC = "https://github.com/flashinfer-ai/flashinfer/blob/main/flashinfer/fused_moe/cute_dsl/sm90_fused_moe.py"


@dataclass
class CuteDslSm90Bf16(C.FlashInferBackend):
    def layout(self, p: MoEProblem) -> dict:
        require(p.fmt.name in self.capability.formats, f"{self.name} takes bf16/fp16 weights, not format {p.fmt.name}")
        require(p.expert_map is None, "cute_dsl_fused_moe_bf16 shards experts by num_local_experts/local_expert_offset ranges")
        require(p.lora is None and not p.apply_router_weight_on_input and p.w13_bias is None,
                "cute_dsl_fused_moe_bf16 has no LoRA, bias or router-weight-on-input path")
        dt = p.hidden_states.dtype
        perm = L.cute_sm90_up_gate(p.w13.shape[1], p.activation)
        return dict(fc1=L.permute_rows(p.w13.to(dt), perm), fc2=p.w2.to(dt).contiguous())

    def prepare(self, p: MoEProblem) -> dict:
        return self.layout(p)

    def run(self, w: dict, p: MoEProblem, out=None) -> torch.Tensor:
        a = p.activation
        oai = dict(swiglu_alpha=a.alpha, swiglu_beta=C.GPT_OSS["beta"], swiglu_limit=a.limit) if p.activation_name == "swigluoai" else {}
        res = C.call(
            C.fused_moe(), "cute_dsl_fused_moe_bf16",
            p.hidden_states.contiguous(), p.topk_ids.to(torch.int32).contiguous(), p.topk_weights.float().contiguous(),
            w["fc1"], w["fc2"], p.experts, p.top_k, use_fused_finalize=False, moe_output=out,
            activation_type=int(C.activation_type(p)), **oai)
        return C.first_output(res, out)


BACKENDS = [
    CuteDslSm90Bf16(
        name="flashinfer_cute_dsl_sm90_bf16", spies=(f"{C.FUSED_MOE}:cute_dsl_fused_moe_bf16",),
        description="CuTe-DSL SM90 bf16/fp16 fused MoE (gather + grouped GEMM + fused activation, unpermute finalize)",
        capability=Capability(
            formats=frozenset({"bf16", "fp16"}), dtypes=frozenset({torch.bfloat16, torch.float16}),
            archs=frozenset({(9, 0)}), activations=frozenset({"silu", "silu_up_gate", "swigluoai", "gelu_tanh", "relu2"}),
            out_buffer=True, hidden_align=8, inter_align=32,
            rounding=Rounding(gemm1_out=None, act_out=ACT, gemm2_out=ACT), requires=REQUIRES,
            limitations=(C.UNVERIFIED, _DSL, Limitation("SM90 only (@supported_compute_capability([90]))", _SRC)),
            verified=(), deterministic=True)),
    CuteDslSm90Bf16(
        name="flashinfer_cute_dsl_sm100", spies=(f"{C.FUSED_MOE}:cute_dsl_fused_moe",),
        not_wired=("not wired: the SM100 block-scaled CuTe-DSL MoE (cute_dsl_fused_moe, quant_mode w4a4/w4a8) takes "
                   "a static fc2_input_scale (NVFP4) and alpha vectors whose layout was not read far enough to wire"),
        description="CuTe-DSL SM100 fused MoE, NVFP4 (w4a4) and MXFP8 x MXFP4 (w4a8)",
        capability=Capability(
            formats=frozenset({"nvfp4", "mxfp4_mxfp8_rceil"}), archs=frozenset({(10, 0), (10, 3)}), out_buffer=True,
            hidden_align=128, inter_align=128, rounding=C.BF16_ROUNDING, requires=REQUIRES,
            limitations=(C.UNVERIFIED, _DSL), verified=(), deterministic=False)),
]
