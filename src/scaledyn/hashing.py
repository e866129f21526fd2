"""The one content hash: sha256 of bytes, a file, an array's data, or canonical JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256(obj) -> str:
    """Arrays are hashed in place and files in 1 MiB reads: a shard is never copied to be hashed.
    numpy is imported only for an array, so the config check can hash where only Snakemake is."""
    h = hashlib.sha256()
    if isinstance(obj, Path):
        with open(obj, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    elif hasattr(obj, "__array_interface__"):
        import numpy as np

        h.update(np.ascontiguousarray(obj).data)
    elif isinstance(obj, bytes):
        h.update(obj)
    else:  # JSON-able: canonical form, so equal content gives an equal hash
        h.update(json.dumps(obj, sort_keys=True).encode())
    return h.hexdigest()
