"""Corpus preparation: documents -> tokenizer -> fixed-length sequences on disk.

The corpus is cut into sequences of `seq_len` tokens once. A seeded permutation then picks the
evaluation set and the held-out training batches; every other sequence is training data. The three
are stored as `.npy` arrays (memory-mapped on read) and identified by a global `example_id`:
eval = [0, N), held-out = [N, N + K*B), train = the rest, in that order.
"""

from __future__ import annotations

import glob
import json
import platform
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import atomic
from .errors import DataError
from .hashing import sha256
from .layout import DataPaths
from .options import DataOptions

EOS = "<|endoftext|>"
SPLITS = ("train", "eval", "heldout")


# ----------------------------------------------------------------------------- documents


def stdlib_files() -> list[Path]:
    """The running Python's own standard-library sources, without tests and site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"corpus file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"corpus file {path}: cannot be read ({e.strerror})") from None
    return text


def _expand(patterns: list[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern, recursive=True))
        if not matched:
            raise DataError(f"config: data.files.paths: {pattern!r} matches no file")
        paths.extend(Path(m) for m in matched if Path(m).is_file())
    return paths


def _file_documents(path: Path, fmt: str, field: str) -> list[str]:
    if path.stat().st_size == 0:
        raise DataError(f"corpus file {path}: is empty")
    if fmt == "text":
        return [_read_text(path)]
    if fmt == "jsonl":
        docs = []
        for i, line in enumerate(_read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"corpus file {path}, line {i}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or field not in row:
                raise DataError(f"corpus file {path}, line {i}: no field {field!r} (set data.files.field)")
            docs.append(str(row[field]))
        return docs
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"corpus file {path}: not a readable Parquet file ({e})") from None
    if field not in table.column_names:
        raise DataError(f"corpus file {path}: no column {field!r}; columns are {table.column_names} (set data.files.field)")
    return [str(x) for x in table.column(field).to_pylist() if x is not None]


def _hf_documents(hf: dict, limit: int | None) -> list[str]:
    import datasets

    name = hf["name"]
    if Path(name).is_dir():
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[hf["split"]]
    else:
        ds = datasets.load_dataset(name, hf["config"], split=hf["split"], streaming=hf["streaming"])
    docs = []
    for i, row in enumerate(ds):
        if limit is not None and i >= limit:
            break
        if hf["field"] not in row:
            raise DataError(f"dataset {name}: no field {hf['field']!r} (set data.hf.field); fields: {sorted(row)}")
        docs.append(str(row[hf["field"]]))
    return docs


def load_documents(data: DataOptions) -> tuple[list[str], dict]:
    """Return the documents and a provenance record for the manifest."""
    src, limit = data.source, data.max_documents
    if src == "stdlib":
        files = stdlib_files()[:limit] if limit else stdlib_files()
        listing = "\n".join(str(p.relative_to(sysconfig.get_paths()["stdlib"])) for p in files)
        docs = [_read_text(p) for p in tqdm(files, desc="read stdlib", unit="file", leave=False)]
        prov = {
            "source": "stdlib",
            "python_version": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "n_files": len(files),
            "file_list_sha256": sha256(listing.encode()),
        }
    elif src == "files":
        f = data.files
        paths = _expand(f["paths"])
        if not paths:
            raise DataError("config: data.files.paths: no regular files matched")
        docs = []
        for p in tqdm(paths, desc="read files", unit="file", leave=False):
            docs.extend(_file_documents(p, f["format"], f["field"]))
        docs = docs[:limit] if limit else docs
        prov = {"source": "files", "format": f["format"], "field": f["field"], "files": [str(p) for p in paths]}
    else:
        docs = _hf_documents(data.hf, limit)
        prov = {"source": "hf", **data.hf}
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"corpus ({src}): no non-empty documents")
    prov["n_documents"] = len(docs)
    return docs, prov


# ----------------------------------------------------------------------------- tokenizer


def train_bpe(docs: list[str], vocab_size: int):
    """Byte-level BPE as GPT-2/NeoX use, trained on the corpus itself, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def load_tokenizer(spec: dict, docs: list[str]):
    if spec["kind"] == "bpe":
        return train_bpe(docs, spec["vocab_size"])
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(spec["name"])
    except OSError as e:
        raise DataError(f"config: data.tokenizer.name: cannot load tokenizer {spec['name']!r}: {e}") from None


def model_vocab_size(tokenizer_vocab: int) -> int:
    """Embedding rows: the tokenizer's vocabulary rounded up to a multiple of 128 (50277 -> 50304)."""
    return -(-tokenizer_vocab // 128) * 128 if tokenizer_vocab > 4096 else tokenizer_vocab


def tokenize(docs: list[str], tokenizer, max_tokens: int | None) -> np.ndarray:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("tokenizer has no end-of-text token to separate documents")
    dtype = np.uint16 if len(tokenizer) <= 2**16 else np.uint32
    parts, total, batch = [], 0, 256
    with tqdm(total=len(docs), desc="tokenize", unit="doc", leave=False) as bar:
        for i in range(0, len(docs), batch):
            for ids in tokenizer(docs[i : i + batch], add_special_tokens=False)["input_ids"]:
                parts.append(np.asarray(ids + [eos], dtype=dtype))
                total += len(ids) + 1
            bar.update(min(batch, len(docs) - i))
            if max_tokens is not None and total >= max_tokens:
                break
    tokens = np.concatenate(parts)
    return tokens[:max_tokens] if max_tokens is not None else tokens


# ----------------------------------------------------------------------------- prepare / load


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)


def prepare(data: DataOptions, out_dir: str | Path) -> dict:
    """Build the token data for a study's `data` options; returns the manifest."""
    out = DataPaths(out_dir)
    docs, prov = load_documents(data)
    tokenizer = load_tokenizer(data.tokenizer, docs)
    tokens = tokenize(docs, tokenizer, data.max_tokens)

    seq, batch_size = data.seq_len, data.heldout_batch_size
    n_seq = len(tokens) // seq
    n_eval, n_held = data.eval_sequences, data.heldout_batches * batch_size
    if n_seq < n_eval + n_held + 1:
        raise DataError(
            f"config: data.eval_sequences: the corpus holds {n_seq} sequences of {seq} tokens, too few for "
            f"{n_eval} evaluation sequences + {n_held} held-out sequences + training data"
        )
    chunks = tokens[: n_seq * seq].reshape(n_seq, seq)
    order = np.random.default_rng(data.seed).permutation(n_seq)
    pick = {"eval": order[:n_eval], "heldout": order[n_eval : n_eval + n_held], "train": np.sort(order[n_eval + n_held :])}
    pick["eval"].sort()
    pick["heldout"].sort()

    arrays = {name: chunks[idx] for name, idx in pick.items()}
    offsets = {"eval": 0, "heldout": n_eval, "train": n_eval + n_held}
    with atomic.atomic_dir(out.tokenizer) as tmp:
        tokenizer.save_pretrained(tmp)
    for name, arr in arrays.items():
        _save_npy(out.split(name), arr)

    vocab = len(tokenizer)
    manifest = {
        "format": 1,
        "corpus": prov,
        "tokenizer": {**data.tokenizer, "path": "tokenizer", "vocab_size": vocab, "eos_token_id": tokenizer.eos_token_id},
        "model_vocab_size": model_vocab_size(vocab),
        "dtype": str(chunks.dtype),
        "seq_len": seq,
        "seed": data.seed,
        "n_tokens": int(len(tokens)),
        "n_tokens_dropped": int(len(tokens) - n_seq * seq),
        "max_token_id": int(tokens.max()),
        "heldout_batch_size": batch_size,
        "heldout_batches": data.heldout_batches,
        "splits": {
            name: {
                "file": out.split(name).name,
                "sequences": int(len(arr)),
                "example_id_start": offsets[name],
                "example_id_stop": offsets[name] + int(len(arr)),
                "sha256": sha256(arr),
            }
            for name, arr in arrays.items()
        },
        "created_with": {"python": sys.version.split()[0], "scaledyn": __import__("scaledyn").__version__},
    }
    atomic.write_json(out.manifest, manifest)
    return manifest


@dataclass
class TokenData:
    """Prepared data opened for reading; arrays are memory-mapped, never loaded whole."""

    root: Path
    manifest: dict

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
        return cls(root, manifest)

    def split(self, name: str) -> np.ndarray:
        info = self.manifest["splits"][name]
        path = self.root / info["file"]
        try:
            arr = np.load(path, mmap_mode="r")
        except (FileNotFoundError, ValueError, OSError) as e:
            raise DataError(f"data file {path}: cannot be opened ({e})") from None
        if arr.shape != (info["sequences"], self.manifest["seq_len"]):
            raise DataError(f"data file {path}: shape {arr.shape} does not match the manifest")
        return arr

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
            raise DataError(
                f"data manifest {mpath}: max_token_id {self.manifest['max_token_id']} does not fit the model's "
                f"vocabulary of {vocab_size}"
            )
        if self.seq_len != seq_len:
            raise DataError(f"data manifest {mpath}: seq_len {self.seq_len} differs from the run's seq_len {seq_len}")
        if self.seq_len > context:
            raise DataError(f"data manifest {mpath}: seq_len {self.seq_len} is beyond the model's context {context}")
