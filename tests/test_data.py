import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from scaledyn.config import load_study
from scaledyn.data import DataError, TokenData, load_documents, prepare

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n" * 40


def data_cfg(**over):
    return load_study({"data": {"tokenizer": {"vocab_size": 300}, "seq_len": 16, "eval_sequences": 8,
                                "heldout_batches": 2, **over}, "train": {"batch_size": 4}}).data


def files_cfg(paths, fmt, field="text"):
    return data_cfg(source="files", files={"paths": [str(p) for p in paths], "format": fmt, "field": field})


def test_prepare_is_deterministic(tmp_path, tiny_config):
    options = load_study(tiny_config).data
    a = prepare(options, tmp_path / "a")
    b = prepare(options, tmp_path / "b")
    for name in ("train.npy", "eval.npy", "heldout.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a["splits"] == b["splits"]
    c = prepare(dataclasses.replace(options, seed=1), tmp_path / "c")
    assert c["splits"]["eval"]["sha256"] != a["splits"]["eval"]["sha256"]


def test_stdlib_manifest_and_splits_are_disjoint(tiny_data):
    data = TokenData.open(tiny_data)
    m = data.manifest
    assert m["corpus"]["source"] == "stdlib"
    assert m["corpus"]["python_version"].count(".") == 2 and len(m["corpus"]["file_list_sha256"]) == 64
    assert m["dtype"] == "uint16"
    ids = {s: set(data.example_ids(s)) for s in ("train", "eval", "heldout")}
    assert not ids["train"] & ids["eval"] and not ids["train"] & ids["heldout"] and not ids["eval"] & ids["heldout"]
    assert len(ids["eval"]) == 24 and len(ids["heldout"]) == 2 * 8
    # the rows themselves are distinct corpus chunks
    rows = {bytes(r) for s in ("train", "eval", "heldout") for r in np.asarray(data.split(s))}
    assert len(rows) >= 0.95 * sum(len(v) for v in ids.values())
    x, eid = data.heldout_batch(1)
    assert x.shape == (8, 32) and list(eid) == list(data.example_ids("heldout")[8:16])


def test_tokenizer_loads_with_autotokenizer(tiny_data):
    tok = AutoTokenizer.from_pretrained(tiny_data / "tokenizer")
    assert len(tok) == TokenData.open(tiny_data).manifest["tokenizer"]["vocab_size"]
    assert tok.decode(tok("import os\n")["input_ids"]) == "import os\n"


def test_files_sources_in_three_formats(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    rows = [{"text": TEXT[i:] + str(i), "id": i} for i in range(20)]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    for pattern, fmt, n_docs in ((tmp_path / "*.txt", "text", 1), (tmp_path / "b.jsonl", "jsonl", 20), (tmp_path / "c.parquet", "parquet", 20)):
        docs, prov = load_documents(files_cfg([pattern], fmt))
        assert len(docs) == n_docs and prov["source"] == "files"
    m = prepare(files_cfg([tmp_path / "b.jsonl"], "jsonl"), tmp_path / "out")
    assert m["splits"]["eval"]["sequences"] == 8


def test_hf_source_from_a_locally_saved_dataset(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"content": [TEXT + str(i) for i in range(30)]})
    ds.save_to_disk(tmp_path / "ds")
    cfg = data_cfg(source="hf", hf={"name": str(tmp_path / "ds"), "field": "content"})
    docs, prov = load_documents(cfg)
    assert len(docs) == 30 and prov["source"] == "hf"
    m = prepare(cfg, tmp_path / "out")
    assert m["corpus"]["name"] == str(tmp_path / "ds")
    with pytest.raises(DataError, match="no field 'text'"):
        load_documents(data_cfg(source="hf", hf={"name": str(tmp_path / "ds")}))


@pytest.mark.parametrize(
    "name, content, fmt, fragment",
    [
        ("empty.txt", b"", "text", "is empty"),
        ("bad.txt", b"\xff\xfe\x00bad", "text", "not UTF-8"),
        ("bad.jsonl", b'{"text": "ok"}\n{broken\n', "jsonl", "line 2: not valid JSON"),
        ("nofield.jsonl", b'{"body": "ok"}\n', "jsonl", "no field 'text'"),
        ("bad.parquet", b"PAR1 not really", "parquet", "not a readable Parquet file"),
    ],
)
def test_corrupt_or_empty_corpus_file_is_named(tmp_path, name, content, fmt, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_documents(files_cfg([path], fmt))
    assert str(path) in str(e.value) and fragment in str(e.value)


def test_glob_matching_nothing_is_named(tmp_path):
    with pytest.raises(DataError, match="matches no file"):
        load_documents(files_cfg([tmp_path / "*.nothing"], "text"))


def test_eval_set_larger_than_corpus_fails_before_writing(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    cfg = dataclasses.replace(files_cfg([tmp_path / "a.txt"], "text"), eval_sequences=100000)
    with pytest.raises(DataError, match="data.eval_sequences"):
        prepare(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_prepare_data_reports_counts(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "c.yaml").write_text(
        f"results: {tmp_path}/r\ndata: {{source: files, files: {{paths: ['{tmp_path}/a.txt']}}, tokenizer: {{vocab_size: 300}},"
        " seq_len: 16, eval_sequences: 8, heldout_batches: 1}\ntrain: {batch_size: 4}\n")
    out = subprocess.run([sys.executable, "-m", "scaledyn", "prepare-data", "--config", str(tmp_path / "c.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^\S+: [\d,]+ tokens, vocabulary \d+, [\d,]+ training sequences of 16$", out.stdout.strip())
    assert (tmp_path / "r" / "data" / "manifest.json").exists()
