"""Across sizes: how L_d, r_d and c0 move with model size (OLS on log N, statsmodels)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm

from . import atomic

TARGETS = {"log_L_d": "log L_d", "r_d": "r_d", "c0": "c0"}


def per_size_table(fits: list[dict], runs: list[dict]) -> pd.DataFrame:
    rows = []
    for f, r in zip(fits, runs):
        ci = f.get("ci") or {}
        rows.append({
            "run": r["run"], "size": r["size"], "seed": r["seed"], "N": r["non_embedding_params"],
            "N_total": r["total_params"], "has_break": f["break_test"]["has_break"],
            "t_d": f.get("t_d"), "t_d_lo": (ci.get("t_d") or [None, None])[0], "t_d_hi": (ci.get("t_d") or [None, None])[1],
            "L_d": f.get("L_d"), "L_d_lo": (ci.get("L_d") or [None, None])[0], "L_d_hi": (ci.get("L_d") or [None, None])[1],
            "r_d": f.get("r_d"), "r_d_lo": (ci.get("r_d") or [None, None])[0], "r_d_hi": (ci.get("r_d") or [None, None])[1],
            "c0": f.get("c0"), "c1": f.get("c1"), "f1": f.get("f1"), "L_T_hat": f.get("L_T_hat"), "L_T": f.get("L_T"),
            "rsle": f.get("rsle"), "delta_bic": f["break_test"]["delta_bic"],
        })
    return pd.DataFrame(rows).sort_values(["N", "seed"]).reset_index(drop=True)


def regress(sizes: pd.DataFrame, x: str = "N") -> pd.DataFrame:
    """y = a + slope * log N for each target, over the runs whose curve has a break."""
    d = sizes[sizes["has_break"]].copy()
    d["log_L_d"] = np.log(d["L_d"].astype(float))
    rows = []
    for col, label in TARGETS.items():
        ok = d[[col, x]].dropna()
        row = {"target": label, "n_runs": len(ok), "slope": np.nan, "slope_lo": np.nan, "slope_hi": np.nan,
               "p_value": np.nan, "intercept": np.nan, "r_squared": np.nan}
        if len(ok) >= 3 and ok[x].nunique() >= 2:
            X = sm.add_constant(np.log(ok[x].astype(float).to_numpy()))
            res = sm.OLS(ok[col].astype(float).to_numpy(), X).fit()
            lo, hi = res.conf_int(0.05)[1]
            row.update({"slope": res.params[1], "slope_lo": lo, "slope_hi": hi, "p_value": res.pvalues[1],
                        "intercept": res.params[0], "r_squared": res.rsquared})
        rows.append(row)
    return pd.DataFrame(rows)


def summary_text(sizes: pd.DataFrame, trends: pd.DataFrame) -> str:
    lines = ["Loss deceleration across sizes (N = non-embedding parameters)", ""]
    for _, r in sizes.iterrows():
        if r["has_break"]:
            lines.append(f"- {r['run']} (N = {int(r['N']):,}): break at t_d = {r['t_d']:.0f} steps, L_d = {r['L_d']:.3f}, "
                         f"r_d = {r['r_d']:.3f}")
        else:
            lines.append(f"- {r['run']} (N = {int(r['N']):,}): no break detected (a single power law fits as well)")
    lines.append("")
    for _, t in trends.iterrows():
        if math.isnan(t["slope"]):
            lines.append(f"- {t['target']} vs log N: not estimable ({int(t['n_runs'])} runs with a break; need at least 3)")
            continue
        direction = "falls" if t["slope"] < 0 else "rises"
        sig = "significant" if t["p_value"] < 0.05 else "not significant"
        lines.append(f"- {t['target']} {direction} with log N: slope {t['slope']:.4f} "
                     f"(95% CI {t['slope_lo']:.4f} .. {t['slope_hi']:.4f}), p = {t['p_value']:.3g}, "
                     f"R^2 = {t['r_squared']:.2f}, {int(t['n_runs'])} runs: {sig} at 5%")
    return "\n".join(lines) + "\n"


def fit_scaling_files(fit_paths, run_paths, out_table, out_summary) -> pd.DataFrame:
    fits = [json.loads(Path(p).read_text()) for p in fit_paths]
    runs = [json.loads(Path(p).read_text()) for p in run_paths]
    sizes = per_size_table(fits, runs)
    trends = regress(sizes)
    table = pd.concat([sizes.assign(kind="size"), trends.assign(kind="trend")], ignore_index=True)
    with atomic.atomic_path(out_table) as tmp:
        table.to_csv(tmp, index=False)
    atomic.write_text(out_summary, summary_text(sizes, trends))
    return table
