"""Zero-sum learning tables (docs/method.md section 6): the checkpoint-to-checkpoint analysis, and
the ZSL table's writing and merging. The measures themselves are stats/zsl.py's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import atomic
from ..errors import DataError
from ..stats.zsl import FOLDS, METRICS, fold_spread, metrics
from . import losses


def batch_means(rows: list[dict], keys: dict, batches: int) -> pd.DataFrame:
    """Metrics measured once per held-out batch (rows keyed by split, granularity and, unless `keys`
    fixes it, variant), averaged over the batches beside their std, as table rows; `keys` holds
    the columns that are the same for every row (run, size, seed, step, ...)."""
    by = [c for c in ("variant", "split", "granularity") if c not in keys]
    agg = pd.DataFrame(rows).groupby(by, sort=False).agg(
        n=("D", "size"), **{m: (m, "mean") for m in METRICS}, **{f"{m}_std": (m, "std") for m in METRICS}
    ).reset_index()
    for col, value in keys.items():
        agg[col] = value
    agg["spread"] = f"std over {batches} held-out batches"
    return agg[losses.ZSL_COLUMNS]


def log2_pairs(steps) -> list[tuple[int, int]]:
    """Consecutive log2 checkpoints (t, 2t) among the available steps."""
    have = set(int(s) for s in steps)
    return [(t, 2 * t) for t in sorted(have) if t > 0 and 2 * t in have and (t & (t - 1)) == 0]


def listed_pairs(steps) -> list[tuple[int, int]]:
    """A published suite's pairs: every listed step t to 2t where the list has it, otherwise to the
    next listed step (Pythia's 512 -> 1000), so no stretch of the list is left out."""
    have = sorted(set(int(s) for s in steps))
    return [(t, 2 * t if t > 0 and 2 * t in have else have[i + 1]) for i, t in enumerate(have[:-1])]


PAIRS = {"log2": log2_pairs, "listed": listed_pairs}


def dtt_table(losses_root, run: str, out, pairs: str = "log2") -> pd.DataFrame:
    """Delta t = t: D, M, |dL| between checkpoints t and 2t (or the `pairs` rule's partner) from
    the exported per-token losses."""
    tok = losses.load(losses_root, "tokens", runs=[run], columns=["split", "example_id", "position", "loss", "step"])
    seqs = losses.load(losses_root, "sequences", runs=[run], columns=["size", "seed"]).iloc[:1]
    size, seed = (seqs["size"].iloc[0], int(seqs["seed"].iloc[0])) if len(seqs) else ("", -1)
    rows = []
    for split, part in tok.groupby("split", observed=True):
        wide = part.pivot_table(index=["example_id", "position"], columns="step", values="loss", aggfunc="first")
        eid = wide.index.get_level_values("example_id").to_numpy()
        for t, t2 in PAIRS[pairs](wide.columns):
            x = (wide[t2] - wide[t]).to_numpy(dtype=np.float64)
            ok = np.isfinite(x)
            per_seq = pd.Series(x[ok]).groupby(eid[ok]).mean()
            for gran, vals, ids in (("token", x[ok], eid[ok]), ("sequence", per_seq.to_numpy(), per_seq.index.to_numpy())):
                rows.append({"run": run, "size": size, "seed": seed, "step": t, "step_next": t2, "dt": t2 - t, "variant": "dt=t",
                             "split": split, "granularity": gran, "n": len(vals), **metrics(vals),
                             **fold_spread(vals, ids % FOLDS), "spread": f"std over {FOLDS} example folds"})
    df = pd.DataFrame(rows, columns=losses.ZSL_COLUMNS)
    write_table(df, out)
    return df


def write_table(df: pd.DataFrame, out) -> None:
    """Parquet with the ZSL table's schema (every column, typed and described), and CSV beside it
    for people who open tables in a spreadsheet."""
    out, schema = Path(out), losses.zsl_schema()
    unknown = sorted(set(df.columns) - set(schema.names))
    if unknown:
        raise DataError(f"{out}: columns {unknown} are not in the ZSL table's schema (analysis/losses.py ZSL_FIELDS)")
    df = df.reindex(columns=schema.names)
    with atomic.atomic_path(out) as tmp:
        pq.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False), tmp, compression="zstd")
    with atomic.atomic_path(out.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)


def merge_tables(inputs, out) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in inputs]
    df = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else frames[0]
    write_table(df, out)
    return df
