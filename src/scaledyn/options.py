"""Typed options for every stage, built once from the validated study config.

Defaults live only in the schema: these classes have none of their own. `defaults()` builds an
object from the schema's defaults (what the CLI shows and starts from), `from_json()` re-validates
what a rule passes, so a hand-written `--options` is checked exactly as a config file is.
Each workflow rule passes its stage's object as JSON (`--options`), and nothing else of the
config, so editing one stage's options re-runs that stage and what depends on it, nothing more.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar

from .errors import ConfigError
from .schema import defaults as schema_defaults
from .schema import validate_schema
from .sizes import Size


def _json_object(text: str) -> dict:
    try:
        section = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--options: not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(section, dict):
        raise ConfigError("--options: expected a JSON object")
    return section


class StageOptions:
    SECTION: ClassVar[str]

    @classmethod
    def from_config(cls, cfg: dict):
        """From a validated config (every default filled in)."""
        return cls(**{f.name: cfg[cls.SECTION][f.name] for f in fields(cls)})

    @classmethod
    def defaults(cls):
        return cls.from_config(schema_defaults())

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_config(validate_schema({cls.SECTION: _json_object(text)}))


@dataclass(frozen=True)
class DataOptions(StageOptions):
    SECTION: ClassVar[str] = "data"
    source: str
    packages: list
    files: dict
    hf: dict
    max_documents: int | None
    max_tokens: int | None
    tokenizer: dict
    seq_len: int
    eval_sequences: int
    heldout_batches: int
    seed: int
    slices: int
    shard_tokens: int
    heldout_batch_size: int  # = train.batch_size: held-out batches are training batches never trained on

    @classmethod
    def from_config(cls, cfg: dict) -> "DataOptions":
        data = {f.name: cfg["data"][f.name] for f in fields(cls) if f.name != "heldout_batch_size"}
        return cls(**data, heldout_batch_size=cfg["train"]["batch_size"])

    @classmethod
    def from_json(cls, text: str) -> "DataOptions":
        d = _json_object(text)
        batch = d.pop("heldout_batch_size", None)
        cfg = validate_schema({"data": d, "train": {"batch_size": batch} if batch is not None else {}})
        return cls.from_config(cfg)


@dataclass(frozen=True)
class EvaluateOptions(StageOptions):
    SECTION: ClassVar[str] = "evaluate"
    batch_size: int
    token_dtype: str
    heldout: bool


@dataclass(frozen=True)
class ZslOptions(StageOptions):
    """The one-step analysis' options; which checkpoints it runs at is the study's (zsl.dt1_steps)."""

    SECTION: ClassVar[str] = "zsl"
    gradient_view: bool
    coordinate_max_params: int
    coordinate_tokens: int | None
    batch_size: int  # = evaluate.batch_size: the micro-batch of every forward pass

    @classmethod
    def from_config(cls, cfg: dict) -> "ZslOptions":
        z = cfg["zsl"]
        return cls(z["gradient_view"], z["coordinate_max_params"], z["coordinate_tokens"], cfg["evaluate"]["batch_size"])

    @classmethod
    def from_json(cls, text: str) -> "ZslOptions":
        d = _json_object(text)
        batch = d.pop("batch_size", None)
        return cls.from_config(validate_schema({"zsl": d, "evaluate": {} if batch is None else {"batch_size": batch}}))


@dataclass(frozen=True)
class FitOptions(StageOptions):
    SECTION: ClassVar[str] = "fit"
    smoothing: str
    subsample: str
    transient_steps: float
    axis: str
    x_per_step: float | None
    input_smoothed: str
    on_duplicate: str
    bootstrap: int
    alpha: float
    seed: int

    def __post_init__(self):
        # a bootstrap p-value is at least 1 / (1 + draws): fewer draws could never reach p < alpha
        need = math.floor(1 / self.alpha)
        if self.bootstrap < need:
            raise ConfigError(f"config: fit.bootstrap: {self.bootstrap} draws can never give p < alpha = {self.alpha:g} "
                              f"(the smallest p is 1 / (1 + draws)); need at least {need}")

    def at_revisions(self) -> "FitOptions":
        """For a curve of a few evaluation losses at a suite's revisions (each a mean over the whole
        evaluation set, on an uneven grid): the log moving average and log subsampling assume one
        noisy point per step and would smear such points into a false bend, so both are off."""
        return replace(self, smoothing="none", subsample="none", input_smoothed="no")


@dataclass(frozen=True)
class ReportOptions(StageOptions):
    SECTION: ClassVar[str] = "report"
    histogram_steps: list


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Schedule:
    kind: str
    warmup_steps: int
    warmup_start_factor: float
    cooldown_steps: int
    final_lr_factor: float


@dataclass(frozen=True)
class Optimizer:
    betas: tuple[float, float]
    eps: float
    weight_decay: float


def _resumable(**kw):
    """A RunSpec field that may change between a checkpoint and its resumption without changing
    the run: the losses it logs stay those of an uninterrupted run."""
    return field(metadata={"resumable": True}, **kw)


@dataclass(frozen=True)
class RunSpec:
    """Everything one training run needs; passed to `scaledyn train --spec`.

    It depends only on its own size and seed, so adding a size to a study leaves the other runs'
    specs (and hence Snakemake's params trigger) untouched."""

    name: str
    size: Size
    seed: int
    data_dir: str = _resumable()
    run_dir: str = _resumable()
    seq_len: int = field()
    steps: int = _resumable()  # unless the schedule depends on the total (checked on resume)
    batch_size: int = field()
    micro_batch_size: int | None = field()
    lr: float = field()
    schedule: Schedule = field()
    optimizer: Optimizer = field()
    grad_clip: float | None = field()
    precision: str = field()
    compile: bool = _resumable()
    threads: int | None = _resumable()
    flush_every: int = _resumable()
    checkpoint_steps: tuple[int, ...] = _resumable()
    optimizer_steps: tuple[int, ...] | None = _resumable()  # None = keep optimizer state everywhere
    data_seed: int = field()
    allow_repeat: bool = _resumable()  # data.allow_repeat: may training start a second pass over the data?

    RESUMABLE: ClassVar[frozenset] = frozenset()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        d = dict(d)
        d["size"] = Size(**d["size"])
        d["schedule"] = Schedule(**d["schedule"])
        d["optimizer"] = Optimizer(**{**d["optimizer"], "betas": tuple(d["optimizer"]["betas"])})
        d["checkpoint_steps"] = tuple(d["checkpoint_steps"])
        if d.get("optimizer_steps") is not None:
            d["optimizer_steps"] = tuple(d["optimizer_steps"])
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"--spec: not a run spec ({type(e).__name__}: {e})") from None

    def keeps_optimizer(self, step: int) -> bool:
        return self.optimizer_steps is None or step in self.optimizer_steps


RunSpec.RESUMABLE = frozenset(f.name for f in fields(RunSpec) if f.metadata.get("resumable"))


# ----------------------------------------------------------------------------- published suites


@dataclass(frozen=True)
class Suite:
    """A published checkpoint suite (one run of one size, many revisions): evaluated, never trained.
    Passed to the suite commands as JSON; `name` is the study's key for it and names the run."""

    name: str
    model: str
    revision: str
    steps: tuple[int, ...]
    tokens_per_step: int
    curve: str | None
    non_embedding_params: int | None
    seed: int
    gradient_steps: tuple[int, ...]

    @classmethod
    def from_config(cls, name: str, s: dict) -> "Suite":
        return cls(name, s["model"], s["revision"], tuple(sorted(s["steps"])), s["tokens_per_step"], s["curve"],
                   s["non_embedding_params"], s["seed"], tuple(sorted(s["gradient_steps"])))

    def revision_name(self, step: int) -> str:
        return self.revision.replace("{step}", str(step))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Suite":
        d = _json_object(text)
        name = d.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError("--suite: needs the suite's name")
        cfg = validate_schema({"model": {"sizes": []}, "suites": {name: d}})
        return cls.from_config(name, cfg["suites"][name])
