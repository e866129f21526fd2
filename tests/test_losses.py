import dataclasses
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

from scaledyn.analysis import losses
from scaledyn.analysis.evaluate import evaluate_checkpoint
from scaledyn.analysis.options import EvaluateOptions
from scaledyn.data.tokens import TokenData
from scaledyn.errors import DataError
from scaledyn.layout import LossesPaths, RunPaths
from scaledyn.train.model import CheckpointError, load_model

FP16 = dataclasses.replace(EvaluateOptions.defaults(), token_dtype="float16")


def test_partition_layout_and_schema(tiny_study):
    root = tiny_study.losses.dir
    parts = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet") if p != tiny_study.losses.guard)
    assert "tokens/tiny-1k_s0/step_64.parquet" in parts  # the documented layout, spelled out
    assert "sequences/tiny-6k_s0/step_1.parquet" in parts and len(parts) == 2 * 2 * 7
    f = tiny_study.losses.partition("tokens", "tiny-1k_s0", 64)
    assert pq.ParquetFile(f).metadata.row_group(0).column(0).compression == "ZSTD"
    assert pq.read_schema(f).remove_metadata().equals(losses.schema("tokens").remove_metadata())
    assert all(f.metadata and b"description" in f.metadata for f in pq.read_schema(f))
    seq = losses.load(root, "sequences", runs=["tiny-1k_s0"], steps=[64])
    assert set(seq.columns) >= {"run", "size", "seed", "step", "tokens_seen", "split", "example_id", "loss", "n_tokens"}
    assert set(seq["split"]) == {"eval", "heldout"}
    assert (seq.groupby(["split", "example_id"]).size() == 1).all()  # exactly one row per example
    assert (seq["tokens_seen"] == 64 * 8 * 32).all() and (seq["n_tokens"] == 31).all()
    assert tiny_study.schema_doc.exists() and tiny_study.run_table.exists()
    assert all(f.metadata and b"description" in f.metadata for f in pq.read_schema(tiny_study.run_table))
    runs = pq.read_table(tiny_study.run_table).to_pandas()
    assert list(runs["run"]) == ["tiny-1k_s0", "tiny-6k_s0"] and (runs["non_embedding_params"] > 0).all()


def test_schema_json_documents_every_table_as_written(tiny_study):
    """schema.json gives each column of each table its type and description, and no column that the
    written table lacks: the ZSL table included (its one-step extras are columns of every file)."""
    import json

    doc = json.loads(tiny_study.schema_doc.read_text())
    written = {"zsl": pq.read_schema(tiny_study.zsl_table), "runs": pq.read_schema(tiny_study.run_table),
               "tokens": pq.read_schema(next(tiny_study.losses.dataset("tokens").rglob("*.parquet")))}
    for table, schema in written.items():
        assert sorted(doc[table]) == sorted(schema.names), table  # schema.json is written with sorted keys
        for f in schema:
            assert doc[table][f.name]["type"] == str(f.type) and doc[table][f.name]["description"], (table, f.name)
            assert f.metadata[b"description"].decode() == doc[table][f.name]["description"]
    zsl = pd.read_parquet(tiny_study.zsl_table)
    assert "coord_skipped" in zsl and zsl.loc[zsl["variant"] == "dt=t", "lr"].isna().all()


def test_losses_match_the_models_own_loss(tiny_study):
    root = tiny_study.losses.dir
    data = TokenData.open(tiny_study.data.dir)
    model = load_model(tiny_study.run("tiny-6k_s0").checkpoint(64)).eval()
    tok = losses.load(root, "tokens", runs=["tiny-6k_s0"], steps=[64], splits=["eval"])
    seq = losses.load(root, "sequences", runs=["tiny-6k_s0"], steps=[64], splits=["eval"]).set_index("example_id")
    x = torch.from_numpy(np.asarray(data.split("eval")[:3], dtype=np.int64))
    with torch.no_grad():
        for i in range(3):
            hf_loss = model(input_ids=x[i : i + 1], labels=x[i : i + 1]).loss.item()
            mine = tok[tok["example_id"] == i].sort_values("position")["loss"].to_numpy()
            assert len(mine) == 31
            assert mine.mean() == pytest.approx(hf_loss, rel=1e-5)
            assert seq.loc[i, "loss"] == pytest.approx(hf_loss, rel=1e-5)


TYPES = {"run": "string", "step": "int64", "example_id": "int64", "loss": "float32"}


def five_readers(folder: Path, only: str | None = None) -> dict[str, tuple[int, dict]]:
    """Row count and the key columns' types, as five tools see a folder, plain calls (`only`: that tool's read alone)."""
    import datasets
    import polars as pl

    reads = {
        "pandas": lambda: pd.read_parquet(folder),
        "pyarrow": lambda: ds.dataset(folder, format="parquet").to_table(),
        "duckdb": lambda: duckdb.sql(f"SELECT * FROM read_parquet('{folder}/**/*.parquet')"),
        "polars": lambda: pl.scan_parquet(f"{folder}/**/*.parquet").collect(),
        "datasets": lambda: datasets.load_dataset("parquet", data_files=f"{folder}/**/*.parquet", split="train"),
    }
    if only:
        return reads[only]()
    pdf, pa_t, duck, pol, hf = (read() for read in reads.values())
    spelling = {"str": "string", "String": "string", "VARCHAR": "string", "large_string": "string",
                "Int64": "int64", "BIGINT": "int64", "Float32": "float32", "FLOAT": "float32", "float": "float32"}
    canon = lambda t: spelling.get(str(t), str(t))  # noqa: E731  each tool's name for the same type
    return {
        "pandas": (len(pdf), {c: canon(pdf[c].dtype) for c in TYPES}),
        "pyarrow": (pa_t.num_rows, {c: canon(pa_t.schema.field(c).type) for c in TYPES}),
        "duckdb": (duck.count("*").fetchall()[0][0], {c: canon(t) for c, t in zip(duck.columns, duck.types) if c in TYPES}),
        "polars": (len(pol), {c: canon(t) for c, t in pol.schema.items() if c in TYPES}),
        "datasets": (len(hf), {c: canon(hf.features[c].dtype) for c in TYPES}),
    }


def test_five_readers_refuse_the_folders_above_the_tables(tiny_study, tmp_path):
    """The dataset root (and the results folder, and an export's root) hold two tables: every reader
    fails there, naming the guard file that says which folder to read, instead of mixing them."""
    export = losses.export(tiny_study.root, tmp_path / "share")
    for folder in (tiny_study.losses.dir, tiny_study.root, export):
        for tool in ("pandas", "pyarrow", "duckdb", "polars", "datasets"):
            with pytest.raises(Exception) as e:
                five_readers(folder, only=tool)
            assert "parquet" in str(e.value).lower() or "PAR1" in str(e.value), (folder, tool, e.value)
    for folder in (tiny_study.losses.dir, export):
        assert "read sequences/ or tokens/" in LossesPaths(folder).guard.read_text()
    assert not list(tiny_study.root.glob(f"zsl/**/{LossesPaths.GUARD}"))  # the one-step changes are one table


@pytest.mark.parametrize("granularity", ["sequences", "tokens"])
def test_five_readers_agree(tiny_study, granularity):
    seen = five_readers(tiny_study.losses.dataset(granularity))
    counts = {tool: n for tool, (n, _) in seen.items()}
    expected = 2 * 7 * (24 + 16) * (31 if granularity == "tokens" else 1)
    assert set(counts.values()) == {expected}, counts
    for tool, (_, types) in seen.items():
        assert types == TYPES, (tool, types)
    df = pd.read_parquet(tiny_study.losses.dataset(granularity))
    assert list(np.sort(df["step"].unique())) == [1, 2, 4, 8, 16, 32, 64]  # numeric, not categorical order
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tiny_study.losses.dir}/tokens/**/*.parquet') "
                   "WHERE run = 'tiny-1k_s0' AND step = 64 AND split = 'eval'").fetchall()[0][0]
    assert n == 24 * 31


def test_training_evaluates_its_checkpoints_as_the_standalone_command_does(tiny_config, tiny_data, tmp_path):
    """Evaluated inside the training process, each checkpoint's loss files hold exactly what
    `scaledyn evaluate` writes from the saved checkpoint; training is unchanged by it; a resumed
    run evaluates first the checkpoints whose files are missing (Snakemake removed them)."""
    from scaledyn.analysis.evaluate import Evaluator
    from scaledyn.config import load_study
    from scaledyn.train.loop import train

    spec = dataclasses.replace(load_study(tiny_config).run_spec("tiny-1k_s0"), data_dir=str(tiny_data),
                               run_dir=str(tmp_path / "runs" / "tiny-1k_s0"), steps=16, checkpoint_steps=(4, 8, 16))
    options = EvaluateOptions.defaults()
    inside = LossesPaths(tmp_path / "inside")
    train(spec, after_checkpoint=Evaluator(spec.run_dir, spec.checkpoint_steps, spec.data_dir, inside.dir, options))
    plain = dataclasses.replace(spec, run_dir=str(tmp_path / "plain" / "tiny-1k_s0"))
    train(plain)
    for step in spec.checkpoint_steps:
        evaluate_checkpoint(spec.run_dir, step, spec.data_dir, tmp_path / "outside", options)
        for g in ("sequences", "tokens"):
            a = pq.read_table(inside.partition(g, "tiny-1k_s0", step))
            assert a.equals(pq.read_table(LossesPaths(tmp_path / "outside").partition(g, "tiny-1k_s0", step))), (g, step)
        weights = [RunPaths(r.run_dir).checkpoint(step) / "model.safetensors" for r in (spec, plain)]
        assert weights[0].read_bytes() == weights[1].read_bytes(), step
    gone = [inside.partition(g, "tiny-1k_s0", 8) for g in ("sequences", "tokens")]
    for f in gone:
        f.unlink()
    kept = inside.partition("tokens", "tiny-1k_s0", 16).stat().st_mtime_ns
    train(spec, after_checkpoint=Evaluator(spec.run_dir, spec.checkpoint_steps, spec.data_dir, inside.dir, options))
    assert all(f.exists() for f in gone) and inside.partition("tokens", "tiny-1k_s0", 16).stat().st_mtime_ns == kept


def test_rerun_skips_and_force_rewrites(tiny_study, tmp_path):
    out = tmp_path / "losses"
    run_dir = tiny_study.run("tiny-1k_s0").dir
    assert evaluate_checkpoint(run_dir, 8, tiny_study.data.dir, out)
    part = LossesPaths(out).partition("tokens", "tiny-1k_s0", 8)
    first = part.stat().st_mtime_ns
    assert not evaluate_checkpoint(run_dir, 8, tiny_study.data.dir, out)
    assert part.stat().st_mtime_ns == first
    assert evaluate_checkpoint(run_dir, 8, tiny_study.data.dir, out, force=True)


def test_two_process_evaluation_writes_each_example_once(tiny_study, tmp_path):
    """Two gloo processes (torchrun) split the sequences unpadded; the rows equal a 1-process run's."""
    run_dir = tiny_study.run("tiny-1k_s0").dir
    evaluate_checkpoint(run_dir, 8, tiny_study.data.dir, tmp_path / "one")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
                           "-m", "scaledyn", "evaluate", "--run-dir", str(run_dir), "--step", "8", "--data",
                           str(tiny_study.data.dir), "--out", str(tmp_path / "two"), "--batch-size", "5"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for g, key in (("sequences", ["split", "example_id"]), ("tokens", ["split", "example_id", "position"])):
        one = losses.load(tmp_path / "one", g).sort_values(key)
        two = losses.load(tmp_path / "two", g).sort_values(key)
        assert len(two) == len(one) and not two.duplicated(key).any()
        np.testing.assert_allclose(two["loss"].to_numpy(), one["loss"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_mixed_schema_is_refused(tiny_study, tmp_path):
    out = tmp_path / "losses"
    run_dir = tiny_study.run("tiny-1k_s0").dir
    evaluate_checkpoint(run_dir, 8, tiny_study.data.dir, out)
    with pytest.raises(losses.SchemaMismatch, match="have schema"):
        evaluate_checkpoint(run_dir, 16, tiny_study.data.dir, out, FP16)


def test_float16_option_halves_loss_column(tiny_study, tmp_path):
    evaluate_checkpoint(tiny_study.run("tiny-1k_s0").dir, 8, tiny_study.data.dir, tmp_path / "l", FP16)
    t = losses.load(tmp_path / "l", "tokens", arrow=True)
    assert t.schema.field("loss").type == pa.float16()


def test_corrupt_checkpoint_is_named(tiny_study, tmp_path):
    ckpt = RunPaths(tmp_path / "runs" / "r").checkpoint(8)
    shutil.copytree(tiny_study.run("tiny-1k_s0").checkpoint(8), ckpt)
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="step8"):
        evaluate_checkpoint(ckpt.parent.parent, 8, tiny_study.data.dir, tmp_path / "l")
    with pytest.raises(CheckpointError, match="missing or incomplete"):
        evaluate_checkpoint(ckpt.parent.parent, 9, tiny_study.data.dir, tmp_path / "l")


def test_export_archive_opens_without_the_workflow(tiny_study, tmp_path):
    out = losses.export(tiny_study.root, tmp_path / "share.tar.gz", runs=["tiny-6k_s0"])
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    x = tmp_path / "x"
    assert (x / "schema.json").exists() and (x / "README.md").exists() and (x / "runs.parquet").exists()
    assert set(pd.read_parquet(x / "tokens")["run"]) == {"tiny-6k_s0"}
    back = losses.read_export(out)  # scaledyn reads its own archive back
    ex = back.examples
    assert len(ex) == 24 + 16 and set(ex["split"]) == {"eval", "heldout"}
    tok = back.tokenizer()
    data = TokenData.open(tiny_study.data.dir)
    assert list(ex.iloc[0]["token_ids"]) == list(data.split("eval")[0])
    assert tok.decode(list(ex.iloc[0]["token_ids"]))  # the colleague can read what the losses are of
    seq = back.load("sequences", runs=["tiny-6k_s0"], steps=[64])
    assert len(seq) == 24 + 16 and back.runs["run"].tolist() == ["tiny-6k_s0"]  # --runs filters the run table too
    with pytest.raises(DataError, match="no run 'tiny-1k_s0' in this table; it holds tiny-6k_s0"):
        back.load("sequences", runs=["tiny-1k_s0"])
    with pytest.raises(DataError, match="--runs: 'nope' has no losses"):
        losses.export(tiny_study.root, tmp_path / "other.tar.gz", runs=["nope"])


def test_two_versions_of_an_archive_unpack_apart(tiny_study, tmp_path):
    """share.v1.tar.gz and share.v2.tar.gz once shared one unpack folder: v2 read back v1's runs."""
    v1 = losses.export(tiny_study.root, tmp_path / "share.v1.tar.gz", runs=["tiny-1k_s0"])
    v2 = losses.export(tiny_study.root, tmp_path / "share.v2.tar.gz", runs=["tiny-6k_s0"])
    assert losses.read_export(v1).runs["run"].tolist() == ["tiny-1k_s0"]
    assert losses.read_export(v2).runs["run"].tolist() == ["tiny-6k_s0"]
    assert set(losses.read_export(v2).load("tokens")["run"]) == {"tiny-6k_s0"}
    v1.write_bytes(v2.read_bytes())  # the same name, new content: a new folder
    assert losses.read_export(v1).runs["run"].tolist() == ["tiny-6k_s0"]


def test_export_is_a_hugging_face_dataset_with_a_card(tiny_study, tmp_path):
    """load_dataset(<export folder>, <table>) finds each table by the card's YAML header."""
    import datasets
    import yaml

    out = losses.export(tiny_study.root, tmp_path / "share", runs=["tiny-6k_s0"])
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert {c["config_name"] for c in header["configs"]} == {"sequences", "tokens", "examples", "runs"}
    assert header["license"] == "other" and "## Provenance" in card and "## Citation" in card
    assert "`tiny-6k_s0`: tiny-6k, seed 0" in card and "tiny-1k_s0" not in card and "corpus: stdlib" in card
    runs = datasets.load_dataset(str(out), "runs", cache_dir=str(tmp_path / "cache"))["train"]
    assert runs["run"] == ["tiny-6k_s0"]
    tokens = datasets.load_dataset(str(out), "tokens", cache_dir=str(tmp_path / "cache"))["train"]
    assert set(tokens.unique("run")) == {"tiny-6k_s0"} and "position" in tokens.column_names
    assert len(tokens) == len(losses.load(out, "tokens"))
