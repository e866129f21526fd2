"""Calibration of the interventions' effect intervals on pairs of curves with a known shift of t_d.

    python -m benchmarks.calibrate_effects [--pairs 40] [--ratios 1 1.5 2] [--noises iid ar1]
                                           [--jobs 2] [--csv OUT.csv] [--readme docs/calibration.md]

Each pair is a baseline and an "intervention" curve, 3,000 steps each, drawn independently from
broken power laws that differ only in their break (t_d of the intervention = ratio x the
baseline's, the baseline's drawn in the middle half of the fitted range; c0 = 0.3, slope ratio 8,
sharpness 0.2; noise as in calibrate_breaks: iid 3% per step, or AR(1) with rho 0.9). Both go
through the procedure users get: `fit_curve` with default options (200 draws), then the effects
stage's `fit_effects`. The truth of the t_d ratio is that of the two noise-free curves smoothed and
fitted like the data (the estimand is the smoothed curve's t_d, as in each fit's own interval).

Reported per (noise, ratio): pairs where both fits decelerate (only those are compared), the rate
of intervals that exclude a ratio of 1 (the false-positive rate at ratio 1, the power otherwise),
coverage of the true ratio, and how often the estimate lies inside its own interval.
"""

from __future__ import annotations

import argparse
import math
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import publish
from benchmarks.calibrate_breaks import SIGMA, noise
from scaledyn.stats.curve import Preprocessing, fit_points, validate_curve
from scaledyn.stats.effects import Pair, fit_effects
from scaledyn.stats.fit import fit_curve
from scaledyn.stats.options import FitOptions
from scaledyn.stats.powerlaws import bnsl_log, refine_bnsl

T = 3000
PAIR = Pair("shift", "sim", 0, 0, "treated", "baseline")


def smoothed_t_d(theta: np.ndarray, t: np.ndarray, options: FitOptions) -> float:
    """t_d of the noise-free curve, smoothed and fitted like the data."""
    mean = np.exp(bnsl_log(np.log(t), theta) + SIGMA**2 / 2)
    idx, ys, _ = fit_points(t, mean, Preprocessing("log-ma", "log", options.transient_steps, "no"))
    return math.exp(refine_bnsl(np.log(t[idx]), np.log(ys), theta).theta[3])


def one_pair(args) -> dict:
    noise_kind, ratio, i = args
    rng = np.random.default_rng(np.random.SeedSequence([int(ratio * 1000), ["iid", "ar1"].index(noise_kind), i]))
    t = np.arange(1, T + 1, dtype=float)
    lo, hi = math.log(100), math.log(T / ratio)
    logd = rng.uniform(lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo))  # both breaks inside the fitted range
    options = FitOptions.defaults()
    thetas = {name: np.array([math.log(10), 0.3, 0.3 / 8 - 0.3, logd + math.log(r), 0.2])
              for name, r in (("baseline", 1.0), ("treated", ratio))}
    fits = {name: fit_curve(validate_curve(t, np.exp(bnsl_log(np.log(t), th) + noise(noise_kind, T, rng))),
                            options) for name, th in thetas.items()}
    truth = smoothed_t_d(thetas["treated"], t, options) / smoothed_t_d(thetas["baseline"], t, options)
    row = {"noise": noise_kind, "ratio": ratio, "truth": truth, "compared": False}
    r = next(x for x in fit_effects(PAIR, fits["treated"], fits["baseline"]) if x["quantity"] == "t_d")
    if r["effect_lo"] is not None:
        row.update(compared=True, estimate=r["effect"], lo=r["effect_lo"], hi=r["effect_hi"],
                   excludes_1=bool(r["excludes_null"]), covers=bool(r["effect_lo"] <= truth <= r["effect_hi"]),
                   inside=bool(r["effect_lo"] <= r["effect"] <= r["effect_hi"]))
    return row


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (nz, ratio), g in rows.groupby(["noise", "ratio"]):
        c = g[g["compared"]]
        out.append({"noise": nz, "ratio": ratio, "pairs": len(g), "compared": len(c),
                    "excludes 1": c["excludes_1"].mean() if len(c) else math.nan,
                    "covers truth": c["covers"].mean() if len(c) else math.nan,
                    "estimate in interval": c["inside"].mean() if len(c) else math.nan,
                    "median width (log)": float(np.median(np.log(c["hi"] / c["lo"]))) if len(c) else math.nan})
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame, pairs: int) -> str:
    shown = table.copy()
    for col in ("excludes 1", "covers truth", "estimate in interval"):
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.0%}")
    return (f"The t_d ratio of an intervention against its baseline ({pairs} pairs per row, 3,000-step curves, the "
            "procedure users get; `python -m benchmarks.calibrate_effects`). At ratio 1 `excludes 1` is the "
            "false-positive rate (aim: at most 5%); above 1 it is the power. `covers truth` aims at 95%.\n\n"
            + shown.to_markdown(index=False, floatfmt=".3g") + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--ratios", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    p.add_argument("--noises", nargs="+", choices=["iid", "ar1"], default=["iid", "ar1"])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--csv", type=Path)
    p.add_argument("--readme", type=Path)
    p.add_argument("--block", default="calibration-effects")
    args = p.parse_args(argv)
    tasks = [(nz, r, i) for nz in args.noises for r in args.ratios for i in range(args.pairs)]
    with Pool(args.jobs) as pool:
        rows = pd.DataFrame(pool.map(one_pair, tasks, chunksize=1))
    table = summarise(rows)
    publish(markdown(table, args.pairs), table, args.csv, args.readme, args.block)


if __name__ == "__main__":
    main()
