"""Gate configs: one TOML file per model (e2e/configs/NAME.toml), and finding/loading the model.

Keys (unknown keys are refused, so a typo cannot silently drop a gate):
  model_path / model_id   exactly one: a directory (relative to the config file) or a HF hub id,
                          used only if already in the local HF cache (nothing downloads)
  family                  optional; default from config.model_type (e2e/families.py)
  dtype, device           "bfloat16" | "float16" | "float32"; "auto" (cuda if visible) | "cpu" | "cuda"
  task, data, filter      "local" (data: JSONL relative to the config file) | "gsm8k"; lm-eval filter
  n_questions, batch_size, max_gen_toks
  formats, backends       the gates: every (format, backend) pair, each against the reference backend
  baseline_format         optional: compare against the reference in this format instead of the same one
  floor, [floors]         accuracy floor, and per-format overrides
  alpha                   McNemar significance level
  [servers.NAME]          served configurations for `moecheck e2e --endpoint NAME=URL` (e2e/endpoint.py):
                          engine, args, env, format, model, client_stop, concurrency, description
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from moecheck.reference.errors import MoecheckError, require

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
DTYPES = ("bfloat16", "float16", "float32")
DEVICES = ("auto", "cpu", "cuda")


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib
        return tomllib
    try:
        import tomli
    except ImportError:
        raise MoecheckError("reading gate configs on Python < 3.11 needs tomli (pip install -e '.[e2e]')") from None
    return tomli


@dataclass(frozen=True)
class GateConfig:
    name: str
    path: Path
    formats: tuple[str, ...]
    backends: tuple[str, ...]
    floor: float
    n_questions: int
    model_path: str | None = None
    model_id: str | None = None
    family: str | None = None
    dtype: str = "bfloat16"
    device: str = "auto"
    task: str = "local"
    data: str | None = None
    filter: str = "strict-match"
    alpha: float = 0.05
    floors: dict = field(default_factory=dict)
    baseline_format: str | None = None
    batch_size: int = 16
    max_gen_toks: int | None = None
    description: str = ""
    servers: dict = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.model_id or str(self.resolved(self.model_path))

    def resolved(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def floor_for(self, fmt: str) -> float:
        return float(self.floors.get(fmt, self.floor))

    def validate(self) -> None:
        from moecheck.reference.formats import get_format

        where = f"config {self.path}"
        require((self.model_path is None) != (self.model_id is None), f"{where}: give exactly one of model_path, model_id")
        require(self.dtype in DTYPES, f"{where}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        require(self.device in DEVICES, f"{where}: device must be one of {DEVICES}, got {self.device!r}")
        require(self.task in ("local", "gsm8k"), f"{where}: task must be 'local' or 'gsm8k', got {self.task!r}")
        require(self.task != "local" or self.data, f"{where}: the local task needs `data` (a JSONL path)")
        require(self.formats and self.backends, f"{where}: formats and backends must be non-empty lists")
        for f in (*self.formats, *self.floors, *([self.baseline_format] if self.baseline_format else [])):
            get_format(f)
        for what, v in (("floor", self.floor), *((f"floors.{k}", x) for k, x in self.floors.items())):
            require(isinstance(v, (int, float)) and 0 <= v <= 1, f"{where}: {what} must be a number in [0, 1], got {v!r}")
        require(0 < self.alpha < 1, f"{where}: alpha must be in (0, 1), got {self.alpha!r}")
        for what in ("n_questions", "batch_size"):
            v = getattr(self, what)
            require(isinstance(v, int) and v >= 1, f"{where}: {what} must be an integer >= 1, got {v!r}")
        from moecheck.e2e.endpoint import server_configs

        server_configs(self.servers, where)


def config_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        require(p.is_file(), f"no gate config {p}")
        return p.resolve()
    q = CONFIGS_DIR / f"{name_or_path}.toml"
    known = ", ".join(sorted(x.stem for x in CONFIGS_DIR.glob("*.toml")))
    require(q.is_file(), f"no gate config named {name_or_path!r}; known: {known}")
    return q


def load_config(name_or_path: str) -> GateConfig:
    path = config_path(name_or_path)
    try:
        raw = _toml().loads(path.read_text())
    except (ValueError, OSError) as e:
        raise MoecheckError(f"config {path}: {str(e).splitlines()[0]}") from None
    known = {f.name for f in fields(GateConfig)} - {"name", "path"}
    extra = sorted(set(raw) - known)
    require(not extra, f"config {path}: unknown keys {', '.join(extra)}; known: {', '.join(sorted(known))}")
    for key in ("formats", "backends"):
        require(isinstance(raw.get(key), list), f"config {path}: {key} must be a list")
        raw[key] = tuple(raw[key])
    for key in ("floor", "n_questions"):
        require(key in raw, f"config {path}: missing {key}")
    cfg = GateConfig(name=path.stem, path=path, **raw)
    cfg.validate()
    return cfg


def all_configs() -> list[str]:
    return sorted(str(p) for p in CONFIGS_DIR.glob("*.toml"))


def locate_model(cfg: GateConfig) -> tuple[Path | None, str | None]:
    """(local directory, None), or (None, why the model is not here)."""
    if cfg.model_path is not None:
        p = cfg.resolved(cfg.model_path)
        if not (p / "config.json").is_file():
            return None, f"model directory {p} has no config.json (not built or not shipped here)"
        return p, None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(cfg.model_id, local_files_only=True)), None
    except ImportError as e:
        return None, f"huggingface_hub is not installed ({e})"
    except Exception as e:  # noqa: BLE001 - LocalEntryNotFoundError and friends: not cached
        return None, f"{cfg.model_id} is not in the local HF cache ({type(e).__name__}); nothing is downloaded at run time"


def load_model(cfg: GateConfig, path: Path):
    """(model, tokenizer) from a local directory, in cfg.dtype on cfg.device, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    require(device != "cuda" or torch.cuda.is_available(), f"config {cfg.path}: device cuda requested, none visible")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, cfg.dtype), local_files_only=True)
    return model.to(device).eval(), tok
