"""Toy backends for the capability audit's tests, one planted reaction each (load as a plugin).

Each is the README's toy_moe (tests/backends/example_plugin.py), which computes any format correctly,
with a record claiming bf16 only and `forwards` naming what its adapter passes on:
  - audit_works:        fp8_token_channel passed on and computed right             -> works
  - audit_wrong_format: fp8_tensor weights read without their scales              -> silently wrong
  - audit_nan_format:   fp8_tensor output NaN                                     -> non-finite
  - audit_attr_error:   bias passed on, an AttributeError in the adapter           -> adapter error
  - audit_empty_error:  bias passed on, NotImplementedError() without a message   -> adapter error
  - audit_refuses:      bias passed on, refused with a clear MoecheckError        -> refused
  - audit_cuda_error:   bias passed on, a CUDA error message                      -> device error
  - audit_no_kernel:    fp8_token_channel computed without the spied kernel       -> not probed
  lora is neither claimed nor passed on by any of them                            -> not probed
Two routers (cpu_router's code): audit_router_works passes sigmoid_topk on (works); audit_router_noscale
claims no routed scaling but passes it on and drops it (silently wrong).
"""
from __future__ import annotations

import torch
from moecheck.backends import Capability
from moecheck.backends import cpu_router as R
from moecheck.reference.errors import require
from moecheck.tests.backends.example_plugin import CAP, ToyMoE

SPIES = ("moecheck.tests.backends.example_plugin:toy_gemm",)


class AuditToy(ToyMoE):
    plant: str = ""

    def prepare(self, p):
        if self.plant == "wrong_format" and p.fmt.name == "fp8_tensor":
            return p.w13.element_values(), p.w2.element_values()  # scales dropped
        return super().prepare(p)

    def run(self, w, p, out=None):
        if p.w13_bias is not None:
            if self.plant == "attr_error":
                return p.w13_bias_t  # not a field of MoEProblem: an adapter bug
            if self.plant == "empty_error":
                raise NotImplementedError
            if self.plant == "refuses":
                require(False, f"{self.name}: no bias mapping in this library")
            if self.plant == "cuda_error":
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if self.plant == "no_kernel" and p.fmt.name == "fp8_token_channel":
            return torch.zeros(p.tokens, p.hidden, dtype=p.hidden_states.dtype)
        res = super().run(w, p, out)
        if self.plant == "nan_format" and p.fmt.name == "fp8_tensor":
            return torch.full_like(res, float("nan"))
        return res


def _toy(plant: str, forwards: set[str]) -> AuditToy:
    cap = Capability(formats=frozenset({"bf16"}), devices=frozenset({"cpu"}), activations=CAP.activations,
                     rounding=CAP.rounding, forwards=frozenset(forwards))
    b = AuditToy(name=f"audit_{plant}", capability=cap, spies=SPIES)
    b.plant = plant
    return b


class NoScaleRouter(R.CpuRouter):
    def route(self, prepared, p):
        spec = type(p.router)(**{**p.router.__dict__, "routed_scaling_factor": 1.0})
        return R.route_logits(p.router_logits, spec, p.router_bias)


_ROUTER_CAP = dict(formats=frozenset({"bf16"}), devices=frozenset({"cpu"}), kind="router")
BACKENDS = [
    _toy("works", {"fp8_token_channel"}), _toy("wrong_format", {"fp8_tensor"}), _toy("nan_format", {"fp8_tensor"}),
    _toy("attr_error", {"bias"}), _toy("empty_error", {"bias"}), _toy("refuses", {"bias"}),
    _toy("cuda_error", {"bias"}), _toy("no_kernel", {"fp8_token_channel"}),
    R.CpuRouter(name="audit_router_works", spies=("moecheck.backends.cpu_router:route_logits",),
                capability=Capability(**_ROUTER_CAP, routers=frozenset({"softmax_topk"}), forwards=frozenset({"sigmoid_topk"}))),
    NoScaleRouter(name="audit_router_noscale", spies=("moecheck.backends.cpu_router:route_logits",),
                  capability=Capability(**_ROUTER_CAP, routers=frozenset({"deepseek_v3"}), routed_scaling=False,
                                        forwards=frozenset({"routed_scaling"}))),
]
