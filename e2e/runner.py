"""Run the gates of one config: load the model once, evaluate the reference and each backend, judge.

Per (format, backend): surgery installs the backend (e2e/surgery.py), lm-eval answers the
questions (lmeval_run.py), the model is restored, and gate.judge compares the answers with the
reference backend's on the same questions. Reference runs are cached per format, so N backends cost
N + 1 evaluations. Every gate leaves a per-question JSONL in `out_dir`; a gate that cannot run here
is a "skip" with its reason, one that breaks is an "error" with a one-line message, never a crash
of the whole run. A backend whose run() was never entered is an error too: it proved nothing.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from moecheck.e2e import calibrate, lmeval_run, surgery
from moecheck.e2e.config import GateConfig, load_model, locate_model
from moecheck.e2e.gate import GateResult, judge
from moecheck.reference.errors import MoecheckError
from moecheck.reference.formats import get_format

CALIBRATION_PROMPTS = 32  # static formats: activation scales from the first prompts of the task


@dataclass
class GateRun:
    config: str
    model: str
    format: str
    backend: str
    verdict: str  # pass | fail | skip | error
    message: str
    result: GateResult | None = None
    n: int = 0
    accuracy: float | None = None
    calls: int = 0  # backend.run calls during the evaluation
    per_question: Path | None = None
    wall_s: float = 0.0


class _Skip(Exception):
    """This pair cannot run here (its record, the sizes, a missing model): a skip, with the reason."""


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}"[:300]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class ConfigRunner:
    def __init__(self, cfg: GateConfig, out_dir: Path, *, limit: int | None = None,
                 log: Callable[[str], None] = _log):
        self.cfg, self.out_dir, self.log = cfg, Path(out_dir), log
        self.limit = limit or cfg.n_questions
        self.spec = lmeval_run.TaskSpec(cfg.task, cfg.resolved(cfg.data) if cfg.data else None, cfg.filter)
        self.model = self.tokenizer = None
        self.baselines: dict[str, lmeval_run.EvalRun] = {}
        self.scales: dict[str, calibrate.Scales] = {}  # per static format, shared by reference and backends
        self.current: tuple[str, str] | None = None  # (format, backend) of the gate running

    def _gate(self, fmt: str, backend: str, verdict: str, message: str, **kw) -> GateRun:
        return GateRun(self.cfg.name, self.cfg.model, fmt, backend, verdict, message, **kw)

    def skip_reason(self) -> str | None:
        """Why no gate of this config can run here (model and data both checked), or None."""
        whys = [w for w in (locate_model(self.cfg)[1], lmeval_run.skip_reason(self.spec)) if w]
        return "; ".join(whys) or None

    def load(self) -> None:
        if self.model is None:
            path, why = locate_model(self.cfg)
            if why is not None:
                raise _Skip(why)
            t0 = time.monotonic()
            self.model, self.tokenizer = load_model(self.cfg, path)
            self.log(f"e2e {self.cfg.name}: loaded {path} ({self.cfg.dtype}, {self.model.device}) in {time.monotonic() - t0:.1f} s")

    def _act_scales(self, fmt: str) -> calibrate.Scales | None:
        f = get_format(fmt)
        if not calibrate.needs_calibration(f):
            return None
        if fmt not in self.scales:
            prompts = lmeval_run.calibration_prompts(self.spec, CALIBRATION_PROMPTS)
            self.scales[fmt] = calibrate.static_scales(self.model, self.tokenizer, prompts, f, self.cfg.family,
                                                       self.cfg.batch_size)
        return self.scales[fmt]

    def _evaluate(self, fmt: str, backend: str) -> tuple[lmeval_run.EvalRun, int]:
        try:
            inst = surgery.install(self.model, backend, fmt, self.cfg.family, self._act_scales(fmt))
        except MoecheckError as e:
            raise _Skip(str(e)) from None
        with inst:
            run = lmeval_run.evaluate(self.model, self.tokenizer, self.spec, limit=self.limit,
                                      batch_size=self.cfg.batch_size, max_gen_toks=self.cfg.max_gen_toks,
                                      label=f"e2e {self.cfg.name}/{fmt}/{backend}")
            return run, inst.calls

    def baseline(self, fmt: str) -> lmeval_run.EvalRun:
        if fmt not in self.baselines:
            run, calls = self._evaluate(fmt, surgery.REFERENCE)
            if calls == 0:
                raise MoecheckError(f"the reference MoE was never called on {self.cfg.name}: surgery replaced nothing that runs")
            self.baselines[fmt] = run
            self.write_rows(self._path(fmt, "baseline-reference"), run.rows, None)
        return self.baselines[fmt]

    def _path(self, fmt: str, backend: str) -> Path:
        return self.out_dir / f"{self.cfg.name}__{fmt}__{backend}.jsonl"

    def write_rows(self, path: Path, rows: list[dict], base: lmeval_run.EvalRun | None) -> None:
        """Per-question JSONL; with base, each row also carries the reference's answer and `discordant`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        ref = {r["doc_id"]: r for r in base.rows} if base is not None else {}
        key = f"correct:{self.spec.filter}"
        with path.open("w") as f:
            for r in rows:
                row = {**r, "correct": r[key]}
                if r["doc_id"] in ref:
                    b = ref[r["doc_id"]]
                    row.update(reference_correct=b[key], reference_response=b["response"], discordant=b[key] != r[key])
                f.write(json.dumps(row) + "\n")

    def run_gate(self, fmt: str, backend: str) -> GateRun:
        t0 = time.monotonic()
        base_fmt = self.cfg.baseline_format or fmt
        try:
            be = surgery.resolve_backend(backend)  # unknown names were refused before any gate ran
            av = be.availability()
            if not av.ok:
                return self._gate(fmt, backend, "skip", f"backend {backend} unavailable: {av.reason}")
            if fmt not in be.capability.formats:
                return self._gate(fmt, backend, "skip", f"backend {backend} does not support format {fmt}")
            self.load()
            base = self.baseline(base_fmt)
            run, calls = self._evaluate(fmt, backend)
        except _Skip as e:  # the record, the sizes or the machine rule this pair out
            return self._gate(fmt, backend, "skip", str(e), wall_s=time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001 - a crashing backend is a result, not the end of the run
            return self._gate(fmt, backend, "error", f"{self.cfg.name}/{fmt}/{backend} crashed: {_one_line(e)}",
                              wall_s=time.monotonic() - t0)
        path = self._path(fmt, backend)
        self.write_rows(path, run.rows, base)
        kw = dict(n=len(run.answers), accuracy=run.accuracy, calls=calls, per_question=path, wall_s=time.monotonic() - t0)
        if calls == 0:
            return self._gate(fmt, backend, "error", f"{self.cfg.name}/{fmt}/{backend}: backend.run was never called; "
                                                     "the gate would have judged the unmodified model", **kw)
        res = judge(self.cfg.name, fmt, backend, run.answers, base.answers, floor=self.cfg.floor_for(fmt),
                    alpha=self.cfg.alpha, baseline=f"reference/{base_fmt}")
        return self._gate(fmt, backend, res.verdict, res.message, result=res, **kw)

    def run(self, formats: tuple[str, ...] | None = None, backends: tuple[str, ...] | None = None,
            done: list[GateRun] | None = None) -> list[GateRun]:
        """Every (format, backend) gate; each is appended to `done` as it finishes, so a caller interrupted
        mid-run still has them, and `current` names the gate running."""
        formats = formats or self.cfg.formats
        backends = backends or self.cfg.backends
        out = done if done is not None else []
        why = self.skip_reason()
        if why is not None:
            out.extend(self._gate(f, b, "skip", why) for f in formats for b in backends)
            return out
        for f in formats:
            for b in backends:
                self.current = (f, b)
                g = self.run_gate(f, b)
                self.log(g.message if g.verdict != "skip" else f"e2e {self.cfg.name}/{f}/{b}: skip: {g.message}")
                out.append(g)
        self.current = None
        return out
