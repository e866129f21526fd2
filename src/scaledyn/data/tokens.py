"""Prepared data opened for reading: the token stream memory-mapped from its shards, the evaluation
and held-out sequences, the tokenizer. Nothing is loaded whole."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..layout import DataPaths

FORMAT = 2  # the manifest format this code writes and reads


def load_tokenizer(root: str | Path):
    from transformers import AutoTokenizer

    path = DataPaths(root).tokenizer
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise DataError(f"tokenizer {path}: cannot be loaded ({e}); run the tokenizer stage of prepare-data first") from None


@dataclass
class Stream:
    """The token stream as shards with offsets; reads any run of tokens without loading a shard."""

    root: Path
    shards: list[dict]
    dtype: str

    def __post_init__(self):
        self.offsets = np.cumsum([0] + [s["tokens"] for s in self.shards])
        self._maps: dict[int, np.ndarray] = {}

    def _map(self, j: int) -> np.ndarray:
        if j not in self._maps:
            path = self.root / self.shards[j]["file"]
            try:
                self._maps[j] = np.memmap(path, dtype=self.dtype, mode="r")
            except (OSError, ValueError) as e:
                raise DataError(f"data shard {path}: cannot be opened ({e})") from None
            if len(self._maps[j]) != self.shards[j]["tokens"]:
                raise DataError(f"data shard {path}: {len(self._maps[j])} tokens, the manifest says {self.shards[j]['tokens']}")
        return self._maps[j]

    def tokens(self, start: int, n: int) -> np.ndarray:
        out, j = [], int(np.searchsorted(self.offsets, start, side="right")) - 1
        while n > 0:
            lo = start - self.offsets[j]
            take = min(n, self.shards[j]["tokens"] - lo)
            out.append(self._map(j)[lo : lo + take])
            start, n, j = start + take, n - take, j + 1
        return np.concatenate(out) if len(out) > 1 else np.asarray(out[0])

    def sequences(self, ids: np.ndarray, seq_len: int) -> np.ndarray:
        return np.stack([self.tokens(int(i) * seq_len, seq_len) for i in ids]) if len(ids) else np.empty((0, seq_len))


class TokenData:
    """Prepared data opened for reading; shards are memory-mapped, never loaded whole."""

    def __init__(self, root: Path, manifest: dict):
        self.root, self.manifest = root, manifest
        self.stream = Stream(root, manifest["shards"], manifest["dtype"])
        excluded = np.load(DataPaths(root).excluded)
        self._skip = excluded - np.arange(len(excluded))  # training index i -> stream sequence i + #(skip <= i)

    @classmethod
    def open(cls, root: str | Path) -> "TokenData":
        root = Path(root)
        mpath = DataPaths(root).manifest
        try:
            manifest = json.loads(mpath.read_text())
        except FileNotFoundError:
            raise DataError(f"data manifest {mpath} is missing: run `scaledyn prepare-data` first") from None
        except json.JSONDecodeError as e:
            raise DataError(f"data manifest {mpath}: not valid JSON ({e.msg})") from None
        if manifest.get("format") != FORMAT:
            raise DataError(f"data manifest {mpath}: format {manifest.get('format')}, this scaledyn reads format {FORMAT}; "
                            "prepare the data again")
        try:
            return cls(root, manifest)
        except (OSError, ValueError) as e:
            raise DataError(f"data {root}: the index is unreadable ({e}); prepare the data again") from None

    def split(self, name: str) -> np.ndarray:
        """The evaluation or held-out sequences, (n, seq_len)."""
        info = self.manifest["splits"][name]
        path = self.root / info["file"]
        try:
            arr = np.load(path, mmap_mode="r")
        except (FileNotFoundError, ValueError, OSError) as e:
            raise DataError(f"data file {path}: cannot be opened ({e})") from None
        if arr.shape != (info["sequences"], self.seq_len):
            raise DataError(f"data file {path}: shape {arr.shape} does not match the manifest")
        return arr

    @property
    def train_sequences(self) -> int:
        return self.manifest["splits"]["train"]["sequences"]

    def train_batch(self, rows: np.ndarray) -> np.ndarray:
        """Training sequences by training index (0 .. train_sequences - 1), (len(rows), seq_len)."""
        ids = rows + np.searchsorted(self._skip, rows, side="right")
        return self.stream.sequences(ids, self.seq_len)

    def example_ids(self, name: str) -> np.ndarray:
        info = self.manifest["splits"][name]
        return np.arange(info["example_id_start"], info["example_id_stop"], dtype=np.int64)

    def heldout_batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Held-out batch k (its token rows and example ids): never seen by training."""
        b = self.manifest["heldout_batch_size"]
        rows = slice(k * b, (k + 1) * b)
        return np.asarray(self.split("heldout")[rows]), self.example_ids("heldout")[rows]

    @property
    def seq_len(self) -> int:
        return self.manifest["seq_len"]

    @property
    def model_vocab_size(self) -> int:
        return self.manifest["model_vocab_size"]

    def check_for_model(self, vocab_size: int, context: int, seq_len: int) -> None:
        """Fail before training when the data cannot feed this model."""
        mpath = DataPaths(self.root).manifest
        if self.manifest["max_token_id"] >= vocab_size:
            raise DataError(f"data manifest {mpath}: max_token_id {self.manifest['max_token_id']} does not fit the model's "
                            f"vocabulary of {vocab_size}")
        if self.seq_len != seq_len:
            raise DataError(f"data manifest {mpath}: seq_len {self.seq_len} differs from the run's seq_len {seq_len}")
        if self.seq_len > context:
            raise DataError(f"data manifest {mpath}: seq_len {self.seq_len} is beyond the model's context {context}")
