"""ErrorBudget: the per-stage factors of the error model, as one record.

The reference MoE propagates a variance alongside its values (propagate.py): every place where a
correct kernel may legitimately differ contributes a term, and the bound on |backend - reference|
is z * sqrt(variance) + floor. Terms (each derived from the arithmetic, not fitted):
  - GEMM accumulation in another order/precision: unit `acc_unit` over K products of |A|.|W|.
  - re-quantization of an activation (layer input, intermediate): a code can move to its
    neighbour only where the upstream difference reaches a rounding boundary, and a discrete block
    scale (E8M0/E4M3/UE8M0) can flip only where the block amax is that close to one. Both are
    measured by re-quantizing perturbed inputs (propagate.requant_var), not assumed everywhere.
  - each rounding point to a narrow dtype (bf16/fp16): half an ulp either side, both sides.
  - the activation function evaluated with a fast exp/tanh: `act_fn_rel` relative.
  - weights whose scales a kernel stores in a narrower dtype (e.g. bf16 group scales): every
    dequantized weight off by up to `weight_rel` relative, charged in each GEMM like the inputs' error.
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ErrorBudget:
    z: float = 6.0  # sigma multiplier: max of ~1e6 near-Gaussian terms stays under ~5.5 sigma
    acc_unit: float = 2.0**-23  # fp32 accumulator unit (one ulp of slack for FMA vs add order)
    input_rel: float = 2.0**-22  # relative difference in how a backend's own quantizer sees its input
    inter_quant_steps: float = 1.0  # multiplier on the measured re-quantization flips
    act_fn_rel: float = 2.0**-20  # relative error of the backend's activation function
    lora_rel: float = 0.0  # extra relative slack on the LoRA delta (bf16 shrink output)
    weight_rel: float = 0.0  # relative rounding of each dequantized weight by the kernel's own scale storage
    flip_sigmas: float = 2.0  # element code flips are charged out to this many sigma from a boundary
    # the RMS and bias verdicts (compare.py): each may fail a correct kernel with at most this probability
    false_alarm: float = 1e-7  # ~1e5 comparisons a night: one false alarm in 100 nights, were the model tight
    acc_biased: bool = False  # the accumulator truncates (FP8 WGMMA before promotion): its error has a sign
    scale_biased: bool = False  # computed scales may sit an ulp off in one direction: their code flips lean one way

    def merge(self, other: "ErrorBudget") -> "ErrorBudget":
        """Element-wise max: the tolerance-table merge rule (a looser entry never tightens)."""
        looser = {f.name: max(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)}
        looser["false_alarm"] = min(self.false_alarm, other.false_alarm)  # smaller is looser
        return ErrorBudget(**looser)


def unit_roundoff(dtype) -> float:
    """Half an ulp relative (u) of a floating dtype: bf16 2^-8, fp16 2^-11, fp32 2^-24."""
    import torch

    return {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24, torch.float64: 2.0**-53}[dtype]
