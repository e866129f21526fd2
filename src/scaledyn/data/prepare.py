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

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import atomic
from ..errors import DataError
from ..hashing import sha256
from ..layout import DataPaths
from .options import DataOptions
from .sources import Source
from .tokens import FORMAT, Stream, load_tokenizer

EOS = "<|endoftext|>"
ENCODE_BATCH = 256  # documents per tokenizer call


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
