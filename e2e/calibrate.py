"""Static activation scales (a1, a2) per MoE block, for formats whose kernels take calibrated scales.

Static formats (fp8_tensor_static, nvfp4) quantize the layer input and the intermediate with scales
fixed ahead of time, as a checkpoint would ship them. A calibration pass runs the model with the
unquantized reference MoE on calibration prompts, records every block's input and routing, and
stores per block what `moecheck.reference.quantize.calibrate` derives from
  a1: the block inputs (all calibration tokens),
  a2: the intermediate act(x W13[e]^T) of every routed row, with the unquantized expert weights.
The reference and the backend under test get the same scales, so the gate compares kernels, not
calibrations. Scales are keyed by the block's module path.
"""
from __future__ import annotations

import torch
from moecheck.e2e import surgery
from moecheck.reference import activations as act_mod
from moecheck.reference.errors import require
from moecheck.reference.formats import Format
from moecheck.reference.qtensor import QTensor
from moecheck.reference.quantize import calibrate

Scales = dict[str, tuple[torch.Tensor, torch.Tensor]]


def needs_calibration(fmt: Format) -> bool:
    return fmt.act is not None and fmt.act.static


def _deq(w) -> torch.Tensor:
    return w.dequantize() if isinstance(w, QTensor) else w.float()


def _intermediate(m: surgery.MoecheckMoE, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """act(x W13[e]^T + b13[e]) of every routed (token, expert) row, fp32 [R, I]."""
    p = m.proto
    w13 = _deq(p.w13)
    outs = []
    for e in ids.unique().tolist():
        tok = (ids == e).any(dim=1).nonzero().flatten()
        h = x[tok].float() @ w13[e].T
        if p.w13_bias is not None:
            h = h + p.w13_bias[e].float()
        outs.append(act_mod.apply(h, p.activation))
    return torch.cat(outs) if outs else x.new_zeros(0, p.inter, dtype=torch.float32)


@torch.no_grad()
def static_scales(model, tokenizer, prompts: list[str], fmt: Format, family: str | None = None,
                  batch_size: int = 16) -> Scales:
    """Per MoE block path: (a1, a2) for `fmt`, from the unquantized reference model on `prompts`."""
    require(needs_calibration(fmt), f"format {fmt.name} computes its activation scales; nothing to calibrate")
    require(len(prompts) > 0, "calibration needs at least one prompt")
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    with surgery.install(model, surgery.REFERENCE, "bf16" if fmt.act_dtype == torch.bfloat16 else "fp16", family) as inst:
        paths = {id(new): path for path, *_, new in inst.swaps}
        for m in inst.modules:
            m.record = seen.setdefault(paths[id(m)], [])
        dev = next(model.parameters()).device
        batch_size = batch_size if tokenizer.pad_token is not None else 1  # no pad token: no padded batches
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True)
            enc = {k: v.to(dev) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            model(**enc)
        scales = {}
        for m in inst.modules:
            rec = seen[paths[id(m)]]
            x = torch.cat([r[0] for r in rec])
            y = torch.cat([_intermediate(m, *r) for r in rec])
            scales[paths[id(m)]] = (calibrate(x, fmt.act).to(dev), calibrate(y, fmt.act).to(dev))
            m.record = None
    return scales
