"""Paired effects of an intervention: each intervention run against the baseline run of the same
size and seed (same data, order, evaluation set and held-out batches), with intervals.

Quantities and their intervals (one estimand per row of the table):

- t_d as a ratio (intervention / baseline), L_d and r_d as differences: from the two fits'
  bootstraps. A fit's bootstrap gives draws θ* of the broken power law; the difference of two
  independent fits has draws a* - b* (draw i of one with draw i of the other), and its basic
  interval is 2Δ - quantiles(Δ*), as each fit's own intervals are formed (t_d on the log scale,
  so its ratio interval is exp of the log difference's). Only where both runs decelerate: where
  one has no break the row says so and carries no number.
- D before and after t_d (each run's own t_d), on Δt = t (checkpoint pairs) and Δt = 1 (one step):
  the mean D of the phase's rows; each row's standard error from its spread (D_std over the
  example folds, or over the held-out batches, over the root of their count), and the phase's
  the mean of its rows' (they share examples, so their errors are correlated: this bounds it
  from above); the difference's interval is normal with the two errors added in quadrature. It
  is the evaluation's uncertainty: training noise is in it only through seeds (pooled rows).
- The final evaluation loss: the mean over evaluation examples of the per-example difference
  (the same examples in both runs), with a t interval.

With several seeds a pooled row per intervention and size averages the seeds' effects (log for
the ratio) with a t interval over seeds, which includes the seed-to-seed variation that each
seed's own interval leaves out. Whether an effect changes with size is a WLS trend of the effects
on log N (stats.trends.regress), estimable from three sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .fit import DERIVED, BrokenPowerLawFit, InsufficientFit, on_scale
from .trends import MIN_SIZES, ScalingTrend, regress
from .zsl import FOLDS  # a Δt = t row's D_std is taken over these example folds

FIT_QUANTITIES = {"t_d": "ratio", "L_d": "difference", "r_d": "difference"}
PHASES = ("before t_d", "after t_d")
VARIANTS = {"dt=t": "Δt = t", "dt=1": "Δt = 1"}
COLUMNS = ["intervention", "size", "N", "seed", "quantity", "scale", "baseline_run", "run", "baseline", "treated",
           "effect", "effect_lo", "effect_hi", "null", "excludes_null", "n", "note"]


@dataclass(frozen=True)
class Pair:
    """An intervention run and its baseline (same size and seed)."""

    intervention: str
    size: str
    N: int
    seed: int
    run: str
    baseline: str


def _row(pair: Pair, quantity: str, scale: str, **values) -> dict:
    null = 1.0 if scale == "ratio" else 0.0
    lo, hi = values.get("effect_lo"), values.get("effect_hi")
    excludes = None if lo is None or not np.isfinite([lo, hi]).all() else bool(lo > null or hi < null)
    return {"intervention": pair.intervention, "size": pair.size, "N": pair.N, "seed": pair.seed, "quantity": quantity,
            "scale": scale, "baseline_run": pair.baseline, "run": pair.run, "null": null, "excludes_null": excludes,
            **{k: values.get(k) for k in ("baseline", "treated", "effect", "effect_lo", "effect_hi", "n")},
            "note": values.get("note", "")}


def _no_break(pair: Pair, fits: dict) -> str:
    missing = [(r, getattr(fits[r], "verdict", "no fit")) for r in (pair.baseline, pair.run)
               if not isinstance(fits[r], BrokenPowerLawFit) or fits[r].verdict != "deceleration"]
    return "; ".join(f"{r}: no deceleration (verdict {v})" for r, v in missing)


def fit_effects(pair: Pair, a: BrokenPowerLawFit | InsufficientFit, b: BrokenPowerLawFit | InsufficientFit,
                alpha: float = 0.05) -> list[dict]:
    """t_d ratio, L_d and r_d differences of fit `a` (intervention) against `b` (baseline)."""
    why = _no_break(pair, {pair.run: a, pair.baseline: b})
    if why:
        return [_row(pair, q, scale, note=f"not compared: {why}") for q, scale in FIT_QUANTITIES.items()]
    est_a, est_b = on_scale(a.broken.theta, a.T), on_scale(b.broken.theta, b.T)
    da, db = a.draws(), b.draws()
    k = min(len(da), len(db))
    rows = []
    for q, scale in FIT_QUANTITIES.items():
        j = DERIVED.index(q)
        if scale == "ratio":  # on the log scale, where the fits form t_d's intervals
            d_hat, d_star = est_a[j] - est_b[j], da[:k, j] - db[:k, j]
            to = np.exp
            va, vb = math.exp(est_a[j]), math.exp(est_b[j])
        else:
            lin = (lambda v: np.exp(v)) if q == "L_d" else (lambda v: v)
            va, vb = float(lin(est_a[j])), float(lin(est_b[j]))
            d_hat, d_star = va - vb, lin(da[:k, j]) - lin(db[:k, j])
            to = (lambda v: v)
        roots = d_star[np.isfinite(d_star)] - d_hat
        if len(roots) < 2:
            rows.append(_row(pair, q, scale, baseline=vb, treated=va, effect=float(to(d_hat)), n=int(len(roots)),
                             note="no interval: too few finite bootstrap draws"))
            continue
        lo, hi = d_hat - np.quantile(roots, 1 - alpha / 2), d_hat - np.quantile(roots, alpha / 2)
        rows.append(_row(pair, q, scale, baseline=vb, treated=va, effect=float(to(d_hat)), effect_lo=float(to(lo)),
                         effect_hi=float(to(hi)), n=int(len(roots))))
    return rows


def _phase_mean(z: pd.DataFrame, t_d: float, phase: str, variant: str) -> tuple[float, float, int] | None:
    """Mean D of a run's rows in a phase, its standard error, and the row count (None if empty).
    Before t_d: the changes that end by t_d; after: those that start at t_d or later (a change
    across t_d belongs to neither)."""
    rows = z[z["step_next"] <= t_d] if phase == "before t_d" else z[z["step"] >= t_d]
    if not len(rows):
        return None
    k = rows["n"].astype(float) if variant == "dt=1" else pd.Series(FOLDS, index=rows.index, dtype=float)
    se = rows["D_std"].astype(float) / np.sqrt(k)
    # the rows share their examples (and batches), so their errors are not independent: the phase's
    # error is the mean of the rows' (as if perfectly correlated), an upper bound, not sqrt(sum se^2)/m
    return float(rows["D"].mean()), float(se.mean()), len(rows)


def d_effects(pair: Pair, zsl: pd.DataFrame, t_d: dict[str, float | None], alpha: float = 0.05) -> list[dict]:
    """D before and after each run's own t_d, Δt = t and Δt = 1 (evaluation set, per token)."""
    rows, z = [], stats.norm.ppf(1 - alpha / 2)
    sel = zsl[(zsl["split"] == "eval") & (zsl["granularity"] == "token")]
    for variant, label in VARIANTS.items():
        for phase in PHASES:
            quantity = f"D {phase} ({label})"
            missing = [r for r in (pair.baseline, pair.run) if t_d.get(r) is None]
            if missing:
                rows.append(_row(pair, quantity, "difference", note=f"not compared: no t_d for {', '.join(missing)}"))
                continue
            got = {r: _phase_mean(sel[(sel["run"] == r) & (sel["variant"] == variant)], t_d[r], phase, variant)
                   for r in (pair.baseline, pair.run)}
            empty = [r for r, g in got.items() if g is None]
            if empty:
                rows.append(_row(pair, quantity, "difference",
                                 note=f"not compared: no {label} measurement {phase} for {', '.join(empty)}"))
                continue
            (mb, sb, nb), (ma, sa, na) = got[pair.baseline], got[pair.run]
            se = math.hypot(sa, sb)
            rows.append(_row(pair, quantity, "difference", baseline=mb, treated=ma, effect=ma - mb,
                             effect_lo=ma - mb - z * se, effect_hi=ma - mb + z * se, n=min(na, nb)))
    return rows


def loss_effect(pair: Pair, treated: pd.Series, baseline: pd.Series, alpha: float = 0.05) -> dict:
    """Final evaluation loss: the mean per-example difference over the shared evaluation examples."""
    both = pd.concat({"a": treated, "b": baseline}, axis=1).dropna()
    diff = (both["a"] - both["b"]).to_numpy(float)
    n = len(diff)
    if n < 2:
        return _row(pair, "final eval loss", "difference", note="not compared: fewer than 2 shared evaluation examples")
    mean, se = float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(n))
    q = stats.t.ppf(1 - alpha / 2, n - 1)
    return _row(pair, "final eval loss", "difference", baseline=float(both["b"].mean()), treated=float(both["a"].mean()),
                effect=mean, effect_lo=mean - q * se, effect_hi=mean + q * se, n=n)


def pooled(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """One row per intervention × size × quantity with two or more seeds' effects: their mean (log
    for ratios) and a t interval over seeds; seed = -1 marks it."""
    rows = []
    ok = table[table["effect"].notna()]
    for (i, size, q), g in ok.groupby(["intervention", "size", "quantity"], sort=False):
        if len(g) < 2:
            continue
        ratio = g["scale"].iloc[0] == "ratio"
        v = np.log(g["effect"].astype(float)) if ratio else g["effect"].astype(float)
        m, se = float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(g)))
        t = stats.t.ppf(1 - alpha / 2, len(g) - 1)
        to = np.exp if ratio else (lambda x: x)
        first = g.iloc[0]
        pair = Pair(i, size, int(first["N"]), -1, "", "")
        row = _row(pair, q, first["scale"], effect=float(to(m)), effect_lo=float(to(m - t * se)),
                   effect_hi=float(to(m + t * se)), n=len(g), note=f"mean over {len(g)} seeds, t interval over seeds")
        rows.append({**row, "baseline": g["baseline"].mean(), "treated": g["treated"].mean(), "run": "", "baseline_run": ""})
    return pd.DataFrame(rows, columns=COLUMNS)


def effects_table(pairs: list[Pair], fits: dict, zsl: pd.DataFrame, eval_losses: dict[str, pd.Series],
                  alpha: float = 0.05) -> pd.DataFrame:
    """Every effect of every pair, and the seed-pooled rows; `eval_losses[run]` is the per-example
    evaluation loss at the final step, indexed by example id."""
    t_d = {r: (f.derived()["t_d"] if isinstance(f, BrokenPowerLawFit) and f.verdict == "deceleration" else None)
           for r, f in fits.items()}
    rows = []
    for p in pairs:
        rows += fit_effects(p, fits[p.run], fits[p.baseline], alpha)
        rows += d_effects(p, zsl, t_d, alpha)
        rows.append(loss_effect(p, eval_losses[p.run], eval_losses[p.baseline], alpha))
    table = pd.DataFrame(rows, columns=COLUMNS)
    return pd.concat([table, pooled(table, alpha)], ignore_index=True) if len(table) else table


def size_trends(table: pd.DataFrame, alpha: float = 0.05) -> dict[tuple[str, str], ScalingTrend]:
    """Per intervention and quantity: the effect (log for ratios) against log N, over the sizes
    with an effect (the pooled row where there are seeds, else the one seed's), weights from the
    intervals (se = half-width / z); keyed by (intervention, quantity)."""
    z = stats.norm.ppf(1 - alpha / 2)
    out = {}
    ok = table[table["effect_lo"].notna()]
    for (i, q), g in ok.groupby(["intervention", "quantity"], sort=False):
        pts = [s[s["seed"] == -1].iloc[0] if (s["seed"] == -1).any() else s.iloc[0]
               for _, s in g.groupby("size", sort=False) if len(s) == 1 or (s["seed"] == -1).any()]
        ratio = bool(len(pts)) and pts[0]["scale"] == "ratio"
        f = np.log if ratio else (lambda x: x)
        y = [float(f(r["effect"])) for r in pts]
        se = [float((f(r["effect_hi"]) - f(r["effect_lo"])) / (2 * z)) for r in pts]
        trend = ScalingTrend(f"{i}: {'log ' if ratio else ''}{q}", [r["size"] for r in pts],
                             [float(r["N"]) for r in pts], y, se)
        out[(i, q)] = regress(trend) if len(pts) >= MIN_SIZES else trend
    return out
