import dataclasses
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from scaledyn.config import load_study
from scaledyn.data.prepare import prepare
from scaledyn.data.sources import Source
from scaledyn.data.tokens import TokenData
from scaledyn.errors import DataError
from scaledyn.layout import DataPaths


def documents(options):
    source = Source(options)
    return [d for k in range(source.slices()) for d in source.documents(k)]

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n" * 40


def data_cfg(**over):
    return load_study({"data": {"tokenizer": {"vocab_size": 300}, "seq_len": 16, "eval_sequences": 8,
                                "heldout_batches": 2, **over}, "train": {"batch_size": 4}}).data


def files_cfg(paths, fmt, field="text", **text):
    return data_cfg(source="files", files={"paths": [str(p) for p in paths], "format": fmt, "field": field, **text})


def test_prepare_is_deterministic(tmp_path, tiny_config):
    options = load_study(tiny_config).data
    a = prepare(options, tmp_path / "a")
    b = prepare(options, tmp_path / "b")
    for name in ("eval", "heldout"):
        assert DataPaths(tmp_path / "a").split(name).read_bytes() == DataPaths(tmp_path / "b").split(name).read_bytes()
    assert a["splits"] == b["splits"] and a["shards"] == b["shards"]
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
    # the rows themselves are distinct corpus chunks: no evaluation or held-out sequence is trained on
    train = {bytes(r) for r in data.train_batch(np.arange(data.train_sequences))}
    held = {bytes(r) for s in ("eval", "heldout") for r in np.asarray(data.split(s))}
    assert len(train) >= 0.95 * data.train_sequences and not train & held
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
    for pattern, fmt, n_docs in ((tmp_path / "*.txt", "text", 41), (tmp_path / "b.jsonl", "jsonl", 20), (tmp_path / "c.parquet", "parquet", 20)):
        options = files_cfg([pattern], fmt)
        assert len(documents(options)) == n_docs and Source(options).provenance()["source"] == "files"
    assert documents(files_cfg([tmp_path / "a.txt"], "text", split="file")) == [TEXT]
    m = prepare(files_cfg([tmp_path / "b.jsonl"], "jsonl"), tmp_path / "out")
    assert m["splits"]["eval"]["sequences"] == 8


@pytest.mark.parametrize("split, separator", [("blank_lines", None), ("lines", None), ("separator", "<|endoftext|>"),
                                              ("file", None)])
def test_text_files_stream_into_the_same_documents_as_a_whole_read(tmp_path, monkeypatch, split, separator):
    """A text file is cut into documents as it streams: whatever the chunk size (separators across
    chunk ends, \\r\\n line ends), the documents are those of splitting the whole text; a document
    longer than the cap is cut at line ends into pieces that join back into it."""
    import re

    from scaledyn.data import sources

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "\n", "\n\n", " \n\n\n", "<|endoftext|>", "\r\n", "\r\n\r\n", "  "]
    text = "".join(rng.choice(words, 3000))
    (tmp_path / "t.txt").write_bytes(text.encode())
    whole = text.replace("\r\n", "\n")
    pattern = re.escape(separator) if separator else sources.SPLITS[split]
    expected = re.split(pattern, whole) if pattern else [whole]
    for chunk in (1, 7, 64, 1 << 20):
        monkeypatch.setattr(sources, "CHUNK_CHARS", chunk)
        got = documents(files_cfg([tmp_path / "t.txt"], "text", split=split, separator=separator))
        assert got == expected, chunk
    monkeypatch.setattr(sources, "MAX_DOCUMENT_CHARS", 40)
    capped = documents(files_cfg([tmp_path / "t.txt"], "text", split=split, separator=separator))
    assert max(map(len, capped)) <= 40 and "".join(capped) == "".join(expected)


def test_a_large_text_file_is_never_held_whole(tmp_path, monkeypatch):
    """Streaming 48 MB of text (one document per paragraph, or one per file cut into 1 MiB pieces)
    holds a few pieces at a time: Python's own allocations peak far below the file's size."""
    import tracemalloc

    from scaledyn.data import sources

    monkeypatch.setattr(sources, "MAX_DOCUMENT_CHARS", 1 << 20)

    line = "the quick brown fox jumps over the lazy dog " * 4 + "\n"
    with open(tmp_path / "big.txt", "w") as f:
        for i in range(48 * 1024 * 1024 // (len(line) * 20)):
            f.write(line * 20 + "\n")
    for split in ("blank_lines", "file"):
        source = Source(files_cfg([tmp_path / "big.txt"], "text", split=split))
        tracemalloc.start()
        n = sum(1 for k in range(source.slices()) for _ in source.documents(k))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n > 1 and peak < 12 * 2**20, (split, n, peak)  # the whole file would be 48 MB


def test_hf_source_from_a_locally_saved_dataset(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"content": [TEXT + str(i) for i in range(30)]})
    ds.save_to_disk(tmp_path / "ds")
    cfg = data_cfg(source="hf", hf={"name": str(tmp_path / "ds"), "field": "content"})
    assert documents(cfg) == [TEXT + str(i) for i in range(30)]  # the slices, in order, are the dataset
    m = prepare(cfg, tmp_path / "out")
    assert m["corpus"]["name"] == str(tmp_path / "ds") and m["corpus"]["slices"] == 2
    with pytest.raises(DataError, match="no field 'text'"):
        documents(data_cfg(source="hf", hf={"name": str(tmp_path / "ds")}))


@pytest.mark.parametrize(
    "name, content, fmt, fragment",
    [
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
        documents(files_cfg([path], fmt))
    assert str(path) in str(e.value) and fragment in str(e.value)


def test_glob_matching_nothing_is_named(tmp_path):
    with pytest.raises(DataError, match="matches no file"):
        documents(files_cfg([tmp_path / "*.nothing"], "text"))


def test_empty_files_and_records_are_skipped_and_counted(tmp_path):
    """A real tree (site-packages) has empty __init__.py files and records with empty text."""
    for i in range(6):
        (tmp_path / f"m{i}.py").write_text(TEXT + str(i))
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "blank.py").write_text("\n\n")
    m = prepare(files_cfg([tmp_path / "*.py"], "text", split="file"), tmp_path / "out")
    assert m["corpus"]["documents"] == 8 and m["corpus"]["empty_documents"] == 2
    rows = [{"text": TEXT}, {"text": ""}, {"text": None}, {"text": TEXT + "x"}]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in rows * 5))
    m = prepare(files_cfg([tmp_path / "r.jsonl"], "jsonl"), tmp_path / "out2")
    assert m["corpus"]["empty_documents"] == 10 and m["corpus"]["documents"] == 20


def test_slices_and_shards_do_not_change_the_tokens(tmp_path, tiny_config):
    """At least 4 shards from 3 slice jobs: exactly the tokens, order, evaluation set and held-out
    batches of a one-shard, one-job preparation."""
    base = load_study(tiny_config).data
    one = prepare(dataclasses.replace(base, slices=1, shard_tokens=10**9), tmp_path / "one")
    many = prepare(dataclasses.replace(base, slices=3, shard_tokens=20000), tmp_path / "many")
    assert len(one["shards"]) == 1 and len(many["shards"]) >= 4 and many["corpus"]["slices"] == 3
    a, b = TokenData.open(tmp_path / "one"), TokenData.open(tmp_path / "many")
    assert a.stream.offsets[-1] == b.stream.offsets[-1]
    assert np.array_equal(a.stream.tokens(0, int(a.stream.offsets[-1])), b.stream.tokens(0, int(b.stream.offsets[-1])))
    for name in ("eval", "heldout"):
        assert np.array_equal(a.split(name), b.split(name))
    rows = np.arange(a.train_sequences)
    assert a.train_sequences == b.train_sequences and np.array_equal(a.train_batch(rows), b.train_batch(rows))
    assert {k: v for k, v in one["splits"].items() if k != "train"} == {k: v for k, v in many["splits"].items() if k != "train"}


def test_killed_slice_job_leaves_no_half_shard_and_resumes(tmp_path, tiny_config):
    import random
    import signal
    import time

    options = dataclasses.replace(load_study(tiny_config).data, max_documents=400, slices=1, shard_tokens=30000)
    ref = prepare(options, tmp_path / "ref")
    work = DataPaths(tmp_path / "work")
    shutil.copytree(DataPaths(tmp_path / "ref").tokenizer, work.tokenizer)
    rng = random.Random(3)
    cmd = [sys.executable, "-m", "scaledyn", "prepare-data", "--stage", "slice", "--slice", "0", "--options",
           options.to_json(), "--out", str(work.dir)]
    for _ in range(3):
        p = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 5.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
        for shard in work.shards.rglob("shard_*.bin"):  # every shard on disk is whole and recorded
            rec = json.loads(shard.with_suffix(".json").read_text()) if shard.with_suffix(".json").exists() else None
            assert rec is None or shard.stat().st_size == rec["shard"]["tokens"] * 2
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not [p for p in work.shards.rglob("*") if p.name.startswith(".")]  # no temporaries left
    record = json.loads(work.slice_record(0).read_text())
    assert record["shards"] == [{k: v for k, v in s.items() if k != "offset"} for s in ref["shards"]]


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


def test_tokenizer_sample_of_a_larger_corpus(tmp_path):
    """The BPE sample: exactly k non-empty documents, in stream order, the same for one seed and
    another set for another seed, across slices; the whole corpus when it holds no more than k."""
    from scaledyn.data.prepare import sample_documents

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": "" if i % 7 == 0 else f"doc {i}"}) + "\n" for i in range(200)))
    options = dataclasses.replace(files_cfg([corpus], "jsonl"), slices=1)
    nonempty = [d for d in documents(options) if d]

    def sample(k, seed):
        return list(sample_documents(Source(options), k, seed))

    picked = sample(20, 0)
    assert len(picked) == len(set(picked)) == 20 and set(picked) <= set(nonempty)
    assert picked == sorted(picked, key=nonempty.index)  # stream order
    assert sample(20, 0) == picked and sample(20, 1) != picked
    assert sample(10_000, 0) == nonempty
    corpus.write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(DataError, match="no non-empty documents"):
        sample(5, 0)


def test_content_hash_streams_files_and_hashes_array_views_by_content(tmp_path):
    import hashlib

    from scaledyn.hashing import sha256

    a = np.arange(3_000_000, dtype=np.uint16)
    path = tmp_path / "a.bin"
    a.tofile(path)  # 6 MB: several 1 MiB reads
    assert sha256(path) == sha256(a) == hashlib.sha256(a.tobytes()).hexdigest()
    assert sha256(a[::2]) == hashlib.sha256(a[::2].copy().tobytes()).hexdigest()


def test_installed_packages_as_corpus_in_the_order_named():
    """source: packages reads the .py files of installed packages (found without importing them),
    package by package; the manifest's provenance records each one's distribution and version."""
    import importlib.metadata
    import importlib.util
    from pathlib import Path

    from scaledyn.errors import ConfigError

    study = load_study({"data": {"source": "packages", "packages": ["yaml", "email"], "max_documents": 10**6}})
    src = Source(study.data)
    files = src._files()
    yaml_dir = Path(importlib.util.find_spec("yaml").submodule_search_locations[0])
    email_dir = Path(importlib.util.find_spec("email").submodule_search_locations[0])
    n_yaml = sum(1 for f in files if f.is_relative_to(yaml_dir))
    assert n_yaml > 5 and all(f.is_relative_to(yaml_dir) for f in files[:n_yaml])
    assert all(f.is_relative_to(email_dir) and f.suffix == ".py" for f in files[n_yaml:]) and len(files) > n_yaml
    docs = list(src.documents(0))
    assert docs[0] == files[0].read_text()
    prov = src.provenance()
    assert prov["packages"]["yaml"] == f"PyYAML {importlib.metadata.version('PyYAML')}"
    assert prov["n_files"] == len(files) and len(prov["file_list_sha256"]) == 64
    with pytest.raises(ConfigError, match=r"data\.packages\[1\]: 'no_such_package_xyz' is not an installed package"):
        load_study({"data": {"source": "packages", "packages": ["yaml", "no_such_package_xyz"]}})
    with pytest.raises(ConfigError, match=r"data\.packages: source 'packages' needs at least one"):
        load_study({"data": {"source": "packages"}})


def test_wheels_as_corpus_pinned_by_their_hash(tmp_path, monkeypatch):
    """source: wheels reads the UTF-8 .py files inside the named wheel files (in order, each in
    name order), refuses a wheel whose sha256 differs, and says how to fetch a missing one."""
    import hashlib
    import zipfile

    from scaledyn.data.sources import fetch_wheels
    from scaledyn.errors import DataError

    monkeypatch.setenv("SCALEDYN_WHEELS", str(tmp_path))
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo/b.py", "print('b')\n")
        z.writestr("demo/a.py", "print('a')\n")
        z.writestr("demo/latin1.py", "s = '\xe9'\n".encode("latin-1"))
        z.writestr("demo-1.0.dist-info/METADATA", "Name: demo\n")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    study = load_study({"data": {"source": "wheels", "wheels": [{"file": wheel.name, "sha256": digest}]}})
    src = Source(study.data)
    assert [str(m).split("!")[1] for m in src._files()] == ["demo/a.py", "demo/b.py"]
    assert list(src.documents(0)) + list(src.documents(1)) == ["print('a')\n", "print('b')\n"]
    prov = src.provenance()
    assert prov["wheels"] == [{"file": wheel.name, "sha256": digest}] and prov["n_files"] == 2
    assert fetch_wheels(study.data.wheels) == [wheel]  # present and intact: nothing to download
    wrong = load_study({"data": {"source": "wheels", "wheels": [{"file": wheel.name, "sha256": "0" * 64}]}})
    with pytest.raises(DataError, match=r"data\.wheels\[0\]: .* has sha256 [0-9a-f]{64}, not the 0{64} named"):
        Source(wrong.data)._files()
    missing = load_study({"data": {"source": "wheels", "wheels": [{"file": "other-2.0-py3-none-any.whl", "sha256": digest}]}})
    with pytest.raises(DataError, match=r"data\.wheels\[0\]: .*other-2\.0-py3-none-any\.whl is missing; fetch it with "
                                        r"`scaledyn fetch-wheels` .*pip download --no-deps .* other==2\.0"):
        Source(missing.data)._files()
    from scaledyn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data\.wheels"):
        load_study({"data": {"source": "wheels"}})
    with pytest.raises(ConfigError, match=r"data\.wheels\.0\.file: .*is not allowed: The wheel.s file name"):
        load_study({"data": {"source": "wheels", "wheels": [{"file": "../x-1-py3-none-any.whl", "sha256": digest}]}})
