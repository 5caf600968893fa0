"""`moecheck e2e`: lm-eval gsm8k gates per (model, format, backend), from the configs in e2e/configs.

    moecheck e2e [--config PATH|NAME ...] [--backend B ...] [--format F ...] [--limit N]
                 [--store PATH] [--attach latest|new] [--out DIR] [--plugin MOD ...]

    moecheck e2e --config NAME --endpoint [SERVER=]URL ... [--reference-endpoint [SERVER=]URL | --baseline JSONL]

With --endpoint the gates are served configurations (SERVER: a [servers.NAME] of the config; see
e2e/endpoint.py), each against the reference server, a saved per-question JSONL, or else the
config's in-process reference. Otherwise, without --config every shipped config runs (a model that
is not here is a skip with its reason), and --backend/--format replace the config's lists.
Per-question JSONL per gate goes to --out; with --store (default $MOECHECK_STORE, as the nightly
sets it) the gates are appended to the results store: to the newest run if it started within 12
hours (the nightly's property run, so the dashboard shows one night's cases and gates together),
else (or with --attach new) to a new run.
Exit 0: every gate passed or skipped; 1: a gate failed or broke; 2: bad input; 130: interrupted
(SIGINT/SIGTERM): the gates done so far are printed, written and stored, the one running is "interrupted".
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from moecheck.ci.cli import exitcodes
from moecheck.reference.errors import MoecheckError, require

DEFAULT_OUT = "moecheck-e2e"
INTERRUPTED = "interrupted"  # the verdict of the gate a signal cut short


def _validate_names(backends, formats) -> None:
    from moecheck.e2e.surgery import resolve_backend
    from moecheck.reference.formats import get_format

    for b in backends:
        resolve_backend(b)
    for f in formats:
        get_format(f)


def _table(gates) -> str:
    head = f"{'model':18s} {'format':18s} {'backend':26s} {'verdict':11s} {'acc':>6s} {'ref':>6s} {'n':>4s} {'b':>3s} {'c':>3s} {'p':>8s} {'wall':>6s}  note"
    lines = [head]
    seen_skips: dict[tuple[str, str], int] = {}
    for g in gates:  # a config that cannot run at all: one line, not one per gate
        seen_skips[(g.config, g.message)] = seen_skips.get((g.config, g.message), 0) + (g.verdict == "skip")
    printed = set()
    for g in gates:
        key = (g.config, g.message)
        if g.verdict == "skip" and seen_skips[key] > 1:
            if key not in printed:
                printed.add(key)
                lines.append(f"{g.config[:18]:18s} {'*':18s} {'*':26s} {'skip':11s} ({seen_skips[key]} gates)  {g.message}")
            continue
        r = g.result
        nums = (f"{r.accuracy:6.3f} {r.reference_accuracy:6.3f} {r.n:4d} {r.b:3d} {r.c:3d} {r.p_value:8.2g}" if r
                else f"{'-':>6s} {'-':>6s} {g.n or '-':>4} {'-':>3s} {'-':>3s} {'-':>8s}")
        # a skip's reason is short and the whole point: never cut (a long path must not hide it)
        note = "" if g.verdict == "pass" else g.message if g.verdict == "skip" else g.message[:110]
        lines.append(f"{g.config[:18]:18s} {g.format[:18]:18s} {g.backend[:26]:26s} {g.verdict:11s} {nums} {g.wall_s:5.0f}s  {note}")
    return "\n".join(lines)


def _store(path: str, gates, command: str, attach: str) -> str:
    """Append the gates to the newest run of the store (the nightly's property run, so the dashboard
    shows cases and gates of one night together) if it started within ATTACH_WITHIN; else, or with
    --attach new, to a run of their own."""
    from moecheck.ci.cli.attach import append_to_run
    from moecheck.ci.results.schema import E2ERecord
    from moecheck.ci.results.store import ResultStore

    records = [E2ERecord(model=g.config, format=g.format, backend=g.backend, accuracy=g.accuracy, n_questions=g.n,
                         verdict=g.verdict, message=g.message, per_question_path=str(g.per_question) if g.per_question else None)
               for g in gates if g.verdict != INTERRUPTED]  # a gate cut short has no result to keep
    with ResultStore(path) as store:
        return append_to_run(store, attach, command, "e2e", lambda rid: store.add_e2e(rid, records))


def _served_gates(args: argparse.Namespace, out: Path, gates: list, running: list):
    """--endpoint: one config, its served configurations against one comparison."""
    from moecheck.e2e.config import load_config
    from moecheck.e2e.endpoint import EndpointRunner, parse_endpoint, server_configs

    require(len(args.config) == 1, "--endpoint needs exactly one --config (its task, questions, floor and [servers])")
    require(not (args.backend or args.format or args.plugin), "--backend/--format/--plugin pick in-process gates; "
                                                              "with --endpoint each server configuration is a gate")
    require(not (args.reference_endpoint and args.baseline), "give --reference-endpoint or --baseline, not both")
    cfg = load_config(args.config[0])
    servers = server_configs(cfg.servers, str(cfg.path))
    eps = [parse_endpoint(e, servers) for e in args.endpoint]
    names = [e.server.name for e in eps]
    require(len(set(names)) == len(names), f"two --endpoint with the same server name {names}: name them SERVER=URL")
    ref = parse_endpoint(args.reference_endpoint, servers) if args.reference_endpoint else None
    baseline = Path(args.baseline) if args.baseline else None
    require(baseline is None or baseline.is_file(), f"no baseline file {baseline}")
    runner = EndpointRunner(cfg, out, limit=args.limit)
    running[:] = [runner]
    runner.run(eps, ref, baseline, done=gates)
    against = (f"server {ref.server.name} ({ref.url}): {ref.server.settings}" if ref else
               f"baseline {baseline}" if baseline else f"the in-process reference ({cfg.baseline_format or 'bf16'})")
    legend = [f"servers, each against {against}:"] + [f"  {e.server.name:26s} {e.url}  {e.server.settings}" for e in eps]
    return [cfg], legend


@contextlib.contextmanager
def _signals_interrupt(got: list[str]):
    """SIGTERM raises KeyboardInterrupt as SIGINT does; `got` names the first signal (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        got.append(signal.Signals(signum).name)
        raise KeyboardInterrupt
    saved = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def _cut_short(running: list, why: str):
    """The gate a signal stopped, as a row of its own (None if it stopped between gates)."""
    from moecheck.e2e.runner import GateRun

    r = running[0] if running else None
    if r is None or r.current is None:
        return None
    fmt, backend = r.current
    return GateRun(r.cfg.name, r.cfg.model, fmt, backend, INTERRUPTED, f"{why} while this gate ran")


def e2e(args: argparse.Namespace) -> int:
    from moecheck.backends import registry
    from moecheck.e2e.config import all_configs, load_config
    from moecheck.e2e.runner import ConfigRunner

    require(args.limit is None or args.limit >= 1, f"--limit must be >= 1, got {args.limit}")
    require(args.endpoint or not (args.reference_endpoint or args.baseline), "--reference-endpoint/--baseline need --endpoint")
    out = Path(args.out)
    t0 = time.monotonic()
    legend, gates, running, configs, got = [], [], [], [], []
    try:
        with _signals_interrupt(got):
            if args.endpoint:
                configs, legend = _served_gates(args, out, gates, running)
            else:
                registry.load_all(tuple(args.plugin))
                configs = [load_config(c) for c in (args.config or all_configs())]
                require(configs, "no gate configs found")
                _validate_names(args.backend, args.format)
                for cfg in configs:
                    _validate_names(() if args.backend else cfg.backends, ())
                for cfg in configs:
                    running[:] = [ConfigRunner(cfg, out, limit=args.limit)]
                    running[0].run(tuple(args.format) or None, tuple(args.backend) or None, done=gates)
    except KeyboardInterrupt:
        got = got or ["SIGINT"]
        cut = _cut_short(running, f"interrupted by {got[0]}")
        gates += [cut] if cut is not None else []
    if not got:
        return _finish(args, out, t0, gates, configs, legend, None)
    prev = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not lose the partial results
    try:
        _finish(args, out, t0, gates, configs, legend, got[0])
    finally:
        signal.signal(signal.SIGINT, prev)
    return exitcodes.INTERRUPTED.value


def _finish(args: argparse.Namespace, out: Path, t0: float, gates: list, configs: list, legend: list,
            interrupted: str | None) -> int:
    print("\n".join([_table(gates), *legend]))
    paths = {cfg.name: cfg.path for cfg in configs}
    for g in gates:
        if g.verdict in ("fail", "error"):
            print(f"{g.verdict} {g.config} / {g.format} / {g.backend}, reproduce: {_repro(args, paths.get(g.config, g.config), g)}")
    out.mkdir(parents=True, exist_ok=True)
    with (out / "summary.jsonl").open("w") as f:
        for g in gates:
            f.write(json.dumps({"config": g.config, "model": g.model, "format": g.format, "backend": g.backend,
                                "verdict": g.verdict, "accuracy": g.accuracy, "n": g.n, "calls": g.calls,
                                "b": g.result.b if g.result else None, "c": g.result.c if g.result else None,
                                "p_value": g.result.p_value if g.result else None, "message": g.message,
                                "per_question": str(g.per_question) if g.per_question else None}) + "\n")
    counts = {v: sum(g.verdict == v for g in gates) for v in ("pass", "fail", "error", "skip", INTERRUPTED)}
    print(f"\n{len(gates)} gates: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n or v != INTERRUPTED)
          + f"; wall time {time.monotonic() - t0:.0f} s; per-question results in {out}/")
    if interrupted:
        print(f"interrupted by {interrupted}: the gates above are the ones that ran; the rest did not")
    store = args.store or os.environ.get("MOECHECK_STORE")
    if store and any(g.verdict != INTERRUPTED for g in gates):
        print(f"stored as run {_store(store, gates, ' '.join(['moecheck', *sys.argv[1:]]), args.attach)} in {store}")
    return 1 if counts["fail"] or counts["error"] else 0


def _repro(args: argparse.Namespace, config, g) -> str:
    """The one command that reruns exactly this gate."""
    import shlex

    if args.endpoint:  # the failing server against the same comparison
        (ep,) = [e for e in args.endpoint if e.partition("=")[0] == g.backend] or [args.endpoint[0]]
        parts = ["moecheck", "e2e", "--config", str(config), "--endpoint", ep]
        parts += ["--reference-endpoint", args.reference_endpoint] if args.reference_endpoint else []
        parts += ["--baseline", args.baseline] if args.baseline else []
    else:
        parts = ["moecheck", "e2e", "--config", str(config), "--format", g.format, "--backend", g.backend]
    for mod in args.plugin:
        parts += ["--plugin", mod]
    if args.limit:
        parts += ["--limit", str(args.limit)]
    return " ".join(shlex.quote(p) for p in parts)


def _guarded(args: argparse.Namespace) -> int:
    try:
        return e2e(args)
    except MoecheckError as e:
        print(f"moecheck e2e: {str(e).splitlines()[0] if str(e) else 'bad input'}", file=sys.stderr)
        return 2


def register(sub) -> None:
    p = sub.add_parser("e2e", help="lm-eval gsm8k accuracy gates per (model, format, backend) vs the reference")
    p.add_argument("--config", action="append", default=[], help="config file or name in e2e/configs (repeatable)")
    p.add_argument("--backend", action="append", default=[], help="backend(s) to gate, instead of the config's")
    p.add_argument("--format", action="append", default=[], help="format(s) to gate, instead of the config's")
    p.add_argument("--limit", type=int, default=None, help="questions per gate, instead of the config's n_questions")
    p.add_argument("--store", default=None, help="append the gates to this results store (default: $MOECHECK_STORE)")
    p.add_argument("--attach", choices=("latest", "new"), default="latest",
                   help="store: append to the newest run if it started within 12 h (the nightly's), or start a new one")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"directory for per-question JSONL (default {DEFAULT_OUT})")
    p.add_argument("--plugin", action="append", default=[], help="module defining extra backends")
    p.add_argument("--endpoint", action="append", default=[], metavar="[SERVER=]URL",
                   help="gate an OpenAI-compatible server (SERVER: a [servers.NAME] of the config); repeatable")
    p.add_argument("--reference-endpoint", default=None, metavar="[SERVER=]URL",
                   help="compare the endpoints with this server (default: the config's in-process reference)")
    p.add_argument("--baseline", default=None, metavar="JSONL",
                   help="compare the endpoints with this per-question file of an earlier gate (e.g. a reference server's)")
    p.set_defaults(fn=_guarded, func=_guarded)
