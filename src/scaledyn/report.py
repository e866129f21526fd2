"""The paper's figures and tables for a finished study, plus a Markdown summary.

Everything is read back as typed results (BrokenPowerLawFit, ScalingTrend), and every statement in
the summary follows from a verdict or an interval. Runs are ordered by model size, then seed, and
each size keeps one colour in every figure. Every figure function returns its matplotlib Figure,
so tests check what it claims (lines per size, log axes, labels) instead of pixels.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import atomic  # noqa: E402
from .analysis import losses, zsl
from .layout import Layout, ReportPaths, RunPaths  # noqa: E402
from .options import ReportOptions  # noqa: E402
from .records import RunRecord
from .stats.curve import log_moving_average  # noqa: E402
from .stats.effects import size_trends  # noqa: E402
from .stats.fit import BrokenPowerLawFit, InsufficientFit, read_fit  # noqa: E402
from .stats.lrtime import describe  # noqa: E402
from .stats.trends import ScalingTrend, per_size_table, read_trends, run_lines, seed_lines, seed_table  # noqa: E402
from .stats.zsl import METRICS  # noqa: E402

FIGURES = ReportPaths.FIGURES
BREAKS = ("deceleration", "acceleration")


def plain_log_ticks(ax) -> None:
    """Log axes labelled 20, 50, 100 rather than 2 x 10^1: easier to read off, and no overlapping
    minor labels (every minor tick labelled within one decade, 2x and 5x within two, none beyond)."""
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    two_five = ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else "")
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale != "log":
            continue
        lo, hi = sorted(axis.get_view_interval())
        axis.set_major_formatter(plain)
        decades = np.log10(hi / lo) if lo > 0 else np.inf
        axis.set_minor_formatter(plain if decades < 1 else two_five if decades < 2 else ticker.NullFormatter())


def fmt_n(n: float) -> str:
    """1408 -> 1.4k, 25344 -> 25k, 1.4e7 -> 14M."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            v = n / div
            return f"{v:.2g}{unit}" if v < 10 else f"{v:.0f}{unit}"
    return f"{n:.0f}"


@dataclass
class StudyResults:
    """A finished study as the report reads it: runs in size order, their fits and curves."""

    runs: list[str]
    meta: dict[str, RunRecord]
    fits: dict[str, BrokenPowerLawFit | InsufficientFit]
    curves: dict[str, pd.DataFrame]
    trends: list[ScalingTrend]
    zsl: pd.DataFrame
    windows: dict[str, pd.DataFrame]
    effects: pd.DataFrame | None = None  # interventions against their baselines (effects.csv), if any

    @classmethod
    def read(cls, run_dirs, fit_paths, trends, zsl_table, window_paths=(), effects=None) -> "StudyResults":
        """From the runs' directories and their fit files (same order), trends.json, zsl.parquet,
        the fit-window tables (same order; optional) and effects.csv (optional)."""
        paths = [RunPaths(d) for d in run_dirs]
        meta = {p.name: RunRecord.read(p.run_json) for p in paths}
        fits = {p.name: read_fit(f) for p, f in zip(paths, fit_paths)}
        curves = {p.name: pd.read_csv(p.train_log) for p in paths}
        order = sorted(meta, key=lambda r: (meta[r].non_embedding_params, meta[r].seed, r))
        windows = {p.name: pd.read_csv(w) for p, w in zip(paths, window_paths)}
        return cls(order, meta, fits, curves, read_trends(trends), pd.read_parquet(zsl_table), windows,
                   pd.read_csv(effects) if effects else None)

    @classmethod
    def of_study(cls, layout: Layout, runs: list[str]) -> "StudyResults":
        return cls.read([layout.run(r).dir for r in runs], [layout.fit(r) for r in runs], layout.fit_trends,
                        layout.zsl_table, [layout.fit_windows(r) for r in runs])

    @property
    def sizes(self) -> pd.DataFrame:
        """The per-run fit table; runs whose verdict or t_d moves across fit windows carry window_unstable."""
        t = per_size_table([self.fits[r] for r in self.runs], [self.meta[r] for r in self.runs])
        unstable = set(window_lines(self)[1])
        t["warnings"] = [" ".join(filter(None, [w, "window_unstable" if r in unstable else ""]))
                         for r, w in zip(t["run"], t["warnings"])]
        return t

    def color(self, run: str):
        sizes = list(dict.fromkeys(self.meta[r].size for r in self.runs))
        cmap = plt.cm.viridis(np.linspace(0.05, 0.85, max(len(sizes), 2)))
        return cmap[sizes.index(self.meta[run].size)]

    def linestyle(self, run: str):
        """Solid for baseline runs; each intervention its own dash pattern (colour is the size)."""
        names = list(dict.fromkeys(self.meta[r].intervention for r in self.runs if self.meta[r].intervention))
        i = self.meta[run].intervention
        return "-" if i is None else [(0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (3, 3))][names.index(i) % 4]

    def label(self, run: str) -> str:
        m = self.meta[run]
        seeds = {self.meta[r].seed for r in self.runs}
        return (f"N = {fmt_n(m.non_embedding_params)}" + (f", seed {m.seed}" if len(seeds) > 1 else "")
                + (f", {m.intervention}" if m.intervention else ""))

    def sparse(self, run: str) -> bool:
        """A suite whose curve is its evaluation loss at the listed revisions, not a per-step log."""
        m = self.meta[run]
        return m.is_suite and not m.spec["curve"]

    def t_d(self, run: str) -> float | None:
        """t_d of a run whose verdict is a break, else None."""
        f = self.fits[run]
        return f.derived()["t_d"] if f.verdict in BREAKS else None

    def final_verdict(self, run: str) -> str:
        """The verdict as the whole study reads it: the main fit's, qualified where the fit-window
        check or the schedule verdict withdraws it (what legends and headlines say)."""
        v = self.fits[run].verdict.replace("_", " ")
        if self.fits[run].verdict not in BREAKS:
            return v
        notes = [n for n, on in (("moves across fit windows", run in window_lines(self)[1]),
                                 ("the schedule's", (self.fits[run].schedule or {}).get("verdict") == "schedule")) if on]
        return v + (f" ({'; '.join(notes)})" if notes else "")


# ----------------------------------------------------------------------------- figures


def fig_loss_curves(res: StudyResults):
    fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
    for k, run in enumerate(res.runs):
        df, f, color = res.curves[run], res.fits[run], res.color(run)
        verdict = f"{res.label(run)}: {res.final_verdict(run)}"
        if res.sparse(run):  # a suite's evaluation loss at its revisions: points, nothing to smooth
            ax.plot(df["step"], df["loss"], "o", color=color, ms=4, gid="raw", label=f"{verdict} (evaluation loss)")
        else:
            ax.plot(df["step"], df["loss"], color=color, alpha=0.12, lw=0.5, gid="raw")
            ax.plot(df["step"], log_moving_average(df["loss"].to_numpy()), color=color, lw=1, label=verdict,
                    ls=res.linestyle(run))
        if isinstance(f, InsufficientFit):  # too short to fit: its points, no fitted law
            continue
        x = np.geomspace(*f.fit_range, 200)
        ax.plot(x, f.predict(x), color=color, lw=2.2, alpha=0.8, gid="fit")
        if f.verdict in BREAKS:
            d = f.derived()
            ax.plot(x, d["L_d"] * (x / d["t_d"]) ** (-d["c0"]), color=color, ls=":", lw=1, gid="segment")
            ax.plot(x, d["L_d"] * (x / d["t_d"]) ** (-d["r_d"]), color=color, ls="--", lw=1, gid="segment")
            ax.axvline(d["t_d"], color=color, ls="-.", lw=0.8, gid="t_d")
            ax.annotate(f"t_d {d['t_d']:.0f}", (d["t_d"], 1 - 0.05 * (k + 1)), xycoords=("data", "axes fraction"),
                        color=color, fontsize=7, ha="left", xytext=(3, 0), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="step", ylabel="training loss (nats)")
    plain_log_ticks(ax)
    ax.set_title("Training loss (log moving average; faint: per step) and the verdict's fit\n"
                 "breaks: dotted before t_d, dashed after", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    return fig


def fig_scaling(res: StudyResults):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    sizes = res.sizes
    d = sizes[sizes["verdict"] == "deceleration"]
    for ax, col, target in ((axes[0], "L_d", "log L_d"), (axes[1], "r_d", "r_d")):
        for _, r in d.iterrows():
            ax.errorbar(r["N"], r[col], yerr=[[r[col] - r[f"{col}_lo"]], [r[f"{col}_hi"] - r[col]]], fmt="o", capsize=3,
                        color=res.color(r["run"]), label=res.label(r["run"]))
        trend = next(t for t in res.trends if t.target == target)
        if trend.estimable:
            grid = np.geomspace(min(trend.N), max(trend.N), 50)
            mean, lo, hi = trend.predict(grid, alpha=0.05)
            tf = np.exp if col == "L_d" else (lambda v: v)
            sig = "significant" if trend.significant() else "not significant"
            ax.plot(grid, tf(mean), color="C3", label=f"WLS trend, p = {trend.p_value:.2g} ({sig})")
            ax.fill_between(grid, tf(lo), tf(hi), color="C3", alpha=0.15)
        ax.set(xlabel="non-embedding parameters N", ylabel=col)
        if len(d):
            ax.set_xscale("log")
            if col == "L_d":
                ax.set_yscale("log")
            plain_log_ticks(ax)
            ax.legend(fontsize=7)
        if not trend.estimable:
            ax.text(0.5, 0.5, f"{len(trend.sizes)} size(s) with a deceleration:\nno trend (need {3})", ha="center",
                    va="center", transform=ax.transAxes, fontsize=9)
    fig.suptitle("Deceleration loss L_d and post-deceleration rate r_d against size (95% intervals)", fontsize=10)
    return fig


def fig_zsl(res: StudyResults, variant: str, split: str = "eval", granularity: str = "token"):
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
    table = res.zsl
    d = table[(table["variant"] == variant) & (table["split"] == split) & (table["granularity"] == granularity)]
    shown = [r for r in res.runs if r in set(d["run"])]
    for i, run in enumerate(shown):
        r = d[d["run"] == run].sort_values("step")
        nudge = 1 + 0.04 * (i - (len(shown) - 1) / 2)  # side by side at a shared step, so error bars do not overlap
        for ax, m in zip(axes, METRICS):
            std = r[f"{m}_std"].astype(float).fillna(0)
            if variant == "dt=t":
                ax.plot(r["step"], r[m], "o-", color=res.color(run), label=res.label(run), ms=3)
                ax.fill_between(r["step"], r[m] - std, r[m] + std, color=res.color(run), alpha=0.15)
                if res.t_d(run):
                    ax.axvline(res.t_d(run), color=res.color(run), ls="-.", lw=0.8, gid="t_d")
            else:  # a few measured checkpoints: points with error bars, no line implying a trend
                ax.errorbar(r["step"] * nudge, r[m], yerr=std, fmt="o", capsize=3, color=res.color(run), label=res.label(run))
    for ax, m, label in zip(axes, METRICS, ("D (destructive interference)", "M (mean |change|)", "|ΔL|")):
        ax.set(xlabel="checkpoint step t", ylabel=label)
        if len(d):
            ax.set_xscale("log")
            if m != "D" and (d[m] > 0).all():
                ax.set_yscale("log")
            plain_log_ticks(ax)
        else:
            ax.text(0.5, 0.5, f"no {variant} measurements in this study", ha="center", transform=ax.transAxes)
    if len(d):
        axes[0].legend(fontsize=7)
    spread = "± std over example folds" if variant == "dt=t" else "± std over held-out batches"
    marker = "; dash-dot: each run's t_d" if variant == "dt=t" else ""
    fig.suptitle(f"Zero-sum learning, Δt = {variant[3:]} ({split} set, per {granularity}; {spread}{marker})", fontsize=10)
    return fig


def fig_d_vs_m(res: StudyResults):
    fig, ax = plt.subplots(figsize=(6.5, 5), layout="constrained")
    t = res.zsl
    d = t[(t["variant"] == "dt=t") & (t["split"] == "eval") & (t["granularity"] == "token")]
    for run in [r for r in res.runs if r in set(d["run"])]:
        r = d[d["run"] == run].sort_values("step")
        ax.plot(r["M"], r["D"], "o-", color=res.color(run), ms=3,
                label=f"{res.label(run)}: steps {int(r['step'].iloc[0])}→{int(r['step'].iloc[-1])}" if len(r) else res.label(run))
        if len(r) > 1:  # the direction of training: an arrow onto the last checkpoint
            ax.annotate("", xy=(r["M"].iloc[-1], r["D"].iloc[-1]), xytext=(r["M"].iloc[-2], r["D"].iloc[-2]),
                        arrowprops={"arrowstyle": "-|>", "color": res.color(run), "lw": 1.2}, gid="direction")
        t_d = res.t_d(run)
        if t_d and len(r):
            i = int(np.argmin(np.abs(np.log(r["step"].to_numpy()) - math.log(t_d))))
            ax.plot(r["M"].iloc[i], r["D"].iloc[i], "*", color=res.color(run), ms=14, mec="k", gid="t_d")
    ax.set(xscale="log", xlabel="M (mean |per-token loss change|)", ylabel="D")
    ax.set_title("D against M over training, Δt = t (arrow: the direction of training; star: checkpoint nearest a "
                 "detected t_d)", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def fig_histograms(res: StudyResults, changes: dict[str, tuple[int, np.ndarray]]):
    """Per-token loss changes; values beyond the common range are counted, not piled into the edge bins."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    every = np.concatenate([x for _, x in changes.values()]) if changes else np.zeros(1)
    lim = float(np.quantile(np.abs(every), 0.999)) or 1.0
    bins = np.linspace(-lim, lim, 81)
    for run, (step, x) in changes.items():
        outside = np.mean(np.abs(x) > lim)
        ax.hist(x, bins=bins, histtype="step", color=res.color(run), density=True,
                label=f"{res.label(run)}: steps {step}→{2 * step} ({outside:.2%} beyond ±{lim:.2g})")
    ax.set(yscale="log", xlabel="per-token loss change (nats)", ylabel="density")
    ax.set_title("Per-token loss changes between checkpoints t → 2t (evaluation set; each run's pair is in the legend:\n"
                 "the requested steps, else the pair nearest its t_d, else its last)", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def fig_effects(res: StudyResults):
    """Each effect of each intervention against model size, with its interval; the dashed line is
    no effect. A pooled row (several seeds) is drawn where there is one, else each seed's."""
    e = res.effects[res.effects["effect"].notna()]
    quantities = list(dict.fromkeys(res.effects["quantity"]))
    cols = min(4, len(quantities))
    rows_ = math.ceil(len(quantities) / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(3.4 * cols, 2.9 * rows_), layout="constrained", squeeze=False)
    names = list(dict.fromkeys(res.effects["intervention"]))
    for ax, q in zip(axes.flat, quantities):
        d = e[e["quantity"] == q]
        for k, name in enumerate(names):
            g = d[d["intervention"] == name]
            g = g[g["seed"] == -1] if (g["seed"] == -1).any() else g
            g = g.sort_values("N")
            err = [g["effect"] - g["effect_lo"], g["effect_hi"] - g["effect"]]
            ax.errorbar(g["N"] * (1 + 0.04 * (k - (len(names) - 1) / 2)), g["effect"], yerr=err, fmt="o-", ms=4,
                        capsize=3, lw=1, color=f"C{k}", label=name)
        null = 1.0 if (res.effects.loc[res.effects["quantity"] == q, "scale"] == "ratio").any() else 0.0
        ax.axhline(null, color="0.5", ls="--", lw=0.8)
        if len(d):
            ax.set_xscale("log")
            sizes = sorted(d["N"].unique())
            ax.set_xticks(sizes, [fmt_n(n) for n in sizes])  # the sizes themselves, no crowded minor labels
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        else:
            ax.text(0.5, 0.5, "not estimated\n(effects.csv says why)", transform=ax.transAxes, ha="center",
                    va="center", fontsize=8, color="0.4")
            ax.set_xticks([])
        ax.set_title(q + (" (ratio)" if null == 1.0 else " (difference)"), fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(quantities):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("non-embedding parameters N", fontsize=9)
    fig.suptitle("Effects of each intervention against its baseline (same size and seed), 95% intervals; "
                 "missing points: not estimable (see effects.csv)", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- tables and text


# The displayed fit table (md, tex, html): each estimate with its 95% interval in one cell, so it
# fits a page; fits.csv keeps every number in its own column.
TABLE = {"run": "run", "N": "N", "verdict": "verdict", "p_value": "p", "t_d": "t_d [95% CI]",
         "t_d_corrected": "t_d per-step [95% CI]", "L_d": "L_d [95% CI]", "r_d": "r_d [95% CI]", "slope_ratio": "c0/r_d",
         "L_T_hat": "L̂_T", "L_T": "L_T", "schedule_verdict": "schedule verdict",
         "lr_area_t_d_steps": "t_d via S [95% CI]", "warnings": "warnings"}
TEXT_COLUMNS = ("run", "verdict", "schedule_verdict", "warnings")


def _num(v, c: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{int(v):,}" if c == "N" else f"{float(v):.4g}"


def fit_table(sizes: pd.DataFrame) -> pd.DataFrame:
    """Per-run table, every number rounded to 4 significant digits (N as an integer), an estimate's
    interval beside it in brackets."""
    rows = []
    for _, r in sizes.iterrows():
        row = {}
        for c, name in TABLE.items():
            if c in TEXT_COLUMNS:
                row[name] = "" if pd.isna(r[c]) else r[c]
                continue
            row[name] = _num(r[c], c)
            lo, hi = r.get(f"{c}_lo"), r.get(f"{c}_hi")
            if row[name] and lo is not None and not pd.isna(lo):
                row[name] += f" [{_num(lo, c)},\u00a0{_num(hi, c)}]"  # a page may wrap before the interval
        rows.append(row)
    return pd.DataFrame(rows, columns=list(TABLE.values()))


@dataclass
class Section:
    """A part of the summary, rendered to Markdown (summary.md) and HTML (summary.html)."""

    title: str
    text: list[str]
    bullets: list[str]


def summary_sections(res: StudyResults) -> list[Section]:
    sizes = res.sizes
    out = [Section("Loss deceleration", [
        "Each run's training loss is tested for an abrupt break against the better smooth law (power law, or "
        "E + A t^-alpha). t_d, L_d and r_d are those of the smoothed curve (the reference pipeline's, comparable with "
        "published values; the trends use them); the per-step t_d is the training's own break, the smoothing lag "
        "removed. Each number has a 95% bootstrap interval of its own estimand (docs/calibration.md says what they "
        "are worth); N counts non-embedding parameters."], run_lines(sizes) + [t.summary() for t in res.trends])]
    seeds = seed_lines(seed_table(sizes))
    if seeds:
        out.append(Section("Across seeds", [
            "Sizes run with several seeds: the mean of t_d, L_d and r_d over the seeds that decelerate, their "
            "seed-to-seed standard deviation and range, beside one run's bootstrap standard error. Where the seed SD "
            "is the larger, a single run's interval understates how much the estimate varies (results/fits/seeds.csv); "
            "the trends weigh each size by the larger of the two."], seeds))
    suites = [r for r in res.runs if res.meta[r].is_suite]
    if suites:
        out[0].bullets += [f"{r} is a published suite ({res.meta[r].model}); its curve is the {res.meta[r].curve_source}"
                           for r in suites]
    caveats = []
    sparse = [r for r in suites if res.sparse(r)]
    if sparse:
        caveats.append(f"{', '.join(sparse)}: the break test is fitted to the evaluation loss at {len(res.curves[sparse[0]])} "
                       "listed revisions, not to a per-step training curve. On Pythia's revision grid it was calibrated "
                       "(docs/calibration.md): false positives up to 10% for nearly flat curves, power 61-93% for "
                       "slope ratios of 4 and more, t_d intervals too narrow; other grids are not calibrated")
    decel = int((sizes["verdict"] == "deceleration").sum())
    if decel < len(sizes):
        caveats.append(f"{len(sizes) - decel} of {len(sizes)} runs show no abrupt deceleration; their broken fits are in "
                       "the fit files, not used in the trends")
    if sizes.groupby("size")["seed"].nunique().max() < 2:
        caveats.append("one seed per size: the trends rest on bootstrap uncertainty of single runs, not on seed-to-seed spread")
    if not any(t.estimable for t in res.trends):
        caveats.append("no trend with size could be estimated (it needs three sizes with a deceleration)")
    elif not any(t.significant() for t in res.trends):
        caveats.append("no trend with size is significant")
    schedule = schedule_lines(res)
    if schedule:
        out.append(Section("Is the bend the schedule's?", [
            "Each run is fitted again against learning-rate time S (the sum of the rate over its peak, step by step; "
            "the decay phase left out), on which a bend that the warm-up made is a smooth law and a break that the "
            "training made stays (docs/method.md, docs/calibration.md). deceleration: a break on both axes at the "
            "same place; schedule: a break in steps that a smooth law in S explains as well, the schedule's; "
            "steps_only: a break in steps that no smooth law in S explains (a bootstrap test across the clocks), the "
            "training's on the step clock; lr_time_only: a break in S only; break_moves: breaks on both axes whose t_d "
            "intervals do not overlap once mapped to steps."], schedule))
    explained = [r for r in res.runs if (res.fits[r].schedule or {}).get("verdict") == "schedule"]
    if explained:
        caveats.append(f"the breaks of {', '.join(explained)} are the schedule's (a smooth law in learning-rate time): "
                       "their t_d marks where the warm-up stops dominating the curve, not a change in how the model learns")
    moved = [r for r in res.runs if (res.fits[r].schedule or {}).get("verdict") == "break_moves"]
    if moved:
        caveats.append(f"{', '.join(moved)}: t_d depends on the clock (steps or learning-rate time); read it with its axis")
    lines, unstable = window_lines(res)
    if lines:
        cuts = ", ".join(f"{v:g}" for v in sorted({float(v) for w in res.windows.values() for v in w["transient_steps"]}))
        out.append(Section("Fit-window sensitivity", [
            f"The same test refitted with the transient cut at {cuts} steps, over the whole run and its first "
            f"two thirds (results/fits/<run>.windows.csv). A break that the training made keeps its verdict and "
            f"moves less than ±{WINDOW_TOLERANCE:.0%}; one that the window made follows the window."], lines))
    stable = [r for r in res.runs if res.fits[r].verdict == "deceleration" and r in res.windows and r not in unstable]
    if res.windows and not stable:
        caveats.insert(0, "no run shows an abrupt deceleration that holds across fit windows: the curves depart from "
                          "a power law, but this run does not show an abrupt deceleration at this scale")
    if unstable:
        caveats.append(f"{len(unstable)} of {len(res.windows)} runs change verdict or move t_d by more than "
                       f"±{WINDOW_TOLERANCE:.0%} across fit windows ({', '.join(unstable)}): their breaks are not "
                       "pinned down by the training alone")
    if res.effects is not None:
        out.append(Section("Interventions", [
            "Each intervention run is compared with the baseline run of the same size and seed (same data, order, "
            "evaluation set and held-out batches): t_d as a ratio, L_d, r_d, D before and after each run's own t_d "
            "and the final evaluation loss as differences, with 95% intervals (results/fits/effects.csv; the "
            "method in stats/effects.py). An effect is called one only where its interval excludes no effect."],
            effect_lines(res.effects)))
        caveats += effect_caveats(res.effects)
    if caveats:
        out.append(Section("What this run does not show", [], caveats))
    bullets = []
    tok = res.zsl[res.zsl["granularity"] == "token"]
    for run in [r for r in res.runs if r in set(tok["run"])]:
        t_d = res.t_d(run)
        for variant, label in VARIANTS.items():
            v = tok[(tok["run"] == run) & (tok["variant"] == variant)]
            if not len(v):
                continue
            where = f"t_d ≈ {t_d:.0f}" if t_d else "no deceleration detected"
            cells = []
            for step in sorted(v["step"].unique()):
                rows = v[v["step"] == step]
                by = {row["split"]: row for _, row in rows.iterrows()}
                d = " / ".join(f"{by[s]['D']:.2f}" if s in by else "–" for s in ("eval", "heldout"))
                end = max(int(rows["step_next"].max()), int(step))
                side = "" if not t_d else " before" if end <= t_d else " after" if step >= t_d else " across"
                span = f"→{end}" if variant == "dt=t" and end != 2 * step else ""
                cells.append(f"{int(step)}{span}{side}: {d}")
            bullets.append(f"{run}, {label} ({where}); D eval / held-out at each step: " + "; ".join(cells))
    coord = _coordinate_lines(res)
    out.append(Section("Zero-sum learning around the deceleration step", [
        "Destructive interference D of the per-token loss changes on the evaluation set and on held-out training "
        "batches, side by side; for Δt = 1 the held-out batch is the one the step was taken on. A step is 'before' "
        "or 'after' t_d when the whole change lies on that side."], bullets))
    if coord:
        out.append(Section("Coordinate-wise interference (Δt = 1)", [
            "C_g and D(grad) over the tokens of the stepped batch (all of them unless zsl.coordinate_tokens says), each beside its sign-shuffled baseline (the same "
            "per-token terms with random signs: the chance level). Interference beyond chance shows as C_g below, "
            "or D(grad) above, its baseline."], coord))
    return out


WINDOW_TOLERANCE = 0.25
VARIANTS = {"dt=t": "Δt = t", "dt=1": "Δt = 1",
            "grad-direction": "along the held-out batch's mean gradient (JVP prediction; a suite without optimizer state)",
            "sign-direction": "along the gradient's sign (JVP prediction; a proxy for Adam's early steps)"}


def window_lines(res: StudyResults) -> tuple[list[str], list[str]]:
    """One line per run on how its verdict and t_d move across fit windows, and the unstable runs."""
    lines, unstable = [], []
    for run in [r for r in res.runs if r in res.windows]:
        w = res.windows[run]
        verdicts = w.loc[w["verdict"] != "unfit", "verdict"].value_counts()
        text = ", ".join(f"{v} ×{n}" for v, n in verdicts.items())
        t_d = w.loc[w["verdict"] == "deceleration", "t_d"].astype(float)
        main = res.fits[run]
        moved = (float(np.max(np.abs(t_d / main.derived()["t_d"] - 1))) if len(t_d) and isinstance(main, BrokenPowerLawFit)
                 else 0.0)  # no break found, or no fit: nothing moved
        if len(verdicts) > 1 or moved > WINDOW_TOLERANCE:
            unstable.append(run)
        where = f"; t_d {t_d.min():.0f}–{t_d.max():.0f} where a deceleration is found" if len(t_d) else ""
        lines.append(f"{run}: {text} over {int(verdicts.sum())} windows{where}")
    return lines, unstable


def _fmt_effect(r) -> str:
    f = ".3g"
    iv = "no interval" if pd.isna(r["effect_lo"]) else f"[{r['effect_lo']:{f}}, {r['effect_hi']:{f}}]"
    return f"{r['effect']:{f}} {iv}"


def effect_lines(effects: pd.DataFrame) -> list[str]:
    """Per intervention and quantity: the effect at each size (pooled over seeds where there are
    several), which exclude no effect, and whether the effect changes with size."""
    lines = []
    trends = size_trends(effects)
    for (name, q), g in effects.groupby(["intervention", "quantity"], sort=False):
        shown = g[g["seed"] == -1] if (g["seed"] == -1).any() else g
        ok = shown[shown["effect"].notna()]
        null = "1" if g["scale"].iloc[0] == "ratio" else "0"
        if not len(ok):
            lines.append(f"{name}, {q}: not estimated ({shown['note'].iloc[0]})")
            continue
        cells = ", ".join(f"{r['size']}{'' if r['seed'] == -1 or shown['seed'].nunique() == 1 else f' s{r.seed}'}: "
                          f"{_fmt_effect(r)}" for _, r in ok.iterrows())
        excl = ok["excludes_null"].fillna(False).astype(bool)
        verdict = (f"excludes {null} at {', '.join(ok.loc[excl, 'size'])}" if excl.any() else f"includes {null} at every size")
        trend = trends.get((name, q))
        size = ("; with size: " + (f"slope {trend.slope:.3g} per log N, p = {trend.p_value:.2g}"
                                   + (" (changes with size)" if trend.significant() else " (no significant change)"))
                if trend is not None and trend.estimable else "; with size: not estimable (fewer than 3 sizes)")
        missing = len(shown) - len(ok)
        lines.append(f"{name}, {q}: {cells} — {verdict}{size}" + (f"; {missing} not estimated" if missing else ""))
    return lines


def effect_caveats(effects: pd.DataFrame) -> list[str]:
    out = []
    if effects["seed"].max() == effects["seed"][effects["seed"] >= 0].min():
        out.append("interventions: one seed, so each effect's interval is the two runs' measurement uncertainty; "
                   "seed-to-seed variation, which can be as large, is not in it")
    if effects["effect"].isna().any():
        out.append(f"interventions: {int(effects['effect'].isna().sum())} of {len(effects)} effects could not be "
                   "estimated (a run without a deceleration, or no measurement in a phase): effects.csv says why")
    return out


def schedule_lines(res: StudyResults) -> list[str]:
    """One line per classified run, and one that says which runs' breaks the schedule explains."""
    runs = [r for r in res.runs if res.fits[r].schedule]
    if not runs:
        return []
    lines = [f"{r}: {describe(res.fits[r].schedule)}" for r in runs]
    explained = [r for r in runs if res.fits[r].schedule["verdict"] == "schedule"]
    own = [r for r in runs if res.fits[r].schedule["verdict"] == "deceleration"]
    words = (f"The schedule explains the breaks of {', '.join(explained)}" if explained else
             "The schedule explains none of these runs' breaks")
    words += (f"; {', '.join(own)} decelerate on both clocks at the same place (the training's own break)." if own else
              "; no run decelerates on both clocks at the same place.")
    return lines + [words]


def _coordinate_lines(res: StudyResults) -> list[str]:
    z = res.zsl[(res.zsl["variant"] == "dt=1") & (res.zsl["granularity"] == "token") & (res.zsl["split"] == "heldout")]
    if "C_g_shuffled_mean" not in z or z["C_g_shuffled_mean"].isna().all():
        return []
    out = []
    for run in [r for r in res.runs if r in set(z["run"])]:
        cells = [f"{int(r['step'])} ({int(r['coord_tokens_mean']):,} tokens): C_g {r['C_g_mean']:.3f} (shuffled {r['C_g_shuffled_mean']:.3f}), D(grad) "
                 f"{r['D_grad_mean']:.3f} ({r['D_grad_shuffled_mean']:.3f})" for _, r in z[z["run"] == run].sort_values("step").iterrows()]
        out.append(f"{run}: " + "; ".join(cells))
    return out


def summary_markdown(res: StudyResults) -> str:
    lines = ["# Study summary", ""]
    for s in summary_sections(res):
        lines += [f"## {s.title}", ""] + [t + "\n" for t in s.text] + [f"- {b}" for b in s.bullets] + [""]
    return "\n".join(lines)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:64em;margin:1.5em auto;line-height:1.45;color:#222}}
body.table{{max-width:none;margin:1.5em}} body.table table{{font-size:0.75em}} h1{{font-size:1.5em}} h2{{font-size:1.15em;margin-top:1.4em;border-bottom:1px solid #ddd}}
.wide{{overflow-x:auto}} table{{border-collapse:collapse;font-size:0.8em}}
td,th{{border:1px solid #ccc;padding:0.2em 0.45em;text-align:right}} td:first-child{{white-space:nowrap}}
th{{background:#f3f3f3}} td:first-child,td:nth-child(3){{text-align:left}}</style></head>
<body class="{page}"><h1>{title}</h1>
{body}
</body></html>
"""


def summary_html(res: StudyResults) -> str:
    body = []
    for s in summary_sections(res):
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{html.escape(t)}</p>" for t in s.text]
        if s.bullets:
            body.append("<ul>" + "".join(f"<li>{html.escape(b)}</li>" for b in s.bullets) + "</ul>")
    return PAGE.format(title="Study summary", page="text", body="\n".join(body))


def table_html(table: pd.DataFrame) -> str:
    return PAGE.format(title="Broken-power-law fits per run", page="table",
                       body='<div class="wide">' + table.to_html(index=False, border=0, escape=True) + "</div>")


# ----------------------------------------------------------------------------- assembling


def _save(fig, out: ReportPaths, name: str) -> None:
    for ext in ("png", "pdf"):
        with atomic.atomic_path(out.figure(name, ext)) as tmp:
            fig.savefig(tmp, format=ext, dpi=130)
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


def loss_changes(res: StudyResults, losses_root, requested: list[int]) -> dict[str, tuple[int, np.ndarray]]:
    out = {}
    for r in res.runs:
        steps = losses.steps_of(losses_root, "tokens", r)
        t = _hist_step(steps, res.t_d(r), requested)
        if t is not None:
            tok = losses.load(losses_root, "tokens", runs=[r], steps=[t, 2 * t], splits=["eval"])
            w = tok.pivot_table(index=["example_id", "position"], columns="step", values="loss")
            out[r] = (t, (w[2 * t] - w[t]).to_numpy())
    return out


def build_report(run_dirs, fit_paths, trends, zsl_table, losses_root, out, options: ReportOptions | None = None,
                 window_paths=(), effects=None) -> dict:
    """Figures (PNG + PDF), the fit table (CSV, Markdown, LaTeX) and summary.md into `out`."""
    options = options or ReportOptions.defaults()
    res = StudyResults.read(run_dirs, fit_paths, trends, zsl_table, window_paths, effects)
    out = ReportPaths(out)
    out.dir.mkdir(parents=True, exist_ok=True)
    _save(fig_loss_curves(res), out, "loss_curves")
    _save(fig_scaling(res), out, "scaling_trends")
    _save(fig_zsl(res, "dt=t"), out, "zsl_dtt")
    _save(fig_zsl(res, "dt=1"), out, "zsl_dt1")
    _save(fig_d_vs_m(res), out, "d_vs_m")
    _save(fig_histograms(res, loss_changes(res, losses_root, list(options.histogram_steps))), out, "loss_change_hist")
    if res.effects is not None:
        _save(fig_effects(res), out, "effects")
    ft = fit_table(res.sizes)
    with atomic.atomic_path(out.table("csv")) as tmp:
        res.sizes.to_csv(tmp, index=False)
    atomic.write_text(out.table("md"), ft.to_markdown(index=False) + "\n")
    atomic.write_text(out.table("tex"), ft.to_latex(index=False))
    atomic.write_text(out.table("html"), table_html(ft))
    summary = summary_markdown(res)
    atomic.write_text(out.summary, summary)
    atomic.write_text(out.summary_html, summary_html(res))
    return {"summary": summary}
