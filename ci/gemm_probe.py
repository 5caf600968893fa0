"""Where the reference's expert GEMM loses to torch._grouped_mm: each part timed on its own.

    python -m moecheck.ci.gemm_probe [--experts E] [--k K] [--n N] [--rows R]

At bench.py's shape, with even and skewed (Zipf) routing: torch._grouped_mm; the reference's grouped_mm
as the reference runs it (IEEE fp32), and its bf16 tensor-core path with fp32 and bf16 activations, with
that path's mean signed difference from IEEE in fp32 ulps (a bias toward zero is why the reference does
not take it: moe.TENSOR_CORE_REFERENCE); and the tensor-core path's parts: Groups,
the cast, pad, bucket weights, the buckets' padded bmms with fp32 out, unpad, and the per-expert
loop. Prints a table, then a torch.profiler table of one reference call. CUDA only (the CPU's numbers are bench.py's).
"""
from __future__ import annotations

import argparse

import torch
from moecheck.ci.bench import _time
from moecheck.reference import grouped
from moecheck.reference.errmodel import nonneg
from moecheck.reference.errmodel.chains import gemm_spread
from moecheck.reference.errmodel.table import budget_for
from moecheck.reference.moe import _ieee_fp32


def _counts(rows: int, E: int, skew: bool) -> list[int]:
    if not skew:
        return [rows // E] * E
    w = 1.0 / torch.arange(1, E + 1, dtype=torch.float64) ** 0.8
    c = (w / w.sum() * rows).floor().long()
    c[0] += rows - int(c.sum())
    return c.tolist()


def probe(E: int, K: int, N: int, rows: int, skew: bool) -> list[tuple[str, float]]:
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    a16 = torch.randn(rows, K, device=dev, generator=g).to(torch.bfloat16)
    a32 = a16.float()
    w = (torch.randn(E, N, K, device=dev, generator=g) / K**0.5).to(torch.bfloat16)
    counts = _counts(rows, E, skew)
    offs = torch.cumsum(torch.tensor(counts, device=dev), 0).to(torch.int32)
    gr = grouped.Groups(counts, dev)
    out = [("torch._grouped_mm", _time(lambda: torch._grouped_mm(a16, w.transpose(1, 2), offs=offs)))]
    out.append(("reference grouped_mm, fp32 a", _time(lambda: grouped.grouped_mm(a32, w, gr, True))))
    out.append(("reference grouped_mm, bf16 a", _time(lambda: grouped.grouped_mm(a16, w, gr, True))))
    with _ieee_fp32():
        out.append(("reference grouped_mm, IEEE fp32 (what it runs)", _time(lambda: grouped.grouped_mm(a32, w, gr, False))))
        ieee = grouped.grouped_mm(a32, w, gr, False)
    tc = grouped.grouped_mm(a16, w, gr, True)
    ulp = ieee.abs().clamp(min=1e-30) * 2.0**-23
    rel = torch.sign(ieee) * (tc - ieee) / ulp
    print(f"tensor-core vs IEEE fp32 ({'Zipf' if skew else 'even'}): mean sign(ieee)*(tc - ieee) = {rel.mean().item():+.3f} "
          f"fp32 ulps of |ieee| (negative: toward zero), rms {rel.square().mean().sqrt().item():.3f}", flush=True)
    out += _split_k(a16, w, gr, ieee)
    out += _variance_gemms(a32, w, gr)
    out.append(("Groups(counts)", _time(lambda: grouped.Groups(counts, dev))))
    out.append(("cast fp32 -> bf16", _time(lambda: a32.to(torch.bfloat16))))
    out.append((f"loop_mm ({E} mm)", _time(lambda: grouped.loop_mm(a16, w, counts, True))))
    pads, ws = gr.pad(a16), gr.weights(w)
    out.append((f"pad ({len(pads)} buckets, {sum(p.shape[0] * p.shape[1] for p in pads)} slots)", _time(lambda: gr.pad(a16))))
    out.append(("bucket weights (slices or gathers)", _time(lambda: gr.weights(w))))
    try:
        ys = [torch.bmm(p, we.transpose(1, 2), out_dtype=torch.float32) for p, we in zip(pads, ws)]
        out.append((f"bmm bf16 -> fp32 out x{len(pads)}", _time(
            lambda: [torch.bmm(p, we.transpose(1, 2), out_dtype=torch.float32) for p, we in zip(pads, ws)])))
        out.append(("unpad", _time(lambda: gr.unpad(ys))))
    except Exception as e:  # noqa: BLE001 - what this torch lacks is the finding
        out.append((f"bmm(out_dtype=) raised {type(e).__name__}: {str(e).splitlines()[0][:80]}", float("nan")))
    out.append((f"bmm bf16 -> bf16 out x{len(pads)}", _time(
        lambda: [torch.bmm(p, we.transpose(1, 2)) for p, we in zip(pads, ws)])))
    return out


def _split_k(a16, w, gr, ieee) -> list[tuple[str, float]]:
    """The tensor-core path with K cut into `c` chunks summed in IEEE fp32: how much of its bias toward zero
    the chunking removes, and at what cost (a candidate for a fast reference)."""
    out, K = [], a16.shape[1]
    for c in (2, 4, 8, 16):
        if K % c:
            continue
        ks = K // c
        def fn(c=c, ks=ks):
            return sum(grouped.grouped_mm(a16[:, i * ks:(i + 1) * ks], w[:, :, i * ks:(i + 1) * ks], gr, True) for i in range(c))
        y = fn()
        ulp = ieee.abs().clamp(min=1e-30) * 2.0**-23
        rel = torch.sign(ieee) * (y - ieee) / ulp
        print(f"split-K x{c} tensor-core vs IEEE: mean {rel.mean().item():+.3f} fp32 ulps, rms {rel.square().mean().sqrt().item():.3f}",
              flush=True)
        out.append((f"tensor-core split-K x{c}, fp32 sums", _time(fn)))
    return out


def _variance_gemms(a32, w, gr) -> list[tuple[str, float]]:
    """The error model's variance GEMM (squares of inputs times squares of weights, all addends >= 0) in
    float64 (what it ran before errmodel/nonneg.py, and still runs on CPU), in TF32 and IEEE fp32 with the
    relative difference from float64, and as the reference runs it on CUDA now: power-of-two-scaled TF32
    (nonneg.scaled_mm), whose ratio to float64 must be >= 1; then gemm_spread with input chains, whole."""
    sq = lambda t: t * t
    f64 = lambda: grouped.grouped_apply(lambda x, we: sq(x.double()) @ sq(we.double()).transpose(-1, -2), gr, w, a32)
    ref = f64()
    out = [("variance GEMM float64 (errmodel before nonneg.py; CPU)", _time(f64))]
    for name, tf32 in (("IEEE fp32", False), ("TF32", True)):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            fn = lambda: grouped.grouped_apply(lambda x, we: sq(x) @ sq(we.float()).transpose(-1, -2), gr, w, a32)
            rel = (fn().double() - ref) / ref.clamp(min=1e-300)
            print(f"variance GEMM {name} vs float64: mean rel {rel.mean().item():+.3e}, min {rel.min().item():+.3e}, "
                  f"max {rel.max().item():+.3e}", flush=True)
            out.append((f"variance GEMM {name}", _time(fn)))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    # what the reference runs now (errmodel/nonneg.py): rows and columns scaled by powers of two, TF32, x (1 + 2^-8)(1 + K 2^-22)
    fn = lambda: grouped.grouped_apply(lambda x, we: nonneg.scaled_mm(x, sq(we.float()).transpose(-1, -2), square_a=True),
                                       gr, w, a32)
    got, pos = fn(), ref > 0
    ratio = got[pos] / ref[pos]
    print(f"variance GEMM scaled TF32 (errmodel/nonneg.py) vs float64: max rel diff {(ratio - 1).abs().max().item():.3e}, "
          f"min ratio {ratio.min().item():.6f} (must be >= 1), max ratio {ratio.max().item():.6f}, "
          f"zeros where float64 > 0: {int((got[pos] == 0).sum())}", flush=True)
    out.append(("variance GEMM scaled TF32 (errmodel/nonneg.py, what it runs)", _time(fn)))
    env = sq(a32.double()) * 1e-6  # gemm_spread with input chains (GEMM 2's case): 3 variance GEMMs and the m1 one
    budget = budget_for("bf16")
    w_sq = sq(w.float())
    out.append(("gemm_spread with chains (scaled TF32: a^2, env|exp, m1)", _time(lambda: grouped.grouped_apply(
        lambda x, ve, vx, vm, we: gemm_spread(x, ve, vx, vm, we, w.shape[2], budget), gr, w_sq, a32, env, env, env.sqrt()))))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--n", type=int, default=768)
    ap.add_argument("--rows", type=int, default=32768)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("moecheck gemm_probe: needs CUDA (on CPU, bench.py has the numbers)")
    for skew in (False, True):
        rows = probe(a.experts, a.k, a.n, a.rows, skew)
        base = rows[0][1]
        print(f"== E={a.experts} K={a.k} N={a.n} rows={a.rows} {'skewed (Zipf 0.8)' if skew else 'even'} routing")
        for name, t in rows:
            print(f"{name:60s} {t * 1e3:9.3f} ms  {t / base:6.2f}x")
    from torch.profiler import ProfilerActivity, profile

    E, K, N, R = a.experts, a.k, a.n, a.rows
    a32 = torch.randn(R, K, device="cuda")
    w = torch.randn(E, N, K, device="cuda").to(torch.bfloat16)
    gr = grouped.Groups(_counts(R, E, False), "cuda")
    grouped.grouped_mm(a32, w, gr, True)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        grouped.grouped_mm(a32, w, gr, True)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
