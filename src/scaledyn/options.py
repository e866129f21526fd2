"""Typed options for every stage, built once from the validated study config: the base class here,
each stage's class in its room (`data.options`, `stats.options`, `analysis.options`, `train.spec`),
the report's here.

Defaults live only in the schema: these classes have none of their own. `defaults()` builds an
object from the schema's defaults (what the CLI shows and starts from), `from_json()` re-validates
what a rule passes, so a hand-written `--options` is checked exactly as a config file is.
Each workflow rule passes its stage's object as JSON (`--options`), and nothing else of the
config, so editing one stage's options re-runs that stage and what depends on it, nothing more.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from .errors import ConfigError
from .schema import defaults as schema_defaults
from .schema import validate_schema


def json_object(text: str) -> dict:
    try:
        section = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--options: not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(section, dict):
        raise ConfigError("--options: expected a JSON object")
    return section


class StageOptions:
    """A stage's options: the fields of one schema section, plus any `BORROWED` from another section
    (the one-step analysis' micro-batch is evaluate.batch_size), each declared once, in the schema."""

    SECTION: ClassVar[str]
    BORROWED: ClassVar[dict[str, tuple[str, str]]] = {}  # field -> (section, key) it comes from

    @classmethod
    def schema_key(cls, name: str) -> tuple[str, str]:
        """The schema section and key that declare field `name`."""
        return cls.BORROWED.get(name, (cls.SECTION, name))

    @classmethod
    def from_config(cls, cfg: dict):
        """From a validated config (every default filled in)."""
        return cls(**{f.name: cfg[section][key] for f in fields(cls) for section, key in [cls.schema_key(f.name)]})

    @classmethod
    def defaults(cls):
        return cls.from_config(schema_defaults())

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        raw: dict = {cls.SECTION: {}}
        for name, value in json_object(text).items():
            section, key = cls.schema_key(name)
            raw.setdefault(section, {})[key] = value
        return cls.from_config(validate_schema(raw))


@dataclass(frozen=True)
class ReportOptions(StageOptions):
    SECTION: ClassVar[str] = "report"
    histogram_steps: list


@dataclass(frozen=True)
class SlurmOptions(StageOptions):
    """What the SLURM profile asks for; the rules read these, never the raw config."""

    SECTION: ClassVar[str] = "slurm"
    partition: str | None
    gpu_partition: str | None
    account: str | None
    gpus: dict
    default_gpus: int
    eval_gpus: int
    nodes: dict
    train_runtime_min: int
    train_mem_mb: int

    def resources(self, gpu: bool = False) -> dict:
        """slurm_partition / slurm_account resources of a job (only those set)."""
        res = {"slurm_partition": (self.gpu_partition or self.partition) if gpu else self.partition,
               "slurm_account": self.account}
        return {k: v for k, v in res.items() if v}

    def train_gpus(self, size: str) -> int:
        return self.gpus.get(size, self.default_gpus)

    def train_nodes(self, size: str) -> int:
        return self.nodes.get(size, 1)

