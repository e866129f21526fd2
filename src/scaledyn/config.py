"""Study configuration: one JSON schema (shared with the Snakefile) plus the cross-field checks.

The schema fills in defaults, so a study file only says what differs from them. Everything that
can be known before compute is spent is checked here, and every error names the key path.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jsonschema
import yaml

from . import sizes as size_presets
from .errors import ConfigError

SCHEMA_PATH = Path(__file__).with_name("schema") / "config.schema.yaml"


def _with_defaults(validator_class):
    """jsonschema's documented recipe: fill in `default` values while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def validate_schema(raw: dict) -> dict:
    """Validate against the schema and return a copy with every default filled in."""
    cfg = copy.deepcopy(raw or {})
    validator = _with_defaults(jsonschema.Draft202012Validator)(load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ConfigError(f"config: {where}: {e.message}")
    return cfg


def checkpoint_steps(last: int, log2: bool = True, interval: int | None = None, extra=()) -> list[int]:
    """Powers of two up to the last step, the last step, every `interval` steps, and extras."""
    steps = {last, *extra}
    if log2:
        s = 1
        while s <= last:
            steps.add(s)
            s *= 2
    if interval:
        steps.update(range(interval, last + 1, interval))
    return sorted(steps)


@dataclass(frozen=True)
class Schedule:
    kind: str = "trapezoidal"
    warmup_steps: int = 0
    warmup_start_factor: float = 0.1
    cooldown_steps: int = 0
    final_lr_factor: float = 0.1


@dataclass(frozen=True)
class Optimizer:
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-5
    weight_decay: float = 0.1


@dataclass(frozen=True)
class RunSpec:
    """Everything one training run needs; passed to `scaledyn train --spec`.

    It depends only on its own size and seed, so adding a size to a study leaves the other runs'
    specs (and hence Snakemake's params trigger) untouched.
    """

    name: str
    size: size_presets.Size
    seed: int
    data_dir: str
    run_dir: str
    seq_len: int
    steps: int
    batch_size: int
    micro_batch_size: int | None
    lr: float
    schedule: Schedule
    optimizer: Optimizer
    grad_clip: float | None
    precision: str
    compile: bool
    threads: int | None
    flush_every: int
    checkpoint_steps: tuple[int, ...]
    optimizer_steps: tuple[int, ...] | None = None  # None = keep optimizer state everywhere
    data_seed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        d = json.loads(text)
        d["size"] = size_presets.Size(**d["size"])
        d["schedule"] = Schedule(**d["schedule"])
        d["optimizer"] = Optimizer(**{**d["optimizer"], "betas": tuple(d["optimizer"]["betas"])})
        d["checkpoint_steps"] = tuple(d["checkpoint_steps"])
        if d.get("optimizer_steps") is not None:
            d["optimizer_steps"] = tuple(d["optimizer_steps"])
        return cls(**d)

    def keeps_optimizer(self, step: int) -> bool:
        return self.optimizer_steps is None or step in self.optimizer_steps


@dataclass
class Study:
    """A validated study: the raw config (defaults filled) plus what is derived from it."""

    cfg: dict
    sizes: dict[str, size_presets.Size] = field(default_factory=dict)

    @property
    def results(self) -> Path:
        return Path(self.cfg["results"])

    @property
    def data_dir(self) -> Path:
        return self.results / "data"

    def run_name(self, size: str, seed: int) -> str:
        return f"{size}_s{seed}"

    @property
    def runs(self) -> dict[str, tuple[str, int]]:
        return {
            self.run_name(s, seed): (s, seed) for s in self.cfg["model"]["sizes"] for seed in self.cfg["seeds"]
        }

    @property
    def checkpoint_steps(self) -> list[int]:
        c, t = self.cfg["checkpoints"], self.cfg["train"]
        return checkpoint_steps(t["steps"], c["log2"], c["interval"], c["extra_steps"])

    @property
    def dt1_steps(self) -> list[int]:
        return sorted(self.cfg["zsl"]["dt1_steps"])

    def run_spec(self, run: str) -> RunSpec:
        size_name, seed = self.runs[run]
        size = self.sizes[size_name]
        t, c = self.cfg["train"], self.cfg["checkpoints"]
        ckpts = self.checkpoint_steps
        return RunSpec(
            name=run,
            size=size,
            seed=seed,
            data_dir=str(self.data_dir),
            run_dir=str(self.results / "runs" / run),
            seq_len=self.cfg["data"]["seq_len"],
            steps=t["steps"],
            batch_size=t["batch_size"],
            micro_batch_size=t["micro_batch_size"],
            lr=t["lr"] if t["lr"] is not None else size.lr,
            schedule=Schedule(**t["schedule"]),
            optimizer=Optimizer(**{**t["optimizer"], "betas": tuple(t["optimizer"]["betas"])}),
            grad_clip=t["grad_clip"],
            precision=t["precision"],
            compile=t["compile"],
            threads=t["threads"],
            flush_every=t["flush_every"],
            checkpoint_steps=tuple(ckpts),
            optimizer_steps=None if c["keep_optimizer"] == "all" else tuple(self.dt1_steps),
            data_seed=self.cfg["data"]["seed"],
        )

    def section_hash(self, *keys: str) -> str:
        """Stable hash of some config sections, for run tables and provenance."""
        blob = json.dumps({k: self.cfg[k] for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check(study: Study) -> None:
    cfg = study.cfg
    data, model, train = cfg["data"], cfg["model"], cfg["train"]

    src = data["source"]
    if src == "files" and not data["files"]["paths"]:
        raise ConfigError("config: data.files.paths: source 'files' needs at least one path or glob")
    if src == "hf" and not data["hf"]["name"]:
        raise ConfigError("config: data.hf.name: source 'hf' needs a dataset name or local path")
    tok = data["tokenizer"]
    if tok["kind"] == "pretrained" and not tok["name"]:
        raise ConfigError("config: data.tokenizer.name: kind 'pretrained' needs a tokenizer name or path")

    allowed = sorted(set(size_presets.PRESETS) | set(model["custom"]))
    for i, name in enumerate(model["sizes"]):
        try:
            size = size_presets.resolve(name, model["custom"])
        except KeyError:
            raise ConfigError(
                f"config: model.sizes[{i}]: unknown size {name!r}; allowed: {', '.join(allowed)} "
                "(or define it under model.custom)"
            ) from None
        where = f"model.custom.{name}" if name in model["custom"] else f"model.sizes[{i}] ({name})"
        if size.d_model % size.n_heads:
            raise ConfigError(f"config: {where}: d_model {size.d_model} is not divisible by n_heads {size.n_heads}")
        if (size.d_model // size.n_heads) % 2:
            raise ConfigError(f"config: {where}: head dimension {size.d_model // size.n_heads} must be even for RoPE")
        if size.lr <= 0:
            raise ConfigError(f"config: {where}.lr: learning rate must be positive, got {size.lr}")
        if data["seq_len"] > size.context:
            raise ConfigError(
                f"config: data.seq_len: {data['seq_len']} is beyond the context of size {name!r} "
                f"({size.context} positions); use at most {size.context}"
            )
        study.sizes[name] = size

    if train["lr"] is not None and train["lr"] <= 0:
        raise ConfigError(f"config: train.lr: learning rate must be positive, got {train['lr']}")
    if train["micro_batch_size"] and train["micro_batch_size"] > train["batch_size"]:
        raise ConfigError(
            f"config: train.micro_batch_size: {train['micro_batch_size']} exceeds train.batch_size {train['batch_size']}"
        )
    sched = train["schedule"]
    if sched["warmup_steps"] + sched["cooldown_steps"] > train["steps"]:
        raise ConfigError(
            "config: train.schedule: warmup_steps + cooldown_steps "
            f"({sched['warmup_steps']} + {sched['cooldown_steps']}) exceed train.steps ({train['steps']})"
        )

    last = train["steps"]
    for key, steps in [("checkpoints.extra_steps", cfg["checkpoints"]["extra_steps"]), ("zsl.dt1_steps", cfg["zsl"]["dt1_steps"])]:
        for i, s in enumerate(steps):
            if s > last:
                raise ConfigError(f"config: {key}[{i}]: checkpoint step {s} is beyond the last step train.steps = {last}")
    ckpts = set(study.checkpoint_steps)
    for i, s in enumerate(cfg["zsl"]["dt1_steps"]):
        if s not in ckpts:
            raise ConfigError(
                f"config: zsl.dt1_steps[{i}]: step {s} is not a checkpoint step; checkpoints are {sorted(ckpts)} "
                "(add it to checkpoints.extra_steps)"
            )
    for i, s in enumerate(cfg["report"]["histogram_steps"]):
        if s not in ckpts:
            raise ConfigError(f"config: report.histogram_steps[{i}]: step {s} is not a checkpoint step")

    needed = (data["eval_sequences"] + data["heldout_batches"] * train["batch_size"]) * data["seq_len"]
    if data["max_tokens"] is not None and needed >= data["max_tokens"]:
        raise ConfigError(
            f"config: data.eval_sequences: the evaluation set and held-out batches need {needed} tokens, "
            f"but data.max_tokens caps the corpus at {data['max_tokens']} and training needs some too"
        )


def load_study(source: str | Path | dict, overrides: dict | None = None) -> Study:
    """Build a Study from a YAML path or a dict (as Snakemake's `config`), raising ConfigError."""
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config: file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config: {path} is not valid YAML: {e}") from None
    if overrides:
        raw = _merge(raw, overrides)
    study = Study(validate_schema(raw))
    _check(study)
    return study


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
