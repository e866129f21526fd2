"""Atomic writes: a killed job never leaves a half-written file that looks finished.

Everything is written under a temporary name, fsynced, then renamed; rename is atomic on POSIX
file systems, including the network file systems clusters use. Temporaries are hidden (a leading
dot), or staged in a folder outside the datasets that readers scan, and a job removes its own
stale ones before writing again. Finished files get the permissions a plain open() would give
(0666 minus the umask), not mkstemp's private 0600, so group members on a cluster can read them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


def _tmp_sibling(path: Path, staging: Path | None, tag: str) -> Path:
    where = staging or path.parent
    where.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=tag or f".{path.name}.", suffix=".tmp", dir=where)
    os.close(fd)
    os.chmod(name, 0o666 & ~UMASK)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | Path, staging: str | Path | None = None, tag: str = ""):
    """Yield a temporary path to write to; it replaces `path` only if the block succeeds.

    `staging`: a folder on the same file system to hold the temporary (default: beside `path`),
    `tag`: its name prefix, so that `remove_stale(staging, tag)` finds this write's leftovers."""
    path = Path(path)
    tmp = _tmp_sibling(path, Path(staging) if staging else None, tag)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary directory that is renamed to `path` (replacing it) if the block succeeds.
    Its name is `.<name>.<random>.tmp`: see `remove_stale`. Files that a library wrote into it
    privately (safetensors writes its weights 0600) are given the umask's mode before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~UMASK)
    try:
        yield tmp
        follow_umask(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def follow_umask(folder: Path) -> None:
    """Every file and directory under `folder` gets the mode a plain open() or mkdir() would give."""
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(Path(root) / d, 0o777 & ~UMASK)
        for f in files:
            os.chmod(Path(root) / f, 0o666 & ~UMASK)


def remove_stale(folder: str | Path, prefix: str) -> list[Path]:
    """Remove temporaries (files or directories) named `<prefix>...tmp` or `<prefix>...old` that
    a killed writer left in `folder`; only call it where no other writer of that prefix can run."""
    folder, gone = Path(folder), []
    if not folder.is_dir():
        return gone
    for p in folder.iterdir():
        if p.name.startswith(prefix) and p.name.endswith((".tmp", ".old")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p)
    return gone
