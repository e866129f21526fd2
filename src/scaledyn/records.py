"""`run.json`: the record of one trained run or published suite, written once when the run is
complete and read by the run table, the trends and the report.

One definition for its writers (training, `suite-meta`) and its readers, so a field is named in one
place. Fields that do not apply to a record (a suite's `model`, a trained run's `processes`) are
left out of the JSON rather than written as null; unknown keys of older files are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from . import atomic
from .errors import DataError


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    run: str  # the run's name: <size>_s<seed>[_<intervention>] for trained runs, the suite's key for suites
    size: str
    seed: int
    total_params: int  # trainable parameters, a tied embedding counted once
    non_embedding_params: int  # N of the trends: outside the input and output embeddings
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    steps: int  # the last step (a suite's newest listed revision)
    tokens_per_step: int
    processes: int | None = None  # trained runs: training processes, and where each ran
    ranks: list | None = None
    precision: str | None = None  # trained runs: "bf16" or "fp32"
    kind: str | None = None  # "suite" for a published suite; absent for a trained run
    model: str | None = None  # suites: the Hub id or local folder
    curve_source: str | None = None  # suites: what the fitted curve is
    data_manifest_sha256: str
    spec: dict  # the RunSpec or Suite that made it, as JSON

    @property
    def is_suite(self) -> bool:
        return self.kind == "suite"

    @property
    def baseline_run(self) -> str:
        """The name of the baseline run of this run's size and seed, <size>_s<seed>."""
        return f"{self.size}_s{self.seed}"

    @property
    def intervention(self) -> str | None:
        """The intervention a trained run applies (its name's tail after <size>_s<seed>_); None for a
        baseline run or a suite."""
        base = f"{self.baseline_run}_"
        return None if self.is_suite or not self.run.startswith(base) else self.run[len(base):]

    def to_dict(self) -> dict:
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}

    def write(self, path) -> None:
        atomic.write_json(path, self.to_dict())

    @classmethod
    def read(cls, path) -> "RunRecord":
        try:
            d = json.loads(Path(path).read_text())
            return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
        except (OSError, ValueError, TypeError) as e:
            raise DataError(f"{path}: run record unreadable ({type(e).__name__}: {e})") from None
