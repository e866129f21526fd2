"""Zero-sum learning measures (docs/method.md section 6), for per-example loss changes x_i:
    D(x)  = 1 - |sum x| / sum |x|    destructive interference, in [0, 1]
    M(x)  = mean |x|                 magnitude of per-example change
    |dL|  = |mean x| = (1 - D) M     change of the mean loss
and their spread over example folds. The tables that hold them are analysis/zsl.py's; the
effects of interventions (stats/effects.py) read that spread back.
"""

from __future__ import annotations

import numpy as np

METRICS = ("D", "M", "dL")
FOLDS = 5


def metrics(x) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64).ravel()
    total_abs = np.abs(x).sum()
    s = x.sum()
    return {
        "D": float(1 - abs(s) / total_abs) if total_abs > 0 else 0.0,
        "M": float(total_abs / len(x)) if len(x) else 0.0,
        "dL": float(abs(s) / len(x)) if len(x) else 0.0,
    }


def fold_spread(x: np.ndarray, fold_of: np.ndarray) -> dict[str, float]:
    """Standard deviation of each metric over FOLDS disjoint example subsets (by example_id)."""
    per = [metrics(x[fold_of == f]) for f in range(FOLDS) if np.any(fold_of == f)]
    return {f"{m}_std": float(np.std([p[m] for p in per], ddof=1)) if len(per) > 1 else float("nan") for m in METRICS}
