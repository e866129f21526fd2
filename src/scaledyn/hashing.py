"""The one content hash: sha256 of bytes, a file, an array's data, or canonical JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def sha256(obj) -> str:
    if isinstance(obj, Path):
        data = obj.read_bytes()
    elif isinstance(obj, np.ndarray):
        data = np.ascontiguousarray(obj).tobytes()
    elif isinstance(obj, bytes):
        data = obj
    else:  # JSON-able: canonical form, so equal content gives an equal hash
        data = json.dumps(obj, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()
