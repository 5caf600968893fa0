"""The e2e accuracy gate: an exact McNemar test against the reference backend, plus an accuracy floor.

Both runs answer the same questions, so the comparison is paired: only discordant questions carry
information, b = reference right / backend wrong, c = reference wrong / backend right. Under "the
backend is as good as the reference" each discordant question is a fair coin, so the two-sided
exact p-value is min(1, 2 P[Binomial(b + c, 1/2) <= min(b, c)]) (math.comb, no scipy). A correct
kernel differs from the reference only by rounding, which flips a few answers either way; a wrong
one flips many, and mostly one way. The floor catches what a paired test cannot: a backend and a
reference that are both broken, or a format that ruins the model (floor per format in the config).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from moecheck.reference.errors import require

MESSAGE_QUESTIONS = 5  # discordant questions quoted in a gate's message
QUESTION_CHARS = 80
ANSWER_CHARS = 24


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (1.0 when there are none)."""
    require(b >= 0 and c >= 0, f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class Answer:
    """One question as one run answered it."""

    doc_id: int
    correct: bool
    question: str = ""
    response: str = ""  # the raw generation
    extracted: str = ""  # what the task's filter took from it (e.g. strict-match: N of "#### N")


@dataclass(frozen=True)
class GateResult:
    model: str
    format: str
    backend: str
    verdict: str  # pass | fail | error (results.schema.VERDICTS)
    n: int
    accuracy: float
    reference_accuracy: float
    floor: float
    alpha: float
    b: int  # reference right, backend wrong
    c: int  # reference wrong, backend right
    p_value: float
    discordant: tuple[int, ...] = ()  # doc ids, reference-right-backend-wrong first
    message: str = ""
    baseline: str = "reference"

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def _short(a: Answer) -> str:
    return (a.extracted or a.response.strip())[:ANSWER_CHARS]


def _quote(ids, by_id: dict[int, Answer], base: dict[int, Answer]) -> str:
    parts = []
    for i in ids[:MESSAGE_QUESTIONS]:
        q = (by_id[i].question or base[i].question).replace("\n", " ")
        q = q if len(q) <= QUESTION_CHARS else q[:QUESTION_CHARS - 3] + "..."
        ref, got = base[i], by_id[i]
        parts.append(f"#{i} {q!r} (reference {'right' if ref.correct else 'wrong'} {_short(ref)!r}, "
                     f"backend {'right' if got.correct else 'wrong'} {_short(got)!r})")
    more = f"; {len(ids) - MESSAGE_QUESTIONS} more" if len(ids) > MESSAGE_QUESTIONS else ""
    return "; ".join(parts) + more


def judge(model: str, fmt: str, backend: str, answers: list[Answer], reference: list[Answer], *,
          floor: float, alpha: float, baseline: str = "reference") -> GateResult:
    """Gate one (model, format, backend) run against the reference run on the same questions."""
    require(0.0 < alpha < 1.0, f"alpha must be in (0, 1), got {alpha}")
    require(0.0 <= floor <= 1.0, f"floor must be in [0, 1], got {floor}")
    by_id = {a.doc_id: a for a in answers}
    base = {a.doc_id: a for a in reference}
    require(len(by_id) == len(answers) and len(base) == len(reference), "a run answered some question twice")
    require(by_id.keys() == base.keys(),
            f"the runs answered different questions ({len(by_id.keys() - base.keys())} only by {backend}, "
            f"{len(base.keys() - by_id.keys())} only by the reference): a paired test needs the same ones")
    n = len(by_id)
    require(n > 0, "no questions were answered")
    ids = sorted(by_id)
    worse = [i for i in ids if base[i].correct and not by_id[i].correct]
    better = [i for i in ids if not base[i].correct and by_id[i].correct]
    b, c = len(worse), len(better)
    p = mcnemar_exact(b, c)
    acc = sum(by_id[i].correct for i in ids) / n
    ref_acc = sum(base[i].correct for i in ids) / n
    what = f"{model} / {fmt} / {backend}"
    stats = (f"accuracy {acc:.3f} vs {baseline} {ref_acc:.3f} on {n} questions, McNemar b={b} c={c} "
             f"p={p:.3g} (alpha {alpha}), floor {floor:.3f}")
    discordant = tuple(worse + better)
    if ref_acc < floor:
        verdict, why = "error", (f"the {baseline} baseline itself is below the floor ({ref_acc:.3f} < {floor:.3f}): "
                                 "model, data or prompt is broken, the gate says nothing about the backend")
    elif p < alpha:
        side = "worse" if b > c else "better"
        verdict, why = "fail", f"answers differ from the {baseline} significantly ({side})"
    elif acc < floor:
        verdict, why = "fail", f"accuracy {acc:.3f} below the floor {floor:.3f}"
    else:
        verdict, why = "pass", "consistent with the reference"
    msg = f"{verdict.upper()} {what}: {why}; {stats}"
    if discordant:
        msg += f". Discordant questions: {_quote(list(discordant), by_id, base)}"
    return GateResult(model, fmt, backend, verdict, n, acc, ref_acc, floor, alpha, b, c, p, discordant, msg, baseline)
