"""The one content hash: sha256 of bytes, a file, an array's data, or canonical JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def sha256(obj) -> str:
    """Arrays are hashed in place and files in 1 MiB reads: a shard is never copied to be hashed."""
    h = hashlib.sha256()
    if isinstance(obj, Path):
        with open(obj, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    elif isinstance(obj, np.ndarray):
        h.update(np.ascontiguousarray(obj).data)
    elif isinstance(obj, bytes):
        h.update(obj)
    else:  # JSON-able: canonical form, so equal content gives an equal hash
        h.update(json.dumps(obj, sort_keys=True).encode())
    return h.hexdigest()
