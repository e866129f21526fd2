"""A training run's spec: everything one run needs, passed to `scaledyn train --spec`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

from ..errors import ConfigError
from ..schedule import Schedule
from .sizes import Size


@dataclass(frozen=True)
class Optimizer:
    """train.optimizer: which update rule (train/optim.py), and its hyperparameters. betas are
    AdamW's and Lion's; momentum is SGD's and Muon's; eps is AdamW's (and Muon's AdamW part)."""

    betas: tuple[float, float]
    eps: float
    weight_decay: float
    name: str = "adamw"
    momentum: float = 0.9


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

    def to_dict(self) -> dict:
        """As a checkpoint's and run.json's JSON hold it: fields in order, tuples as lists."""
        return json.loads(json.dumps(asdict(self)))

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
