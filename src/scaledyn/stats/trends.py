"""Across sizes: how L_d, r_d and c0 move with model size, using each size's own uncertainty.

Only runs whose verdict is `deceleration` enter (the quantities of a rejected break mean
nothing). Each size contributes one point: its estimate and standard error, from the bootstrap of
its fit, or, with several seeds, the mean over seeds and the larger of the seed-to-seed standard
error and the bootstrap one. The trend is a weighted least-squares line on log N with weights
1 / se^2 (statsmodels WLS). If the points scatter more around the line than their standard errors
allow (dispersion > 1, e.g. seed noise a single seed cannot show), the covariance is scaled up by
that dispersion; it is never scaled down. Slopes are tested with t on n - 2 degrees of freedom.
A trend is called significant only when that test says so at the stated level.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from .. import atomic
from ..records import RunRecord
from .fit import MIN_POINTS, BrokenPowerLawFit, InsufficientFit, read_fit

TARGETS = {"log L_d": ("L_d", True), "r_d": ("r_d", False), "c0": ("c0", False)}  # target: (quantity, log scale)
MIN_SIZES = 3


@dataclass
class ScalingTrend:
    """target = intercept + slope * log N over the sizes with a deceleration, in statsmodels' style."""

    target: str
    sizes: list[str]
    N: list[float]
    y: list[float]
    se: list[float]
    slope: float = math.nan
    intercept: float = math.nan
    cov: list[list[float]] | None = None
    dispersion: float = math.nan
    df: int = 0
    runs_excluded: int = 0
    seeds: list[int] = field(default_factory=list)  # per size: seeds that decelerate
    seed_sd: list[float | None] = field(default_factory=list)  # per size: seed-to-seed SD of the target (2+ seeds)
    boot_se: list[float] = field(default_factory=list)  # per size: one run's bootstrap SE (root mean square)
    method: str = ("WLS of the per-size estimates on log N, weights 1/se^2 (bootstrap se, or seed spread), "
                   "covariance scaled by max(1, dispersion), t test on n - 2 df")

    @property
    def estimable(self) -> bool:
        return self.cov is not None

    @property
    def slope_se(self) -> float:
        return math.sqrt(self.cov[1][1]) if self.estimable else math.nan

    @property
    def p_value(self) -> float:
        if not self.estimable or self.slope_se == 0:
            return math.nan
        return float(2 * stats.t.sf(abs(self.slope / self.slope_se), self.df))

    def conf_int(self, alpha: float = 0.05) -> tuple[float, float]:
        if not self.estimable:
            return math.nan, math.nan
        q = stats.t.ppf(1 - alpha / 2, self.df)
        return self.slope - q * self.slope_se, self.slope + q * self.slope_se

    def significant(self, alpha: float = 0.05) -> bool:
        return self.estimable and self.p_value < alpha

    def predict(self, N, alpha: float | None = None):
        """The line at N (on the target's scale); with alpha, also its confidence band (lo, hi)."""
        x = np.log(np.asarray(N, float))
        mean = self.intercept + self.slope * x
        if alpha is None:
            return mean
        X = np.column_stack([np.ones_like(x), x])
        se = np.sqrt(np.einsum("ij,jk,ik->i", X, np.array(self.cov), X))
        q = stats.t.ppf(1 - alpha / 2, self.df)
        return mean, mean - q * se, mean + q * se

    def summary(self, alpha: float = 0.05) -> str:
        if not self.estimable:
            n = len(self.sizes)
            return (f"{self.target} vs log N: not estimable ({n} size{'' if n == 1 else 's'} with a deceleration; "
                    f"need at least {MIN_SIZES})")
        lo, hi = self.conf_int(alpha)
        direction = "falls" if self.slope < 0 else "rises"
        verdict = "significant" if self.significant(alpha) else "not significant"
        return (f"{self.target} {direction} with log N: slope {self.slope:.4g} ({1 - alpha:.0%} CI {lo:.4g} .. {hi:.4g}), "
                f"p = {self.p_value:.3g}, {len(self.sizes)} sizes, dispersion {self.dispersion:.2g}: {verdict} at "
                f"{alpha:.0%}")

    def to_json(self) -> dict:
        d = asdict(self)
        lo, hi = self.conf_int()
        d.update(slope_se=self.slope_se, p_value=self.p_value, slope_lo=lo, slope_hi=hi, significant=self.significant())
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}  # strict JSON

    @classmethod
    def from_json(cls, d: dict) -> "ScalingTrend":
        fields = cls.__dataclass_fields__
        return cls(**{k: math.nan if v is None and fields[k].type == "float" else v for k, v in d.items() if k in fields})


def one_run_se(runs: pd.DataFrame, quantity: str) -> float:
    """One run's bootstrap standard error of `quantity` among these runs (root mean square)."""
    return float(np.sqrt(np.mean(runs[f"{quantity}_se"].astype(float) ** 2)))


def size_points(table: pd.DataFrame, target: str) -> pd.DataFrame:
    """One row per size with a deceleration: estimate and standard error on the target's scale,
    with the seeds behind it, their seed-to-seed SD and one run's bootstrap SE."""
    quantity, log = TARGETS[target]
    d = table[table["verdict"] == "deceleration"]
    rows = []
    for size, g in d.groupby("size", sort=False):
        v = np.log(g[quantity].astype(float)) if log else g[quantity].astype(float)
        boot = one_run_se(g, quantity)
        sd = float(v.std(ddof=1)) if len(g) > 1 else None
        se = boot / math.sqrt(len(g)) if sd is None else max(boot, sd) / math.sqrt(len(g))
        rows.append({"size": size, "N": float(g["N"].iloc[0]), "y": float(v.mean()), "se": se, "seeds": len(g),
                     "seed_sd": sd, "boot_se": boot})
    return pd.DataFrame(rows, columns=["size", "N", "y", "se", "seeds", "seed_sd", "boot_se"])


def fit_trend(table: pd.DataFrame, target: str) -> ScalingTrend:
    pts = size_points(table, target)
    excluded = int((table["verdict"] != "deceleration").sum())
    return regress(ScalingTrend(target, pts["size"].tolist(), pts["N"].tolist(), pts["y"].tolist(), pts["se"].tolist(),
                                runs_excluded=excluded, seeds=pts["seeds"].tolist(), seed_sd=pts["seed_sd"].tolist(),
                                boot_se=pts["boot_se"].tolist()))


SEED_QUANTITIES = ("t_d", "L_d", "r_d")
SEED_COLUMNS = (["size", "N", "seeds", "decelerating"]
                + [f"{q}_{k}" for q in SEED_QUANTITIES for k in ("mean", "seed_sd", "min", "max", "boot_se")])


def seed_table(sizes: pd.DataFrame) -> pd.DataFrame:
    """Sizes run with several seeds: for t_d, L_d and r_d over the seeds that decelerate, the mean,
    the seed-to-seed standard deviation (and range), and beside them one run's bootstrap standard
    error (root mean square over those seeds): what a single run's interval can show of the spread."""
    rows = []
    for size, g in sizes.groupby("size", sort=False):
        if g["seed"].nunique() < 2:
            continue
        d = g[g["verdict"] == "deceleration"]
        row = {"size": size, "N": int(g["N"].iloc[0]), "seeds": int(g["seed"].nunique()), "decelerating": len(d)}
        for q in SEED_QUANTITIES:
            v = d[q].astype(float)
            row.update({f"{q}_mean": v.mean() if len(v) else None, f"{q}_seed_sd": v.std(ddof=1) if len(v) > 1 else None,
                        f"{q}_min": v.min() if len(v) else None, f"{q}_max": v.max() if len(v) else None,
                        f"{q}_boot_se": one_run_se(d, q) if len(v) else None})
        rows.append(row)
    return pd.DataFrame(rows, columns=SEED_COLUMNS)


def seed_lines(seeds: pd.DataFrame) -> list[str]:
    """One line per size with several seeds: the mean and seed spread of t_d, L_d and r_d."""
    lines = []
    for _, r in seeds.iterrows():
        head = f"{r['size']} (N = {int(r['N']):,}): {r['seeds']} seeds, {r['decelerating']} decelerate"
        if r["decelerating"] < 2:
            lines.append(f"{head}: too few to measure a seed-to-seed spread")
            continue
        parts = [f"{q} mean {r[f'{q}_mean']:{fmt}} (seed SD {r[f'{q}_seed_sd']:{fmt}}, range {r[f'{q}_min']:{fmt}}-"
                 f"{r[f'{q}_max']:{fmt}}; one run's bootstrap SE {r[f'{q}_boot_se']:{fmt}})"
                 for q, fmt in (("t_d", ".0f"), ("L_d", ".3f"), ("r_d", ".3f"))]
        lines.append(f"{head}: " + ", ".join(parts))
    return lines


def regress(trend: ScalingTrend) -> ScalingTrend:
    """The WLS line through a trend's per-size points (left unfitted with fewer than MIN_SIZES)."""
    pts = pd.DataFrame({"N": trend.N, "y": trend.y, "se": trend.se})
    if len(pts) < MIN_SIZES or pts["N"].nunique() < 2 or not np.all(pts["se"] > 0):
        return trend
    X = sm.add_constant(np.log(pts["N"].to_numpy()))
    w = 1 / pts["se"].to_numpy() ** 2
    res = sm.WLS(pts["y"].to_numpy(), X, weights=w).fit()
    dispersion = float(res.scale)  # sum w r^2 / (n - 2): 1 if the points scatter as their se say
    cov = np.asarray(res.normalized_cov_params) * max(1.0, dispersion)
    trend.slope, trend.intercept = float(res.params[1]), float(res.params[0])
    trend.cov, trend.dispersion, trend.df = cov.tolist(), dispersion, int(res.df_resid)
    return trend


SIZE_COLUMNS = ["run", "size", "seed", "N", "N_total", "verdict", "p_value", "n_points", "t_d", "t_d_lo", "t_d_hi",
                "t_d_se", "t_d_corrected", "t_d_corrected_lo", "t_d_corrected_hi", "L_d", "L_d_lo", "L_d_hi", "L_d_se", "r_d",
                "r_d_lo", "r_d_hi", "r_d_se", "c0", "c0_se", "c1", "f1", "slope_ratio", "L_T_hat", "L_T_hat_lo",
                "L_T_hat_hi", "L_T", "rsle", "other_basin", "schedule_verdict", "lr_area_verdict", "lr_area_t_d",
                "lr_area_t_d_steps", "lr_area_t_d_steps_lo", "lr_area_t_d_steps_hi", "warnings"]


def per_size_table(fits: list[BrokenPowerLawFit | InsufficientFit], runs: list[RunRecord]) -> pd.DataFrame:
    """One row per run: the broken fit's quantities (whatever the verdict; `verdict` says whether
    they describe a break), each with the interval of its own estimand, bootstrap standard errors on
    the trend's scales, and the fit's warning codes. t_d, L_d, r_d and L_T_hat describe the smoothed
    curve (the paper's estimands); t_d_corrected the per-step curve. A run too short to fit has
    verdict `insufficient` and no quantities."""
    rows = []
    for f, r in zip(fits, runs):
        if isinstance(f, InsufficientFit):
            rows.append({"run": r.run, "size": r.size, "seed": r.seed, "N": r.non_embedding_params,
                         "N_total": r.total_params, "verdict": f.verdict, "n_points": f.n_points,
                         "warnings": "too_few_points"})
            continue
        d, ci, se = f.derived(), f.conf_int(), f.stderr()
        row = {"run": r.run, "size": r.size, "seed": r.seed, "N": r.non_embedding_params,
               "N_total": r.total_params, "verdict": f.verdict, "p_value": f.test.p_value, "n_points": f.n_points,
               "c1": d["c1"], "f1": d["f1"], "slope_ratio": d["slope_ratio"],
               "L_T": f.L_T, "rsle": f.broken.rsle, "other_basin": f.other_basin,
               "warnings": " ".join(w["code"] for w in f.warnings()), **schedule_columns(f.schedule)}
        for k in ("t_d", "t_d_corrected", "L_d", "r_d", "L_T_hat", "c0"):
            row[k] = d[k]
            if k != "c0":
                row[f"{k}_lo"], row[f"{k}_hi"] = ci[k] if ci[k] else (None, None)
            if k in se:
                row[f"{k}_se"] = se[k]
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=SIZE_COLUMNS).sort_values(["N", "seed"]).reset_index(drop=True)


def schedule_columns(record: dict | None) -> dict:
    """The schedule verdict and the learning-rate-time fit's t_d (in S, and in steps with its interval)."""
    lr = (record or {}).get("lr_area", {})
    lo, hi = lr.get("ci_t_d_steps") or (None, None)
    return {"schedule_verdict": record["verdict"] if record else None, "lr_area_verdict": lr.get("verdict"),
            "lr_area_t_d": lr.get("t_d"), "lr_area_t_d_steps": lr.get("t_d_steps"), "lr_area_t_d_steps_lo": lo,
            "lr_area_t_d_steps_hi": hi}


def _interval(r, k: str, fmt: str) -> str:
    lo, hi = r[f"{k}_lo"], r[f"{k}_hi"]
    return "no interval" if lo is None or pd.isna(lo) else f"95% CI {lo:{fmt}}-{hi:{fmt}}"


def run_lines(sizes: pd.DataFrame) -> list[str]:
    """One line per run: its verdict, and t_d (smoothed curve, comparable with published values),
    t_d_corrected (the training's own), L_d and r_d, each with its interval, where it decelerates."""
    lines = []
    for _, r in sizes.iterrows():
        warned = f" [warnings: {r['warnings']}]" if isinstance(r.get("warnings"), str) and r["warnings"] else ""
        withdrawn = [w for code, w in (("window_unstable", "in the main fit window only: it moves across fit windows"),)
                     if code in warned] + (["the schedule's break, not the training's (schedule verdict)"]
                                           if r.get("schedule_verdict") == "schedule" else [])
        head = f"- {r['run']} (N = {int(r['N']):,}): {r['verdict']}" + (f" ({'; '.join(withdrawn)})" if withdrawn else "")
        if r["verdict"] == "deceleration":
            corr = ("" if r["t_d_corrected"] is None or pd.isna(r["t_d_corrected"]) else
                    f"; per-step t_d {r['t_d_corrected']:.0f} ({_interval(r, 't_d_corrected', '.0f')})")
            lines.append(f"{head} at t_d = {r['t_d']:.0f} steps ({_interval(r, 't_d', '.0f')}){corr}, "
                         f"L_d = {r['L_d']:.3f} ({_interval(r, 'L_d', '.3f')}), r_d = {r['r_d']:.3f} "
                         f"({_interval(r, 'r_d', '.3f')}); p = {r['p_value']:.3g}{warned}")
        elif r["verdict"] == "insufficient":
            lines.append(f"{head} (too short to fit: {int(r['n_points'])} points after the transient cut, "
                         f"{MIN_POINTS} needed)")
        else:
            why = {"smooth_bend": "the curve bends, but no abrupt break", "power_law": "a single power law fits as well",
                   "acceleration": "the loss falls faster after the break"}[r["verdict"]]
            lines.append(f"{head} ({why}; p = {r['p_value']:.3g}){warned}")
    return [line[2:] for line in lines]


def summary_text(sizes: pd.DataFrame, seeds: pd.DataFrame, trends: list[ScalingTrend], alpha: float = 0.05) -> str:
    lines = ["Loss deceleration across sizes (N = non-embedding parameters)", ""]
    lines += [f"- {line}" for line in run_lines(sizes)] + [""]
    seeds = seed_lines(seeds)
    if seeds:
        lines += ["Across seeds (sizes with several)", ""] + [f"- {line}" for line in seeds] + [""]
    lines += [f"- {t.summary(alpha)}" for t in trends]
    return "\n".join(lines) + "\n"


def fit_scaling_files(fit_paths, run_paths, out_sizes, out_seeds, out_trends,
                      out_summary) -> tuple[pd.DataFrame, list[ScalingTrend]]:
    fits = [read_fit(p) for p in fit_paths]
    runs = [RunRecord.read(p) for p in run_paths]
    sizes = per_size_table(fits, runs)
    trends = [fit_trend(sizes, t) for t in TARGETS]
    with atomic.atomic_path(out_sizes) as tmp:
        sizes.to_csv(tmp, index=False)
    seeds = seed_table(sizes)
    with atomic.atomic_path(out_seeds) as tmp:
        seeds.to_csv(tmp, index=False)
    atomic.write_json(out_trends, [t.to_json() for t in trends])
    atomic.write_text(out_summary, summary_text(sizes, seeds, trends))
    return sizes, trends


def read_trends(path) -> list[ScalingTrend]:
    return [ScalingTrend.from_json(d) for d in json.loads(Path(path).read_text())]
