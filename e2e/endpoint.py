"""The e2e gate against served models: lm-eval's `local-completions` on OpenAI-compatible servers.

A model too big for one GPU is measured where it is served (vLLM, SGLang, ...), so the row of the
gate table is a server configuration: a config's `[servers.NAME]` table says how that server was
started (engine, MoE backend arguments, environment flags, the weight format). moecheck does not
start or inspect servers: it records the configuration and judges the answers. Each candidate is
judged against a comparison on the same questions (paired McNemar, gate.judge): a reference server
(`--reference-endpoint`), the per-question JSONL of an earlier run (`--baseline`, so two servers that
do not fit at once are run one after the other), or the config's in-process reference MoE.

Requests are text (`tokenized_requests=False`): the server tokenizes, as it does for its users.
`client_stop = true` keeps the stop strings out of the request and cuts the text here instead
(transformers serve cannot build stop criteria for word-level vocabularies such as the tiny model's).
"""
from __future__ import annotations

import json
import shlex
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from moecheck.e2e import lmeval_run
from moecheck.e2e.gate import Answer, judge
from moecheck.e2e.runner import ConfigRunner, GateRun, _one_line
from moecheck.reference.errors import MoecheckError, require

SERVED_FORMAT = "served"  # the format column when a server config names none
ANONYMOUS = "endpoint"  # server name of a bare --endpoint URL
PREFLIGHT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 600


@dataclass(frozen=True)
class ServerConfig:
    """How one server was started: a row of the gate table. Keys of a config's [servers.NAME]."""

    name: str
    engine: str = ""  # vllm | sglang | transformers | ...: for the table and the store
    args: tuple[str, ...] = ()  # e.g. ("--moe-backend", "flashinfer_cutlass"), SGLang ("--moe-runner-backend", "triton")
    env: dict = field(default_factory=dict)  # e.g. {"VLLM_USE_FLASHINFER_MOE_FP8": "1"}
    format: str = SERVED_FORMAT  # the weights' format as served (a moecheck format name picks its floor)
    model: str | None = None  # served model name; default: the one the server lists
    client_stop: bool = False
    concurrency: int = 1  # requests in flight (lm-eval num_concurrent)
    description: str = ""

    @property
    def settings(self) -> str:
        env = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted(self.env.items()))
        cmd = " ".join([self.engine, *map(shlex.quote, self.args)]).strip()  # engine: a command prefix, as written
        return " ".join(p for p in (env, cmd) if p) or "(settings not given)"


def server_configs(raw: dict, where: str) -> dict[str, ServerConfig]:
    """The config's `servers` table, checked: unknown keys are refused, as everywhere in gate configs."""
    require(isinstance(raw, dict), f"{where}: servers must be a table of [servers.NAME] tables")
    known = {f.name for f in fields(ServerConfig)} - {"name"}
    out = {}
    for name, body in raw.items():
        require(isinstance(body, dict), f"{where}: servers.{name} must be a table")
        extra = sorted(set(body) - known)
        require(not extra, f"{where}: servers.{name}: unknown keys {', '.join(extra)}; known: {', '.join(sorted(known))}")
        args, env = body.get("args", []), body.get("env", {})
        require(isinstance(args, list) and all(isinstance(a, str) for a in args),
                f"{where}: servers.{name}.args must be a list of strings")
        require(isinstance(env, dict), f"{where}: servers.{name}.env must be a table")
        conc = body.get("concurrency", 1)
        require(isinstance(conc, int) and conc >= 1, f"{where}: servers.{name}.concurrency must be an integer >= 1")
        out[name] = ServerConfig(name=name, **{**body, "args": tuple(args), "env": {k: str(v) for k, v in env.items()}})
    return out


def base_url(url: str) -> str:
    """http://host:port[/v1[/completions]] -> http://host:port/v1."""
    u = url.strip().rstrip("/")
    require(u.startswith(("http://", "https://")), f"endpoint URL must start with http:// or https://, got {url!r}")
    for suffix in ("/chat/completions", "/completions"):
        u = u.removesuffix(suffix)
    return u if u.endswith("/v1") else u + "/v1"


@dataclass(frozen=True)
class Endpoint:
    server: ServerConfig
    url: str  # base, ending in /v1

    @property
    def spec(self) -> str:
        """As given on the command line (for the repro command)."""
        return self.url if self.server.name == ANONYMOUS else f"{self.server.name}={self.url}"


def parse_endpoint(spec: str, servers: dict[str, ServerConfig]) -> Endpoint:
    """'NAME=URL' (NAME one of the config's servers) or a bare 'URL'."""
    name, sep, url = spec.partition("=")
    if not sep or "://" in name:
        return Endpoint(ServerConfig(name=ANONYMOUS), base_url(spec))
    require(name in servers, f"no server {name!r} in the config's [servers]; known: {', '.join(sorted(servers)) or 'none'}")
    return Endpoint(servers[name], base_url(url))


def served_model(ep: Endpoint, fallback: str | None = None) -> str:
    """The model name to request: the server config's, else the one model the server lists."""
    try:
        with urllib.request.urlopen(ep.url + "/models", timeout=PREFLIGHT_TIMEOUT_S) as r:
            listed = [m.get("id") for m in json.load(r).get("data", [])]
    except (OSError, ValueError, urllib.error.URLError) as e:
        raise MoecheckError(f"server {ep.server.name} at {ep.url} does not answer {ep.url}/models: {_one_line(e)}") from None
    want = ep.server.model or (fallback if fallback in listed else None)
    if want:
        require(not listed or want in listed, f"server {ep.server.name} at {ep.url} serves {listed}, not {want!r}")
        return want
    require(len(listed) == 1, f"server {ep.server.name} at {ep.url} lists {len(listed)} models {listed}: "
                              "name one with `model` in its [servers] table")
    return listed[0]


def _endpoint_lm(label: str, client_stop: bool, out: Callable[[str], None] | None):
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.models.utils import postprocess_generated_text

    class ServedCompletions(LocalCompletionsAPI):
        """local-completions with moecheck's progress line, and the stop strings applied here too."""

        _stop: list[str] = []

        def generate_until(self, requests, disable_tqdm: bool = False):
            self.progress = lmeval_run.Progress(len(requests), label, out)
            return super().generate_until(requests, disable_tqdm=True)

        def _create_payload(self, messages, generate=False, gen_kwargs=None, seed=1234, eos=None, **kw):
            payload = super()._create_payload(messages, generate=generate, gen_kwargs=gen_kwargs, seed=seed, eos=eos, **kw)
            if generate:
                self._stop = list(payload.get("stop") or [])
                if client_stop:
                    payload.pop("stop", None)
            return payload

        def parse_generations(self, outputs, **kw):
            texts = LocalCompletionsAPI.parse_generations(outputs, **kw)
            self.progress.advance(len(texts))
            return [t if t is None else postprocess_generated_text(t, self._stop, None) for t in texts]

    return ServedCompletions


def evaluate_endpoint(ep: Endpoint, model: str, spec: lmeval_run.TaskSpec, *, limit: int | None,
                      max_gen_toks: int | None, label: str, out: Callable[[str], None] | None = None) -> lmeval_run.EvalRun:
    why = lmeval_run.skip_reason(spec)
    if why is not None:
        raise MoecheckError(why)
    lm = _endpoint_lm(label, ep.server.client_stop, out)(
        base_url=ep.url + "/completions", model=model, tokenizer_backend="none", tokenized_requests=False,
        batch_size=1, num_concurrent=ep.server.concurrency, max_retries=2, timeout=REQUEST_TIMEOUT_S,
        max_gen_toks=max_gen_toks or 256)
    return lmeval_run.evaluate_lm(lm, spec, limit=limit, max_gen_toks=max_gen_toks)


def load_baseline(path: Path, spec: lmeval_run.TaskSpec, limit: int) -> lmeval_run.EvalRun:
    """Per-question JSONL of an earlier gate (any file moecheck e2e wrote) as a comparison run."""
    try:
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except (OSError, ValueError) as e:
        raise MoecheckError(f"baseline {path}: {_one_line(e)}") from None
    key = f"correct:{spec.filter}"
    require(bool(rows) and all("doc_id" in r and (key in r or "correct" in r) for r in rows),
            f"baseline {path} is not a moecheck e2e per-question JSONL (rows need doc_id and {key})")
    rows = sorted(rows, key=lambda r: r["doc_id"])[:limit]
    answers = [Answer(int(r["doc_id"]), bool(r.get(key, r.get("correct"))), r.get("question", ""), r.get("response", ""),
                      str(r.get(f"extracted:{spec.filter}") or "")) for r in rows]
    return lmeval_run.EvalRun(answers, rows, sum(a.correct for a in answers) / len(answers))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class EndpointRunner:
    """The gates of one config over served candidates, each against one comparison run."""

    def __init__(self, cfg, out_dir: Path, *, limit: int | None = None, log: Callable[[str], None] = _log):
        self.cfg, self.out_dir, self.log = cfg, Path(out_dir), log
        self.local = ConfigRunner(cfg, out_dir, limit=limit, log=log)  # task spec, JSONL writer, in-process reference
        self.limit, self.spec = self.local.limit, self.local.spec
        self.current: tuple[str, str] | None = None  # (format, server) of the gate running

    def _gate(self, ep: Endpoint, verdict: str, message: str, **kw) -> GateRun:
        return GateRun(self.cfg.name, self.cfg.model, ep.server.format, ep.server.name, verdict, message, **kw)

    def _path(self, name: str) -> Path:
        return self.out_dir / f"{self.cfg.name}__served__{name}.jsonl"

    def _evaluate(self, ep: Endpoint) -> lmeval_run.EvalRun:
        model = served_model(ep, self.cfg.model_id)
        self.log(f"e2e {self.cfg.name}/{ep.server.name}: {ep.url} model {model!r}; {ep.server.settings}")
        return evaluate_endpoint(ep, model, self.spec, limit=self.limit, max_gen_toks=self.cfg.max_gen_toks,
                                 label=f"e2e {self.cfg.name}/{ep.server.name}")

    def comparison(self, reference: Endpoint | None, baseline: Path | None) -> tuple[lmeval_run.EvalRun | None, str, str]:
        """(run, label, why-not): the reference server's answers, a saved baseline, or the in-process reference."""
        if baseline is not None:
            return load_baseline(baseline, self.spec, self.limit), f"baseline {baseline.name}", ""
        if reference is not None:
            run = self._evaluate(reference)
            self.local.write_rows(self._path(f"reference-{reference.server.name}"), run.rows, None)
            return run, f"server {reference.server.name}", ""
        why = self.local.skip_reason()
        if why is not None:
            return None, "", (f"no comparison: the in-process reference needs the model here ({why}); "
                              "give --reference-endpoint or --baseline")
        fmt = self.cfg.baseline_format or "bf16"
        self.local.load()
        return self.local.baseline(fmt), f"reference/{fmt}", ""

    def run(self, candidates: list[Endpoint], reference: Endpoint | None = None, baseline: Path | None = None,
            done: list[GateRun] | None = None) -> list[GateRun]:
        """Each gate is appended to `done` as it finishes (see ConfigRunner.run); `current` names the one running."""
        out = done if done is not None else []
        t0 = time.monotonic()
        try:
            base, label, why = self.comparison(reference, baseline)
        except Exception as e:  # noqa: BLE001 - an unreachable or broken reference: every gate is an error
            base, label, why = None, "", f"comparison {reference.server.name if reference else 'reference'} failed: {_one_line(e)}"
        if base is None:
            verdict = "skip" if why.startswith("no comparison") else "error"
            out.extend(self._gate(ep, verdict, why, wall_s=time.monotonic() - t0) for ep in candidates)
            return out
        for ep in candidates:
            self.current = (ep.server.format, ep.server.name)
            out.append(self.run_gate(ep, base, label))
        self.current = None
        return out

    def run_gate(self, ep: Endpoint, base: lmeval_run.EvalRun, label: str) -> GateRun:
        t0 = time.monotonic()
        try:
            run = self._evaluate(ep)
        except Exception as e:  # noqa: BLE001 - a server that breaks is a result, not the end of the run
            why = str(e).splitlines()[0] if isinstance(e, MoecheckError) else f"{ep.url} failed: {_one_line(e)}"
            g = self._gate(ep, "error", f"ERROR {self.cfg.name}/{ep.server.name}: {why}; server: {ep.server.settings}",
                           wall_s=time.monotonic() - t0)
            self.log(g.message)
            return g
        path = self._path(ep.server.name)
        self.local.write_rows(path, run.rows, base)
        fmt = ep.server.format
        floor = self.cfg.floor_for(fmt)
        res = judge(self.cfg.name, fmt, ep.server.name, run.answers, base.answers, floor=floor, alpha=self.cfg.alpha,
                    baseline=label)
        msg = f"{res.message}; server: {ep.server.settings}"
        g = self._gate(ep, res.verdict, msg, result=res, n=len(run.answers), accuracy=run.accuracy, per_question=path,
                       wall_s=time.monotonic() - t0)
        self.log(g.message)
        return g
