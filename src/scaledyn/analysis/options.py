"""Options of the analyses: evaluation, the one-step analysis, and a published suite's record."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import ClassVar

from ..errors import ConfigError
from ..options import StageOptions, json_object
from ..schema import validate_schema


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

    BORROWED: ClassVar[dict] = {"batch_size": ("evaluate", "batch_size")}


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
    dt1_steps: tuple[int, ...]  # revisions replayed one real step from their optimizer state
    format: str  # auto | hf | olmo-unsharded
    size: str  # what seeds of one size share (the name when not given)

    @classmethod
    def from_config(cls, name: str, s: dict) -> "Suite":
        return cls(name, s["model"], s["revision"], tuple(sorted(s["steps"])), s["tokens_per_step"], s["curve"],
                   s["non_embedding_params"], s["seed"], tuple(sorted(s["gradient_steps"])), tuple(sorted(s["dt1_steps"])),
                   s["format"], s["size"] or name)

    def revision_name(self, step: int) -> str:
        return self.revision.replace("{step}", str(step))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Suite":
        d = json_object(text)
        name = d.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError("--suite: needs the suite's name")
        cfg = validate_schema({"model": {"sizes": []}, "suites": {name: d}})
        return cls.from_config(name, cfg["suites"][name])
