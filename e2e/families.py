"""Model families, as records: where a transformers MoE block keeps its router, experts and shared experts.

Read off the installed transformers 5.x modeling files (models/<family>/modeling_<family>.py), not
guessed. Every family below stores its routed experts as one module with 3-D tensors:

| family | block class | router | expert tensors (HF) | activation |
| --- | --- | --- | --- | --- |
| mixtral | MixtralSparseMoeBlock | gate: softmax, top-k, always renormalized | gate_up_proj [E, 2I, H] = [gate; up], down_proj [E, H, I] | silu |
| qwen2_moe | Qwen2MoeSparseMoeBlock | gate: softmax, top-k, renormalized iff norm_topk_prob | same | silu; + shared_expert * sigmoid(shared_expert_gate(x)) |
| qwen3_moe | Qwen3MoeSparseMoeBlock | as qwen2_moe | same | silu |
| olmoe | OlmoeSparseMoeBlock | as qwen2_moe | same | silu |
| deepseek_v3 | DeepseekV3MoE | gate: sigmoid, + e_score_correction_bias for the choice, grouped top-k, renormalized, x routed_scaling_factor | same | silu; + shared_experts(x) |
| gpt_oss | GptOssMLP | router: logits + bias, top-k on logits, softmax over the k | gate_up_proj [E, H, 2I] interleaved (gate even, up odd) + bias, down_proj [E, I, H] + bias | swigluoai (clamped, alpha); returns (out, router_scores) |

The router module of each block returns the logits first; moecheck routes those logits itself
(moecheck.reference.routing.route), so a backend sees exactly the routing the reference sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from moecheck.reference.activations import ACTIVATIONS
from moecheck.reference.errors import MoecheckError, require
from moecheck.reference.routing import RouterSpec

Tensor = torch.Tensor


@dataclass(frozen=True)
class Layout:
    """How the experts module stores its weights, mapped to moecheck's w13 [E, 2I, H], w2 [E, H, I]."""

    gate_up: str = "gate_up_proj"
    down: str = "down_proj"
    transposed: bool = False  # HF stores [E, H, 2I] / [E, I, H] (x @ W), moecheck wants [E, N, K]
    gate_up_bias: str | None = None
    down_bias: str | None = None

    def weights(self, experts: torch.nn.Module) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        missing = [a for a in (self.gate_up, self.down, self.gate_up_bias, self.down_bias)
                   if a is not None and not isinstance(getattr(experts, a, None), torch.Tensor)]
        if missing:
            raise MoecheckError(f"{type(experts).__name__} has no tensor {missing[0]!r}: this transformers version stores "
                                "experts differently (moecheck e2e reads the fused 3-D expert tensors of transformers 5.x)")
        t = (lambda w: w.detach().transpose(1, 2).contiguous()) if self.transposed else (lambda w: w.detach().contiguous())
        b = lambda a: None if a is None else getattr(experts, a).detach().contiguous()  # noqa: E731
        return t(getattr(experts, self.gate_up)), t(getattr(experts, self.down)), b(self.gate_up_bias), b(self.down_bias)


CONCAT = Layout()
GPT_OSS = Layout(transposed=True, gate_up_bias="gate_up_proj_bias", down_bias="down_proj_bias")

_HF_ACT = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}  # HF hidden_act -> preset


def _hidden_act(cfg) -> str:
    act = getattr(cfg, "hidden_act", "silu")
    require(act in _HF_ACT, f"hidden_act {act!r} has no moecheck activation preset; known: {', '.join(sorted(_HF_ACT))}")
    return _HF_ACT[act]


def _swigluoai(cfg) -> str:
    spec = ACTIVATIONS["swigluoai"]
    got = (float(getattr(cfg, "swiglu_alpha", spec.alpha)), float(getattr(cfg, "swiglu_limit", spec.limit)))
    require(got == (spec.alpha, spec.limit),
            f"gpt-oss swiglu alpha/limit {got} differ from moecheck's swigluoai preset {(spec.alpha, spec.limit)}")
    return "swigluoai"


def _softmax_topk(cfg, always_renorm: bool = False) -> RouterSpec:
    return RouterSpec("softmax_topk", top_k=cfg.num_experts_per_tok,
                      renormalize=always_renorm or bool(getattr(cfg, "norm_topk_prob", False)))


def _deepseek_v3(cfg) -> RouterSpec:
    # moecheck's deepseek_v3 router always renormalizes (DeepSeek-V3's norm_topk_prob=True)
    require(bool(getattr(cfg, "norm_topk_prob", True)), "deepseek_v3 with norm_topk_prob=False is not modelled by moecheck's router")
    return RouterSpec("deepseek_v3", top_k=cfg.num_experts_per_tok, n_group=cfg.n_group, topk_group=cfg.topk_group,
                      routed_scaling_factor=float(cfg.routed_scaling_factor))


def _qwen2_shared(block, x: Tensor) -> Tensor:
    return torch.sigmoid(block.shared_expert_gate(x)) * block.shared_expert(x)


def _deepseek_shared(block, x: Tensor) -> Tensor:
    return block.shared_experts(x)


def _plain(out: Tensor, weights: Tensor) -> Tensor:
    return out


def _with_router_scores(out: Tensor, weights: Tensor):
    return out, weights  # GptOssMLP.forward returns (hidden_states, router_scores); the decoder layer drops the second


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.model_type values of this family
    block_class: str  # class name of the sparse MoE block that surgery replaces
    router_attr: str  # the block's router module; module(x)[0] are the logits [T, E]
    router: Callable  # config -> RouterSpec
    activation: Callable  # config -> moecheck activation preset name
    layout: Layout = CONCAT
    experts_attr: str = "experts"
    correction_bias: str | None = None  # attribute of the router module (deepseek_v3)
    shared: Callable | None = None  # (block, x [T, H]) -> shared-expert output, added to the routed one
    output: Callable = _plain  # (out [B, S, H], topk_weights) -> what the HF block returns


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("mixtral", ("mixtral",), "MixtralSparseMoeBlock", "gate", lambda c: _softmax_topk(c, always_renorm=True), _hidden_act),
    Family("qwen2_moe", ("qwen2_moe",), "Qwen2MoeSparseMoeBlock", "gate", _softmax_topk, _hidden_act, shared=_qwen2_shared),
    Family("qwen3_moe", ("qwen3_moe",), "Qwen3MoeSparseMoeBlock", "gate", _softmax_topk, _hidden_act),
    Family("olmoe", ("olmoe",), "OlmoeSparseMoeBlock", "gate", _softmax_topk, _hidden_act),
    Family("deepseek_v3", ("deepseek_v3",), "DeepseekV3MoE", "gate", _deepseek_v3, _hidden_act,
           correction_bias="e_score_correction_bias", shared=_deepseek_shared),
    Family("gpt_oss", ("gpt_oss",), "GptOssMLP", "router", lambda c: RouterSpec("gpt_oss", top_k=c.num_experts_per_tok),
           _swigluoai, layout=GPT_OSS, output=_with_router_scores),
)}


def family_for(config, name: str | None = None) -> Family:
    """The family named, else the one whose model_types hold config.model_type."""
    if name is not None:
        require(name in FAMILIES, f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}")
        return FAMILIES[name]
    mt = getattr(config, "model_type", None)
    for f in FAMILIES.values():
        if mt in f.model_types:
            return f
    raise MoecheckError(f"model_type {mt!r} is not a known MoE family; known: {', '.join(sorted(FAMILIES))}")
