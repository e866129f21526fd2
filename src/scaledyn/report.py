"""The paper's figures and tables for a finished study, plus a Markdown summary.

Every figure function returns its matplotlib Figure, so tests check what it claims (lines per size,
log axes, labels) instead of pixels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import atomic, fit, losses, zsl  # noqa: E402

FIGURES = ("loss_curves", "scaling_trends", "zsl_dtt", "zsl_dt1", "d_vs_m", "loss_change_hist")


def _colors(n):
    return plt.cm.viridis(np.linspace(0.05, 0.9, max(n, 1)))


def fig_loss_curves(curves: dict[str, pd.DataFrame], fits: dict[str, dict]):
    fig, ax = plt.subplots(figsize=(7, 5))
    for color, (run, df) in zip(_colors(len(curves)), curves.items()):
        ax.plot(df["step"], df["loss"], color=color, alpha=0.15, lw=0.5, gid="raw")
        ax.plot(df["step"], fit.log_moving_average(df["loss"].to_numpy()), color=color, lw=1, label=run)
        f = fits[run]
        if f.get("model") == "broken_power_law":
            p = f["broken_power_law"]["params"]
            theta = np.array([p["log_b"], p["c0"], p["c1"], p["log_d1"], p["f1"]])
            x = np.geomspace(f["fit_range"][0], f["fit_range"][1], 200)
            ax.plot(x, np.exp(fit.bnsl_log(np.log(x), theta)), color=color, lw=2, gid="fit")
            pre = f["L_d"] * (x / f["t_d"]) ** (-f["c0"])
            post = f["L_d"] * (x / f["t_d"]) ** (-f["r_d"])
            ax.plot(x, pre, color=color, ls=":", lw=1, gid="segment")
            ax.plot(x, post, color=color, ls="--", lw=1, gid="segment")
            ax.axvline(f["t_d"], color=color, ls="-.", lw=0.8, gid="t_d")
    ax.set(xscale="log", yscale="log", xlabel="step", ylabel="training loss (nats)",
           title="Loss (log moving average; faint: per step), fits (dotted: before t_d, dashed: after)")
    ax.legend(fontsize=8)
    return fig


def fig_scaling(sizes: pd.DataFrame, trends: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    d = sizes[sizes["has_break"]]
    for ax, col, target in ((axes[0], "L_d", "log L_d"), (axes[1], "r_d", "r_d")):
        lo, hi = d[f"{col}_lo"].astype(float), d[f"{col}_hi"].astype(float)
        ax.errorbar(d["N"], d[col], yerr=[d[col] - lo, hi - d[col]], fmt="o", capsize=3, label="per run (95% CI)")
        t = trends[trends["target"] == target]
        if len(t) and not math.isnan(t["slope"].iloc[0]) and len(d) >= 3:
            import statsmodels.api as sm

            xs = np.log(d["N"].astype(float).to_numpy())
            ys = np.log(d[col].astype(float)).to_numpy() if col == "L_d" else d[col].astype(float).to_numpy()
            res = sm.OLS(ys, sm.add_constant(xs)).fit()
            grid = np.linspace(xs.min(), xs.max(), 50)
            pred = res.get_prediction(sm.add_constant(grid)).summary_frame(alpha=0.05)
            tf = np.exp if col == "L_d" else (lambda v: v)
            ax.plot(np.exp(grid), tf(pred["mean"]), color="C1", label=f"OLS, p = {t['p_value'].iloc[0]:.2g}")
            ax.fill_between(np.exp(grid), tf(pred["mean_ci_lower"]), tf(pred["mean_ci_upper"]), color="C1", alpha=0.2)
        ax.set(xlabel="non-embedding parameters N", ylabel=col)
        if len(d):
            ax.set_xscale("log")
            if col == "L_d":
                ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no run has a detected break", ha="center", transform=ax.transAxes)
    fig.suptitle("Deceleration loss L_d and post-deceleration rate r_d against model size")
    return fig


def fig_zsl(table: pd.DataFrame, variant: str, split: str = "eval", granularity: str = "token"):
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    d = table[(table["variant"] == variant) & (table["split"] == split) & (table["granularity"] == granularity)]
    runs = sorted(d["run"].unique(), key=lambda r: d[d["run"] == r]["size"].iloc[0])
    for color, run in zip(_colors(len(runs)), runs):
        r = d[d["run"] == run].sort_values("step")
        for ax, m in zip(axes, zsl.METRICS):
            ax.plot(r["step"], r[m], "o-", color=color, label=run, ms=3)
            std = r[f"{m}_std"].astype(float)
            if std.notna().any():
                ax.fill_between(r["step"], r[m] - std, r[m] + std, color=color, alpha=0.2)
    for ax, m, label in zip(axes, zsl.METRICS, ("D (destructive interference)", "M (mean |change|)", "|ΔL|")):
        ax.set(xlabel="checkpoint step t", ylabel=label)
        if len(d):
            ax.set_xscale("log")
            if m != "D" and (d[m] > 0).all():
                ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, f"no {variant} measurements in this study", ha="center", transform=ax.transAxes)
    if len(d):
        axes[0].legend(fontsize=7)
    fig.suptitle(f"Zero-sum learning, Δt = {variant[3:]} ({split} set, per {granularity}; bands ± std)")
    return fig


def fig_d_vs_m(table: pd.DataFrame, fits: dict[str, dict]):
    fig, ax = plt.subplots(figsize=(6, 5))
    d = table[(table["variant"] == "dt=t") & (table["split"] == "eval") & (table["granularity"] == "token")]
    runs = sorted(d["run"].unique())
    for color, run in zip(_colors(len(runs)), runs):
        r = d[d["run"] == run].sort_values("step")
        ax.plot(r["M"], r["D"], "o-", color=color, ms=3, label=run)
        t_d = fits.get(run, {}).get("t_d")
        if t_d and len(r):
            i = int(np.argmin(np.abs(np.log(r["step"].to_numpy()) - math.log(t_d))))
            ax.plot(r["M"].iloc[i], r["D"].iloc[i], "*", color=color, ms=14, mec="k", gid="t_d")
    ax.set(xscale="log", xlabel="M (mean |per-token loss change|)", ylabel="D",
           title="D against M over training (star: checkpoint nearest t_d)")
    ax.legend(fontsize=8)
    return fig


def fig_histograms(changes: dict[str, tuple[int, np.ndarray]]):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, (run, (step, x)) in zip(_colors(len(changes)), changes.items()):
        lim = np.quantile(np.abs(x), 0.995) if len(x) else 1
        ax.hist(np.clip(x, -lim, lim), bins=80, histtype="step", color=color, density=True,
                label=f"{run}: steps {step}→{2 * step}")
    ax.set(yscale="log", xlabel="per-token loss change (nats)", ylabel="density",
           title="Per-token loss changes between checkpoints around t_d (eval set)")
    ax.legend(fontsize=8)
    return fig


def fit_table(sizes: pd.DataFrame) -> pd.DataFrame:
    cols = ["run", "N", "has_break", "t_d", "t_d_lo", "t_d_hi", "L_d", "L_d_lo", "L_d_hi", "r_d", "r_d_lo", "r_d_hi",
            "c0", "c1", "f1", "L_T_hat", "L_T", "rsle"]
    return sizes[cols]


def _save(fig, out: Path, name: str) -> None:
    for ext in ("png", "pdf"):
        with atomic.atomic_path(out / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _hist_step(steps: list[int], t_d: float | None, requested: list[int]) -> int | None:
    pairs = [t for t, _ in zsl.log2_pairs(steps)]
    if not pairs:
        return None
    if requested:
        ok = [s for s in requested if s in pairs]
        return ok[0] if ok else None
    target = math.log(t_d) if t_d else math.log(pairs[-1])
    return min(pairs, key=lambda t: abs(math.log(t) - target))


def build_report(results, runs: list[str], out, histogram_steps: list[int] = ()) -> dict:
    results, out = Path(results), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = {r: pd.read_csv(results / "runs" / r / "train_log.csv") for r in runs}
    fits = {r: json.loads((results / "fits" / f"{r}.json").read_text()) for r in runs}
    table = pd.read_csv(results / "fits" / "scaling.csv")
    sizes = table[table["kind"] == "size"].copy()
    sizes["has_break"] = sizes["has_break"].astype(str).str.lower() == "true"
    trends = table[table["kind"] == "trend"]
    z = pd.read_parquet(results / "zsl" / "zsl.parquet")

    hist = {}
    for r in runs:
        steps = sorted(int(p.name[5:]) for p in (results / "losses" / "tokens" / f"run={r}").glob("step=*"))
        t = _hist_step(steps, fits[r].get("t_d"), list(histogram_steps))
        if t is not None:
            tok = losses.load(results / "losses", "tokens", runs=[r], steps=[t, 2 * t], splits=["eval"])
            w = tok.pivot_table(index=["example_id", "position"], columns="step", values="loss")
            hist[r] = (t, (w[2 * t] - w[t]).to_numpy())

    _save(fig_loss_curves(curves, fits), out, "loss_curves")
    _save(fig_scaling(sizes, trends), out, "scaling_trends")
    _save(fig_zsl(z, "dt=t"), out, "zsl_dtt")
    _save(fig_zsl(z, "dt=1"), out, "zsl_dt1")
    _save(fig_d_vs_m(z, fits), out, "d_vs_m")
    _save(fig_histograms(hist), out, "loss_change_hist")

    ft = fit_table(sizes)
    with atomic.atomic_path(out / "fits.csv") as tmp:
        ft.to_csv(tmp, index=False)
    atomic.write_text(out / "fits.md", ft.to_markdown(index=False, floatfmt=".4g") + "\n")
    atomic.write_text(out / "fits.tex", ft.to_latex(index=False, float_format="%.4g"))
    summary = summary_markdown(sizes, trends, z, fits)
    atomic.write_text(out / "summary.md", summary)
    return {"summary": summary}


def summary_markdown(sizes, trends, z, fits) -> str:
    from .trends import summary_text

    lines = ["# Study summary", "", "## Loss deceleration", "", "```", summary_text(sizes, trends).rstrip(), "```", "",
             "## Zero-sum learning around the deceleration step", ""]
    d = z[(z["split"] == "eval") & (z["granularity"] == "token")]
    for run in sorted(d["run"].unique()):
        t_d = fits.get(run, {}).get("t_d")
        r = d[d["run"] == run]
        for variant in ("dt=t", "dt=1"):
            v = r[r["variant"] == variant]
            if not len(v):
                continue
            ref = t_d or float(v["step"].max())
            row = v.iloc[int(np.argmin(np.abs(np.log(v["step"].to_numpy(dtype=float)) - math.log(ref))))]
            lines.append(f"- {run}, Δt = {variant[3:]}, step {int(row['step'])} (t_d ≈ {t_d:.0f}): " if t_d else
                         f"- {run}, Δt = {variant[3:]}, step {int(row['step'])} (no break): ")
            lines[-1] += f"D = {row['D']:.3f} ± {row['D_std']:.3f}, M = {row['M']:.4f}, |ΔL| = {row['dL']:.4f}"
    return "\n".join(lines) + "\n"
