"""Error rates of the deceleration test and coverage of its intervals, on curves with known truth.

    python -m benchmarks.calibrate_breaks [--curves 100] [--lengths 3000 262144] [--jobs 2]
                                          [--shipped 40] [--csv OUT.csv] [--readme docs/calibration.md]

Scenarios: every truth (a power law; saturating laws E + A t^-alpha with E/L(T) in {0.2, 0.5, 0.9};
broken power laws with slope ratio c0/r_d in {2, 4, 8, 15} and sharpness f1 in {0.05, 0.2, 0.5}) x
every noise (iid 3% per step in log loss; AR(1) with rho 0.9 and 3% marginal sd; iid 3% plus slow
structure 0.01 sin(2.5 log t + phase), random phase) x both forms (a raw per-step log, and the same
curve smoothed and log-subsampled before it reaches fit-curve) x both lengths. `--forms revisions`
adds a third form: the curve seen only at a published suite's revisions (Pythia's grid: 1, 2, 4 ...
512, then 1,000 x 2^k, and the last step), fitted as a suite's evaluation loss is (no smoothing,
no subsampling; FitOptions.at_revisions), for example with `--lengths 143000`.

Two methods, each a row of the CSV (`method`):
- `shipped`: the exact procedure users get (`fit_curve` with default options: 200 draws for the
  test with sequential p-values, 200 for the intervals) on `--shipped` curves of each scenario in
  SHIPPED (a balanced half of the design below, plus the near-floor slow-structure zone).
- `warp-speed`: the cheap screen for the whole grid (Giacomini, Politis & White 2013): every
  simulated curve gets one bootstrap draw under its own fitted null (and one around its own broken
  fit for the intervals), and the draws of all curves of a scenario form the bootstrap distribution.

The truths of the estimands: `t_d_corrected` is the break of the per-step law the curve was drawn
from; `t_d`, `L_d`, `r_d` and `L_T_hat` are those of that law's noise-free log moving average, fitted
like the data (the smoothed curve's, which a published value describes); for the revisions form
(no smoothing) both are the law's own.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import publish
from scaledyn.stats.breaktest import break_statistic, classify
from scaledyn.stats.curve import Preprocessing, fit_points, log_moving_average, log_subsample_mask, validate_curve
from scaledyn.stats.fit import (DERIVED, ESTIMANDS, LOG_SCALE, PreparedFit, basic_interval, bootstrap_intervals,
                                fit_curve, on_scale, prepare_fit)
from scaledyn.stats.options import FitOptions
from scaledyn.stats.powerlaws import bnsl_log, refine_bnsl

SIGMA = 0.03
ALPHA = 0.05
NULLS = [("power_law", {})] + [("saturating", {"q": q}) for q in (0.2, 0.5, 0.9)]
BREAKS = [("broken", {"ratio": r, "f1": f}) for r in (2, 4, 8, 15) for f in (0.05, 0.2, 0.5)]
NOISES = ("iid", "ar1", "slow")
FORMS = ("raw", "presmoothed", "revisions")
COVERED = ESTIMANDS  # t_d, t_d_corrected, L_d, r_d, L_T_hat
# The shipped procedure's design: seven truths, each in half of the 2^3 cells (noise x form x
# length), the halves alternating so that every cell meets every factor; plus the near-floor zone.
SHIPPED_TRUTHS = [("power_law", {}), ("saturating", {"q": 0.5}), ("saturating", {"q": 0.9}),
                  ("broken", {"ratio": 4, "f1": 0.05}), ("broken", {"ratio": 4, "f1": 0.2}),
                  ("broken", {"ratio": 8, "f1": 0.05}), ("broken", {"ratio": 8, "f1": 0.2})]
HALVES = ([("iid", "raw", 3000), ("iid", "presmoothed", 262144), ("ar1", "raw", 262144), ("ar1", "presmoothed", 3000)],
          [("iid", "raw", 262144), ("iid", "presmoothed", 3000), ("ar1", "raw", 3000), ("ar1", "presmoothed", 262144)])
SHIPPED_EXTRA = [(3000, "raw", "saturating", {"q": 0.9}, "slow"), (3000, "presmoothed", "saturating", {"q": 0.9}, "slow")]


@dataclass(frozen=True)
class Scenario:
    length: int
    form: str
    truth: str
    params: tuple
    noise: str

    @property
    def is_null(self) -> bool:
        return self.truth != "broken"

    def label(self) -> str:
        p = ", ".join(f"{k} {v:g}" for k, v in self.params)
        return f"{self.truth}" + (f" ({p})" if p else "")

    def seed(self, i: int) -> np.random.SeedSequence:
        key = f"{self.length}|{self.truth}|{self.params}|{self.noise}"  # both forms see the same curves
        return np.random.SeedSequence([int.from_bytes(key.encode()[:64].ljust(64, b"_"), "little") % 2**63, i])


def shipped_scenarios() -> list[Scenario]:
    out = []
    for k, (truth, params) in enumerate(SHIPPED_TRUTHS):
        for nz, form, T in HALVES[k % 2]:
            out.append(Scenario(T, form, truth, tuple(sorted(params.items())), nz))
    out += [Scenario(T, form, truth, tuple(sorted(p.items())), nz) for T, form, truth, p, nz in SHIPPED_EXTRA]
    return out


def truth_curve(s: Scenario, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """log loss at every step 1..T, and the true broken law (theta) for a broken truth."""
    T = s.length
    t = np.arange(1, T + 1, dtype=float)
    x = np.log(t)
    p = dict(s.params)
    if s.truth == "power_law":
        return t, math.log(10) - 0.25 * x, None
    if s.truth == "saturating":
        alpha, A = 0.5, 10.0
        E = p["q"] / (1 - p["q"]) * A * T**-alpha  # E / L(T) = q
        return t, np.log(E + A * t**-alpha), None
    c0 = 0.3
    r_d = c0 / p["ratio"]
    lo, hi = math.log(100), math.log(T)
    logd = rng.uniform(lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo))  # the middle half of the fitted range
    theta = np.array([math.log(10), c0, r_d - c0, logd, p["f1"]])
    return t, bnsl_log(x, theta), theta


def noise(kind: str, T: int, rng) -> np.ndarray:
    e = rng.normal(0, SIGMA, T)
    if kind == "iid":
        return e
    if kind == "ar1":
        from scipy import signal

        rho = 0.9
        z = signal.lfilter([math.sqrt(1 - rho**2)], [1, -rho], rng.normal(0, SIGMA, T + 500))
        return z[500:]
    return e + 0.01 * np.sin(2.5 * np.log(np.arange(1, T + 1)) + rng.uniform(0, 2 * math.pi))


def revision_grid(T: int) -> np.ndarray:
    """Pythia's published revisions up to T: powers of two to 512, 1,000 x 2^k, and T."""
    steps = {2**k for k in range(10)} | {1000 * 2**k for k in range(20) if 1000 * 2**k <= T} | {T}
    return np.array(sorted(s for s in steps if s <= T))


def true_values(s: Scenario, t: np.ndarray, theta: np.ndarray, options: FitOptions) -> dict:
    """Each estimand's true value, on its interval scale (log for t_d and the losses)."""
    smoothed = theta
    if s.form != "revisions":  # the noise-free mean loss, smoothed and fitted like the data
        mean_loss = np.exp(bnsl_log(np.log(t), theta) + SIGMA**2 / 2)
        idx, ys, _ = fit_points(t, mean_loss, Preprocessing("log-ma", "log", options.transient_steps, "no"))
        smoothed = refine_bnsl(np.log(t[idx]), np.log(ys), theta).theta
    v = dict(zip(DERIVED, on_scale(smoothed, t[-1])))
    v["t_d_corrected"] = float(theta[3])
    return v


def observed(s: Scenario, rng) -> tuple[np.ndarray, np.ndarray, dict | None, FitOptions]:
    """Curve i of scenario s as the fit receives it (steps, losses), its true values, and the options."""
    t, g, theta = truth_curve(s, rng)
    loss = np.exp(g + noise(s.noise, s.length, rng))
    options = FitOptions.defaults().at_revisions() if s.form == "revisions" else FitOptions.defaults()
    true = None if theta is None else true_values(s, t, theta, options)
    if s.form == "presmoothed":
        keep = log_subsample_mask(t)
        return t[keep], log_moving_average(loss)[keep], true, options
    if s.form == "revisions":
        keep = revision_grid(s.length) - 1
        return t[keep], loss[keep], true, options
    return t, loss, true, options


def _estimates(f_theta, corrected, T) -> dict:
    v = dict(zip(DERIVED, on_scale(f_theta, T)))
    v["t_d_corrected"] = float(corrected[3]) if corrected is not None else math.nan
    return v


def warp_draw(f: PreparedFit, draw_rng) -> dict:
    """One warp-speed draw for a prepared fit: the break statistic of the data and of one curve
    simulated under its null, and one bootstrap root of the derived quantities."""
    S = max(f.null.sse - f.broken.sse, 0) / max(f.broken.sse, 1e-300)
    S_star = break_statistic(f.x, f.noise.simulator.sampler(f.null.log_predict)(draw_rng))
    roots, other = bootstrap_intervals(f.x, f.broken, f.noise.simulator, f.noise.base, 1, draw_rng)
    est = on_scale(f.broken.theta, f.T)
    root = on_scale(f.broken.theta + roots[0], f.T) - est if len(roots) else np.zeros(len(DERIVED))
    return {"S": S, "S_star": S_star, "theta": f.broken.theta, "x0": f.x[0], "x1": f.x[-1],
            "est": _estimates(f.broken.theta, f.noise.corrected, f.T), "root": dict(zip(DERIVED, root)), "other": other}


def warp_verdict(r: dict, crit: float) -> str:
    """A curve's verdict when the scenario's pooled null draws give the critical value."""
    v, _ = classify(0.0 if r["S"] > crit else 1.0, ALPHA, r["theta"], np.array([r["x0"], r["x1"]]))
    return v or "none"


def one_curve(s: Scenario, i: int) -> dict:
    """The fit and one warp-speed draw (test and interval) for curve i of scenario s."""
    t, loss, true, options = observed(s, np.random.default_rng(s.seed(i)))
    f = prepare_fit(validate_curve(t, loss), options)
    return {**warp_draw(f, np.random.default_rng(s.seed(10**9 + i))), "true": true}


def warp_coverage(rows: list[dict], k: str, method: str = "basic") -> float:
    """Coverage of estimand k's interval when the roots of all curves form the bootstrap distribution."""
    rk = "t_d" if k == "t_d_corrected" else k  # the corrected break's interval is t_d's, shifted
    roots = np.array([r["root"][rk] for r in rows])
    est = np.array([r["est"][k] for r in rows])
    lo, hi = basic_interval(est, roots[:, None].repeat(len(est), 1), ALPHA) if method == "basic" else (
        est + np.nanquantile(roots, ALPHA / 2), est + np.nanquantile(roots, 1 - ALPHA / 2))
    if rk == "t_d":  # clipped to the fitted range (shifted with the correction), as conf_int does
        shift = est - np.array([r["est"]["t_d"] for r in rows])
        lo = np.maximum(lo, np.array([r["x0"] for r in rows]) + shift)
        hi = np.minimum(hi, np.array([r["x1"] for r in rows]) + shift)
    true = np.array([r["true"][k] for r in rows])
    ok = np.isfinite(est)
    return float(np.mean((lo <= true) & (true <= hi) & ok))


def summarise(s: Scenario, rows: list[dict]) -> dict:
    crit = float(np.quantile([r["S_star"] for r in rows], 1 - ALPHA))
    v = np.array([warp_verdict(r, crit) for r in rows])
    out = {**asdict(s), "params": s.label(), "curves": len(rows), "method": "warp-speed",
           "break_rate": float(np.isin(v, ["deceleration", "acceleration"]).mean()),
           "deceleration_rate": float((v == "deceleration").mean()),
           "smooth_bend_rate": float((v == "smooth_bend").mean()),
           "other_basin": float(np.mean([r["other"] for r in rows]))}
    if not s.is_null:
        for k in COVERED:
            out[f"cover_{k}"] = warp_coverage(rows, k)
            out[f"cover_{k}_percentile"] = warp_coverage(rows, k, "percentile")
    return out


def shipped_check(s: Scenario, i: int) -> dict:
    """The shipped procedure on curve i: default options, real intervals and warnings."""
    t, loss, true, options = observed(s, np.random.default_rng(s.seed(i)))
    t0 = time.process_time()
    fit = fit_curve(validate_curve(t, loss), dataclasses.replace(options, seed=i))
    ci, d = fit.conf_int(), fit.derived()
    codes = {w["code"] for w in fit.warnings()}
    row = {"verdict": fit.verdict, "warned": bool(codes), "near_floor": "near_floor" in codes, "floor": fit.floor_share(),
           "extended": "estimate_outside_interval" in codes, "seconds": time.process_time() - t0}
    inside = True
    for k in COVERED:
        if ci[k] is None or not fit.has_break:  # intervals are reported for breaks only
            row[f"cover_{k}"] = math.nan
            continue
        lo, hi = ci[k]
        inside &= lo <= d[k] <= hi
        if true is not None:
            v = math.exp(true[k]) if (k == "t_d_corrected" or LOG_SCALE[k]) else true[k]
            row[f"cover_{k}"] = bool(lo <= v <= hi)
    row["estimate_in_interval"] = bool(inside)
    return row


def _task(args):
    fn, s, idx = args
    return s, [fn(s, i) for i in idx]


def scenarios(lengths, forms=FORMS[:2]) -> list[Scenario]:
    out = []
    for T in lengths:
        for form in forms:
            for truth, params in NULLS + BREAKS:
                for nz in NOISES:
                    out.append(Scenario(T, form, truth, tuple(sorted(params.items())), nz))
    return out


def shipped_row(s: Scenario, rows: list[dict]) -> dict:
    v = np.array([r["verdict"] for r in rows])
    brk = np.isin(v, ["deceleration", "acceleration"])
    row = {**asdict(s), "params": s.label(), "curves": len(rows), "method": "shipped",
           "break_rate": float(brk.mean()), "deceleration_rate": float((v == "deceleration").mean()),
           "smooth_bend_rate": float((v == "smooth_bend").mean()),
           "estimate_in_interval": float(np.mean([r["estimate_in_interval"] for r in rows])),
           "interval_extended": float(np.mean([r["extended"] for r in rows])),
           "near_floor_warned": float(np.mean([r["near_floor"] for r in rows])),
           "false_breaks_warned": (float(np.mean([r["warned"] for r, b in zip(rows, brk) if b])) if s.is_null and brk.any()
                                   else math.nan),
           "seconds_per_fit": float(np.mean([r["seconds"] for r in rows]))}
    if not s.is_null:
        for k in COVERED:
            vals = [r[f"cover_{k}"] for r in rows if not (isinstance(r[f"cover_{k}"], float) and math.isnan(r[f"cover_{k}"]))]
            row[f"cover_{k}"] = float(np.mean(vals)) if vals else math.nan
    return row


def run(lengths, curves: int, jobs: int, shipped: int, forms=FORMS[:2], warp: bool = True) -> pd.DataFrame:
    todo = scenarios(lengths, forms) if warp and curves else []
    chunk = max(10, curves // 10)
    tasks = [(one_curve, s, range(a, min(a + chunk, curves))) for s in todo for a in range(0, curves, chunk)]
    if shipped:
        checks = [s for s in shipped_scenarios() if s.length in lengths and s.form in forms] if "revisions" not in forms else [
            Scenario(T, "revisions", truth, tuple(sorted(p.items())), nz) for T in lengths
            for truth, p in SHIPPED_TRUTHS for nz in ("iid", "ar1")]
        tasks += [(shipped_check, s, range(a, min(a + 5, shipped))) for s in checks for a in range(0, shipped, 5)]
    tasks.sort(key=lambda t: t[0] is one_curve)  # the slow shipped fits first, so both workers stay busy to the end
    results: dict = {}
    t0 = time.time()
    with Pool(jobs) as pool:
        for n, (s, rows) in enumerate(pool.imap_unordered(_task, tasks), 1):
            kind = "shipped" if rows and "verdict" in rows[0] else "warp"
            results.setdefault((kind, s), []).extend(rows)
            if n % 20 == 0:
                print(f"  {n}/{len(tasks)} tasks, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    table = [summarise(s, rows) if kind == "warp" else shipped_row(s, rows) for (kind, s), rows in results.items()]
    return pd.DataFrame(table)


def _pct(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}"


def shipped_markdown(df: pd.DataFrame) -> list[str]:
    """The shipped procedure, one row per scenario: what a user's fit-curve does."""
    sh = df[df["method"] == "shipped"]
    if not len(sh):
        return []
    cover = " | ".join(f"cover {k}" for k in COVERED)
    lines = [f"The shipped procedure (`fit_curve`, default options, 200 draws; {int(sh['curves'].min())} curves per "
             "scenario). Nulls: `break` is the false-positive rate (aim <= 5%) and `warned` the share of false "
             "breaks that carry a warning; breaks: `break` is the power, coverages (aim 85-99%) are over the curves "
             "called `deceleration` (intervals are reported for breaks only), `in` is the share of fits whose every "
             "estimate lies in its interval, `widened` the share where one was widened to hold it.", "",
             f"| truth | noise | form | length | break | warned | {cover} | in | widened | s / fit |",
             "|---|---|---|---:|---:|---:|" + "---:|" * len(COVERED) + "---:|---:|---:|"]
    order = sh.assign(null=sh["truth"] != "broken").sort_values(["null", "params", "noise", "form", "length"],
                                                              ascending=[False, True, True, True, True])
    for _, r in order.iterrows():
        covers = " | ".join(_pct(r.get(f"cover_{k}")) for k in COVERED)
        warned = _pct(r["false_breaks_warned"]) if r["truth"] != "broken" else ""
        lines.append(f"| {r['params']} | {r['noise']} | {r['form']} | {r['length']:,} | {_pct(r['break_rate'])} | "
                     f"{warned} | {covers} | {_pct(r['estimate_in_interval'])} | {_pct(r['interval_extended'])} | "
                     f"{r['seconds_per_fit']:.1f} |")
    return lines + [""]


def markdown(df: pd.DataFrame) -> str:
    """The shipped table first, then the warp-speed screen: false positives, power, coverage."""
    lines = shipped_markdown(df)
    warp = df[df["method"] == "warp-speed"]
    if not len(warp):
        return "\n".join(lines) + "\n"
    cols = [(T, form) for T in sorted(warp["length"].unique()) for form in FORMS
            if ((warp["length"] == T) & (warp["form"] == form)).any()]
    head = " | ".join(f"{T:,} {form}" for T, form in cols)
    lines += [f"Warp-speed screen, false-positive rate: % of curves with no break that get a break verdict (aim <= 5; "
              f"{int(warp['curves'].min())} curves each)", "", f"| null truth | noise | {head} |",
              "|---|---|" + "---:|" * len(cols)]
    for (label, nz), g in warp[warp["truth"] != "broken"].groupby(["params", "noise"], sort=False):
        vals = [g[(g["length"] == T) & (g["form"] == form)]["break_rate"] for T, form in cols]
        lines.append(f"| {label} | {nz} | " + " | ".join(_pct(v.iloc[0]) if len(v) else "" for v in vals) + " |")
    lines += ["", "Warp-speed screen, power: % of broken curves called `deceleration` (aim >= 90 for c0/r_d >= 4, f1 <= 0.2)",
              "", f"| truth | noise | {head} |", "|---|---|" + "---:|" * len(cols)]
    brk = warp[warp["truth"] == "broken"]
    for (label, nz), g in brk.groupby(["params", "noise"], sort=False):
        vals = [g[(g["length"] == T) & (g["form"] == form)]["deceleration_rate"] for T, form in cols]
        lines.append(f"| {label} | {nz} | " + " | ".join(_pct(v.iloc[0]) if len(v) else "" for v in vals) + " |")
    lines += ["", "Warp-speed screen, coverage of the 95% basic intervals (percentile intervals in brackets): % of "
              "broken curves whose interval holds the true value, min-max over the break shapes with c0/r_d >= 4 and "
              "f1 <= 0.2 (over all curves, whatever their verdict)", "", f"| quantity | noise | {head} |",
              "|---|---|" + "---:|" * len(cols)]
    strong = brk[brk["params"].str.contains(r"f1 0\.(?:05|2),") & ~brk["params"].str.contains("ratio 2\\)")]
    for k in COVERED:
        if f"cover_{k}" not in strong:
            continue
        for nz in NOISES:
            cells = []
            for T, form in cols:
                g = strong[(strong["length"] == T) & (strong["form"] == form) & (strong["noise"] == nz)]
                v, q = g[f"cover_{k}"], g.get(f"cover_{k}_percentile", pd.Series(dtype=float))
                cells.append(f"{_pct(v.min())}-{_pct(v.max())} [{_pct(q.min())}-{_pct(q.max())}]" if len(v) else "")
            lines.append(f"| {k} | {nz} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.calibrate_breaks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curves", type=int, default=500, help="simulated curves per scenario (default: %(default)s)")
    p.add_argument("--lengths", type=int, nargs="+", default=[3000, 262144], help="curve lengths (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default: %(default)s)")
    p.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS[:2]), help="curve forms (default: %(default)s)")
    p.add_argument("--shipped", type=int, default=0, help="curves per scenario of the shipped procedure (default: %(default)s)")
    p.add_argument("--csv", type=Path, help="write every scenario's rates here")
    p.add_argument("--readme", type=Path, help="replace the calibration block of this README with the tables")
    p.add_argument("--block", default="calibration", help="the block of --readme to replace (default: %(default)s)")
    p.add_argument("--from-csv", type=Path, help="rebuild the tables from an earlier run's --csv instead of simulating")
    args = p.parse_args(argv)
    if args.from_csv:
        df = pd.read_csv(args.from_csv)
        text = markdown(df) + f"\n(From `{args.from_csv}`: {len(df)} scenario rows.)\n"
    else:
        t0 = time.time()
        df = run(args.lengths, args.curves, args.jobs, args.shipped, args.forms)
        text = markdown(df) + f"\n({len(df)} scenario rows, {time.time() - t0:.0f} s with {args.jobs} processes.)\n"
    publish(text, df, args.csv, args.readme, args.block)


if __name__ == "__main__":
    main()
