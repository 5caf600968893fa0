"""lm-eval through its Python API on an already-built model: per-question correctness, with progress.

Two tasks, both zero-shot and scored alike (strict-match filter, exact_match):
  - "gsm8k": lm-eval's own task; runs only when openai/gsm8k is in the local HF datasets cache.
  - "local": tasks/moecheck_gsm8k_local.yaml (gsm8k's template, filters and metric) on a local JSONL,
    written with the data path into a temporary include dir for lm-eval's TaskManager.
Nothing downloads: the HF offline switches are forced on before lm-eval or datasets are imported.
`skip_reason` says, in one line, why a task cannot run here; `evaluate` raises MoecheckError then.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from moecheck.e2e.gate import Answer
from moecheck.reference.errors import MoecheckError, require

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
LOCAL_TASK = "moecheck_gsm8k_local"
GSM8K = ("openai/gsm8k", "main")
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
FILTERS = ("strict-match", "flexible-extract")
PROMPT = "Question: {question}\nAnswer:"  # gsm8k's doc_to_text
PROGRESS_EVERY_S = 10.0


def force_offline() -> None:
    for v in OFFLINE_VARS:
        os.environ[v] = "1"


@dataclass(frozen=True)
class TaskSpec:
    kind: str  # "local" | "gsm8k"
    data: Path | None = None  # local: the JSONL
    filter: str = "strict-match"  # which lm-eval filter decides "correct"

    def __post_init__(self):
        require(self.kind in ("local", "gsm8k"), f"task must be 'local' or 'gsm8k', got {self.kind!r}")
        require(self.kind != "local" or self.data is not None, "the local task needs a data file")
        require(self.filter in FILTERS, f"filter must be one of {FILTERS}, got {self.filter!r}")

    @property
    def name(self) -> str:
        return LOCAL_TASK if self.kind == "local" else "gsm8k"


def skip_reason(spec: TaskSpec) -> str | None:
    """None if the task's data is here, else why not (one line)."""
    for mod in ("lm_eval", "transformers"):
        try:
            __import__(mod)
        except ImportError as e:
            return f"{mod} is not installed ({e}); pip install -e '.[e2e]'"
    if spec.kind == "local":
        return None if spec.data.is_file() else f"local gsm8k data {spec.data} does not exist"
    force_offline()
    try:
        import datasets

        datasets.load_dataset(*GSM8K, split="test")
    except Exception as e:  # noqa: BLE001 - any failure to load offline means "not cached"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"{GSM8K[0]} ({GSM8K[1]}) is not in the local HF datasets cache (offline): {first[:160]}"
    return None


def calibration_prompts(spec: TaskSpec, n: int) -> list[str]:
    """The first n prompts of the task, formatted as the task formats them (doc_to_text)."""
    if spec.kind == "local":
        lines = [x for x in spec.data.read_text().splitlines() if x.strip()][:n]
        questions = [json.loads(x)["question"] for x in lines]
    else:
        force_offline()
        import datasets

        questions = list(datasets.load_dataset(*GSM8K, split="test")["question"][:n])
    return [PROMPT.format(question=q) for q in questions]


def _local_task_dir(data: Path, into: Path) -> Path:
    import yaml

    cfg = yaml.safe_load((TASKS_DIR / f"{LOCAL_TASK}.yaml").read_text())
    cfg["dataset_kwargs"]["data_files"]["test"] = str(data.resolve())
    (into / f"{LOCAL_TASK}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return into


class Progress:
    """Questions done, rate and ETA, printed every PROGRESS_EVERY_S seconds and at the end."""

    def __init__(self, total: int, label: str, out: Callable[[str], None] | None = None):
        self.total, self.label, self.done = total, label, 0
        self.t0 = self.last = time.monotonic()
        self.out = out or (lambda s: print(s, file=sys.stderr, flush=True))

    def line(self) -> str:
        dt = max(time.monotonic() - self.t0, 1e-9)
        rate = self.done / dt
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return f"{self.label}: {self.done}/{self.total} questions, {rate:.2f} q/s, ETA {eta:.0f} s"

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.done >= self.total or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.out(self.line())


def _progress_lm(label: str, out):
    from lm_eval.models.huggingface import HFLM

    class ProgressHFLM(HFLM):
        """HFLM whose generation reports progress (lm-eval's tqdm is off: it floods CI logs)."""

        def generate_until(self, requests, disable_tqdm: bool = False):
            self.progress = Progress(len(requests), label, out)
            return super().generate_until(requests, disable_tqdm=True)

        def _model_generate(self, context, max_length, stop, **kw):
            res = super()._model_generate(context, max_length, stop, **kw)
            self.progress.advance(int(context.shape[0]))
            return res

    return ProgressHFLM


@dataclass
class EvalRun:
    answers: list[Answer]
    rows: list[dict]  # one per question: doc_id, question, target, response, extracted per filter, correct per filter
    accuracy: float  # exact_match under spec.filter
    metrics: dict = field(default_factory=dict)  # lm-eval's aggregated results for the task
    wall_s: float = 0.0


def _rows(samples: list[dict], spec: TaskSpec) -> list[dict]:
    by_doc: dict[int, dict] = {}
    for s in samples:
        d = s["doc"]
        row = by_doc.setdefault(int(s["doc_id"]), {
            "doc_id": int(s["doc_id"]), "question": d.get("question", ""), "target": s.get("target", ""),
            "response": s["resps"][0][0] if s.get("resps") else ""})
        row[f"extracted:{s['filter']}"] = s["filtered_resps"][0] if s.get("filtered_resps") else None
        row[f"correct:{s['filter']}"] = bool(s["exact_match"])
    rows = [by_doc[i] for i in sorted(by_doc)]
    key = f"correct:{spec.filter}"
    require(all(key in r for r in rows), f"lm-eval returned no {spec.filter!r} results for {spec.name}")
    return rows


def evaluate(model, tokenizer, spec: TaskSpec, *, limit: int | None, batch_size: int = 16,
             max_gen_toks: int | None = None, label: str = "e2e", out: Callable[[str], None] | None = None) -> EvalRun:
    """Zero-shot greedy generation on `spec` with lm-eval's HFLM around `model` (already built)."""
    why = skip_reason(spec)
    if why is not None:
        raise MoecheckError(why)
    force_offline()
    lm = _progress_lm(label, out)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    return evaluate_lm(lm, spec, limit=limit, max_gen_toks=max_gen_toks)


@functools.cache
def _commit(cwd: str) -> str | None:
    """lm-eval's results["git_hash"], with git's stderr captured: lm-eval runs `git describe` per evaluation
    and lets git print "fatal: not a git repository" each time; here one line says so, once per folder."""
    try:
        done = subprocess.run(["git", "describe", "--always"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        done = None
    if done is not None and done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip()
    print(f"e2e: {cwd} is not in a git checkout: commit unknown", file=sys.stderr, flush=True)
    return None


@contextlib.contextmanager
def _quiet_git():
    import lm_eval.evaluator as ev

    saved = ev.get_git_commit_hash
    ev.get_git_commit_hash = lambda: _commit(os.getcwd())
    try:
        yield
    finally:
        ev.get_git_commit_hash = saved


def evaluate_lm(lm, spec: TaskSpec, *, limit: int | None, max_gen_toks: int | None = None) -> EvalRun:
    """Zero-shot greedy generation on `spec` with any lm-eval LM (HFLM in-process, or a served endpoint's)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    force_offline()
    gen = {"max_gen_toks": int(max_gen_toks)} if max_gen_toks else None
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="moecheck-lmeval-") as tmp, _quiet_git():
        tm = TaskManager(include_path=str(_local_task_dir(spec.data, Path(tmp))) if spec.kind == "local" else None)
        res = lm_eval.simple_evaluate(model=lm, tasks=[spec.name], num_fewshot=0, limit=limit, log_samples=True,
                                      task_manager=tm, gen_kwargs=gen, bootstrap_iters=0, verbosity="ERROR")
    wall = time.monotonic() - t0
    require(res is not None and spec.name in res.get("samples", {}), f"lm-eval returned no samples for {spec.name}")
    rows = _rows(res["samples"][spec.name], spec)
    key = f"correct:{spec.filter}"
    answers = [Answer(r["doc_id"], r[key], r["question"], r["response"], str(r.get(f"extracted:{spec.filter}") or ""))
               for r in rows]
    acc = sum(a.correct for a in answers) / len(answers) if answers else 0.0
    return EvalRun(answers, rows, acc, dict(res["results"].get(spec.name, {})), wall)
