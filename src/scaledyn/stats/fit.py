"""Loss deceleration of one training-loss curve: preprocessing, the three fits, the break test and
bootstrap intervals, returned as a `BrokenPowerLawFit` results object (FIT.json is its JSON form).

The broken power law (BNSL; docs/method.md):

    L(t) = b t^-c0 (1 + (t / d1)^(1 / f1))^(-c1 f1)
    t_d = d1,  L_d = b t_d^-c0,  r_d = c0 + c1,  L_T_hat = L_d (T / t_d)^-r_d

One estimand per number. The reference pipeline fits the *smoothed* curve (a log moving average),
so `t_d`, `L_d`, `r_d` and `L_T_hat` are those of the smoothed curve: the numbers a published
analysis reports and compares. The smoother lags the raw curve (by about 9% in t_d), so
`t_d_corrected` is the break of the per-step curve itself, the training's own: the per-step law
whose log moving average, fitted exactly like the data, gives the smoothed fit (solved by fixed
point; `delag`). Each has an interval of its own estimand from one parametric bootstrap: curves of
the fitted shape with the observed noise (noise.py) are preprocessed like the data and refitted
from scratch, and the intervals are basic bootstrap intervals (estimate minus the quantiles of
estimate* - estimate) on each quantity's scale (log for the positive ones). For a raw log the
simulated per-step curves are those of the corrected law, so their smoothed refits centre on the
smoothed estimate; t_d_corrected's interval is t_d's shifted by the same correction.
`benchmarks/calibrate_breaks.py` measures coverage, including whether every estimate lies in its
own interval; where a bootstrap interval misses its estimate it is widened to hold it, with a
warning (`estimate_outside_interval`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import atomic
from ..errors import CurveError
from .breaktest import NOISE_FREE, BreakTest, break_test, slope_ratio, smooth_null
from .curve import Curve, Preprocessing, WindowMeans, fit_points, read_curve_csv
from .lrtime import cross_clock, describe, schedule_verdict, steps_at, to_lr_time
from .noise import CurveSimulator
from .options import FitOptions
from .powerlaws import BNSL_PARAMS, LAWS, SHARPNESS_BOUNDS, LawFit, bnsl_log, fit_bnsl, refine_bnsl, sat_log

DERIVED = ("t_d", "L_d", "r_d", "L_T_hat", "c0")
LOG_SCALE = {"t_d": True, "L_d": True, "r_d": False, "L_T_hat": True, "c0": False}  # intervals are formed on these scales
ESTIMANDS = {
    "t_d": "break step of the smoothed curve (the reference pipeline's; compare with published values)",
    "t_d_corrected": "break step of the per-step curve, the smoothing lag removed (the training's own)",
    "L_d": "loss where the two asymptotes of the smoothed curve's broken fit meet",
    "r_d": "log-log rate of improvement after the break (smoothed curve)",
    "L_T_hat": "two-segment extrapolation of the smoothed curve's broken fit to the last step",
}
STEP_ESTIMANDS = {  # a fit on learning-rate time (axis lr-area) also gives its breaks in steps
    "t_d_steps": "the step where learning-rate time reaches t_d (the map S -> step is monotone: its interval is t_d's, mapped)",
    "t_d_corrected_steps": "the step where learning-rate time reaches t_d_corrected",
}
BASIN_SHIFT = 0.2  # a refit whose break moved by more than this in log steps from the home basin's
MAX_STEP_GRID = 5e7  # longest per-step grid rebuilt to remove the lag of a curve that arrives smoothed
SPARSE_POINTS = 25  # fewer fitted points than this: a sparse grid
NEAR_EDGE = 0.15  # a break in the outer 15% of the log range (the test itself excludes the outer 5%)
# near_floor: the zone where the calibration found slow structure called a break (a saturating curve
# with E / L(T) = 0.9 and a 1% log-periodic wiggle at 3,000 steps: 85% false decelerations). There
# the false breaks had the saturating floor at 86-94% of the final loss, slope ratios 2.5-3.4 and
# beat the smooth law by SSE ratios of 1.6-8; breaks of the size the paper reports (c0 / r_d 6-15)
# beat it by far more. Set on a pilot of that generator; docs/calibration.md reports the rate.
NEAR_FLOOR = 0.8  # the saturating law's floor E at this share of the final loss or more,
NEAR_FLOOR_RATIO = 4.0  # and a slope ratio c0 / r_d below this,
NEAR_FLOOR_SSE = 10.0  # and an SSE ratio (best smooth law / broken) below this
OTHER_BASIN = 0.1
VERDICT_LAW = {"deceleration": "broken_power_law", "acceleration": "broken_power_law",
               "smooth_bend": "saturating_power_law", "power_law": "power_law"}
WARNINGS = {  # stable codes: FIT.json, fit-curve, the fit table and the summary carry them
    "near_floor": "a nearly flat curve: the zone where slow structure passes for a break (docs/calibration.md)",
    "break_near_edge": "the break sits near an end of the fitted range",
    "interval_clipped": "the t_d interval reaches an end of the fitted range and is clipped there",
    "other_basin": "many bootstrap refits found their break in another basin",
    "sparse_grid": "few fitted points",
    "estimate_outside_interval": "a bootstrap interval missed its own estimate and was widened to hold it",
    "r_d_not_positive": "the r_d interval reaches zero or below",
    "lag_not_corrected": "the smoothing lag could not be removed (t_d_corrected unavailable)",
    "axis_looks_scaled": "the step column looks like tokens or FLOPs",
    "window_unstable": "the verdict or t_d moves across fit windows",
}
INPUT_WARNINGS = ("axis_looks_scaled",)  # found while reading the curve; the rest `warnings()` derives from the fit


def warning(code: str, message: str) -> dict:
    assert code in WARNINGS, code
    return {"code": code, "message": message}


def derived(theta, T: float) -> dict:
    """The paper's quantities of a broken fit. A wild bootstrap refit (few points, a flat stretch)
    can put them beyond float range: they come out infinite then, and on_scale drops them."""
    logb, c0, c1, logd1, f1 = theta
    r_d = c0 + c1
    with np.errstate(over="ignore", under="ignore"):
        t_d, L_d, b = (float(np.exp(v)) for v in (logd1, logb - c0 * logd1, logb))
        L_T_hat = float(np.exp(logb - c0 * logd1 - r_d * (math.log(T) - logd1)))
    return {"t_d": t_d, "L_d": L_d, "r_d": r_d, "L_T_hat": L_T_hat, "b": b, "c0": c0,
            "c1": c1, "f1": f1, "slope_ratio": slope_ratio(theta)}


def on_scale(theta, T: float) -> np.ndarray:
    """The derived quantities of a broken fit on their interval scales (log for the positive ones)."""
    d = derived(theta, T)
    with np.errstate(divide="ignore", invalid="ignore"):  # a wild bootstrap refit can under- or overflow
        v = np.array([np.log(d[k]) if LOG_SCALE[k] else d[k] for k in DERIVED], dtype=float)
    return np.where(np.isfinite(v), v, np.nan)


def _from_scale(v: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.array([np.exp(x) if LOG_SCALE[k] else x for k, x in zip(DERIVED, v)], dtype=float)


def basic_interval(est: np.ndarray, roots: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Basic bootstrap interval on each column's scale: estimate minus the upper and lower quantiles
    of the roots (estimate* - estimate). NaN roots (a refit that over- or underflowed) are ignored."""
    return est - np.nanquantile(roots, 1 - alpha / 2, axis=0), est - np.nanquantile(roots, alpha / 2, axis=0)


def delag(theta_s: np.ndarray, x: np.ndarray, means: WindowMeans, grid_logx: np.ndarray,
          iterations: int = 30) -> tuple[np.ndarray, float]:
    """The per-step broken law whose log moving average, read at the fitted points `x` and fitted
    like the data, gives `theta_s`: the fixed point of theta <- theta + (theta_s - phi(theta)),
    with phi the noise-free smoothing and refit. `grid_logx` is log x of the per-step grid from
    `means.first` on. Returns the law and how far phi of it still is from theta_s (max over the
    parameters, log sharpness for f1)."""
    lo, hi = math.log(SHARPNESS_BOUNDS[0]), math.log(SHARPNESS_BOUNDS[1])

    def coords(t):
        return np.r_[t[:4], math.log(t[4])]

    target, theta = coords(theta_s), np.array(theta_s, float)
    best = (math.inf, theta)
    for _ in range(iterations):
        with np.errstate(all="ignore"):
            smoothed = np.log(means(np.exp(bnsl_log(grid_logx, theta))))
        if not np.all(np.isfinite(smoothed)):
            break
        gap = target - coords(refine_bnsl(x, smoothed, theta).theta)
        miss = float(np.abs(gap).max())
        if not miss < best[0]:  # a break the data cannot place (a smooth curve's broken fit) need not converge
            break
        best = (miss, theta)
        if miss < 1e-9:
            break
        c = coords(theta) + gap
        c[4] = min(max(c[4], lo), hi)
        theta = np.r_[c[:4], math.exp(c[4])]
    return best[1], best[0]


@dataclass
class BrokenPowerLawFit:
    """Results of fitting one loss curve, in the style of statsmodels' results objects."""

    source: str
    preprocessing: dict
    rows: dict
    n_points: int
    fit_range: tuple[float, float]
    T: float
    L_T: float
    broken: LawFit
    power_law: LawFit
    saturating: LawFit
    test: BreakTest
    roots: np.ndarray  # bootstrap (draws, 5): refitted theta* - theta of the broken fit
    other_basin: float
    corrected: np.ndarray | None = None  # the per-step law whose smoothing gives `broken` (None: unknown smoother)
    axis: str = "steps"
    x_per_step: float | None = None
    lag_note: str = ""
    notes: list[str] = field(default_factory=list)
    input_warnings: list[dict] = field(default_factory=list)  # found while reading and preprocessing
    lr_time: dict | None = None  # axis lr-area: how S was built, and the map S -> step at the fitted points
    schedule: dict | None = None  # axis steps: the schedule verdict against a fit on learning-rate time

    @property
    def estimands(self) -> dict:
        return {**ESTIMANDS, **(STEP_ESTIMANDS if self.lr_time else {})}

    def to_steps(self, S):
        """Learning-rate time -> steps along this fit's map (axis lr-area only)."""
        return steps_at(S, np.array(self.lr_time["map"]["step"]), np.array(self.lr_time["map"]["S"]))

    # ------------------------------------------------------------------ reading the results

    @property
    def verdict(self) -> str:
        return self.test.verdict

    @property
    def has_break(self) -> bool:
        return self.test.has_break

    @property
    def law(self) -> LawFit:
        """The law the verdict reports: broken, saturating or single power law."""
        return {"broken_power_law": self.broken, "saturating_power_law": self.saturating,
                "power_law": self.power_law}[VERDICT_LAW[self.verdict]]

    def derived(self) -> dict:
        """The broken fit's t_d, L_d, r_d, L_T_hat (whatever the verdict), and t_d_corrected."""
        d = derived(self.broken.theta, self.T)
        d["t_d_corrected"] = None if self.corrected is None else float(math.exp(self.corrected[3]))
        if self.lr_time:
            d["t_d_steps"] = self.to_steps(d["t_d"])
            d["t_d_corrected_steps"] = None if d["t_d_corrected"] is None else self.to_steps(d["t_d_corrected"])
        return d

    def draws(self) -> np.ndarray:
        """Bootstrap draws of the derived quantities on their interval scales, (draws, len(DERIVED))."""
        return np.array([on_scale(self.broken.theta + r, self.T) for r in self.roots]).reshape(-1, len(DERIVED))

    def stderr(self) -> dict:
        """Bootstrap standard errors of the derived quantities, on their interval scales."""
        d = self.draws()
        return {k: float(np.nanstd(d[:, j], ddof=1)) if len(d) > 1 else math.nan for j, k in enumerate(DERIVED)}

    def predict(self, t, law: str | None = None) -> np.ndarray:
        """Loss at `t` (on the fitted axis) from the verdict's law (or the named one)."""
        fit = {"broken_power_law": self.broken, "saturating_power_law": self.saturating,
               "power_law": self.power_law}[law or VERDICT_LAW[self.verdict]]
        return np.exp(fit.log_predict(np.log(np.asarray(t, float))))

    def _intervals(self, alpha: float) -> tuple[dict, list[dict]]:
        """Every estimand's basic bootstrap interval, and the warnings forming them raised."""
        if not len(self.roots):
            return {k: None for k in self.estimands}, []
        est = on_scale(self.broken.theta, self.T)
        lo, hi = basic_interval(est, self.draws() - est, alpha)
        events = []
        a, b = (math.log(v) for v in self.fit_range)
        if lo[0] < a or hi[0] > b:  # t_d cannot leave the fitted range: the fit keeps the break inside it
            lo[0], hi[0] = max(lo[0], a), min(hi[0], b)
            events.append(warning("interval_clipped", "the t_d interval reaches the edge of the fitted range and is "
                                  "clipped there: the data do not pin the break down on that side"))
        outside = [k for j, k in enumerate(DERIVED) if not lo[j] <= est[j] <= hi[j]]
        if outside:
            lo, hi = np.fmin(lo, est), np.fmax(hi, est)
            events.append(warning("estimate_outside_interval", f"the bootstrap interval of {', '.join(outside)} missed "
                                  "its own estimate (the simulated curves are biased against the data) and was widened "
                                  "to hold it: read it as approximate"))
        lo, hi = _from_scale(lo), _from_scale(hi)
        out = {k: [float(lo[j]), float(hi[j])] for j, k in enumerate(DERIVED) if k in ESTIMANDS}
        out["c0"] = [float(lo[4]), float(hi[4])]
        if self.corrected is not None:  # the same roots around the corrected break: t_d's interval shifted
            shift = math.exp(self.corrected[3] - self.broken.theta[3])
            out["t_d_corrected"] = [out["t_d"][0] * shift, out["t_d"][1] * shift]
        else:
            out["t_d_corrected"] = None
        if self.lr_time:  # S -> step is monotone: the mapped interval covers the mapped estimand as often
            for k in ("t_d", "t_d_corrected"):
                out[f"{k}_steps"] = None if out[k] is None else [self.to_steps(v) for v in out[k]]
        if out["r_d"][0] <= 0:
            events.append(warning("r_d_not_positive", "the r_d interval includes values <= 0 (no improvement after t_d)"))
        return out, events

    def conf_int(self, alpha: float = 0.05) -> dict:
        """Basic bootstrap intervals of t_d, t_d_corrected, L_d, r_d, L_T_hat (and c0), each of the
        same estimand as its point estimate, t_d's clipped to the fitted range."""
        return self._intervals(alpha)[0]

    def warnings(self, alpha: float = 0.05) -> list[dict]:
        """What a researcher should read before the numbers, as {code, message} (codes in WARNINGS)."""
        out = list(self.input_warnings)
        d = derived(self.broken.theta, self.T)
        lo, hi = (math.log(v) for v in self.fit_range)
        brk = self.has_break
        if brk:
            floor, ratio = self.floor_share(), d["slope_ratio"] or math.inf
            gain = self.test.sse_null / max(self.test.sse_broken, 1e-300)
            if floor >= NEAR_FLOOR and ratio < NEAR_FLOOR_RATIO and gain < NEAR_FLOOR_SSE:
                out.append(warning("near_floor", f"a nearly flat curve (the saturating law puts the loss floor at "
                                   f"{floor:.0%} of the final loss) with a modest break (slope ratio {ratio:.2g}, SSE "
                                   f"{gain:.2g}x below the smooth law): on such curves slow structure passed for a "
                                   "break in the calibration (docs/calibration.md); believe it only if it holds "
                                   "across fit windows and seeds"))
            pos = (self.broken.theta[3] - lo) / max(hi - lo, 1e-300)
            if min(pos, 1 - pos) < NEAR_EDGE:
                out.append(warning("break_near_edge", f"t_d = {d['t_d']:.4g} lies in the outer {NEAR_EDGE:.0%} of the "
                                   "fitted range (log scale): the data on that side are few"))
            out += self._intervals(alpha)[1]
        if self.other_basin > OTHER_BASIN:
            out.append(warning("other_basin", f"{self.other_basin:.0%} of bootstrap refits found a better break "
                               "elsewhere: the break position is unstable"))
        if self.n_points < SPARSE_POINTS:
            out.append(warning("sparse_grid", f"{self.n_points} fitted points: the verdict and intervals rest on few "
                               "points (calibrated only on Pythia's revision grid, docs/calibration.md)"))
        if brk and self.corrected is None:
            out.append(warning("lag_not_corrected", self.lag_note or "the smoothing lag of t_d could not be removed"))
        return out

    def floor_share(self) -> float:
        """E / L(T) of the saturating fit: how close the curve has come to a flat floor."""
        a = self.saturating.theta[0]
        return float(math.exp(a - sat_log(np.array([math.log(self.T)]), self.saturating.theta)[0]))

    def summary(self) -> str:
        d, ci, t = self.derived(), self.conf_int(), self.test
        p = "n/a" if t.p_value is None else f"{t.p_value:.3g}"
        lines = [f"Loss-curve fit: {self.source}", "=" * 72,
                 f"Verdict:         {t.verdict} (bootstrap p = {p}, {t.draws} draws, alpha = {t.alpha})",
                 f"Smooth null:     {t.null_law.replace('_', ' ')}; SSE null / broken = {t.sse_null / max(t.sse_broken, 1e-300):.3g}",
                 f"Fitted points:   {self.n_points}, {self.axis} {self.fit_range[0]:g} .. {self.fit_range[1]:g} "
                 f"({', '.join(f'{k} {v}' for k, v in self.preprocessing.items())})",
                 "-" * 72, f"{'broken fit':<20}{'estimate':>12}   95% interval (bootstrap)"]
        for k in self.estimands:
            iv = ci.get(k)
            v = d[k]
            lines.append(f"{k:<20}" + (f"{v:>12.5g}" if v is not None else f"{'-':>12}") + "   "
                         + (f"[{iv[0]:.5g}, {iv[1]:.5g}]" if iv else "-"))
        ratio = "-" if d["slope_ratio"] is None else f"{d['slope_ratio']:.3g}"
        lines += [f"{'c0, c1, f1':<20}{d['c0']:.4g}, {d['c1']:.4g}, {d['f1']:.3g};  slope ratio c0/r_d = {ratio}",
                  f"{'L_T (smoothed)':<20}{self.L_T:>12.5g}", "-" * 72,
                  "t_d, L_d, r_d, L_T_hat: of the smoothed curve (compare with published values); "
                  "t_d_corrected: the smoothing lag removed." + (" On learning-rate time S; *_steps: mapped back to "
                                                                 "steps." if self.lr_time else ""),
                  f"Bootstrap: {len(self.roots)} refits, {self.other_basin:.1%} landed in another basin. {self.lag_note}"]
        lines += [f"Note: {n}" for n in [*self.notes, *([t.note] if t.note else [])]]
        if self.lr_time and self.lr_time["decay_from_step"] is not None:
            lines.append(f"Note: learning-rate time ends where the rate decays, step {self.lr_time['decay_from_step']} "
                         f"({self.lr_time['steps_dropped']} steps left out)")
        if self.schedule:
            lines.append(f"Schedule verdict: {describe(self.schedule)}")
        lines += [f"Warning [{w['code']}]: {w['message']}" for w in self.warnings()]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ FIT.json

    def to_json(self) -> dict:
        d, ci = self.derived(), self.conf_int()
        brk = self.has_break
        law = self.law
        pl = self.power_law
        return {
            "input": self.source,
            "rows": self.rows,
            "axis": self.axis,
            "x_per_step": self.x_per_step,
            "preprocessing": self.preprocessing,
            "notes": self.notes,
            "warnings": self.warnings(),
            "n_points": self.n_points,
            "fit_range": list(self.fit_range),
            "T": self.T,
            "L_T": self.L_T,
            "verdict": self.verdict,
            "break_test": self.test.to_json(),
            "broken_power_law": {
                "params": self.broken.params(), "sse": self.broken.sse,
                "rsle": self.broken.rsle, "derived": {**d, "ci": ci},
                "corrected_params": None if self.corrected is None else dict(zip(BNSL_PARAMS, self.corrected.tolist())),
                "bootstrap": {"draws": len(self.roots), "other_basin_fraction": self.other_basin,
                              "lag": self.lag_note, "theta_minus_estimate": self.roots.tolist(),
                              "stderr": self.stderr(), "stderr_scale": {k: "log" if LOG_SCALE[k] else "linear" for k in DERIVED}},
            },
            "saturating_power_law": {"params": self.saturating.params(), "sse": self.saturating.sse,
                                     "rsle": self.saturating.rsle, **_saturating_terms(self.saturating.theta)},
            "power_law": {"b": math.exp(pl.theta[0]), "c0": float(pl.theta[1]), "params": pl.params(),
                          "sse": pl.sse, "rsle": pl.rsle},
            "model": law.law,
            "estimands": self.estimands,
            "lr_time": self.lr_time,
            "schedule_verdict": self.schedule["verdict"] if self.schedule else None,
            "schedule_comparison": self.schedule,
            **{k: d[k] if brk else None for k in ("t_d", "t_d_corrected", "L_d", "r_d")},
            **{k: d[k] if brk else None for k in STEP_ESTIMANDS if self.lr_time},
            "c0": d["c0"] if brk else float(pl.theta[1]), "c1": d["c1"] if brk else None, "f1": d["f1"] if brk else None,
            "b": d["b"] if brk else math.exp(pl.theta[0]),
            "L_T_hat": d["L_T_hat"] if brk else float(self.predict(self.T)),
            "rsle": law.rsle,
            "ci": {k: ci[k] if brk else None for k in self.estimands},
            "note": _verdict_note(self.verdict),
        }

    @classmethod
    def from_json(cls, j: dict) -> "BrokenPowerLawFit":
        def law(name, params):
            return LawFit(name, np.array([params[k] for k in LAWS[name][1]], float), j[name]["sse"], j["n_points"])

        b = j["broken_power_law"]
        boot, corrected = b["bootstrap"], b["corrected_params"]
        return cls(
            source=j["input"], preprocessing=j["preprocessing"], rows=j.get("rows", {}), n_points=j["n_points"],
            fit_range=tuple(j["fit_range"]), T=j["T"], L_T=j["L_T"],
            broken=law("broken_power_law", b["params"]),
            power_law=law("power_law", j["power_law"]["params"]),
            saturating=law("saturating_power_law", j["saturating_power_law"]["params"]),
            test=BreakTest.from_json(j["break_test"]),
            roots=np.array(boot["theta_minus_estimate"], float).reshape(-1, len(BNSL_PARAMS)),
            other_basin=boot["other_basin_fraction"],
            corrected=None if corrected is None else np.array([corrected[k] for k in BNSL_PARAMS], float),
            axis=j["axis"], x_per_step=j["x_per_step"], lag_note=boot["lag"], notes=list(j.get("notes", [])),
            input_warnings=[w for w in j["warnings"] if w["code"] in INPUT_WARNINGS],
            lr_time=j.get("lr_time"), schedule=j.get("schedule_comparison"),  # absent from fits before the S axis
        )


MIN_POINTS = 7  # five parameters of the broken power law, and two residual degrees of freedom


class TooFewPoints(CurveError):
    """A curve too short (or too sparse after the transient cut) for the one-break fit."""

    def __init__(self, curve: Curve, pre: Preprocessing, n: int):
        self.curve, self.pre, self.n = curve, pre, n
        super().__init__(f"{curve.source}: {n} points remain after preprocessing (transient {pre.transient_steps:g} "
                         f"steps, subsample {pre.subsample!r}); a one-break fit needs at least {MIN_POINTS}")


@dataclass
class InsufficientFit:
    """The fit file of a curve too short to fit (a suite with a handful of revisions): the verdict
    `insufficient` and the counts, so a study goes on and its table and report say so, instead of
    the whole workflow failing at one run. It has no estimates; nothing reads one from it."""

    source: str
    rows: dict
    n_points: int
    preprocessing: dict
    axis: str
    T: float
    verdict: str = "insufficient"
    points_needed: int = MIN_POINTS
    schedule = None
    lr_time = None

    @classmethod
    def of(cls, e: TooFewPoints) -> "InsufficientFit":
        c = e.curve
        return cls(c.source, _rows(c), e.n,
                   e.pre.to_dict(), c.axis, float(c.axis_values[-1]) if len(c.step) else float("nan"))

    @property
    def note(self) -> str:
        return (f"too short to fit: {self.n_points} points after preprocessing (transient "
                f"{self.preprocessing['transient_steps']:g} steps), {self.points_needed} needed")

    def warnings(self) -> list[dict]:
        return []

    def summary(self) -> str:
        return f"Loss-curve fit: {self.source}\nVerdict:         insufficient ({self.note})\n"

    def to_json(self) -> dict:
        return {"input": self.source, "rows": self.rows, "axis": self.axis, "preprocessing": self.preprocessing,
                "n_points": self.n_points, "points_needed": self.points_needed, "T": self.T, "verdict": self.verdict,
                "note": self.note}

    @classmethod
    def from_json(cls, j: dict) -> "InsufficientFit":
        return cls(j["input"], j["rows"], j["n_points"], j["preprocessing"], j["axis"], j["T"])


def read_fit(path: str | Path) -> BrokenPowerLawFit | InsufficientFit:
    """A fit file: the broken power law's results, or the record of a curve too short to fit."""
    import json

    try:
        j = json.loads(Path(path).read_text())
        return InsufficientFit.from_json(j) if j.get("verdict") == "insufficient" else BrokenPowerLawFit.from_json(j)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CurveError(f"{path}: not a readable fit result ({type(e).__name__}: {e}); re-run fit-curve") from None


def _saturating_terms(theta) -> dict:
    a, alpha, m = theta
    return {"E": math.exp(a), "A": math.exp(a + alpha * m), "alpha": float(alpha)}


def _verdict_note(verdict: str) -> str:
    return {
        "deceleration": "abrupt deceleration: the broken power law beats every smooth law",
        "acceleration": "abrupt acceleration: the loss falls faster after the break",
        "smooth_bend": "the curve bends, but no abrupt break: the broken fit is reported under broken_power_law",
        "power_law": "no break detected: a single power law fits as well; the broken fit is reported under broken_power_law",
    }[verdict]


# ----------------------------------------------------------------------------- the procedure


def _step_grid(curve: Curve) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-step grid 1 .. T behind a curve that arrives smoothed (steps and fitted-axis values),
    where it can be rebuilt: whole-number steps, not too many, an axis proportional to steps."""
    steps = curve.step
    if not (np.all(steps == np.round(steps)) and steps[-1] <= MAX_STEP_GRID):
        return None
    grid = np.arange(1, int(steps[-1]) + 1, dtype=float)
    if curve.x is None:
        return grid, grid
    per = curve.x / steps
    if np.ptp(per) > 1e-9 * per.mean():
        return None
    return grid, grid * float(per.mean())


@dataclass
class NoiseModel:
    """How curves like the data are simulated, and the per-step law the intervals simulate from."""

    simulator: CurveSimulator
    base: np.ndarray  # theta of the shape the interval bootstrap simulates around
    corrected: np.ndarray | None  # the per-step law (smoothing lag removed); None where unknown
    lag_note: str


def _noise_model(curve: Curve, idx: np.ndarray, pre: Preprocessing, x, y, broken: LawFit) -> NoiseModel:
    """noise.py says why each kind of input gets its own simulator."""
    steps, xa = curve.step, curve.axis_values
    theta = broken.theta
    if pre.raw_input:
        smooth = pre.smoothing == "log-ma"
        corrected, note = theta, "No smoothing: t_d_corrected = t_d."
        if smooth:
            means = WindowMeans(steps, idx)
            corrected, miss = delag(theta, x, means, np.log(xa[means.first :]))
            note = ("Intervals simulate the per-step law and smooth every draw like the data; t_d_corrected removes the "
                    f"log moving average's lag (fixed point within {miss:.1g}).")
        after = np.flatnonzero(steps > pre.transient_steps)
        resid = np.log(curve.loss[after]) - bnsl_log(np.log(xa[after]), corrected)
        sim = CurveSimulator.per_step_sieve(steps, xa, idx, smooth, resid, "the per-step broken law, at every logged step")
        return NoiseModel(sim, corrected, corrected, note)
    sim = CurveSimulator.point_sieve(steps, xa, idx, y - broken.log_predict(x), "the broken law, at the fitted points")
    sim.noise.level /= refit_shrinkage(sim, broken, x)
    grid = _step_grid(curve) if pre.smoothed_by == "log-ma" else None
    if grid is None:
        why = ("the input was smoothed in an unknown way" if pre.smoothed_by != "log-ma" else
               "the per-step grid behind the smoothed points cannot be rebuilt (steps not whole numbers, or the axis "
               "not proportional to steps)")
        return NoiseModel(sim, theta, None, f"t_d refers to the smoothed curve; its lag is not removed: {why}.")
    rows = (steps[idx] - 1).astype(np.int64)
    means = WindowMeans(grid[0], rows)
    corrected, miss = delag(theta, x, means, np.log(grid[1][means.first :]))
    return NoiseModel(sim, theta, corrected, "Input already smoothed: residuals resampled at the fitted points; "
                      f"t_d_corrected removes the log moving average's lag (fixed point within {miss:.1g}).")


def refit_shrinkage(sim: CurveSimulator, broken: LawFit, x: np.ndarray, draws: int = 20) -> float:
    """How much of the noise a refit leaves in its residuals: sqrt(E||residual*||^2 / E||noise*||^2)
    over curves simulated around the fit. A few hundred smoothed points carry slow, autocorrelated
    noise, and a five-parameter law absorbs much of it, so residuals understate the noise; dividing
    the noise scale by this restores it (a fixed seed: the same curve gets the same correction)."""
    rng = np.random.default_rng(0)
    base = broken.log_predict(x)
    simulate = sim.sampler(broken.log_predict)
    kept = total = 0.0
    for _ in range(draws):
        ys = simulate(rng)
        kept += refine_bnsl(x, ys, broken.theta).sse
        total += float((ys - base) @ (ys - base))
    return math.sqrt(kept / total) if total > 0 and kept > 0 else 1.0


def bootstrap_intervals(x, broken: LawFit, simulator: CurveSimulator, base, draws: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Bootstrap roots theta* - theta (global refits of curves simulated around the law `base`) and
    the share of refits whose global optimum left the home basin (a break elsewhere that fits better)."""
    if broken.rsle < NOISE_FREE or draws <= 0:
        return np.zeros((0, len(BNSL_PARAMS))), 0.0
    roots, other = [], 0
    simulate = simulator.sampler(lambda lx: bnsl_log(lx, base))
    for _ in range(draws):
        ys = simulate(rng)
        g = fit_bnsl(x, ys)
        home = refine_bnsl(x, ys, broken.theta)
        if g.sse < home.sse * (1 - 1e-9) and abs(g.theta[3] - home.theta[3]) > BASIN_SHIFT:
            other += 1
        roots.append(g.theta - broken.theta)
    return np.array(roots), other / draws


@dataclass
class PreparedFit:
    """A curve preprocessed and fitted by all three laws, before any bootstrap."""

    curve: Curve
    pre: Preprocessing
    notes: list[str]
    input_warnings: list[dict]
    idx: np.ndarray
    x: np.ndarray
    y: np.ndarray
    smooth: np.ndarray
    null: LawFit
    pl: LawFit
    sat: LawFit
    broken: LawFit
    noise: NoiseModel
    rng: np.random.Generator

    @property
    def T(self) -> float:
        return float(self.curve.axis_values[-1])

    def noise_for(self, fit: LawFit) -> CurveSimulator:
        """The simulator under any law: residuals of the broken fit (the noise under either hypothesis)."""
        return self.noise.simulator


def _rows(curve: Curve) -> dict:
    """What a fit file records of its input's rows: read, used, and the duplicates resolved."""
    return {"read": curve.rows_read, "used": int(len(curve.step)), "duplicates": curve.duplicates}


def _input_warnings(curve: Curve, pre: Preprocessing) -> list[dict]:
    steps = curve.step
    out = []
    if curve.axis == "steps" and len(steps) > 1:
        unit = float(np.min(np.diff(steps)))
        ratio = steps / unit
        if unit >= 1000 and abs(ratio[0] - 1) < 1e-6 and np.all(np.abs(ratio - np.round(ratio)) < 1e-6):
            out.append(warning("axis_looks_scaled", f"every step is a multiple of {unit:g} and the first is {unit:g}: if "
                               "this column holds tokens or FLOPs, read it with --axis tokens (or flops) so that the "
                               f"transient cut ({pre.transient_steps:g} steps) and the log subsampling apply in steps"))
    return out


def prepare_fit(curve: Curve, options: FitOptions) -> PreparedFit:
    o = options
    pre, notes = Preprocessing(o.smoothing, o.subsample, o.transient_steps, o.input_smoothed).resolve(curve.step)
    idx, y_fit, smooth = fit_points(curve.step, curve.loss, pre)
    if len(idx) < MIN_POINTS:
        raise TooFewPoints(curve, pre, len(idx))
    x, y = np.log(curve.axis_values[idx]), np.log(y_fit)
    null, pl, sat = smooth_null(x, y)
    broken = fit_bnsl(x, y)
    rng = np.random.default_rng(options.seed)
    return PreparedFit(curve, pre, notes, _input_warnings(curve, pre), idx, x, y, smooth, null, pl, sat, broken,
                       _noise_model(curve, idx, pre, x, y, broken), rng)


def fit_curve(curve: Curve, options: FitOptions | None = None) -> BrokenPowerLawFit:
    options = options or FitOptions.defaults()
    return finish_fit(prepare_fit(curve, options), options)


def finish_fit(f: PreparedFit, options: FitOptions) -> BrokenPowerLawFit:
    """The break test and the intervals of a prepared fit, as a results object."""
    curve = f.curve
    test = break_test(f.x, f.y, f.null, f.pl, f.sat, f.broken, f.noise_for, options.bootstrap, options.alpha, f.rng)
    roots, other = bootstrap_intervals(f.x, f.broken, f.noise.simulator, f.noise.base, options.bootstrap, f.rng)
    rows = _rows(curve)
    fit_range = (float(np.exp(f.x[0])), float(np.exp(f.x[-1])))
    lr_time = None if curve.lr_time is None else {
        **curve.lr_time, "map": {"step": curve.step[f.idx].tolist(), "S": curve.x[f.idx].tolist()}}
    return BrokenPowerLawFit(curve.source, f.pre.to_dict(), rows, int(len(f.idx)), fit_range, f.T, float(f.smooth[-1]),
                             f.broken, f.pl, f.sat, test, roots, other, f.noise.corrected, curve.axis, curve.x_per_step,
                             f.noise.lag_note, list(f.notes), f.input_warnings, lr_time)


WINDOW_COLUMNS = ["transient_steps", "end_step", "verdict", "p_value", "t_d", "t_d_low", "t_d_high", "slope_ratio", "note"]


def window_sensitivity(curve: Curve, options: FitOptions, ends=(1.0, 2 / 3)) -> list[dict]:
    """The same test and fit with the transient cut at half, once and twice the configured one, over
    the whole run and its first two thirds: a break the training made stays put when the window's
    ends move; one the window made follows them (a t_d near the window's log-midpoint)."""
    rows = []
    for end in ends:
        part = curve.truncated(curve.step <= curve.step[-1] * end)
        for transient in (options.transient_steps / 2, options.transient_steps, options.transient_steps * 2):
            row = {"transient_steps": transient, "end_step": int(curve.step[-1] * end)}
            if not len(part.step):
                rows.append({**row, "verdict": "unfit", "note": "no logged step in this window"})
                continue
            try:
                f = fit_curve(part, dataclasses.replace(options, transient_steps=transient))
            except CurveError as e:
                rows.append({**row, "verdict": "unfit", "note": str(e)})
                continue
            d = f.derived()
            low, high = f.conf_int()["t_d"] or (None, None)
            rows.append({**row, "verdict": f.verdict, "p_value": f.test.p_value, "t_d": d["t_d"], "t_d_low": low,
                         "t_d_high": high, "slope_ratio": d["slope_ratio"], "note": ""})
    return rows


def read_options_curve(path, options: FitOptions) -> Curve:
    if options.axis == "lr-area":
        return to_lr_time(read_curve_csv(path, options.on_duplicate), options.schedule)
    return read_curve_csv(path, options.on_duplicate, options.axis, options.x_per_step)


def with_schedule_verdict(fit: BrokenPowerLawFit, curve: Curve, options: FitOptions) -> BrokenPowerLawFit:
    """The steps fit with its schedule verdict: the same curve fitted on learning-rate time and
    compared (stats/lrtime.py). Without an lr column or fit.schedule there is nothing to compare:
    the fit says so in a note and carries no verdict."""
    if curve.lr is None and options.schedule is None:
        fit.notes.append("schedule verdict: not classified (the curve has no lr column and no fit.schedule was given)")
        return fit
    lr_curve, lr_options = to_lr_time(curve, options.schedule), dataclasses.replace(options, axis="lr-area")
    try:
        prepared = prepare_fit(lr_curve, lr_options)
    except TooFewPoints as e:  # the decay cut can leave learning-rate time too few points
        fit.notes.append(f"schedule verdict: not classified (on learning-rate time, {e.n} points remain; "
                         f"{MIN_POINTS} needed)")
        return fit
    lr_fit = finish_fit(prepared, lr_options)
    cross = None
    if fit.verdict == "deceleration" and lr_fit.verdict != "deceleration":  # is the steps break the schedule's?
        cross = cross_clock(prepared, np.log(lr_curve.step[prepared.idx]), options.bootstrap, prepared.rng)
    fit.schedule = schedule_verdict(fit, lr_fit, cross)
    return fit


def window_sensitivity_file(path, out, options: FitOptions | None = None) -> str:
    options = options or FitOptions.defaults()
    table = pd.DataFrame(window_sensitivity(read_options_curve(path, options), options), columns=WINDOW_COLUMNS)
    atomic.write_text(out, table.to_csv(index=False, float_format="%.6g"))
    return table.to_string(index=False)


def fit_curve_file(path, out, options: FitOptions | None = None) -> BrokenPowerLawFit | InsufficientFit:
    """The fit file of a curve: its fit (with the schedule verdict), or `insufficient` where the
    curve is too short to fit, so the rest of a study goes on."""
    options = options or FitOptions.defaults()
    curve = read_options_curve(path, options)
    try:
        result = fit_curve(curve, options)
    except TooFewPoints as e:
        result = InsufficientFit.of(e)
        atomic.write_json(out, result.to_json())
        return result
    if options.schedule_verdict and options.axis == "steps":
        result = with_schedule_verdict(result, curve, options)
    atomic.write_json(out, result.to_json())
    return result



