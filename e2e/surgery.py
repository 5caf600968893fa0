"""Model surgery: the MoE blocks of a transformers model, replaced by moecheck's MoE running a backend.

`install(model, backend, fmt)` finds every sparse MoE block of the model's family (families.py),
and puts a MoecheckMoE in its place that
  - quantizes the expert weights once with the format's reference quantizer (`quantize(w, fmt.weight)`,
    as properties/case.py builds an MoEProblem) and calls `backend.prepare` once,
  - per forward: takes the logits of the block's own router module, routes them with moecheck's
    reference router (`route`), builds an MoEProblem for the current tokens and calls `backend.run`,
  - adds the shared experts (Qwen2-MoE, DeepSeek-V3), which stay the HF modules they were.
The "reference" pseudo-backend runs moecheck's `fused_experts` directly: the baseline every gate
compares against. Any registered backend name works (`moecheck.backends.registry.get`).
`Installed.restore()` puts the original blocks back, so one loaded model serves many gates.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from moecheck.backends import registry
from moecheck.backends.base import Backend, Capability
from moecheck.backends.problem import MoEProblem
from moecheck.e2e.families import Family, family_for
from moecheck.reference.activations import ACTIVATIONS
from moecheck.reference.errors import MoecheckError, require
from moecheck.reference.formats import FORMATS, Format, get_format
from moecheck.reference.moe import Rounding
from moecheck.reference.quantize import quantize
from moecheck.reference.routing import route

REFERENCE = "reference"


class ReferenceBackend(Backend):
    """moecheck's fused_experts itself (fp32 between the GEMMs unless `rounding` says otherwise)."""

    rounding: Rounding = Rounding()

    def prepare(self, p: MoEProblem):
        return None

    def run(self, prepared, p: MoEProblem, out=None) -> torch.Tensor:
        res = p.reference(self.rounding).out
        return res if out is None else out.copy_(res)


REFERENCE_BACKEND = ReferenceBackend(
    name=REFERENCE, description="moecheck.reference.moe.fused_experts: the e2e baseline",
    capability=Capability(formats=frozenset(FORMATS), dtypes=frozenset({torch.bfloat16, torch.float16, torch.float32}),
                          devices=frozenset({"cpu", "cuda"}), activations=frozenset(ACTIVATIONS), bias=True,
                          out_buffer=True))

_PSEUDO = {REFERENCE: REFERENCE_BACKEND}  # not registered: the property suite must not test the reference against itself


def resolve_backend(name: str) -> Backend:
    return _PSEUDO[name] if name in _PSEUDO else registry.get(name)


def _quantized(w: torch.Tensor, fmt: Format, dtype: torch.dtype):
    return quantize(w, fmt.weight) if fmt.weight is not None else w.to(dtype)


class MoecheckMoE(torch.nn.Module):
    """Drop-in for one HF sparse MoE block: HF router logits -> moecheck routing -> backend.run."""

    def __init__(self, block: torch.nn.Module, family: Family, config, backend: Backend, fmt: Format,
                 act_scales: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        for name, child in block.named_children():  # router and shared experts stay the HF modules
            if name != family.experts_attr:
                self.add_module(name, child)
        self.family, self.backend, self.fmt = family, backend, fmt
        self.router_spec = family.router(config)
        w13, w2, b13, b2 = family.layout.weights(getattr(block, family.experts_attr))
        dtype = w13.dtype
        require(fmt.quantized or dtype in (fmt.act_dtype, torch.float32),
                f"format {fmt.name} runs {fmt.act_dtype} activations; this model is {dtype} (load it as {fmt.act_dtype})")
        E, H = w13.shape[0], w13.shape[2]
        k = self.router_spec.top_k
        require(k <= E, f"top_k {k} exceeds the block's {E} experts")
        proto_x = torch.zeros(1, H, dtype=dtype, device=w13.device)
        self.proto = MoEProblem(
            hidden_states=proto_x, topk_weights=torch.full((1, k), 1.0 / k, device=w13.device),
            topk_ids=torch.arange(k, device=w13.device)[None], w13=_quantized(w13, fmt, dtype),
            w2=_quantized(w2, fmt, dtype), fmt=fmt, activation_name=family.activation(config), w13_bias=b13, w2_bias=b2)
        static = fmt.act is not None and fmt.act.static
        require(not static or act_scales is not None,
                f"format {fmt.name} has static activation scales: calibrate them first (moecheck.e2e.calibrate)")
        if static:
            self.proto = self.proto.with_(a1_scale=act_scales[0], a2_scale=act_scales[1])
        fmt.check_sizes(H, self.proto.inter)
        why = backend.capability.unsupported(self.proto)
        require(why is None, f"backend {backend.name} cannot run this {family.name} block: {why}")
        self.prepared = backend.prepare(self.proto)
        self.calls = 0  # backend.run calls: proof the backend under test computed the experts
        self.record: list | None = None  # calibration: (x, topk_ids) of every forward when a list

    def forward(self, hidden_states: torch.Tensor):
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1]).contiguous()
        router = getattr(self, self.family.router_attr)
        logits = router(x)[0]
        bias = getattr(router, self.family.correction_bias) if self.family.correction_bias else None
        weights, ids = route(logits.reshape(x.shape[0], -1), self.router_spec, bias)
        if self.record is not None:
            self.record.append((x.detach(), ids))
        p = self.proto.with_(hidden_states=x, topk_weights=weights, topk_ids=ids)
        out = self.backend.run(self.prepared, p)
        self.calls += 1
        require(tuple(out.shape) == tuple(x.shape), f"backend {self.backend.name} returned shape {tuple(out.shape)}, want {tuple(x.shape)}")
        out = out.to(hidden_states.dtype)
        if self.family.shared is not None:
            out = out + self.family.shared(self, x)
        return self.family.output(out.reshape(shape), weights.to(hidden_states.dtype))


@dataclass
class Installed:
    """The replaced blocks of one model; `restore()` puts the originals back."""

    model: torch.nn.Module
    family: Family
    backend: str
    format: str
    swaps: list[tuple[str, torch.nn.Module, str, torch.nn.Module, MoecheckMoE]] = field(default_factory=list)  # path, parent, attr, old, new

    @property
    def modules(self) -> list[MoecheckMoE]:
        return [new for *_, new in self.swaps]

    @property
    def calls(self) -> int:
        return sum(m.calls for m in self.modules)

    def restore(self) -> None:
        for _, parent, attr, old, _ in reversed(self.swaps):
            setattr(parent, attr, old)
        self.swaps.clear()

    def __enter__(self) -> "Installed":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def install(model: torch.nn.Module, backend: str | Backend, fmt: str | Format, family: str | None = None,
            act_scales: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> Installed:
    """Replace every MoE block of `model` by a MoecheckMoE running `backend` in format `fmt`.

    act_scales: per block path, the static (a1, a2) a static format needs (moecheck.e2e.calibrate)."""
    be = resolve_backend(backend) if isinstance(backend, str) else backend
    av = be.availability()
    require(av.ok, f"backend {be.name} is not available here: {av.reason}")
    f = get_format(fmt) if isinstance(fmt, str) else fmt
    config = model.config
    fam = family_for(config, family)
    targets = [(name, mod) for name, mod in model.named_modules() if type(mod).__name__ == fam.block_class]
    require(targets, f"no {fam.block_class} in {type(model).__name__}: not a {fam.name} model")
    done = Installed(model, fam, be.name, f.name)
    try:
        for name, block in targets:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            new = MoecheckMoE(block, fam, config, be, f, (act_scales or {}).get(name))
            setattr(parent, attr, new)
            done.swaps.append((name, parent, attr, block, new))
    except MoecheckError:
        done.restore()
        raise
    return done
