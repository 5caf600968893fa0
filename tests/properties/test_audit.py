"""The capability audit: each kind of reaction gets its own outcome, and the exit code follows them."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from moecheck.backends import registry
from moecheck.backends.base import Capability
from moecheck.ci.cli import main
from moecheck.properties.audit import (
    OUTCOMES,
    AuditRow,
    audit_backend,
    classify,
    exit_code,
)
from moecheck.properties.harness import BackendRaised, ContractBroken
from moecheck.reference.errors import MoecheckError
from moecheck.tests.properties import audit_toys

TOYS = "moecheck.tests.properties.audit_toys"


@pytest.fixture(scope="module")
def toys():
    registry.load_all((TOYS,))
    return {b.name: b for b in audit_toys.BACKENDS}


def rows_of(toys, name) -> dict[str, AuditRow]:
    return {r.probe: r for r in audit_backend(toys[name])}


@pytest.mark.parametrize("name, probe, outcome", [
    ("audit_works", "format fp8_token_channel", "works"),
    ("audit_wrong_format", "format fp8_tensor", "silently wrong"),
    ("audit_nan_format", "format fp8_tensor", "non-finite"),
    ("audit_attr_error", "bias", "adapter error"),
    ("audit_empty_error", "bias", "adapter error"),
    ("audit_refuses", "bias", "refused"),
    ("audit_cuda_error", "bias", "device error"),
    ("audit_no_kernel", "format fp8_token_channel", "not probed"),
    ("audit_works", "lora", "not probed"),  # toy_moe never reads p.lora: the library never saw LoRA
    ("audit_router_works", "router sigmoid_topk", "works"),
    ("audit_router_noscale", "routed_scaling 2.5", "silently wrong"),
])
def test_each_planted_reaction_has_its_outcome(toys, name, probe, outcome):
    rows = rows_of(toys, name)
    assert rows[probe].outcome == outcome, rows[probe]


def test_details_say_why(toys):
    assert "AttributeError" in rows_of(toys, "audit_attr_error")["bias"].detail
    assert "NotImplementedError with no message" in rows_of(toys, "audit_empty_error")["bias"].detail
    assert "no bias mapping" in rows_of(toys, "audit_refuses")["bias"].detail
    assert "never entered" in rows_of(toys, "audit_no_kernel")["format fp8_token_channel"].detail
    assert "Capability.forwards" in rows_of(toys, "audit_works")["lora"].detail


def test_unforwarded_formats_share_one_row_and_unforwarded_are_never_run(toys):
    rows = audit_backend(toys["audit_works"])
    (fmt_row,) = [r for r in rows if r.probe.endswith(" formats")]
    assert fmt_row.outcome == "not probed" and "fp8_tensor" in fmt_row.detail
    assert not [r for r in rows if r.probe.startswith("format ") and r.probe != "format fp8_token_channel"]


def test_routers_get_router_probes_not_formats(toys):
    rows = audit_backend(toys["audit_router_works"])
    assert all("format" not in r.probe for r in rows)
    assert {r.probe for r in rows} == {"4 router kinds", "router sigmoid_topk"}


def test_every_outcome_is_documented_and_rows_use_only_those(toys):
    for b in toys.values():
        for r in audit_backend(b):
            assert r.outcome in OUTCOMES


def test_unavailable_and_fully_claimed_backends_get_one_row():
    (r,) = audit_backend(registry.get("cpu_loop"))
    assert r.outcome == "all claimed"
    (r,) = audit_backend(registry.get("cpu_router"))
    assert r.outcome == "all claimed"
    broken = registry._Broken("plugin:nope", "import failed: ModuleNotFoundError: nope")
    assert audit_backend(broken) == [AuditRow("plugin:nope", "-", "unavailable", "import failed: ModuleNotFoundError: nope")]


class _LibraryError(Exception):
    """A wrapper as FlashInfer's adapter raises (backends/flashinfer/common.py Refused)."""


def _wrapped(inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise _LibraryError(f"lib.call: {type(e).__name__}: {e}") from e
    except _LibraryError as outer:
        return outer


@pytest.mark.parametrize("exc, outcome", [
    (MoecheckError("format fp8_tensor not mapped"), "refused"),
    (ValueError("hidden must be a multiple of 128"), "refused"),
    (AssertionError("x.shape[-1] % group_size == 0"), "refused"),
    (RuntimeError("strides should be multiple of 16 bytes"), "refused"),
    (NotImplementedError(), "adapter error"),
    (KeyError("sigmoid_topk"), "adapter error"),
    (IndexError("list index out of range"), "adapter error"),
    (NameError("name 'w13' is not defined"), "adapter error"),
    (TypeError("fused_experts() got an unexpected keyword argument 'bias'"), "adapter error"),
    (TypeError("expected a bf16 tensor for hidden_states"), "refused"),
    (ContractBroken("returned None"), "adapter error"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), "device error"),
    (_wrapped(AttributeError("'QTensor' object has no attribute 'transpose'")), "adapter error"),
    (_wrapped(ValueError("unsupported block size")), "refused"),
    (_wrapped(RuntimeError("CUDA error: misaligned address")), "device error"),
])
def test_classify(exc, outcome):
    assert classify(BackendRaised("run", exc))[0] == outcome


def test_exit_code_follows_the_worst_kind():
    row = lambda o: AuditRow("b", "p", o, "")  # noqa: E731
    assert exit_code([row("refused"), row("works"), row("not probed"), row("device error"), row("unavailable")]) == 0
    assert exit_code([row("adapter error"), row("refused")]) == 3
    assert exit_code([row("adapter error"), row("silently wrong")]) == 1
    assert exit_code([row("non-finite")]) == 1


@pytest.mark.parametrize("backend, code", [("audit_wrong_format", 1), ("audit_nan_format", 1), ("audit_attr_error", 3),
                                           ("audit_refuses", 0), ("audit_works", 0)])
def test_cli_exit_codes(toys, capsys, backend, code):
    assert main(["audit", "--plugin", TOYS, "--backend", backend]) == code
    out = capsys.readouterr().out
    assert backend in out and f"exit {code}" in out.splitlines()[-1]


def test_help_documents_outcomes_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    out = capsys.readouterr().out
    assert all(o in out for o in OUTCOMES) and "exit codes:" in out and "silently wrong" in out


def test_forwards_names_are_checked():
    with pytest.raises(MoecheckError, match="unknown names"):
        Capability(formats=frozenset({"bf16"}), forwards=frozenset({"lroa"}))


def test_clean_cpu_audit_lists_every_backend_and_exits_0(tmp_path):
    env = dict(os.environ)
    env.pop("MOECHECK_PLUGINS", None)
    done = subprocess.run([sys.executable, "-m", "moecheck.ci.cli", "audit"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    listed = {line.split()[0] for line in done.stdout.splitlines()[1:] if line.strip() and not line[0].isdigit()}
    assert set(registry.suite()) <= listed
    assert "adapter error" not in done.stdout and "silently wrong" not in done.stdout
