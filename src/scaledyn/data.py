"""Corpus preparation that streams: memory is bounded by one shard and the tokenizer, never by
the corpus, and the work is a set of jobs that run side by side.

    tokenizer   byte-level BPE trained on a seeded sample of documents (or a pretrained one, saved)
    slice k     the k-th contiguous slice of the source (a range of files, or of a dataset's
                shards), tokenized in order into fixed-size shards of `shard_tokens` token ids
    index       the global index: every shard's offset in the token stream; the evaluation and
                held-out sequences, drawn at random from the whole stream and excluded from
                training; the manifest

The token stream is the documents in source order, each followed by the end-of-text token, cut
at `max_tokens` if set, then into sequences of `seq_len`. It does not depend on how many slices
prepared it or on the shard size, so neither changes a single token. Example ids are fixed here:
eval = [0, N), held-out = [N, N + K*B), train = the remaining stream sequences in order.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import sysconfig
from collections.abc import Iterator
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
FORMAT = 2
ENCODE_BATCH = 256  # documents per tokenizer call


# ----------------------------------------------------------------------------- the source


def stdlib_files() -> list[Path]:
    """The running Python's own standard-library sources and test suite, UTF-8 files only (about
    31 MB, 10M tokens at a 2,048-token BPE: enough for the default study's single pass), without
    site-packages, which differ from machine to machine."""
    return _python_files(Path(sysconfig.get_paths()["stdlib"]), skip={"site-packages", "dist-packages"})


def package_dir(name: str, i: int = 0) -> Path:
    """Where an installed package's modules are, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"config: data.packages[{i}]: {name!r} is not an installed package (a directory of modules) "
                        "in this Python environment")
    return Path(list(spec.submodule_search_locations)[0])


def package_files(names: list[str]) -> list[Path]:
    """The Python sources of installed packages, package by package in the order named: tens of
    millions of tokens offline (transformers, torch, pandas and sympy: about 50M at BPE 2,048),
    for runs that need one pass over more text than the standard library holds."""
    return [p for i, name in enumerate(names) for p in _python_files(package_dir(name, i))]


def _python_files(root: Path, skip=frozenset()) -> list[Path]:
    files = []
    for d, dirs, names in os.walk(root):  # pruned, unlike rglob, which would walk all of site-packages
        dirs[:] = [x for x in dirs if x not in skip and x != "__pycache__"]
        files += [Path(d, n) for n in names if n.endswith(".py")]
    return sorted(p for p in files if _is_utf8(p))


def _is_utf8(path: Path) -> bool:
    """The test suite holds a few files in other encodings on purpose; they are left out."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _expand(patterns: list[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern, recursive=True))
        if not matched:
            raise DataError(f"config: data.files.paths: {pattern!r} matches no file")
        paths.extend(Path(m) for m in matched if Path(m).is_file())
    if not paths:
        raise DataError("config: data.files.paths: no regular files matched")
    return paths


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"corpus file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"corpus file {path}: cannot be read ({e.strerror})") from None


def _file_documents(path: Path, fmt: str, field: str):
    """Documents of one corpus file, in order; empty ones are yielded too (as "") to be counted."""
    if fmt == "text":
        yield _read_text(path)
        return
    if fmt == "jsonl":
        with open(path, "rb") as f:
            for i, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"corpus file {path}, line {i}: not UTF-8 text ({e.reason})") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"corpus file {path}, line {i}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict) or field not in row:
                    raise DataError(f"corpus file {path}, line {i}: no field {field!r} (set data.files.field)")
                yield "" if row[field] is None else str(row[field])
        return
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"corpus file {path}: not a readable Parquet file ({e})") from None
    if field not in pf.schema_arrow.names:
        raise DataError(f"corpus file {path}: no column {field!r}; columns are {pf.schema_arrow.names} (set data.files.field)")
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        yield from ("" if x is None else str(x) for x in batch.column(0).to_pylist())


class Source:
    """The documents of a study's corpus, in a fixed order, cut into contiguous slices."""

    def __init__(self, data: DataOptions):
        self.data = data
        self.kind = data.source

    def _files(self) -> list[Path]:
        if self.kind in ("stdlib", "packages"):
            files = stdlib_files() if self.kind == "stdlib" else package_files(self.data.packages)
        else:
            files = _expand(self.data.files["paths"])
        one_doc_per_file = self._python_sources() or self.data.files["format"] == "text"
        return files[: self.data.max_documents] if self.data.max_documents and one_doc_per_file else files

    def slices(self) -> int:
        """A cap on documents that are not one per file can only be applied in one pass."""
        if self.data.max_documents and not self._doc_per_unit():
            return 1
        return self.data.slices

    def _doc_per_unit(self) -> bool:
        return self._python_sources() or (self.kind == "files" and self.data.files["format"] == "text") or (
            self.kind == "hf" and not self.data.hf["streaming"])

    def _python_sources(self) -> bool:
        return self.kind in ("stdlib", "packages")

    def documents(self, k: int):
        """The documents of slice k (of `slices()`), in order."""
        n = self.slices()
        if self.kind == "hf":
            yield from self._hf_documents(k, n)
            return
        files = self._files()
        bounds = np.linspace(0, len(files), n + 1).round().astype(int)
        fmt, field = ("text", "text") if self._python_sources() else (self.data.files["format"], self.data.files["field"])
        count = 0
        for path in files[bounds[k] : bounds[k + 1]]:
            for doc in _file_documents(path, fmt, field):
                if self.data.max_documents and count >= self.data.max_documents:
                    return
                count += 1
                yield doc

    def _hf_documents(self, k: int, n: int):
        import datasets

        hf = self.data.hf
        name = hf["name"]
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[hf["split"]]
        else:
            ds = datasets.load_dataset(name, hf["config"], split=hf["split"], streaming=hf["streaming"])
        if isinstance(ds, datasets.Dataset):
            if self.data.max_documents:
                ds = ds.select(range(min(self.data.max_documents, len(ds))))
            ds = ds.shard(n, k, contiguous=True)
        elif n > 1:
            if n > ds.n_shards:
                raise DataError(f"config: data.slices: {n} slices of dataset {name}, which has only {ds.n_shards} shards")
            ds = ds.shard(n, k, contiguous=True)
        for i, row in enumerate(ds):
            if self.data.max_documents and i >= self.data.max_documents:
                return
            if hf["field"] not in row:
                raise DataError(f"dataset {name}: no field {hf['field']!r} (set data.hf.field); fields: {sorted(row)}")
            yield "" if row[hf["field"]] is None else str(row[hf["field"]])

    def provenance(self) -> dict:
        if self.kind == "stdlib":
            root = sysconfig.get_paths()["stdlib"]
            listing = "\n".join(str(p.relative_to(root)) for p in self._files())
            return {"source": "stdlib", "python_version": platform.python_version(),
                    "python_implementation": platform.python_implementation(), "n_files": len(self._files()),
                    "file_list_sha256": sha256(listing.encode())}
        if self.kind == "packages":
            dists = importlib.metadata.packages_distributions()
            versions = {}
            for name in self.data.packages:
                dist = dists.get(name, [name])[0]
                try:
                    versions[name] = f"{dist} {importlib.metadata.version(dist)}"
                except importlib.metadata.PackageNotFoundError:
                    versions[name] = "version unknown"
            roots = [package_dir(name, i) for i, name in enumerate(self.data.packages)]
            files = self._files()
            listing = "\n".join(str(p.relative_to(next(r.parent for r in roots if p.is_relative_to(r)))) for p in files)
            return {"source": "packages", "packages": versions, "python_version": platform.python_version(),
                    "n_files": len(files), "file_list_sha256": sha256(listing.encode())}
        if self.kind == "files":
            f = self.data.files
            return {"source": "files", "format": f["format"], "field": f["field"], "files": [str(p) for p in self._files()]}
        return {"source": "hf", **self.data.hf}


# ----------------------------------------------------------------------------- tokenizer


def train_bpe(docs: Iterator[str], vocab_size: int):
    """Byte-level BPE as GPT-2/NeoX use, as a transformers tokenizer. The trainer keeps word counts,
    not documents, so a streamed sample costs memory by its distinct words, not its length."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def _nonempty_documents(source: Source) -> Iterator[str]:
    return (doc for s in range(source.slices()) for doc in source.documents(s) if doc.strip())


def sample_documents(source: Source, k: int, seed: int) -> Iterator[str]:
    """A seeded sample of k non-empty documents, in stream order, streamed in two passes (count,
    then pick): memory holds one document at a time however long the corpus or the sample; the
    whole corpus when it holds no more than k documents."""
    n = sum(1 for _ in _nonempty_documents(source))
    if n == 0:
        raise DataError(f"corpus ({source.kind}): no non-empty documents")
    picked = set(np.random.default_rng([seed, 1]).choice(n, size=min(k, n), replace=False).tolist())
    return (doc for i, doc in enumerate(_nonempty_documents(source)) if i in picked)


def prepare_tokenizer(data: DataOptions, out: str | Path) -> None:
    paths, tok = DataPaths(out), data.tokenizer
    if tok["kind"] == "bpe":
        tokenizer = train_bpe(sample_documents(Source(data), tok["sample_documents"], data.seed), tok["vocab_size"])
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(tok["name"])
        except OSError as e:
            raise DataError(f"config: data.tokenizer.name: cannot load tokenizer {tok['name']!r}: {e}") from None
    if tokenizer.eos_token_id is None:
        raise DataError("tokenizer has no end-of-text token to separate documents")
    with atomic.atomic_dir(paths.tokenizer) as tmp:
        tokenizer.save_pretrained(tmp)


def load_tokenizer(root: str | Path):
    from transformers import AutoTokenizer

    path = DataPaths(root).tokenizer
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise DataError(f"tokenizer {path}: cannot be loaded ({e}); run the tokenizer stage of prepare-data first") from None


def token_dtype(vocab: int):
    return np.uint16 if vocab <= 2**16 else np.uint32


def model_vocab_size(tokenizer_vocab: int) -> int:
    """Embedding rows: the tokenizer's vocabulary rounded up to a multiple of 128 (50277 -> 50304)."""
    return -(-tokenizer_vocab // 128) * 128 if tokenizer_vocab > 4096 else tokenizer_vocab


# ----------------------------------------------------------------------------- slices


class ShardWriter:
    """Token ids into fixed-size shard files, each written atomically with a cursor beside it (the
    document and token where the next shard starts), so that a killed job resumes at a shard
    boundary and never leaves half a shard."""

    def __init__(self, paths: DataPaths, k: int, size: int, dtype):
        self.paths, self.k, self.size, self.dtype = paths, k, size, dtype
        self.buf, self.n, self.shards = np.empty(size, dtype), 0, []

    def resume(self) -> tuple[int, int]:
        """Complete shards already on disk (their records), and the cursor to continue from."""
        cursor = (0, 0)
        while (rec := self._record(len(self.shards))).exists():
            info = json.loads(rec.read_text())
            self.shards.append(info["shard"])
            cursor = (info["next_document"], info["next_offset"])
        atomic.remove_stale(self.paths.shard(self.k, 0).parent, ".shard_")
        return cursor

    def _record(self, j: int) -> Path:
        return self.paths.shard(self.k, j).with_suffix(".json")

    def add(self, ids: np.ndarray, doc: int) -> None:
        """Append one document's ids (ending with EOS); `doc` is its index within the slice."""
        done = 0
        while done < len(ids):
            take = min(len(ids) - done, self.size - self.n)
            self.buf[self.n : self.n + take] = ids[done : done + take]
            self.n, done = self.n + take, done + take
            if self.n == self.size:
                self.flush(doc if done < len(ids) else doc + 1, done if done < len(ids) else 0)

    def flush(self, next_document: int, next_offset: int) -> None:
        if not self.n:
            return
        j, data = len(self.shards), self.buf[: self.n]
        path = self.paths.shard(self.k, j)
        with atomic.atomic_path(path) as tmp:
            data.tofile(tmp)
        shard = {"file": path.relative_to(self.paths.dir).as_posix(), "tokens": int(self.n), "sha256": sha256(data),
                 "max_token_id": int(data.max())}
        atomic.write_json(self._record(j), {"shard": shard, "next_document": next_document, "next_offset": next_offset})
        self.shards.append(shard)
        self.n = 0


def prepare_slice(data: DataOptions, out: str | Path, k: int) -> dict:
    """Tokenize slice k into shards; resumes from its last complete shard. Returns its record."""
    paths, source = DataPaths(out), Source(data)
    if not 0 <= k < source.slices():
        raise DataError(f"slice {k} does not exist: the source has {source.slices()} slices (data.slices)")
    tokenizer = load_tokenizer(out)
    backend, eos = tokenizer.backend_tokenizer, tokenizer.eos_token_id
    writer = ShardWriter(paths, k, data.shard_tokens, token_dtype(len(tokenizer)))
    start_doc, start_offset = writer.resume()
    counts = {"documents": 0, "empty_documents": 0}
    batch: list[tuple[int, str]] = []

    def encode(items):
        for (i, _), enc in zip(items, backend.encode_batch_fast([d for _, d in items], add_special_tokens=False)):
            tokens = enc.ids
            ids = np.empty(len(tokens) + 1, dtype=writer.dtype)
            ids[:-1], ids[-1] = tokens, eos
            writer.add(ids[start_offset:] if i == start_doc else ids, i)

    for i, doc in enumerate(tqdm(source.documents(k), desc=f"slice {k}", unit="doc", leave=False, mininterval=2)):
        counts["documents"] += 1
        if not doc.strip():
            counts["empty_documents"] += 1
            continue
        if i < start_doc:
            continue
        batch.append((i, doc))
        if len(batch) == ENCODE_BATCH:
            encode(batch)
            batch = []
    encode(batch)
    writer.flush(counts["documents"], 0)
    record = {"slice": k, "slices": source.slices(), "shards": writer.shards, **counts,
              "tokens": sum(s["tokens"] for s in writer.shards)}
    atomic.write_json(paths.slice_record(k), record)
    return record


# ----------------------------------------------------------------------------- index


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


def prepare_index(data: DataOptions, out: str | Path) -> dict:
    """The manifest, the evaluation and held-out arrays, and the sequences excluded from training."""
    paths, source = DataPaths(out), Source(data)
    records = []
    for k in range(source.slices()):
        try:
            records.append(json.loads(paths.slice_record(k).read_text()))
        except FileNotFoundError:
            raise DataError(f"{paths.slice_record(k)}: slice {k} is not prepared yet") from None
    tokenizer = load_tokenizer(out)
    dtype = np.dtype(token_dtype(len(tokenizer))).name
    stream = Stream(paths.dir, [s for r in records for s in r["shards"]], dtype)
    total = int(stream.offsets[-1])
    used = min(total, data.max_tokens) if data.max_tokens else total
    seq = data.seq_len
    n_seq, n_eval, n_held = used // seq, data.eval_sequences, data.heldout_batches * data.heldout_batch_size
    if n_seq < n_eval + n_held + 1:
        raise DataError(f"config: data.eval_sequences: the corpus holds {n_seq:,} sequences of {seq} tokens, too few for "
                        f"{n_eval} evaluation sequences + {n_held} held-out sequences + training data")
    chosen = np.random.default_rng(data.seed).choice(n_seq, n_eval + n_held, replace=False)
    eval_ids, held_ids = np.sort(chosen[:n_eval]), np.sort(chosen[n_eval:])
    arrays = {"eval": stream.sequences(eval_ids, seq), "heldout": stream.sequences(held_ids, seq)}
    for name, arr in arrays.items():
        with atomic.atomic_path(paths.split(name)) as tmp, open(tmp, "wb") as f:
            np.save(f, arr)
    with atomic.atomic_path(paths.excluded) as tmp, open(tmp, "wb") as f:
        np.save(f, np.sort(chosen).astype(np.int64))
    manifest = _manifest(data, source, records, stream, tokenizer, used, n_seq, arrays)
    atomic.write_json(paths.manifest, manifest)
    return manifest


def _manifest(data, source, records, stream, tokenizer, used, n_seq, arrays) -> dict:
    seq, n_eval, n_held = data.seq_len, len(arrays["eval"]), len(arrays["heldout"])
    n_train = n_seq - n_eval - n_held
    vocab = len(tokenizer)
    shards = [{**s, "offset": int(o)} for s, o in zip(stream.shards, stream.offsets)]
    split = lambda name, start, n, digest: {"sequences": n, "example_id_start": start,  # noqa: E731
                                            "example_id_stop": start + n, "sha256": digest}
    return {
        "format": FORMAT,
        "corpus": {**source.provenance(), "slices": len(records), "documents": sum(r["documents"] for r in records),
                   "empty_documents": sum(r["empty_documents"] for r in records)},
        "tokenizer": {**data.tokenizer, "path": "tokenizer", "vocab_size": vocab, "eos_token_id": tokenizer.eos_token_id},
        "model_vocab_size": model_vocab_size(vocab),
        "dtype": stream.dtype,
        "seq_len": seq,
        "seed": data.seed,
        "shards": shards,
        "n_tokens": int(stream.offsets[-1]),
        "n_tokens_used": int(used),
        "n_tokens_dropped": int(stream.offsets[-1] - n_seq * seq),
        "max_token_id": max((s["max_token_id"] for s in shards), default=0),
        "heldout_batch_size": data.heldout_batch_size,
        "heldout_batches": data.heldout_batches,
        "splits": {"eval": {**split("eval", 0, n_eval, sha256(arrays["eval"])), "file": "eval.npy"},
                   "heldout": {**split("heldout", n_eval, n_held, sha256(arrays["heldout"])), "file": "heldout.npy"},
                   # the train split's hash names the exact shard files (each hashed when written)
                   "train": split("train", n_eval + n_held, n_train, sha256([s["sha256"] for s in shards]))},
        "created_with": {"python": sys.version.split()[0], "scaledyn": __import__("scaledyn").__version__},
    }


def prepare(data: DataOptions, out: str | Path) -> dict:
    """Every stage in this process, in order (what `prepare-data` without --stage does)."""
    prepare_tokenizer(data, out)
    for k in range(Source(data).slices()):
        prepare_slice(data, out, k)
    return prepare_index(data, out)


# ----------------------------------------------------------------------------- reading


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
