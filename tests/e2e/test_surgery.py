"""Surgery with the reference backend reproduces each family's HF MoE block (bound: the error model)."""
from __future__ import annotations

import os
from dataclasses import replace

import pytest

for _v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_v, "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers", reason="model surgery needs transformers (pip install -e '.[e2e]')")

from moecheck.e2e import surgery  # noqa: E402
from moecheck.e2e.families import FAMILIES, family_for  # noqa: E402
from moecheck.e2e.hf_numerics import hf_block_bound  # noqa: E402
from moecheck.reference.errmodel.compare import compare  # noqa: E402
from moecheck.reference.errors import MoecheckError  # noqa: E402
from moecheck.reference.qtensor import QTensor  # noqa: E402
from moecheck.reference.routing import route  # noqa: E402
from moecheck.tests.e2e.hf_tiny import FAMILY_NAMES, tiny_model  # noqa: E402

DTYPES = (torch.float32, torch.bfloat16)
WRONG_ACTIVATION = {"silu": "silu_up_gate", "swigluoai": "silu"}  # a plausible mapping mistake per preset


def _hf_blocks(model):
    fam = family_for(model.config)
    return fam, [m for m in model.modules() if type(m).__name__ == fam.block_class]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _tied_tokens(hf_out, w, ids) -> torch.Tensor:
    """Tokens where HF's top-k picked other experts than moecheck's: allowed only on a tie (torch.topk
    breaks ties arbitrarily, moecheck's router to the lower index), i.e. the same k weights."""
    _, hf_w, hf_ids = hf_out
    differ = (hf_ids.sort(dim=-1).values != ids.sort(dim=-1).values).any(dim=-1)
    same_w = (hf_w.float().sort(dim=-1).values == w.to(hf_w.dtype).float().sort(dim=-1).values).all(dim=-1)
    bad = differ & ~same_w
    assert not bad.any(), f"tokens {bad.nonzero().flatten().tolist()} routed differently without a tie"
    return differ


def _compare_block(model, family=None, seed=1):
    """(comparison, MoecheckMoE) for the first MoE block on random activations; tokens whose routing
    ties at the k-th place (bf16 logits do tie) are ambiguous and left out of the comparison."""
    fam, blocks = _hf_blocks(model)
    fam = family or fam
    hf = blocks[0]
    H = model.config.hidden_size
    dtype = next(model.parameters()).dtype
    x = torch.randn(3, 11, H, generator=torch.Generator().manual_seed(seed)).to(dtype)
    with torch.no_grad():
        want = _first(hf(x)).reshape(-1, H)
        new = surgery.MoecheckMoE(hf, fam, model.config, surgery.REFERENCE_BACKEND, surgery.get_format("bf16"))
        got = _first(new(x)).reshape(-1, H)
        xf = x.reshape(-1, H)
        router = getattr(new, fam.router_attr)
        bias = getattr(router, fam.correction_bias) if fam.correction_bias else None
        w, ids = route(router(xf)[0], new.router_spec, bias)
        tied = _tied_tokens(router(xf), w, ids)
        assert tied.sum() < tied.numel(), "every token tied: nothing compared"
        bound = hf_block_bound(new.proto.with_(hidden_states=xf, topk_weights=w, topk_ids=ids), fam, want)
    keep = ~tied
    return compare(got[keep], want[keep], bound[keep]), new


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_reference_surgery_reproduces_hf_block(family, dtype):
    model = tiny_model(family, dtype)
    cmp, new = _compare_block(model)
    assert cmp.passed, f"{family} {dtype}: {cmp.summary()}"
    assert new.calls == 1


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_wrong_gate_up_mapping_is_caught(family):
    """The comparison above can fail: the same family read with the wrong gate/up convention does."""
    model = tiny_model(family, torch.float32)
    fam = family_for(model.config)
    wrong = WRONG_ACTIVATION[fam.activation(model.config)]
    cmp, _ = _compare_block(model, replace(fam, activation=lambda c: wrong))
    assert not cmp.passed, f"{family} read as {wrong} still matched HF: the surgery test is blind"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_install_replaces_every_block_and_restore_undoes_it(family):
    model = tiny_model(family, torch.float32)
    fam, blocks = _hf_blocks(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        with surgery.install(model, "reference", "bf16") as inst:
            assert len(inst.modules) == len(blocks) >= 1
            assert not _hf_blocks(model)[1], "an HF MoE block was left in place"
            during = model(ids).logits
            assert all(m.calls == 1 for m in inst.modules)
        assert _hf_blocks(model)[1] == blocks
        after = model(ids).logits
    assert torch.equal(before, after)
    assert torch.isfinite(during).all()


def test_quantized_format_uses_the_reference_quantizer_and_changes_the_output():
    model = tiny_model("qwen3_moe", torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with surgery.install(model, "reference", "bf16"):
            plain = model(ids).logits
        with surgery.install(model, "cpu_loop", "mxfp4_bf16") as inst:
            q = model(ids).logits
            assert all(isinstance(m.proto.w13, QTensor) and m.proto.w13.spec == m.fmt.weight for m in inst.modules)
            assert inst.calls == len(inst.modules)
    assert not torch.equal(plain, q)


@pytest.mark.parametrize("backend, fmt, family, why", [
    ("no_such_backend", "bf16", None, "unknown backend"),
    ("reference", "no_such_format", None, "unknown format"),
    ("reference", "int4_w_g128", None, "divisible by 128"),
    ("reference", "bf16", "mixtral", "no MixtralSparseMoeBlock"),
    ("cpu_loop", "bf16", None, "dtype torch.float32 not supported"),
])
def test_bad_requests_are_one_line_errors(backend, fmt, family, why):
    model = tiny_model("qwen3_moe", torch.float32)
    with pytest.raises(MoecheckError, match=why) as e:
        surgery.install(model, backend, fmt, family=family)
    assert "\n" not in str(e.value)
    assert not any(isinstance(m, surgery.MoecheckMoE) for m in model.modules()), "a failed install left blocks replaced"


def test_every_family_record_names_a_block_class_of_the_installed_transformers():
    import importlib

    for fam in FAMILIES.values():
        mod = importlib.import_module(f"transformers.models.{fam.name}.modeling_{fam.name}")
        assert hasattr(mod, fam.block_class), f"{fam.name}: transformers has no {fam.block_class}"


@pytest.mark.parametrize("fmt", ["fp8_token_channel", "mxfp4_bf16", "nvfp4_dynamic", "int4_zp_w_g32"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_feeds_a_valid_problem_to_a_quantized_backend(family, fmt):
    model = tiny_model(family, torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), surgery.install(model, "cpu_loop", fmt) as inst:
        logits = model(ids).logits
        assert inst.calls == len(inst.modules) >= 1
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("fmt", ["nvfp4", "fp8_tensor_static"])
def test_static_formats_run_on_calibrated_scales(fmt):
    from moecheck.e2e.calibrate import static_scales
    from moecheck.e2e.tokenizer import build_tokenizer
    from moecheck.reference.quantize import calibrate

    model = tiny_model("qwen3_moe", torch.bfloat16)
    tok = build_tokenizer()
    prompts = ["Question: Tom has 3 apples. How many?\nAnswer:", "Question: Anna buys 12 pencils.\nAnswer:"]
    f = surgery.get_format(fmt)
    with pytest.raises(MoecheckError, match="static activation scales"):
        surgery.install(model, "cpu_loop", fmt)
    _, blocks = _hf_blocks(model)
    seen = []
    hook = blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    scales = static_scales(model, tok, prompts, f)
    assert len(scales) == len(blocks) and not seen, "calibration ran the HF block instead of the reference"
    with torch.no_grad():
        enc = tok(prompts, return_tensors="pt", padding=True)
        model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])  # the HF model: block inputs
    hook.remove()
    first = next(iter(scales))
    assert torch.equal(scales[first][0], calibrate(torch.cat(seen), f.act))
    assert all(bool((a > 0).all() and (b > 0).all()) for a, b in scales.values())
    with torch.no_grad(), surgery.install(model, "cpu_loop", fmt, act_scales=scales) as inst:
        out = model(input_ids=enc["input_ids"]).logits
        assert inst.calls == len(blocks) and all(m.proto.a1_scale is not None for m in inst.modules)
    assert torch.isfinite(out).all()
