"""GPU: FlashInfer kernels at shapes the property suite cannot draw: DeepSeek-V3 fused routing at real
models' expert counts (256, 384: the template draws up to 64) and mono_moe (one fixed shape). Same outcome rule as test_flashinfer_quant.py: refusal = skip with
FlashInfer's message, a wrong answer without complaint = fail."""
import pytest
import torch
from moecheck.backends.flashinfer import mono, routing
from moecheck.backends.flashinfer.common import Refused
from moecheck.reference.routing import RouterSpec
from moecheck.tests.backends._flashinfer_gpu import (
    arch,
    need_flashinfer,
    route_and_compare,
)

pytestmark = pytest.mark.gpu

ROUTER_CONFIGS = [  # (experts, n_group, topk_group, top_k, routed_scaling_factor)
    (256, 8, 4, 8, 2.5),  # DeepSeek-V3 / R1
    (128, 8, 4, 6, 1.0),
    (64, 1, 1, 4, 1.0),
    (384, 1, 1, 8, 2.827),  # Kimi-K2 shape: one group
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tokens", [1, 37, 512])
@pytest.mark.parametrize("experts,n_group,topk_group,top_k,scale", ROUTER_CONFIGS)
def test_fused_topk_deepseek_matches_reference_router(experts, n_group, topk_group, top_k, scale, tokens, dtype):
    need_flashinfer()
    spec = RouterSpec("deepseek_v3", top_k, renormalize=True, n_group=n_group, topk_group=topk_group,
                      routed_scaling_factor=scale)
    logits, bias = routing.inputs(tokens, experts, seed=tokens + experts, dtype=dtype)
    try:
        d = route_and_compare(logits, bias, spec)
    except Refused as e:
        pytest.skip(f"refused on {arch()}: {e}")
    assert d.passed, f"silently wrong on {arch()}: {d.summary()}"
    assert d.ambiguous < tokens, f"every token was a near tie: nothing judged ({d.summary()})"


def _mono_fixed_shape(tokens: int, seed: int, device="cuda"):
    """Run mono_moe on its one shape (under the harness: spies, output contract) and judge it against the
    reference with the tolerance table's budget. Returns (Outcome-like message, Comparison)."""
    from moecheck.properties.case import Case, build
    from moecheck.properties.harness import run_backend
    from moecheck.reference.errmodel import compare

    case = Case(backend=mono.MONO.name, format="fp8_block", tokens=tokens, hidden=mono.K, inter=mono.N, experts=mono.E, top_k=8, seed=seed)
    p = mono.routed_problem(build(case, device), seed, case.top_k)
    run = run_backend(mono.MONO, mono.MONO.prepare(p), p)
    ref = p.reference(mono.MONO.capability.rounding, mono.MONO.capability.budget(p.fmt.name))
    return run, compare(run.out, ref.out, ref.bound)


@pytest.mark.parametrize("tokens,seed", [(1, 11), (8, 12)])  # 2 GB of fp32 weights built per case
def test_mono_moe_fixed_shape_matches_reference(tokens, seed):
    need_flashinfer()
    try:
        run, cmp = _mono_fixed_shape(tokens, seed)
    except Refused as e:
        pytest.skip(f"refused on {arch()}: {e}")
    missing = [n for n, c in run.spy_counts.items() if c == 0]
    assert not missing, f"kernel not called: {missing}"
    assert run.guards_ok and not run.unwritten, f"output contract broken: guards_ok={run.guards_ok}, unwritten={run.unwritten}"
    assert cmp.passed, f"silently wrong on {arch()}: {cmp.summary()}"
