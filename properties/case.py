"""Case: the structure of one MoE call plus a seed, as JSON; `build` fills the tensors with torch.

Hypothesis draws only the structure (small integers and names), so shrinking works on shapes and
choices, and a failure is replayed exactly from its JSON on any machine with the same backend.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace

import torch
from moecheck.backends.problem import MoEProblem
from moecheck.properties.rng import GENERATORS, rng
from moecheck.reference.errors import MoecheckError, did_you_mean, require
from moecheck.reference.formats import get_format
from moecheck.reference.lora import MoELoRA
from moecheck.reference.padding import pad_bias13, pad_hidden, pad_w2, pad_w13
from moecheck.reference.quantize import calibrate, div_, quantize
from moecheck.reference.routing import RouterSpec, route

ROUTINGS = ("softmax", "skewed", "one_expert", "empty_experts")
VALUES = ("normal", "outliers", "tiny", "boundary")
ROUTER_LOGITS = ("normal", "ties", "negative", "wide")  # logits a routing backend sees (Case.router set)
DTYPES = ("bfloat16", "float16")
# JSON type of each field's annotation: bool is an int in Python, and "no" is truthy, so both are checked
_TYPES = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
}
_MIN = {"tokens": 0, "hidden": 1, "inter": 1, "experts": 1, "top_k": 1, "lora_adapters": 0, "lora_rank": 1,
        "ep_remote": 0, "seed": 0, "n_group": 1, "topk_group": 1}


def _finite(v: float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer beyond float range
        return False


def _field(name: str, value: object, ok: bool, allowed: str, hint: str = "") -> None:
    if not ok:
        try:
            shown = json.dumps(value)
        except (TypeError, ValueError):
            shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise MoecheckError(f"case field {name} must be {allowed}, got {shown}{hint}")


@dataclass(frozen=True)
class Case:
    backend: str = "cpu_loop"
    format: str = "bf16"
    property: str = "matches_reference"
    tokens: int = 4
    hidden: int = 64
    inter: int = 32
    experts: int = 4
    top_k: int = 2
    dtype: str = "bfloat16"
    activation: str = "silu"
    routing: str = "softmax"
    renormalize: bool = True
    values: str = "normal"
    ep_remote: int = 0  # experts that are not local (expert_map -1); 0 = no expert parallelism
    bias: bool = False
    lora_adapters: int = 0
    lora_rank: int = 4
    weights_on_input: bool = False
    seed: int = 0
    # routing backends: "" = the case hands top-k ids and weights to the backend (`routing` shapes them);
    # a router kind (reference/routing.py) = the backend computes them itself from the logits
    router: str = ""
    router_logits: str = "normal"  # ties: on a coarse grid; negative: all < 0; wide: std 8 (saturated scores)
    n_group: int = 1  # deepseek_v3 grouped top-k
    topk_group: int = 1
    routed_scaling: float = 1.0
    # how the tensors are drawn (properties/rng.py): 1 = torch's CPU generator, then copied to the
    # device (every case recorded before 2026-12-03); 2 = a counter-based stream made on the device
    gen: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Case":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise MoecheckError(f"case is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        require(isinstance(d, dict), f"case JSON must be an object, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        extra = sorted(set(d) - set(known))
        if extra:
            raise MoecheckError(f"unknown case field {extra[0]!r}{did_you_mean(extra[0], known)}; known: {', '.join(known)}")
        c = cls(**d)
        c.validate()
        return c

    def with_(self, **kw) -> "Case":
        return replace(self, **kw)

    def validate(self) -> None:
        """Every field of its JSON type (true/false, integers, not strings or bools) and range: one line
        naming the field, the value and what is allowed."""
        from moecheck.properties.checks import PROPERTIES  # checks imports this module
        from moecheck.reference.activations import ACTIVATIONS
        from moecheck.reference.formats import FORMATS
        from moecheck.reference.routing import ROUTER_KINDS

        for f in fields(self):
            v = getattr(self, f.name)
            _field(f.name, v, _TYPES[f.type][0](v), _TYPES[f.type][1])
        for name, lo in _MIN.items():
            _field(name, getattr(self, name), getattr(self, name) >= lo, f"an integer >= {lo}")
        _field("seed", self.seed, self.seed < 2**63, "an integer in [0, 2**63)")
        _field("top_k", self.top_k, self.top_k <= self.experts, f"an integer in [1, experts={self.experts}]")
        _field("ep_remote", self.ep_remote, self.ep_remote < self.experts, f"an integer in [0, experts={self.experts})")
        _field("routed_scaling", self.routed_scaling, _finite(self.routed_scaling) and self.routed_scaling > 0,
               "a finite number > 0")
        _field("topk_group", self.topk_group, self.topk_group <= self.n_group, f"an integer in [1, n_group={self.n_group}]")
        _field("gen", self.gen, self.gen in GENERATORS, "1 (torch's CPU generator) or 2 (moecheck's stream)")
        for name, allowed in (("property", PROPERTIES), ("format", FORMATS), ("activation", ACTIVATIONS),
                              ("routing", ROUTINGS), ("values", VALUES), ("dtype", DTYPES),
                              ("router", ("", *ROUTER_KINDS)), ("router_logits", ROUTER_LOGITS)):
            v = getattr(self, name)
            if v not in allowed:  # the message (and its close matches) only for a bad value: validate runs per example
                _field(name, v, False, "one of " + ", ".join(json.dumps(a) for a in allowed), did_you_mean(v, allowed))
        require(not self.weights_on_input or self.top_k == 1, f"weights_on_input needs top_k == 1, got top_k={self.top_k}")
        if self.router:
            require(self.experts % self.n_group == 0, f"experts {self.experts} not divisible by n_group {self.n_group}")
            spec = self.router_spec()
            kept = spec.topk_group * (self.experts // spec.n_group)
            require(self.top_k <= kept, f"top_k {self.top_k} exceeds the {kept} experts of topk_group groups")

    def router_spec(self) -> RouterSpec:
        """The router a routing backend must implement for this case."""
        return RouterSpec(self.router, self.top_k, renormalize=self.renormalize, n_group=self.n_group,
                          topk_group=self.topk_group, routed_scaling_factor=self.routed_scaling,
                          apply_weights_to_input=self.weights_on_input)

    def summary(self) -> str:
        extra = [f"ep_remote={self.ep_remote}"] * bool(self.ep_remote) + ["bias"] * self.bias
        extra += ["weights_on_input"] * self.weights_on_input
        extra += [f"lora={self.lora_adapters}x{self.lora_rank}"] * bool(self.lora_adapters)
        if self.router:
            extra += [f"router={self.router}/{self.router_logits}" + (f" groups={self.topk_group}of{self.n_group}" if self.n_group > 1 else "")
                      + (f" scale={self.routed_scaling:g}" if self.routed_scaling != 1.0 else "") + (" renorm" if self.renormalize else "")]
        return (f"{self.backend}/{self.format}/{self.property} T={self.tokens} H={self.hidden} I={self.inter} "
                f"E={self.experts} k={self.top_k} {self.dtype} {self.activation} {self.routing} {self.values} seed={self.seed} " + " ".join(extra)).strip()


def weight_block_rows(fmt) -> int:
    """Rows of a 2-D weight scale block (128 for DeepSeek 128x128), else 1.

    w13 stacks gate and up along N: padding each half keeps the unpadded scale blocks only when I
    is a multiple of this, so the padding property draws such I for these formats.
    """
    return (fmt.weight.block[0] or 1) if fmt.weight is not None else 1


def _values(g, shape, kind: str, elem_max: float, dev) -> torch.Tensor:
    x = g.randn(*shape, device=dev)
    if kind == "outliers":  # a few channels 100x larger, as in real LLM activations
        cols = g.randint(0, shape[-1], (max(1, shape[-1] // 64),), device=dev)
        x[..., cols] *= 100.0
    elif kind == "tiny":  # near the bottom of the scale range: scales underflow first
        x = x * 2.0**-100
    elif kind == "boundary":  # block maxima exactly on scale boundaries: 2^k (FLOOR) and elem_max*2^j (RCEIL)
        k = g.randint(3, 6, shape[:-1] + (1,), device=dev).float()
        for start, mag in ((0, torch.exp2(k)), (8, elem_max * torch.exp2(k - 8))):
            if start >= shape[-1]:
                break
            cols = torch.arange(start, shape[-1], 16, device=x.device)
            sign = torch.where(g.rand(*shape[:-1], len(cols), device=dev) < 0.5, -1.0, 1.0)
            x[..., cols] = sign * mag
    return x


def _routing(g, c: Case, n_local_ok: torch.Tensor):
    """(weights, ids, logits, bias): the reference routing of the case's logits, on the CPU (ties are
    broken the same way wherever the case runs)."""
    logits = g.randn(c.tokens, c.experts, device="cpu")
    if c.router and c.router_logits == "wide":
        logits = logits * 8.0
    if c.routing == "skewed":
        logits = logits + torch.linspace(4.0, 0.0, c.experts)
    elif c.routing == "one_expert":
        logits[:, 0] += 100.0
    elif c.routing == "empty_experts":  # half the experts get no token at all
        dead = torch.arange(c.experts) % 2 == 1
        if int((~dead).sum()) >= c.top_k:
            logits[:, dead] = -1e4
    if c.router:
        if c.router_logits == "ties":  # exact ties at the cut, on purpose: any of the tied experts is right
            logits = torch.round(logits * 2.0) / 2.0
        elif c.router_logits == "negative":  # sigmoids of 2e-5..0.05: with a bias of +-0.01, biased scores below 0
            logits = -(2.0 * logits.abs()).clamp_max(8.0) - 3.0
        bias = g.randn(c.experts, device="cpu") * 0.01 if c.router == "deepseek_v3" else None
        w, ids = route(logits, c.router_spec(), bias)
        return w, ids, logits, bias
    if c.weights_on_input:
        spec = RouterSpec("llama4", 1, apply_weights_to_input=True)
    else:
        spec = RouterSpec("softmax_topk", c.top_k, renormalize=c.renormalize)
    return (*route(logits, spec), None, None)


TILE = 64  # weight tiles of one magnitude: finer than any 128x128 scale block


def _scale_tiles_(w: torch.Tensor, c: Case, which: int, dev) -> torch.Tensor:
    """Multiply each 64x64 tile of each expert's weight, in place, by a magnitude in [1/4, 4), as real
    checkpoints' blocks differ: a kernel that reads another block's (or expert's) scale is then wrong by a
    visible factor. Drawn from a generator of its own, after everything else, so the other tensors of a
    case stay as they were. In place and, for whole tiles, through a broadcast view: a model-sized
    layer's weights are a GiB, and a full-size copy of the magnitudes would double that."""
    g = rng(c.gen, (c.seed * 7919 + which) % 2**63, dev)
    e, r, k = w.shape
    tiles = g.magnitudes(e, -(-r // TILE), -(-k // TILE), device=dev).to(w.device)
    if r % TILE == 0 and k % TILE == 0:
        w.view(e, r // TILE, TILE, k // TILE, TILE).mul_(tiles[:, :, None, :, None])
        return w
    rows, cols = torch.arange(r, device=w.device) // TILE, torch.arange(k, device=w.device) // TILE
    return w.mul_(tiles[:, rows[:, None], cols[None, :]])  # each element its tile's magnitude, in one gather


def digest(p: MoEProblem) -> str:
    """A hash of a built problem's tensors (weights dequantized), wherever they live: "the same case"
    checked bit for bit across generators, devices and versions."""
    import hashlib

    h = hashlib.sha256()
    for name in ("hidden_states", "topk_weights", "topk_ids", "w13", "w2", "w13_bias", "w2_bias", "expert_map"):
        t = getattr(p, name)
        if t is None:
            continue
        t = t.dequantize() if hasattr(t, "dequantize") else t
        h.update(name.encode() + t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def build(c: Case, device: str | torch.device = "cpu", pad_to: tuple[int, int] | None = None) -> MoEProblem:
    """Deterministic tensors for `c` on `device` (gen 1: drawn on the CPU and moved; gen 2: drawn
    there), weights quantized by the reference.

    pad_to=(H', I') zero-pads hidden and intermediate (gate and up separately) before quantizing:
    the same numbers as the unpadded case, laid out as a padding kernel path would see them.
    """
    c.validate()
    fmt = get_format(c.format)
    from moecheck.reference.activations import ACTIVATIONS

    act = ACTIVATIONS[c.activation]
    fmt.check_sizes(c.hidden, c.inter)
    dev = torch.device(device)
    g = rng(c.gen, c.seed, dev)
    dt = getattr(torch, c.dtype)
    elem_max = fmt.act.codec.max if fmt.act is not None else 448.0
    x = _values(g, (c.tokens, c.hidden), c.values, elem_max, dev).to(dt)
    n_local = c.experts - c.ep_remote
    rows13 = 2 * c.inter if act.gated else c.inter
    w13 = div_(g.randn(n_local, rows13, c.hidden, device=dev), c.hidden**0.5)
    w2 = div_(g.randn(n_local, c.hidden, c.inter, device=dev), c.inter**0.5)
    expert_map = None
    if c.ep_remote:
        perm = g.randperm(c.experts, device="cpu")
        expert_map = torch.full((c.experts,), -1, dtype=torch.int64)
        expert_map[perm[:n_local]] = torch.arange(n_local)
    weights, ids, logits, router_bias = _routing(g, c, expert_map)
    b13 = g.randn(n_local, rows13, device="cpu") * 0.1 if c.bias else None
    b2 = g.randn(n_local, c.hidden, device="cpu") * 0.1 if c.bias else None
    lora = token_lora = None
    if c.lora_adapters:
        L, r, E = c.lora_adapters, c.lora_rank, n_local
        mk = lambda *s: g.randn(*s, device="cpu") * 0.05  # noqa: E731
        lora = MoELoRA(mk(L, E, r, c.hidden), mk(L, E, c.inter, r), mk(L, E, r, c.hidden), mk(L, E, c.inter, r),
                       mk(L, E, r, c.inter), mk(L, E, c.hidden, r), scaling=1.0)
        token_lora = g.randint(-1, L, (c.tokens,), device="cpu")
    a1 = a2 = None
    if fmt.act is not None and fmt.act.static:  # calibrated scales: on the input itself, a fixed guess for the intermediate
        a1 = calibrate(x, fmt.act).clamp(min=2.0**-20)
        a2 = torch.tensor(2.0**-6)
    w13, w2 = _scale_tiles_(w13, c, 1, dev), _scale_tiles_(w2, c, 2, dev)
    if pad_to is not None:
        hp, ip = pad_to
        x, w13, w2 = pad_hidden(x, hp), pad_w13(w13, ip, hp, act), pad_w2(w2, hp, ip)
        b13 = None if b13 is None else pad_bias13(b13, ip, act)
        b2 = None if b2 is None else pad_hidden(b2, hp)
        require(lora is None, "padding with LoRA is not modelled")
    q13 = quantize(w13, fmt.weight) if fmt.weight is not None else w13.to(dt)
    q2 = quantize(w2, fmt.weight) if fmt.weight is not None else w2.to(dt)
    mv = lambda t: None if t is None else t.to(device)  # noqa: E731
    return MoEProblem(
        hidden_states=x.to(device), topk_weights=weights.to(device), topk_ids=ids.to(device),
        w13=q13.to(device), w2=q2.to(device), fmt=fmt, activation_name=c.activation, expert_map=mv(expert_map),
        w13_bias=mv(b13), w2_bias=mv(b2), a1_scale=mv(a1), a2_scale=mv(a2),
        apply_router_weight_on_input=c.weights_on_input, lora=lora.to(device) if lora else None,
        token_lora=mv(token_lora), router_logits=mv(logits) if c.router else None,
        router=c.router_spec() if c.router else None, router_bias=mv(router_bias))
