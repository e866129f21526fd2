"""How often the schedule verdict says what is true, on simulated runs with known truth.

    python -m benchmarks.calibrate_schedule [--curves 100] [--shipped 40] [--jobs 2]
                                            [--csv OUT.csv] [--readme docs/calibration.md]

The default study's schedule (trapezoidal: a linear warm-up from 0.1 of the peak, then constant)
over 14,000 steps, with warm-ups of 20, 200 and 2,000 steps. Three truths, each a per-step log
with its lr column and iid 3% noise in log loss (calibrate_breaks.noise):

- `lr_power` (a): a power law in learning-rate time S, L = 10 S^-0.25. Any break in steps is the
  schedule's; the aim is `deceleration` in at most 5% of curves.
- `lr_broken` (b): a broken power law in S (c0 = 0.3, slope ratio c0/r_d = 4 or 8, f1 = 0.2), its
  break in the middle half of the fitted log-S range: the training's own break, on its own clock.
- `step_broken` (c): the same broken law in steps, its break in the middle half of the log-step range.

For (b) and (c) the aim is `found` >= 90%: a break the schedule does not explain (schedule verdict
`deceleration`, `steps_only`, `lr_time_only` or `break_moves`), so the run is not written off as
the schedule's; for (a) `found` <= 5%.

Two methods, as in calibrate_breaks: `shipped` runs what a user gets (fit_curve on steps, then
with_schedule_verdict: both axes with 200 draws each) on `--shipped` curves per scenario;
`warp-speed` gives every curve one null draw and one interval draw on each axis and pools the
draws of a scenario (Giacomini, Politis & White 2013).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import publish
from benchmarks.calibrate_breaks import ALPHA, _pct, noise, warp_draw, warp_verdict
from scaledyn.schedule import Schedule, lr_factor
from scaledyn.stats.curve import validate_curve
from scaledyn.stats.fit import fit_curve, prepare_fit, with_schedule_verdict
from scaledyn.stats.lrtime import SCHEDULE_VERDICTS, classify, cross_statistic, steps_at, to_lr_time
from scaledyn.stats.options import FitOptions
from scaledyn.stats.powerlaws import bnsl_log

STEPS = 14000
WARMUPS = (20, 200, 2000)
TRUTHS = [("lr_power", None), ("lr_broken", 4), ("lr_broken", 8), ("step_broken", 4), ("step_broken", 8)]
SHIPPED_TRUTHS = [("lr_power", None), ("lr_broken", 4), ("step_broken", 4)]
F1, C0 = 0.2, 0.3
FOUND = ("deceleration", "steps_only", "lr_time_only", "break_moves")  # a break the schedule does not explain
VERDICTS = (*SCHEDULE_VERDICTS, "smooth")


@dataclass(frozen=True)
class Scenario:
    warmup: int
    truth: str
    ratio: int | None

    def label(self) -> str:
        return self.truth + ("" if self.ratio is None else f" (c0/r_d {self.ratio})")

    def seed(self, i: int) -> np.random.SeedSequence:
        return np.random.SeedSequence([self.warmup, hash_text(self.label()), i])


def hash_text(text: str) -> int:
    return int.from_bytes(text.encode().ljust(16, b"_")[:16], "little") % 2**63


def rates(warmup: int) -> np.ndarray:
    s = Schedule("trapezoidal", warmup, 0.1, 0, 0.1)
    return np.array([lr_factor(s, t, STEPS) for t in range(STEPS)])


def observed(sc: Scenario, rng, transient: float):
    """A simulated per-step log (a validated Curve with its lr column) and its true break in steps (None for (a))."""
    t = np.arange(1, STEPS + 1, dtype=float)
    eta = rates(sc.warmup)
    S = np.cumsum(eta)
    clock = np.log(t if sc.truth == "step_broken" else S)
    true_step = None
    if sc.truth == "lr_power":
        g = math.log(10) - 0.25 * clock
    else:
        lo, hi = clock[int(transient)], clock[-1]  # the fitted range starts after the transient cut (in steps)
        logd = rng.uniform(lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo))
        g = bnsl_log(clock, np.array([math.log(10), C0, C0 / sc.ratio - C0, logd, F1]))
        true_step = float(np.exp(logd)) if sc.truth == "step_broken" else steps_at(np.exp(logd), t, S)
    loss = np.exp(g + noise("iid", STEPS, rng))
    return validate_curve(t, loss, source=f"{sc.label()}, warm-up {sc.warmup}", lr=3e-3 * eta), true_step


def warp_curve(sc: Scenario, i: int) -> dict:
    options = FitOptions.defaults()
    curve, true_step = observed(sc, np.random.default_rng(sc.seed(i)), options.transient_steps)
    draw_rng = np.random.default_rng(sc.seed(10**9 + i))
    lr_curve = to_lr_time(curve)
    f_lr = prepare_fit(lr_curve, options)
    x_steps = np.log(lr_curve.step[f_lr.idx])
    cross = {"S": cross_statistic(f_lr.x, x_steps, f_lr.y),  # the cross-clock test: one draw under S's smooth law
             "S_star": cross_statistic(f_lr.x, x_steps, f_lr.noise.simulator.sampler(f_lr.null.log_predict)(draw_rng))}
    return {"steps": warp_draw(prepare_fit(curve, options), draw_rng), "lr": warp_draw(f_lr, draw_rng), "cross": cross,
            "map": (lr_curve.step[f_lr.idx], lr_curve.x[f_lr.idx]), "true_step": true_step}


def _t_d_interval(r: dict, q_lo: float, q_hi: float) -> list[float]:
    """Basic interval of log t_d from the scenario's pooled roots, clipped to the fitted range."""
    est = r["est"]["t_d"]
    return [math.exp(max(est - q_hi, r["x0"])), math.exp(min(est - q_lo, r["x1"]))]


def warp_row(sc: Scenario, rows: list[dict]) -> dict:
    verdicts = []
    per_axis = {}
    for axis in ("steps", "lr"):
        draws = [r[axis] for r in rows]
        crit = float(np.quantile([d["S_star"] for d in draws], 1 - ALPHA))
        roots = np.array([d["root"]["t_d"] for d in draws])
        q = np.nanquantile(roots, [ALPHA / 2, 1 - ALPHA / 2])
        per_axis[axis] = [(warp_verdict(d, crit), _t_d_interval(d, *q)) for d in draws]
    cross_crit = float(np.quantile([r["cross"]["S_star"] for r in rows], 1 - ALPHA))
    for r, (sv, s_ci), (lv, l_ci) in zip(rows, per_axis["steps"], per_axis["lr"]):
        l_ci_steps = [steps_at(v, *r["map"]) for v in l_ci]
        verdicts.append(classify(sv, lv, s_ci, l_ci_steps, 0.0 if r["cross"]["S"] > cross_crit else 1.0, ALPHA))
    return summary_row(sc, "warp-speed", verdicts, [r["true_step"] for r in rows])


def shipped_curve(sc: Scenario, i: int) -> dict:
    options = dataclasses.replace(FitOptions.defaults(), seed=i)
    curve, true_step = observed(sc, np.random.default_rng(sc.seed(i)), options.transient_steps)
    t0 = time.process_time()
    fit = with_schedule_verdict(fit_curve(curve, options), curve, options)
    return {"verdict": fit.schedule["verdict"], "seconds": time.process_time() - t0, "true_step": true_step}


def summary_row(sc: Scenario, method: str, verdicts: list[str], true_steps: list, seconds: float = math.nan) -> dict:
    """Each verdict's share; `found` also among the breaks that lie past the end of the warm-up."""
    v = np.array([x if x in SCHEDULE_VERDICTS else "smooth" for x in verdicts])
    late = np.array([t is not None and t > sc.warmup for t in true_steps])
    row = {"warmup": sc.warmup, "truth": sc.truth, "ratio": sc.ratio, "scenario": sc.label(), "method": method,
           "curves": len(v), "found": float(np.isin(v, FOUND).mean()), "late_breaks": int(late.sum()),
           "found_late": float(np.isin(v[late], FOUND).mean()) if late.any() else math.nan, "seconds_per_curve": seconds}
    return row | {k: float((v == k).mean()) for k in VERDICTS}


def _task(args):
    fn, sc, idx = args
    return fn, sc, [fn(sc, i) for i in idx]


def run(curves: int, shipped: int, jobs: int, warmups=WARMUPS, truths=None) -> pd.DataFrame:
    keep = (lambda t: truths is None or t in truths)  # noqa: E731
    tasks = [(shipped_curve, Scenario(w, t, r), range(a, min(a + 4, shipped)))
             for w in warmups for t, r in SHIPPED_TRUTHS if keep(t) for a in range(0, shipped, 4)]
    tasks += [(warp_curve, Scenario(w, t, r), range(a, min(a + 10, curves)))
              for w in warmups for t, r in TRUTHS if keep(t) for a in range(0, curves, 10)]
    results: dict = {}
    t0 = time.time()
    with Pool(jobs) as pool:
        for n, (fn, sc, rows) in enumerate(pool.imap_unordered(_task, tasks), 1):
            results.setdefault((fn.__name__, sc), []).extend(rows)
            if n % 10 == 0:
                print(f"  {n}/{len(tasks)} tasks, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    out = []
    for (name, sc), rows in results.items():
        if name == "warp_curve":
            out.append(warp_row(sc, rows))
        else:
            out.append(summary_row(sc, "shipped", [r["verdict"] for r in rows], [r["true_step"] for r in rows],
                                   float(np.mean([r["seconds"] for r in rows]))))
    return pd.DataFrame(out).sort_values(["method", "truth", "ratio", "warmup"], na_position="first")


def aim(r) -> str:
    if r["truth"] == "lr_power":  # any claim that the training broke is false here
        return "ok" if r["found"] <= 0.05 else "MISS"
    return "ok" if r["found"] >= 0.9 else "MISS"


def markdown(df: pd.DataFrame) -> str:
    lines = ["Schedule verdicts on simulated runs (14,000 steps, trapezoidal warm-up from 0.1 of the peak, iid 3% "
             "noise; `python -m benchmarks.calibrate_schedule`). Each row: the share of curves given each verdict; "
             "`found` = a break the schedule does not explain (deceleration, steps_only, lr_time_only or break_moves). "
             "Aims: lr_power (whose only bend is the schedule's) `found` <= 5%; lr_broken and step_broken `found` >= 90%.",
             "",
             "`found, break after warm-up`: the same share among the curves whose true break lies after the warm-up "
             "(their number in brackets).", "",
             "| method | truth | warm-up | curves | deceleration | schedule | steps_only | lr_time_only | break_moves | smooth "
             "| found | found, break after warm-up | aim |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for _, r in df.iterrows():
        late = "" if pd.isna(r.get("found_late")) else f"{_pct(r['found_late'])} [{int(r['late_breaks'])}]"
        lines.append(f"| {r['method']} | {r['scenario']} | {r['warmup']:,} | {r['curves']} | "
                     + " | ".join(_pct(r[k]) for k in VERDICTS) + f" | {_pct(r['found'])} | {late} | {aim(r)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.calibrate_schedule", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curves", type=int, default=100, help="warp-speed curves per scenario (default: %(default)s)")
    p.add_argument("--shipped", type=int, default=40, help="shipped-procedure curves per scenario (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default: %(default)s)")
    p.add_argument("--csv", type=Path, help="write every scenario's rates here")
    p.add_argument("--warmups", type=int, nargs="+", default=list(WARMUPS), help="warm-up lengths (default: %(default)s)")
    p.add_argument("--truths", nargs="+", choices=sorted({t for t, _ in TRUTHS}), help="only these truths (default: all)")
    p.add_argument("--readme", type=Path, help="replace a block of this Markdown file with the table")
    p.add_argument("--block", default="calibration-schedule", help="the block to replace (default: %(default)s)")
    p.add_argument("--from-csv", type=Path, nargs="+", help="rebuild the table from earlier runs' --csv files instead "
                   "of simulating; a scenario in several keeps the row of the last file")
    args = p.parse_args(argv)
    t0 = time.time()
    if args.from_csv:
        df = pd.concat([pd.read_csv(f).assign(source=f.name) for f in args.from_csv])
        if "steps_only" in df:  # a run before the cross-clock test had no steps_only: its curves never reached it
            df["steps_only"] = df["steps_only"].fillna(0.0)
        else:
            df["steps_only"] = 0.0
        df = df.drop_duplicates(["method", "truth", "ratio", "warmup"], keep="last")
        df = df.sort_values(["method", "truth", "ratio", "warmup"], na_position="first")
        origin = "; ".join(f"{n} rows from `{f}`" for f, n in df["source"].value_counts(sort=False).items())
        text = markdown(df) + f"\n({origin}.)\n"
    else:
        df = run(args.curves, args.shipped, args.jobs, args.warmups, args.truths)
        text = markdown(df) + f"\n({len(df)} scenario rows, {time.time() - t0:.0f} s with {args.jobs} processes.)\n"
    publish(text, df, args.csv, args.readme, args.block)


if __name__ == "__main__":
    main()
