"""The backend protocol and its capability record.

A backend receives an MoEProblem (activations, routing, weights already quantized by the reference
quantizers), converts it to its own layout in `prepare`, and computes in `run`. Everything the
suite needs to know about it is data on its Capability record: the property suite draws only
cases the record allows, and the capability audit tries the ones it says are unsupported.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

import torch
from moecheck.backends.problem import MoEProblem
from moecheck.reference.errmodel.budget import ErrorBudget
from moecheck.reference.errmodel.table import Loosening, budget_for
from moecheck.reference.errors import require
from moecheck.reference.formats import FORMATS
from moecheck.reference.moe import Rounding
from moecheck.reference.routing import ROUTER_KINDS

FEATURES = ("expert_map", "lora", "bias", "weights_on_input")  # record flags the audit probes where unclaimed


@dataclass(frozen=True)
class Limitation:
    text: str
    link: str = ""


@dataclass(frozen=True)
class Capability:
    formats: frozenset[str]
    dtypes: frozenset[torch.dtype] = frozenset({torch.bfloat16})
    devices: frozenset[str] = frozenset({"cuda"})
    archs: frozenset[tuple[int, int]] | None = None  # CUDA compute capabilities; None = any
    activations: frozenset[str] = frozenset({"silu"})  # ACTIVATIONS preset names
    expert_map: bool = False
    lora: bool = False
    bias: bool = False
    weights_on_input: bool = False  # apply_router_weight_on_input (Llama4)
    out_buffer: bool = False  # run(..., out=) writes into a caller buffer
    hidden_align: int = 1
    inter_align: int = 1
    min_hidden: int = 1  # smallest hidden size the library compiles/computes for (a tile constraint, not an alignment)
    min_inter: int = 1  # likewise for the intermediate size
    max_tokens: int | None = None
    min_tokens: int = 0  # below this the library returns before any kernel launch: nothing a spy could see
    max_experts: int | None = None
    max_top_k: int | None = None
    rounding: Rounding = Rounding()  # where the kernel rounds: the reference mirrors it
    numerics: tuple[Loosening, ...] = ()  # how its arithmetic differs from the baseline budget, each with why
    tiny_values: bool = True  # handles activations near the scale underflow (False: a documented scale floor)
    act_quant: str | None = None  # a format whose activation quantization the kernel applies instead of the case's
    requires: tuple[str, ...] = ()  # importable modules needed
    limitations: tuple[Limitation, ...] = ()
    verified: tuple[str, ...] = ()  # "where/what it was verified with", e.g. "H100 sm_90, torch 2.11"
    deterministic: bool = True  # claims bitwise-identical reruns
    batch_invariant: bool = False  # claims a token's output does not depend on the batch
    kind: str = "moe"  # "moe": run() computes the layer; "router": route() computes top-k ids and weights
    routers: frozenset[str] = frozenset()  # router kinds (reference/routing.py) it computes itself from logits
    routed_scaling: bool = True  # its router applies routed_scaling_factor (else only 1.0 is drawn)
    min_group_experts: int = 1  # grouped routers: fewest experts per group it routes correctly
    # unclaimed formats, FEATURES, router kinds or "routed_scaling" that prepare/run/route still hand to the
    # library: the audit probes only what the adapter passes on (a claim is passed on by definition)
    forwards: frozenset[str] = frozenset()

    def __post_init__(self):
        unknown = sorted(set(self.forwards) - set(FORMATS) - set(FEATURES) - set(ROUTER_KINDS) - {"routed_scaling"})
        require(not unknown, f"Capability.forwards: unknown names {unknown}: formats, {FEATURES}, router kinds or routed_scaling")

    def forwarded(self) -> frozenset[str]:
        """What the adapter hands to the library: its claims plus `forwards`."""
        claimed = {f for f in FEATURES if getattr(self, f)} | set(self.formats) | set(self.routers)
        return frozenset(claimed | ({"routed_scaling"} if self.routed_scaling else set()) | set(self.forwards))

    def reference_format(self, fmt):
        """The format the reference mirrors: the case's, with the kernel's own activation quantization
        where the record declares one (a kernel fed block weights but quantizing activations per tensor)."""
        if self.act_quant is None:
            return fmt
        from dataclasses import replace

        from moecheck.reference.formats import get_format

        return replace(fmt, act=get_format(self.act_quant).act)

    def budget(self, fmt: str) -> ErrorBudget:
        """What a correct kernel of this record may differ by, for format `fmt` (reference/errmodel/table.py)."""
        return budget_for(fmt, self.numerics)

    def unsupported(self, problem: MoEProblem) -> str | None:
        """None if the record allows this problem, else the first reason it does not."""
        p = problem
        checks = [
            (p.fmt.name in self.formats, f"format {p.fmt.name} not supported"),
            (p.hidden_states.dtype in self.dtypes, f"dtype {p.hidden_states.dtype} not supported"),
            (p.activation_name in self.activations, f"activation {p.activation_name} not supported"),
            (self.expert_map or p.expert_map is None, "expert_map (EP) not supported"),
            (self.lora or p.lora is None, "MoE-LoRA not supported"),
            (self.bias or (p.w13_bias is None and p.w2_bias is None), "expert biases not supported"),
            (self.weights_on_input or not p.apply_router_weight_on_input, "router weight on input not supported"),
            (p.hidden % self.hidden_align == 0, f"hidden {p.hidden} not a multiple of {self.hidden_align}"),
            (p.inter % self.inter_align == 0, f"intermediate {p.inter} not a multiple of {self.inter_align}"),
            (p.hidden >= self.min_hidden, f"hidden {p.hidden} below {self.min_hidden}"),
            (p.inter >= self.min_inter, f"intermediate {p.inter} below {self.min_inter}"),
            (self.max_tokens is None or p.tokens <= self.max_tokens, f"more than {self.max_tokens} tokens"),
            (p.tokens >= self.min_tokens, f"fewer than {self.min_tokens} tokens"),
            (self.max_experts is None or p.experts <= self.max_experts, f"more than {self.max_experts} experts"),
            (self.max_top_k is None or p.top_k <= self.max_top_k, f"top_k above {self.max_top_k}"),
            (p.router is None or p.router.n_group <= 1 or p.experts // p.router.n_group >= self.min_group_experts,
             f"fewer than {self.min_group_experts} experts per router group"),
        ]
        return next((why for ok, why in checks if not ok), None)


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""
    device: str = "cpu"


def _device_for(cap: Capability) -> Availability:
    if "cuda" in cap.devices and torch.cuda.is_available():
        cc = torch.cuda.get_device_capability()
        if cap.archs is None or cc in cap.archs:
            return Availability(True, f"{torch.cuda.get_device_name()} sm_{cc[0]}{cc[1]}", "cuda")
        if "cpu" not in cap.devices:
            want = ", ".join(f"sm_{a}{b}" for a, b in sorted(cap.archs))
            return Availability(False, f"needs {want}, this GPU is sm_{cc[0]}{cc[1]}")
    if "cpu" in cap.devices:
        return Availability(True, "cpu", "cpu")
    return Availability(False, "needs a CUDA GPU, none visible")


@dataclass
class Backend:
    """Subclass and override prepare/run; set `capability`. `spies` name the callables
    ("module:attr") that must be entered during run: proof the kernel under test executed."""

    name: str = "unnamed"
    capability: Capability = field(default_factory=lambda: Capability(formats=frozenset()))
    spies: tuple[str, ...] = ()
    description: str = ""
    router_spies: tuple[str, ...] = ()  # entered when it routes itself (an MoE backend with routers)

    def availability(self) -> Availability:
        for mod in self.capability.requires:
            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return Availability(False, f"package {mod!r} not installed")
        return _device_for(self.capability)

    def prepare(self, problem: MoEProblem) -> Any:
        """Convert reference-quantized weights into this backend's layout (done once per case)."""
        return problem

    def run(self, prepared: Any, problem: MoEProblem, out: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's output [T, H]. When the record claims routers and `problem.topk_ids` is None, the
        backend routes itself from `problem.router_logits` with `problem.router`."""
        raise NotImplementedError

    def route(self, prepared: Any, problem: MoEProblem) -> tuple[torch.Tensor, torch.Tensor]:
        """Router backends (Capability.kind == "router"): (weights [T, k], ids [T, k]) from the logits."""
        raise NotImplementedError
