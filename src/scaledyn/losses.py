"""The per-example loss dataset: the one Parquet writer, its schema, and the plain reader.

Layout (hive partitions, zstd; partition columns live in the directory names, not the files):

    <losses>/sequences/run=<run>/step=<step>/part-0.parquet   one row per (split, example)
    <losses>/tokens/run=<run>/step=<step>/part-0.parquet      one row per (split, example, position)
    <losses>/runs.parquet                                     one row per run
    <losses>/schema.json                                      the schema below, machine-readable

Any Parquet reader opens it: pyarrow.dataset, pandas, DuckDB (`hive_partitioning=true`), Polars.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from . import atomic
from .errors import SchemaMismatch
from .hashing import sha256
from .layout import GRANULARITIES, LossesPaths, RunPaths, partition, staging

PARTITIONING = pa.schema([("run", pa.string()), ("step", pa.int64())])

FIELDS = {
    "sequences": [
        ("size", pa.string(), "model size name"),
        ("seed", pa.int32(), "model-initialisation seed"),
        ("tokens_seen", pa.int64(), "training tokens consumed up to this checkpoint"),
        ("split", pa.string(), "'eval' (fixed evaluation set) or 'heldout' (held-out training batches)"),
        ("example_id", pa.int64(), "global sequence id, fixed at data preparation (see data manifest)"),
        ("loss", pa.float32(), "mean next-token cross-entropy over the sequence, nats"),
        ("n_tokens", pa.int32(), "number of predicted tokens in the sequence (seq_len - 1)"),
    ],
    "tokens": [
        ("split", pa.string(), "'eval' or 'heldout'"),
        ("example_id", pa.int64(), "global sequence id"),
        ("position", pa.int32(), "index of the predicted token within the sequence (1 .. seq_len - 1)"),
        ("loss", pa.float32(), "next-token cross-entropy, nats (float16 when evaluate.token_dtype is float16)"),
    ],
    "changes": [
        ("batch", pa.int32(), "held-out batch that the one optimizer step used"),
        ("split", pa.string(), "'heldout' (that batch) or 'eval'"),
        ("example_id", pa.int64(), "global sequence id"),
        ("position", pa.int32(), "index of the predicted token"),
        ("delta", pa.float32(), "loss after the step minus loss before, nats"),
        ("predicted", pa.float32(), "first-order prediction grad(loss) . dtheta (JVP); NaN where not computed"),
    ],
}
RUN_FIELDS = [
    ("run", pa.string(), "run name, <size>_s<seed>"),
    ("study", pa.string(), "study name"),
    ("size", pa.string(), "size name"),
    ("seed", pa.int32(), "initialisation seed"),
    ("total_params", pa.int64(), "trainable parameters, tied embedding counted once"),
    ("non_embedding_params", pa.int64(), "trainable parameters outside the embedding"),
    ("d_model", pa.int32(), ""),
    ("n_layers", pa.int32(), ""),
    ("n_heads", pa.int32(), ""),
    ("vocab_size", pa.int32(), "embedding rows"),
    ("steps", pa.int64(), "optimizer steps"),
    ("tokens_per_step", pa.int64(), "global batch in tokens"),
    ("config_hash", pa.string(), "sha256 (16 hex) of the run spec"),
    ("data_manifest_sha256", pa.string(), "sha256 of the data manifest"),
]


def schema(granularity: str, token_dtype: str = "float32") -> pa.Schema:
    fields = [pa.field(n, t, metadata={"description": d}) for n, t, d in FIELDS[granularity]]
    if granularity == "tokens" and token_dtype == "float16":
        fields[-1] = pa.field("loss", pa.float16(), metadata=fields[-1].metadata)
    return pa.schema(fields)


def token_index(ids: np.ndarray, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(example_id, position) columns of per-token rows: every id repeated for positions 1..n."""
    return np.repeat(ids, positions), np.tile(np.arange(1, positions + 1, dtype=np.int32), len(ids))


def _existing_schema(dataset: Path, exclude: Path) -> pa.Schema | None:
    for f in sorted(dataset.glob("run=*/step=*/part-0.parquet")):
        if f != exclude:
            return pq.read_schema(f)
    return None


def write_partition(dataset: str | Path, run: str, step: int, table: pa.Table) -> Path:
    """Atomically write the (run, step) partition of `dataset` (a granularity folder) after checking
    that it matches the dataset's schema; the schema document beside it is kept up to date."""
    dataset = Path(dataset)
    path = partition(dataset, run, step)
    existing = _existing_schema(dataset, path)
    if existing is not None and not existing.remove_metadata().equals(table.schema.remove_metadata()):
        raise SchemaMismatch(
            f"{dataset}: new rows for run={run} step={step} have schema {table.schema.remove_metadata()} "
            f"but the dataset has {existing.remove_metadata()}; write to a new dataset or convert it"
        )
    tag = f"{dataset.name}.run={run}.step={step}."
    atomic.remove_stale(staging(dataset), tag)  # left by a killed writer of this very partition
    with atomic.atomic_path(path, staging(dataset), tag) as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=["split"], write_statistics=True)
    write_schema_doc(dataset.parent)
    return path


def check_writable(dataset: str | Path) -> None:
    """Fail now, with the OS's reason, if partitions of `dataset` cannot be written (before a long
    computation, not after it)."""
    folder = staging(dataset)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(folder / "probe", folder, "probe.") as tmp:
        tmp.write_bytes(b"\0" * 65536)  # a full disk still creates empty files
    (folder / "probe").unlink()


def write_schema_doc(root) -> None:
    doc = {
        "partitioning": {"flavor": "hive", "fields": {"run": "string", "step": "int64"}},
        "compression": "zstd",
        **{g: {n: {"type": str(t), "description": d} for n, t, d in FIELDS[g]} for g in FIELDS
           if LossesPaths(root).dataset(g).is_dir()},
        "runs": {n: {"type": str(t), "description": d} for n, t, d in RUN_FIELDS},
    }
    path = LossesPaths(root).schema_doc
    text = json.dumps(doc, indent=2) + "\n"
    if not path.exists() or path.read_text() != text:
        atomic.write_text(path, text)


def dataset(root, granularity: str = "sequences") -> ds.Dataset:
    return ds.dataset(LossesPaths(root).dataset(granularity), format="parquet",
                      partitioning=ds.partitioning(PARTITIONING, flavor="hive"))


def load(root, granularity: str = "sequences", runs=None, steps=None, splits=None, columns=None, arrow: bool = False):
    """Read a slice of the loss dataset; the filters are pushed down to partitions and row groups.

    >>> load("results/losses", "tokens", runs=["tiny-11k_s0"], steps=[64], splits=["eval"])
    """
    filt = None
    for name, values in (("run", runs), ("step", steps), ("split", splits)):
        if values is not None:
            expr = ds.field(name).isin(list(values))
            filt = expr if filt is None else filt & expr
    table = dataset(root, granularity).to_table(columns=columns, filter=filt)
    return table if arrow else table.to_pandas()


def write_run_table(run_dirs, out, study: str = "") -> pa.Table:
    rows = []
    for d in run_dirs:
        meta = json.loads(RunPaths(d).run_json.read_text())
        rows.append({
            "run": meta["run"], "study": study, "size": meta["size"], "seed": meta["seed"],
            "total_params": meta["total_params"], "non_embedding_params": meta["non_embedding_params"],
            "d_model": meta["d_model"], "n_layers": meta["n_layers"], "n_heads": meta["n_heads"],
            "vocab_size": meta["vocab_size"], "steps": meta["steps"], "tokens_per_step": meta["tokens_per_step"],
            "config_hash": sha256(meta["spec"])[:16], "data_manifest_sha256": meta["data_manifest_sha256"],
        })
    table = pa.Table.from_pylist(rows, schema=pa.schema([(n, t) for n, t, _ in RUN_FIELDS]))
    with atomic.atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table


def export(root, out, runs=None) -> Path:
    """Pack dataset + run table + schema (+ a README) into a directory or .tar.gz/.zip archive."""
    root, out = Path(root), Path(out)
    archive = next((fmt for suf, fmt in ((".tar.gz", "gztar"), (".tgz", "gztar"), (".tar", "tar"), (".zip", "zip"))
                    if out.name.endswith(suf)), None)
    stage = out.with_name(out.name.split(".")[0] + ".staging") if archive else out
    with atomic.atomic_dir(stage) as tmp:
        for g in GRANULARITIES:
            for part in sorted(LossesPaths(root).dataset(g).glob("run=*/step=*/part-0.parquet")):
                run = part.parent.parent.name[4:]
                if runs and run not in runs:
                    continue
                dest = tmp / part.relative_to(root)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(part, dest)
        for extra in ("runs.parquet", "schema.json"):
            if (root / extra).exists():
                shutil.copy2(root / extra, tmp / extra)
        (tmp / "README.md").write_text(
            "# Per-example losses (scaledyn)\n\n"
            "Hive-partitioned Parquet (run=, step=), zstd. `schema.json` documents every column.\n\n"
            "    import pyarrow.dataset as ds\n"
            "    ds.dataset('sequences', partitioning='hive').to_table().to_pandas()\n\n"
            "    duckdb: SELECT * FROM read_parquet('tokens/**/*.parquet', hive_partitioning=true)\n"
        )
    if not archive:
        return out
    with atomic.atomic_path(out) as tmp:
        made = shutil.make_archive(str(tmp) + ".build", archive, root_dir=stage)
        shutil.move(made, tmp)
    shutil.rmtree(stage, ignore_errors=True)
    return out
