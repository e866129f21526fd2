"""The data stage's options (config section `data`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..options import StageOptions


@dataclass(frozen=True)
class DataOptions(StageOptions):
    SECTION: ClassVar[str] = "data"
    source: str
    packages: list
    wheels: list
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

    BORROWED: ClassVar[dict] = {"heldout_batch_size": ("train", "batch_size")}
