"""Records kept in the results store, and the SQL tables that hold them.

One RunRecord per `moecheck run` (or bisect step), many CaseRecords (one property x backend x
format x example), E2ERecords (one accuracy gate) and BenchRecords (one benchmark number) per run. The tables are versioned: a store
written by an older moecheck is migrated forward on open, a newer one is refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from moecheck.reference.errors import require

VERDICTS = ("pass", "fail", "skip", "error", "refused", "crashed")
FAILING = ("fail", "error", "crashed")  # verdicts that count as a regression in diffs and bisects
RUN_STATUSES = ("running", "finished", "interrupted")
RUN_ID_ENV = "MOECHECK_RUN_ID"  # a run id given to `moecheck run` (--run-id): the shards of one night share it


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    run_id: str = ""  # uuid4 hex; start_run fills it
    started_at: str = ""  # ISO 8601 UTC
    finished_at: str | None = None
    revision: str | None = None  # revision of the code under test (kernel library or moecheck)
    versions: dict[str, str] = field(default_factory=dict)
    gpu_name: str | None = None
    driver: str | None = None
    hostname: str = ""
    profile: str = ""
    command: str = ""
    status: str = "running"

    def __post_init__(self):
        require(self.status in RUN_STATUSES, f"run status must be one of {RUN_STATUSES}, got {self.status!r}")


@dataclass(frozen=True, kw_only=True)
class CaseRecord:
    run_id: str = ""  # add_cases fills it
    backend: str
    format: str
    property: str
    shape: str = ""  # short, e.g. 'T=7 H=256 I=128 E=8 k=2'
    verdict: str
    max_norm_err: float | None = None  # worst |backend - ref| / bound; > 1 is a failure
    rms_err: float | None = None
    where: str | None = None  # location of the worst element
    bias: float | None = None  # mean sign(ref) * error / bound (errmodel Comparison.bias)
    bound: float | None = None  # the error bound at `where`
    duration_s: float = 0.0
    repro: str = ""  # the one command that reproduces this case
    message: str = ""
    case_json: str | None = None

    def __post_init__(self):
        require(self.verdict in VERDICTS, f"case verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity across runs: shapes are drawn by Hypothesis and differ run to run."""
        return (self.backend, self.format, self.property)


@dataclass(frozen=True, kw_only=True)
class E2ERecord:
    run_id: str = ""  # add_e2e fills it
    model: str
    format: str
    backend: str
    accuracy: float | None = None  # e.g. gsm8k exact-match, 0..1
    n_questions: int = 0
    verdict: str
    per_question_path: str | None = None
    message: str = ""

    def __post_init__(self):
        require(self.verdict in VERDICTS, f"e2e verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass(frozen=True, kw_only=True)
class BenchRecord:
    """One number of `moecheck bench` (ci/bench.py). Two kinds of row share the table: examples/s of one
    (backend, format, property), with ratio None; and property GEMM_RATIO, the reference expert GEMM's
    time over torch._grouped_mm's (backend 'reference', examples 0, examples_per_s None, shape and
    milliseconds in detail as JSON). One table, so merge, readers and the dashboard treat both alike."""

    run_id: str = ""  # add_bench fills it
    backend: str
    format: str
    property: str
    device: str
    examples: int = 0
    examples_per_s: float | None = None
    ratio: float | None = None
    detail: str = ""  # JSON

    @property
    def value(self) -> float | None:
        return self.ratio if self.property == GEMM_RATIO else self.examples_per_s


GEMM_RATIO = "gemm_ratio"  # the BenchRecord property of the GEMM row

SCHEMA_VERSION = 3

# MIGRATIONS[i] takes a store from version i to i + 1. Append only: never edit a shipped step.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS runs (
            run_id TEXT PRIMARY KEY, started_at TEXT NOT NULL, finished_at TEXT, revision TEXT,
            versions TEXT NOT NULL, gpu_name TEXT, driver TEXT, hostname TEXT NOT NULL,
            profile TEXT NOT NULL, command TEXT NOT NULL, status TEXT NOT NULL,
            owner_pid INTEGER NOT NULL, last_seen TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS cases (
            id INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(run_id), backend TEXT NOT NULL,
            format TEXT NOT NULL, property TEXT NOT NULL, shape TEXT NOT NULL, verdict TEXT NOT NULL,
            max_norm_err REAL, rms_err REAL, location TEXT, duration_s REAL NOT NULL,
            repro TEXT NOT NULL, message TEXT NOT NULL, case_json TEXT)""",
        "CREATE INDEX IF NOT EXISTS cases_run ON cases(run_id)",
        """CREATE TABLE IF NOT EXISTS e2e (
            id INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(run_id), model TEXT NOT NULL,
            format TEXT NOT NULL, backend TEXT NOT NULL, accuracy REAL, n_questions INTEGER NOT NULL,
            verdict TEXT NOT NULL, per_question_path TEXT, message TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS e2e_run ON e2e(run_id)",
    ),
    (  # 1 -> 2: a failure's bias and bound, shown beside its max and rms
        "ALTER TABLE cases ADD COLUMN bias REAL",
        "ALTER TABLE cases ADD COLUMN bound REAL",
    ),
    (  # 2 -> 3: benchmark numbers per run, so a slowdown shows on the dashboard
        """CREATE TABLE IF NOT EXISTS bench (
            id INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(run_id), backend TEXT NOT NULL,
            format TEXT NOT NULL, property TEXT NOT NULL, device TEXT NOT NULL, examples INTEGER NOT NULL,
            examples_per_s REAL, ratio REAL, detail TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS bench_run ON bench(run_id)",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION

# dataclass field -> column, where they differ (`where` is an SQL keyword)
CASE_COLUMNS = (
    ("run_id", "run_id"), ("backend", "backend"), ("format", "format"), ("property", "property"),
    ("shape", "shape"), ("verdict", "verdict"), ("max_norm_err", "max_norm_err"), ("rms_err", "rms_err"),
    ("where", "location"), ("bias", "bias"), ("bound", "bound"), ("duration_s", "duration_s"), ("repro", "repro"), ("message", "message"),
    ("case_json", "case_json"),
)
E2E_COLUMNS = tuple((f, f) for f in (
    "run_id", "model", "format", "backend", "accuracy", "n_questions", "verdict", "per_question_path", "message",
))
BENCH_COLUMNS = tuple((f, f) for f in (
    "run_id", "backend", "format", "property", "device", "examples", "examples_per_s", "ratio", "detail",
))
RUN_COLUMNS = tuple((f, f) for f in (
    "run_id", "started_at", "finished_at", "revision", "versions", "gpu_name", "driver", "hostname",
    "profile", "command", "status",
))
FLOAT_FIELDS = frozenset({"max_norm_err", "rms_err", "bias", "bound", "duration_s", "accuracy", "examples_per_s", "ratio"})
