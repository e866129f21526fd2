"""The effects stage: every intervention run against its baseline, read from the study's files
(fits, run records, the ZSL table, the final checkpoint's per-example evaluation losses) and
written to results/fits/effects.csv. The statistics are stats/effects.py's."""

from __future__ import annotations

import pandas as pd

from .. import atomic
from ..records import RunRecord
from ..stats.effects import Pair, effects_table
from ..stats.fit import read_fit
from . import losses


def final_eval_losses(losses_root, run: str, step: int) -> pd.Series:
    """Per-example (per-sequence) evaluation loss of a run at `step`, indexed by example id."""
    seq = losses.load(losses_root, "sequences", runs=[run], steps=[step], splits=["eval"],
                      columns=["example_id", "loss"])
    return seq.set_index("example_id")["loss"].sort_index()


def write_effects(run_paths, fit_paths, zsl_table, losses_root, out, alpha: float = 0.05) -> pd.DataFrame:
    """Pairs every intervention run (a run record whose name carries one) with the baseline of its
    size and seed among the given runs; `run_paths` and `fit_paths` in the same order."""
    records = {r.run: r for r in map(RunRecord.read, run_paths)}
    fits = dict(zip(records, map(read_fit, fit_paths)))
    pairs = [Pair(r.intervention, r.size, r.non_embedding_params, r.seed, r.run, r.baseline_run)
             for r in records.values() if r.intervention]
    step = {r.run: r.steps for r in records.values()}
    used = {p.run for p in pairs} | {p.baseline for p in pairs}
    eval_losses = {r: final_eval_losses(losses_root, r, step[r]) for r in used}
    table = effects_table(pairs, fits, pd.read_parquet(zsl_table), eval_losses, alpha)
    with atomic.atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    return table
