"""The per-example loss dataset: the one Parquet writer, its schema, the reader, and the export.

One dataset per granularity, one zstd Parquet file per (run, checkpoint):

    <losses>/sequences/<run>/step_<step>.parquet   one row per (split, example)
    <losses>/tokens/<run>/step_<step>.parquet      one row per (split, example, position)

Every file holds its `run` and `step` as columns. The folders are not named `run=<run>` (hive
style) on purpose: with hive folder names, pandas and pyarrow infer those columns from the path
(as unordered categoricals and int32) and refuse the same columns in the files, while
`datasets` drops them. With the columns in the files, pandas, pyarrow, DuckDB, Polars and HF
`datasets` all read a granularity folder directly, with the types documented here, and filters on
run and step still skip files by their row-group statistics.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .. import atomic
from ..errors import DataError, SchemaMismatch
from ..hashing import sha256
from ..layout import GRANULARITIES, DataPaths, Layout, LossesPaths, RunPaths, partition, partition_steps, staging
from ..records import RunRecord

KEYS = [("run", pa.string(), "run name, <size>_s<seed>"),
        ("step", pa.int64(), "training step of the checkpoint (0 = before training)")]

FIELDS = {
    "sequences": KEYS + [
        ("size", pa.string(), "model size name"),
        ("seed", pa.int32(), "model-initialisation seed"),
        ("tokens_seen", pa.int64(), "training tokens consumed up to this checkpoint"),
        ("split", pa.string(), "'eval' (fixed evaluation set) or 'heldout' (held-out training batches)"),
        ("example_id", pa.int64(), "global sequence id, fixed at data preparation (see examples.parquet)"),
        ("loss", pa.float32(), "mean next-token cross-entropy over the sequence, nats"),
        ("n_tokens", pa.int32(), "number of predicted tokens in the sequence (seq_len - 1)"),
    ],
    "tokens": KEYS + [
        ("split", pa.string(), "'eval' or 'heldout'"),
        ("example_id", pa.int64(), "global sequence id"),
        ("position", pa.int32(), "index of the predicted token within the sequence (1 .. seq_len - 1)"),
        ("loss", pa.float32(), "next-token cross-entropy, nats (float16 when evaluate.token_dtype is float16)"),
    ],
    "changes": KEYS + [
        ("batch", pa.int32(), "held-out batch that the one optimizer step used"),
        ("split", pa.string(), "'heldout' (that batch) or 'eval'"),
        ("example_id", pa.int64(), "global sequence id"),
        ("position", pa.int32(), "index of the predicted token"),
        ("delta", pa.float32(), "loss after the step minus loss before, nats"),
        ("predicted", pa.float32(), "first-order prediction grad(loss) . dtheta (JVP); NaN where not computed"),
    ],
    "runs": [
        ("run", pa.string(), "run name, <size>_s<seed>"),
        ("study", pa.string(), "study name"),
        ("size", pa.string(), "size name"),
        ("seed", pa.int32(), "initialisation seed"),
        ("total_params", pa.int64(), "trainable parameters, tied embedding counted once"),
        ("non_embedding_params", pa.int64(), "trainable parameters outside the embedding"),
        ("d_model", pa.int32(), "model width"),
        ("n_layers", pa.int32(), "transformer blocks"),
        ("n_heads", pa.int32(), "attention heads"),
        ("vocab_size", pa.int32(), "embedding rows"),
        ("steps", pa.int64(), "optimizer steps"),
        ("tokens_per_step", pa.int64(), "global batch in tokens"),
        ("config_hash", pa.string(), "sha256 (16 hex) of the run spec"),
        ("data_manifest_sha256", pa.string(), "sha256 of the data manifest"),
    ],
    "examples": [
        ("split", pa.string(), "'eval' or 'heldout'"),
        ("example_id", pa.int64(), "global sequence id, as in the loss datasets"),
        ("token_ids", pa.list_(pa.int32()), "the sequence's token ids (tokenizer/ decodes them); losses are for "
                                            "predicting token position p from positions < p"),
    ],
}


def schema(granularity: str, token_dtype: str = "float32") -> pa.Schema:
    fields = [pa.field(n, t, metadata={"description": d}) for n, t, d in FIELDS[granularity]]
    if granularity == "tokens" and token_dtype == "float16":
        fields[-1] = pa.field("loss", pa.float16(), metadata=fields[-1].metadata)
    return pa.schema(fields)


def token_index(ids: np.ndarray, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(example_id, position) columns of per-token rows: every id repeated for positions 1..n."""
    return np.repeat(ids, positions), np.tile(np.arange(1, positions + 1, dtype=np.int32), len(ids))


def _existing_schema(dataset: Path, exclude: Path) -> pa.Schema | None:
    for f in sorted(dataset.glob("*/step_*.parquet")):
        if f != exclude:
            return pq.read_schema(f)
    return None


def write_partition(dataset: str | Path, run: str, step: int, columns: dict, granularity: str,
                    token_dtype: str = "float32") -> Path:
    """Atomically write the (run, step) file of `dataset` (a granularity folder): `columns` plus
    run and step, with the granularity's schema, after checking that it matches the dataset's."""
    dataset = Path(dataset)
    n = len(next(iter(columns.values())))
    table = pa.Table.from_pydict({"run": [run] * n, "step": np.full(n, step, np.int64), **columns},
                                 schema=schema(granularity, token_dtype))
    path = partition(dataset, run, step)
    existing = _existing_schema(dataset, path)
    if existing is not None and not existing.remove_metadata().equals(table.schema.remove_metadata()):
        raise SchemaMismatch(
            f"{dataset}: new rows for run {run} step {step} have schema {table.schema.remove_metadata()} "
            f"but the dataset has {existing.remove_metadata()}; write to a new dataset or convert it"
        )
    tag = f"{dataset.name}.{run}.step_{step}."
    atomic.remove_stale(staging(dataset), tag)  # left by a killed writer of this very file
    with atomic.atomic_path(path, staging(dataset), tag) as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=["run", "split"], write_statistics=True)
    return path


GUARD_TEXT = ("This is not a Parquet file. This folder holds two tables with different columns, one per folder: "
              "read sequences/ or tokens/ (or ask scaledyn.analysis.losses.load), never the folder above them.\n")


def guard(root: Path) -> None:
    """Put the two-tables guard (LossesPaths.guard) into a folder that holds both granularities
    (a loss dataset's root, an export's), written with them; never beside other tables."""
    path = LossesPaths(root).guard
    if not path.exists():
        atomic.write_text(path, GUARD_TEXT)


# The ZSL table (zsl.py): its first columns are every row's; the rest are the one-step rows' extras
# (the gradient view, the step's rate), null in the rows that have none. Every table written has
# all of them, with these types, so a reader never meets a column that comes and goes.
ZSL_FIELDS = [
    ("run", pa.string(), "run name, <size>_s<seed>"), ("size", pa.string(), "model size name"),
    ("seed", pa.int64(), "initialisation seed"), ("step", pa.int64(), "checkpoint the change starts from"),
    ("step_next", pa.int64(), "checkpoint it ends at (step + 1 for dt=1)"),
    ("dt", pa.int64(), "step_next - step: the change's span in steps (0 for the direction predictions: no step is taken)"),
    ("variant", pa.string(), "'dt=t' (checkpoint to checkpoint), 'dt=1' (one optimizer step), or 'grad-direction' / "
                             "'sign-direction' (suites: the JVP-predicted change along the held-out batch's mean "
                             "gradient, or its sign, per unit parameter distance; no optimizer state is published)"),
    ("split", pa.string(), "'eval' or 'heldout'"),
    ("granularity", pa.string(), "'token' or 'sequence' (per-example unit of the changes)"),
    ("n", pa.int64(), "examples (dt=t) or held-out batches averaged (dt=1)"),
    ("D", pa.float64(), "destructive interference 1 - |sum x| / sum |x| of the per-example loss changes x"),
    ("M", pa.float64(), "mean |per-example loss change|, nats"),
    ("dL", pa.float64(), "|change of the mean loss| = (1 - D) M, nats"),
    ("D_std", pa.float64(), "std of D (over example folds for dt=t, over held-out batches for dt=1)"),
    ("M_std", pa.float64(), "std of M, likewise"), ("dL_std", pa.float64(), "std of dL, likewise"),
    ("spread", pa.string(), "what the _std columns are taken over"),
    ("pred_corr_mean", pa.float64(), "dt=1 with zsl.gradient_view: correlation of the JVP-predicted and the measured "
                                     "per-token changes (held-out batch)"),
    ("D_pred_mean", pa.float64(), "D of the JVP-predicted changes"),
    ("D_measured_mean", pa.float64(), "D of the measured changes on the stepped batch"),
    ("C_g_mean", pa.float64(), "coordinate-wise interference sum_j |sum_i p_ij| / sum_j sum_i |p_ij|"),
    ("C_g_shuffled_mean", pa.float64(), "C_g with each token's terms given a random sign: its value when tokens push "
                                        "coordinates independently"),
    ("D_grad_mean", pa.float64(), "mean over non-embedding coordinates of 1 - |sum_i g_ij| / sum_i |g_ij|"),
    ("D_grad_shuffled_mean", pa.float64(), "D_grad with each token's gradient given a random sign (the chance level)"),
    ("coord_tokens_mean", pa.float64(), "tokens the coordinate-wise measures use"),
    ("coord_params_mean", pa.float64(), "coordinates they use"),
    ("coord_skipped", pa.string(), "why the coordinate-wise measures were skipped (null where they were not)"),
    ("lr", pa.float64(), "dt=1: learning rate of the step"), ("lr_note", pa.string(), "dt=1: a note on that rate"),
]
ZSL_COLUMNS = [n for n, _, _ in ZSL_FIELDS[:17]]  # what every row has


def zsl_schema() -> pa.Schema:
    return pa.schema([pa.field(n, t, metadata={"description": d}) for n, t, d in ZSL_FIELDS])


def check_writable(dataset: str | Path) -> None:
    """Fail now, with the OS's reason, if files of `dataset` cannot be written (before a long
    computation, not after it)."""
    folder = staging(dataset)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f"probe-{uuid.uuid4().hex}"  # its own name: jobs evaluating side by side share the folder
    with atomic.atomic_path(probe, folder, f"{probe.name}.") as tmp:
        tmp.write_bytes(b"\0" * 65536)  # a full disk still creates empty files
    probe.unlink()


def schema_doc() -> dict:
    return {"layout": "one zstd Parquet file per (run, checkpoint): <granularity>/<run>/step_<step>.parquet; "
                      "run and step are columns of every file",
            **{g: {n: {"type": str(t), "description": d} for n, t, d in f} for g, f in FIELDS.items()},
            "zsl": {n: {"type": str(t), "description": d} for n, t, d in ZSL_FIELDS}}


def dataset(root, granularity: str = "sequences") -> ds.Dataset:
    path = LossesPaths(root).dataset(granularity)
    if not path.is_dir():
        raise DataError(f"{path}: no such dataset")
    return ds.dataset(path, format="parquet")


def runs_in(dataset: Path) -> list[str]:
    """The runs a granularity folder holds (one folder each), sorted; none where it does not exist."""
    return sorted(p.name for p in dataset.iterdir() if p.is_dir()) if dataset.is_dir() else []


def load(root, granularity: str = "sequences", runs=None, steps=None, splits=None, columns=None, arrow: bool = False):
    """Read a slice of the loss dataset; the filters skip files by their statistics. A run that the
    dataset does not hold is an error that names it, not an empty table.

    >>> load("results/losses", "tokens", runs=["tiny-11k_s0"], steps=[64], splits=["eval"])
    """
    data = dataset(root, granularity)
    if runs is not None:
        path = LossesPaths(root).dataset(granularity)
        known = runs_in(path)
        missing = [r for r in runs if r not in known]
        if missing:
            raise DataError(f"{path}: no run {missing[0]!r} in this table; it holds {', '.join(known) or 'none'}")
    filt = None
    for name, values in (("run", runs), ("step", steps), ("split", splits)):
        if values is not None:
            expr = ds.field(name).isin(list(values))
            filt = expr if filt is None else filt & expr
    table = data.to_table(columns=columns, filter=filt)
    return table if arrow else table.to_pandas()


def steps_of(root, granularity: str, run: str) -> list[int]:
    return partition_steps(LossesPaths(root).dataset(granularity), run)


def write_run_table(run_dirs, out, study: str = "") -> pa.Table:
    rows = []
    for d in run_dirs:
        r = RunRecord.read(RunPaths(d).run_json)
        rows.append({
            "run": r.run, "study": study, "size": r.size, "seed": r.seed, "total_params": r.total_params,
            "non_embedding_params": r.non_embedding_params, "d_model": r.d_model, "n_layers": r.n_layers,
            "n_heads": r.n_heads, "vocab_size": r.vocab_size, "steps": r.steps, "tokens_per_step": r.tokens_per_step,
            "config_hash": sha256(r.spec)[:16], "data_manifest_sha256": r.data_manifest_sha256,
        })
    table = pa.Table.from_pylist(rows, schema=schema("runs"))
    with atomic.atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    atomic.write_json(Path(out).with_name("schema.json"), schema_doc())
    return table


# ----------------------------------------------------------------------------- sharing


CARD = """# Per-example losses (scaledyn export): {study}

Losses of every evaluation and held-out example at every checkpoint of the runs in `runs.parquet`.
`schema.json` documents every column; every Parquet file carries the same descriptions.

    sequences/<run>/step_<step>.parquet   one row per (split, example): mean loss over the sequence
    tokens/<run>/step_<step>.parquet      one row per (split, example, position)
    examples.parquet                      the token ids of every example (split, example_id, token_ids)
    tokenizer/                            AutoTokenizer.from_pretrained("tokenizer") decodes them
    runs.parquet                          one row per run: size, seed, parameter counts, hashes

Read a granularity folder with any Parquet reader; run and step are columns of every file:

    pandas     pd.read_parquet("tokens")
    pyarrow    pyarrow.dataset.dataset("tokens", format="parquet")
    DuckDB     SELECT * FROM read_parquet('tokens/**/*.parquet')
    Polars     pl.scan_parquet("tokens/**/*.parquet")
    datasets   load_dataset("<this folder>", "tokens")   (the tables are named in the header above)
    scaledyn   scaledyn.analysis.losses.read_export("<this folder or archive>")

## Runs

{runs}

## Provenance

- corpus: {corpus}
- data manifest sha256 `{manifest}` (in `runs.parquet` as `data_manifest_sha256`, with each run's
  `config_hash`); tokenizer: `tokenizer/`, {n_tokens:,} tokens prepared, sequences of {seq_len}
- written by scaledyn {version}

## License

The losses are measurements of the runs above. The texts they are of (`examples.parquet`, decoded
with `tokenizer/`) come from the corpus named above, whose license governs them: check it before
you share this dataset further.

## Citation

The method these tables serve:

    @inproceedings{{mircea2025training,
      title     = {{Training Dynamics Underlying Language Model Scaling Laws: Loss Deceleration and Zero-Sum Learning}},
      author    = {{Mircea, Andrei and others}},
      booktitle = {{Proceedings of ACL 2025}},
      year      = {{2025}},
      note      = {{arXiv:2506.05447}}
    }}
"""
TABLES = {"sequences": "sequences/*/*.parquet", "tokens": "tokens/*/*.parquet", "examples": "examples.parquet",
          "runs": "runs.parquet"}


def dataset_card(layout: Layout, runs: pa.Table) -> str:
    """README.md in the Hugging Face datasets convention: a YAML header naming each table (so
    load_dataset(folder, name) finds it), the runs, the corpus and its hashes."""
    import yaml

    from .. import __version__

    manifest = json.loads(layout.data.manifest.read_text())
    corpus = manifest["corpus"]
    what = corpus.get("wheels") or corpus.get("packages") or corpus.get("files") or corpus.get("dataset") or ""
    header = {"configs": [{"config_name": k, "data_files": v} for k, v in TABLES.items()], "license": "other",
              "tags": ["scaledyn", "training-dynamics", "per-example-losses", "loss-deceleration"]}
    rows = runs.to_pylist()
    lines = [f"- `{r['run']}`: {r['size']}, seed {r['seed']}, {r['non_embedding_params']:,} non-embedding parameters, "
             f"{r['steps']:,} steps of {r['tokens_per_step']:,} tokens" for r in rows]
    studies = sorted({r["study"] for r in rows if r["study"]})
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + CARD.format(
        study=", ".join(studies) or "a scaledyn study", runs="\n".join(lines) or "(none)",
        corpus=f"{corpus['source']} {json.dumps(what)}" if what else corpus["source"],
        manifest=sha256(layout.data.manifest), n_tokens=manifest["n_tokens"], seq_len=manifest["seq_len"],
        version=__version__)


ARCHIVES = ((".tar.gz", "gztar"), (".tgz", "gztar"), (".tar", "tar"), (".zip", "zip"))


def _archive(path: Path) -> tuple[str, str | None]:
    """An archive's name without its suffix, and shutil's format name (None: not an archive)."""
    for suffix, fmt in ARCHIVES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)], fmt
    return path.name, None


def export(results, out, runs=None) -> Path:
    """Pack a study's loss datasets, run table, schema, tokenizer and example token ids (plus a
    README card) into a directory or a .tar.gz/.tar/.zip archive; `runs` keeps only those runs,
    in every table."""
    layout, out = Layout(results), Path(out)
    stem, archive = _archive(out)
    stage = out.with_name(f".{out.name}.staging") if archive else out
    if runs:
        known = sorted({r for g in GRANULARITIES for r in runs_in(layout.losses.dataset(g))})
        missing = [r for r in runs if r not in known]
        if missing:
            raise DataError(f"--runs: {missing[0]!r} has no losses in {layout.losses.dir}; runs there: "
                            f"{', '.join(known) or 'none'}")
    with atomic.atomic_dir(stage) as tmp:
        for g in GRANULARITIES:
            for part in sorted(layout.losses.dataset(g).glob("*/step_*.parquet")):
                if runs and part.parent.name not in runs:
                    continue
                dest = tmp / part.relative_to(layout.losses.dir)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(part, dest)
        if layout.schema_doc.exists():
            shutil.copy2(layout.schema_doc, tmp / layout.schema_doc.name)
        table = pq.read_table(layout.run_table)
        if runs:
            table = table.filter(ds.field("run").isin(list(runs)))
        pq.write_table(table, tmp / layout.run_table.name, compression="zstd")
        shutil.copytree(layout.data.tokenizer, tmp / "tokenizer")
        pq.write_table(_examples(layout.data), tmp / "examples.parquet", compression="zstd")
        (tmp / "README.md").write_text(dataset_card(layout, table))
        guard(tmp)
    if not archive:
        return out
    with atomic.atomic_path(out) as tmp:
        made = shutil.make_archive(str(tmp) + ".build", archive, root_dir=stage)
        shutil.move(made, tmp)
    shutil.rmtree(stage, ignore_errors=True)
    return out


def _examples(data: DataPaths) -> pa.Table:
    from ..data.tokens import TokenData

    td, cols = TokenData.open(data.dir), {"split": [], "example_id": [], "token_ids": []}
    for split in ("eval", "heldout"):
        arr = np.asarray(td.split(split), dtype=np.int32)
        cols["split"] += [split] * len(arr)
        cols["example_id"] += td.example_ids(split).tolist()
        cols["token_ids"] += [row.tolist() for row in arr]
    return pa.Table.from_pydict(cols, schema=schema("examples"))


class Export:
    """An exported study opened for reading (a folder, or an archive unpacked beside itself)."""

    def __init__(self, root: Path):
        self.root = root
        self.runs = pq.read_table(root / "runs.parquet").to_pandas()
        self.examples = pq.read_table(root / "examples.parquet").to_pandas()
        self.schema = json.loads((root / "schema.json").read_text())

    def load(self, granularity: str = "sequences", **filters):
        return load(self.root, granularity, **filters)

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.root / "tokenizer")


def read_export(path) -> Export:
    """An export folder, or an archive unpacked once beside itself into a folder named by its
    content hash (two versions of one archive never share a folder)."""
    path = Path(path)
    if path.is_dir():
        return Export(path)
    if not path.is_file():
        raise DataError(f"{path}: no such export (a folder or a .tar.gz/.tar/.zip archive)")
    target = path.with_name(f"{_archive(path)[0]}.{sha256(path)[:16]}.unpacked")
    if not target.is_dir():
        with atomic.atomic_dir(target) as tmp:
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as z:
                    z.extractall(tmp)
            else:
                with tarfile.open(path) as t:
                    t.extractall(tmp, filter="data")
    return Export(target)
