"""Error rates of the deceleration test and coverage of its intervals, on curves with known truth.

    python -m benchmarks.calibrate_breaks [--curves 500] [--lengths 3000 262144] [--jobs 2]
                                          [--full 100] [--csv OUT.csv] [--readme README.md]

Scenarios: every truth (a power law; saturating laws E + A t^-alpha with E/L(T) in {0.2, 0.5, 0.9};
broken power laws with slope ratio c0/r_d in {2, 4, 8, 15} and sharpness f1 in {0.05, 0.2, 0.5}) x
every noise (iid 3% per step in log loss; AR(1) with rho 0.9 and 3% marginal sd; iid 3% plus slow
structure 0.01 sin(2.5 log t + phase), random phase) x both forms (a raw per-step log, and the same
curve smoothed and log-subsampled before it reaches fit-curve) x both lengths. `--forms revisions`
adds a third form: the curve seen only at a published suite's revisions (Pythia's grid: 1, 2, 4 ...
512, then 1,000 x 2^k, and the last step), fitted as a suite's evaluation loss is (no smoothing,
no subsampling; FitOptions.at_revisions), for example with `--lengths 143000`.

Each curve is fitted exactly as `fit-curve` does. Error rates use the warp-speed method for Monte
Carlo studies of bootstrap procedures (Giacomini, Politis & White 2013): every simulated curve gets
one bootstrap draw under its own fitted null (and one under its own broken fit for the intervals),
and the draws of all curves of a scenario form the bootstrap distribution. That estimates what the
test does with infinitely many draws at the cost of one. `--full N` checks it: N curves of a few
scenarios run the shipped procedure (200 draws each, sequential p-values) and are reported beside.
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

from benchmarks import replace_block
from scaledyn.breaktest import break_statistic, classify
from scaledyn.curve import log_moving_average, log_subsample_mask, validate_curve
from scaledyn.fit import DERIVED, LOG_SCALE, bootstrap_intervals, derived, fit_curve, on_scale, prepare_fit
from scaledyn.options import FitOptions
from scaledyn.powerlaws import bnsl_log

SIGMA = 0.03
ALPHA = 0.05
NULLS = [("power_law", {})] + [("saturating", {"q": q}) for q in (0.2, 0.5, 0.9)]
BREAKS = [("broken", {"ratio": r, "f1": f}) for r in (2, 4, 8, 15) for f in (0.05, 0.2, 0.5)]
NOISES = ("iid", "ar1", "slow")
FORMS = ("raw", "presmoothed", "revisions")
FULL_CHECK = [("power_law", {}, "iid"), ("saturating", {"q": 0.5}, "ar1"), ("broken", {"ratio": 4, "f1": 0.2}, "iid"),
              ("broken", {"ratio": 4, "f1": 0.5}, "ar1")]


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


def truth_curve(s: Scenario, rng) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """log loss at every step 1..T, and the true derived quantities for a broken truth."""
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
    theta = [math.log(10), c0, r_d - c0, logd, p["f1"]]
    return t, bnsl_log(x, theta), derived(theta, T)


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


def observed(s: Scenario, rng) -> tuple[np.ndarray, np.ndarray, dict | None, FitOptions]:
    """Curve i of scenario s as the fit receives it (steps, losses), its truth, and the fit options."""
    t, g, true = truth_curve(s, rng)
    loss = np.exp(g + noise(s.noise, s.length, rng))
    if s.form == "presmoothed":
        keep = log_subsample_mask(t)
        return t[keep], log_moving_average(loss)[keep], true, FitOptions.defaults()
    if s.form == "revisions":
        keep = revision_grid(s.length) - 1
        return t[keep], loss[keep], true, FitOptions.defaults().at_revisions()
    return t, loss, true, FitOptions.defaults()


def one_curve(s: Scenario, i: int) -> dict:
    """The fit and one warp-speed draw (test and interval) for curve i of scenario s."""
    t, loss, true, options = observed(s, np.random.default_rng(s.seed(i)))
    f = prepare_fit(validate_curve(t, loss), options)
    draw_rng = np.random.default_rng(s.seed(10**9 + i))
    S = max(f.null.sse - f.broken.sse, 0) / max(f.broken.sse, 1e-300)
    S_star = break_statistic(f.x, f.noise_for(f.null).sampler(f.null.log_predict)(draw_rng))
    roots, other = bootstrap_intervals(f.x, f.broken, f.noise_for(f.broken), 1, f.T, draw_rng)
    est = on_scale(f.broken.theta, f.T)
    root = on_scale(f.broken.theta + roots[0], f.T) - est if len(roots) else np.zeros(len(DERIVED))
    truth = None if true is None else np.array([math.log(true[k]) if LOG_SCALE[k] else true[k] for k in DERIVED])
    return {"S": S, "S_star": S_star, "theta": f.broken.theta, "x0": f.x[0], "x1": f.x[-1], "est": est, "root": root,
            "other": other, "true": truth}


def summarise(s: Scenario, rows: list[dict]) -> dict:
    crit = float(np.quantile([r["S_star"] for r in rows], 1 - ALPHA))
    verdicts = []
    for r in rows:
        x = np.array([r["x0"], r["x1"]])
        v, _ = classify(0.0 if r["S"] > crit else 1.0, ALPHA, r["theta"], x)
        verdicts.append(v or "none")
    v = np.array(verdicts)
    out = {**asdict(s), "params": s.label(), "curves": len(rows), "method": "warp-speed",
           "break_rate": float(np.isin(v, ["deceleration", "acceleration"]).mean()),
           "deceleration_rate": float((v == "deceleration").mean()),
           "smooth_bend_rate": float((v == "smooth_bend").mean()),
           "other_basin": float(np.mean([r["other"] for r in rows]))}
    if not s.is_null:
        roots = np.array([r["root"] for r in rows])
        qlo, qhi = np.quantile(roots, 1 - ALPHA / 2, axis=0), np.quantile(roots, ALPHA / 2, axis=0)
        for j, k in enumerate(DERIVED[:3]):
            lo = np.array([r["est"][j] - qlo[j] for r in rows])
            hi = np.array([r["est"][j] - qhi[j] for r in rows])
            if k == "t_d":  # clipped to the fitted range, as conf_int does
                lo, hi = np.maximum(lo, [r["x0"] for r in rows]), np.minimum(hi, [r["x1"] for r in rows])
            true = np.array([r["true"][j] for r in rows])
            out[f"cover_{k}"] = float(np.mean((lo <= true) & (true <= hi)))
    return out


def full_check(s: Scenario, i: int) -> dict:
    """The shipped procedure on curve i: 200 draws, sequential p-value, real intervals."""
    t, loss, true, options = observed(s, np.random.default_rng(s.seed(i)))
    fit = fit_curve(validate_curve(t, loss), dataclasses.replace(options, seed=i))
    ci = fit.conf_int()
    row = {"verdict": fit.verdict}
    if true is not None:
        for k in DERIVED[:3]:
            row[f"cover_{k}"] = bool(ci[k][0] <= true[k] <= ci[k][1])
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


def run(lengths, curves: int, jobs: int, full: int, forms=FORMS[:2]) -> pd.DataFrame:
    todo = scenarios(lengths, forms)
    chunk = max(10, curves // 10)
    tasks = [(one_curve, s, range(a, min(a + chunk, curves))) for s in todo for a in range(0, curves, chunk)]
    if full:
        checks = [s for s in todo if (s.truth, dict(s.params), s.noise) in [(a, b, c) for a, b, c in FULL_CHECK]]
        tasks += [(full_check, s, range(a, min(a + 10, full))) for s in checks for a in range(0, full, 10)]
    results: dict = {}
    t0 = time.time()
    with Pool(jobs) as pool:
        for n, (s, rows) in enumerate(pool.imap_unordered(_task, tasks), 1):
            kind = "full" if rows and "verdict" in rows[0] else "warp"
            results.setdefault((kind, s), []).extend(rows)
            if n % 50 == 0:
                print(f"  {n}/{len(tasks)} tasks, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    table = []
    for (kind, s), rows in results.items():
        if kind == "warp":
            table.append(summarise(s, rows))
            continue
        v = np.array([r["verdict"] for r in rows])
        row = {**asdict(s), "params": s.label(), "curves": len(rows), "method": "full (200 draws)",
               "break_rate": float(np.isin(v, ["deceleration", "acceleration"]).mean()),
               "deceleration_rate": float((v == "deceleration").mean()), "smooth_bend_rate": float((v == "smooth_bend").mean())}
        if not s.is_null:
            row.update({f"cover_{k}": float(np.mean([r[f"cover_{k}"] for r in rows])) for k in DERIVED[:3]})
        table.append(row)
    return pd.DataFrame(table)


def _pct(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}"


def markdown(df: pd.DataFrame) -> str:
    """The three README tables: false positives, power, coverage (per cent of curves)."""
    warp = df[df["method"] == "warp-speed"]
    cols = [(T, form) for T in sorted(warp["length"].unique()) for form in FORMS
            if ((warp["length"] == T) & (warp["form"] == form)).any()]
    head = " | ".join(f"{T:,} {form}" for T, form in cols)
    lines = [f"False-positive rate: % of curves with no break that get a break verdict (aim <= 5; "
             f"{int(warp['curves'].min())} curves each)", "", f"| null truth | noise | {head} |",
             "|---|---|" + "---:|" * len(cols)]
    for (label, nz), g in warp[warp["truth"] != "broken"].groupby(["params", "noise"], sort=False):
        vals = [g[(g["length"] == T) & (g["form"] == form)]["break_rate"] for T, form in cols]
        lines.append(f"| {label} | {nz} | " + " | ".join(_pct(v.iloc[0]) if len(v) else "" for v in vals) + " |")
    lines += ["", "Power: % of broken curves called `deceleration` (aim >= 90 for c0/r_d >= 4, f1 <= 0.5)", "",
              f"| truth | noise | {head} |", "|---|---|" + "---:|" * len(cols)]
    brk = warp[warp["truth"] == "broken"]
    for (label, nz), g in brk.groupby(["params", "noise"], sort=False):
        vals = [g[(g["length"] == T) & (g["form"] == form)]["deceleration_rate"] for T, form in cols]
        lines.append(f"| {label} | {nz} | " + " | ".join(_pct(v.iloc[0]) if len(v) else "" for v in vals) + " |")
    lines += ["", "Coverage of the 95% intervals: % of broken curves whose interval holds the true value "
              "(aim 90-98), min-max over the 12 break shapes", "", f"| quantity | noise | {head} |",
              "|---|---|" + "---:|" * len(cols)]
    for k in DERIVED[:3]:
        for nz in NOISES:
            cells = []
            for T, form in cols:
                v = brk[(brk["length"] == T) & (brk["form"] == form) & (brk["noise"] == nz)][f"cover_{k}"]
                cells.append(f"{_pct(v.min())}-{_pct(v.max())}" if len(v) else "")
            lines.append(f"| {k} | {nz} | " + " | ".join(cells) + " |")
    full = df[df["method"] != "warp-speed"]
    if len(full):
        lines += ["", f"Check of the warp-speed estimates: the shipped procedure (200 draws per curve, "
                  f"{int(full['curves'].min())} curves)", "", "| scenario | length | form | warp-speed | shipped | coverage t_d (warp / shipped) |",
                  "|---|---:|---|---:|---:|---|"]
        for _, r in full.iterrows():
            w = warp[(warp["length"] == r["length"]) & (warp["form"] == r["form"]) & (warp["params"] == r["params"])
                     & (warp["noise"] == r["noise"])].iloc[0]
            rate = "break_rate" if r["truth"] != "broken" else "deceleration_rate"
            cov = "" if r["truth"] != "broken" else f"{_pct(w['cover_t_d'])} / {_pct(r['cover_t_d'])}"
            lines.append(f"| {r['params']}, {r['noise']} | {r['length']:,} | {r['form']} | {_pct(w[rate])} | "
                         f"{_pct(r[rate])} | {cov} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.calibrate_breaks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curves", type=int, default=500, help="simulated curves per scenario (default: %(default)s)")
    p.add_argument("--lengths", type=int, nargs="+", default=[3000, 262144], help="curve lengths (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default: %(default)s)")
    p.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS[:2]), help="curve forms (default: %(default)s)")
    p.add_argument("--full", type=int, default=0, help="curves per checked scenario for the shipped procedure (default: %(default)s)")
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
        df = run(args.lengths, args.curves, args.jobs, args.full, args.forms)
        text = markdown(df) + f"\n({len(df)} scenario rows, {time.time() - t0:.0f} s with {args.jobs} processes.)\n"
    print(text)
    if args.csv:
        df.to_csv(args.csv, index=False)
    if args.readme:
        replace_block(args.readme, args.block, text)


if __name__ == "__main__":
    main()
