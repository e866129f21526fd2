"""Loss deceleration of one training-loss curve: preprocessing, the three fits, the break test and
bootstrap intervals, returned as a `BrokenPowerLawFit` results object (FIT.json is its JSON form).

The broken power law (BNSL, methodology.md section 3):

    L(t) = b t^-c0 (1 + (t / d1)^(1 / f1))^(-c1 f1)
    t_d = d1,  L_d = b t_d^-c0,  r_d = c0 + c1,  L_T_hat = L_d (T / t_d)^-r_d

Intervals come from a parametric bootstrap: curves of the fitted broken shape with the observed
noise (noise.py) are preprocessed like the data and refitted from scratch. They are "basic"
bootstrap intervals (estimate minus the quantiles of estimate* - estimate), so the bias that the
log moving average puts into t_d (the smoothed curve lags the raw one by about 9%) is corrected in
the interval; `t_d_corrected` is the bias-corrected point estimate. Top-level `t_d` stays the
reference pipeline's estimate, comparable with published values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import atomic
from .breaktest import NOISE_FREE, BreakTest, break_test, slope_ratio, smooth_null
from .curve import Curve, Preprocessing, fit_points, read_curve_csv
from .errors import CurveError
from .noise import CurveSimulator, GaussianNoise, equivalent_step_sd
from .options import FitOptions
from .powerlaws import BNSL_PARAMS, LAWS, LawFit, fit_bnsl, refine_bnsl

DERIVED = ("t_d", "L_d", "r_d", "L_T_hat", "c0")
LOG_SCALE = {"t_d": True, "L_d": True, "r_d": False, "L_T_hat": True, "c0": False}  # intervals are formed on these scales
BASIN_SHIFT = 0.2  # a refit whose break moved by more than this in log steps from the home basin's
MAX_RAW_POINTS = 20000  # raw points used to fit the per-step noise model (evenly thinned)
MAX_STEP_GRID = 5e7  # longest per-step grid simulated for curves that arrive smoothed
VERDICT_LAW = {"deceleration": "broken_power_law", "acceleration": "broken_power_law",
               "smooth_bend": "saturating_power_law", "power_law": "power_law"}


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
    bias_note: str = ""
    notes: list[str] = field(default_factory=list)

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
        """The broken fit's t_d, L_d, r_d, L_T_hat (whatever the verdict), and the bias-corrected t_d."""
        d = derived(self.broken.theta, self.T)
        if len(self.roots):
            d["t_d_corrected"] = d["t_d"] * math.exp(-float(np.median(self.roots[:, 3])))
        return d

    def draws(self) -> np.ndarray:
        """Bootstrap draws of the derived quantities on their interval scales, (draws, len(DERIVED))."""
        return np.array([on_scale(self.broken.theta + r, self.T) for r in self.roots]).reshape(-1, len(DERIVED))

    def stderr(self) -> dict:
        """Bootstrap standard errors of the derived quantities, on their interval scales."""
        d = self.draws()
        return {k: float(np.nanstd(d[:, j], ddof=1)) if len(d) > 1 else math.nan for j, k in enumerate(DERIVED)}

    def predict(self, t, law: str | None = None) -> np.ndarray:
        """Loss at steps `t` from the verdict's law (or the named one)."""
        fit = {"broken_power_law": self.broken, "saturating_power_law": self.saturating,
               "power_law": self.power_law}[law or VERDICT_LAW[self.verdict]]
        return np.exp(fit.log_predict(np.log(np.asarray(t, float))))

    def conf_int(self, alpha: float = 0.05) -> dict:
        """Basic bootstrap intervals of t_d, L_d, r_d, L_T_hat, clipped to their support.

        t_d cannot leave the fitted range (the fit keeps the break inside it), so an interval that
        reaches past it is clipped and flagged; an r_d interval reaching zero or below is flagged too."""
        est = on_scale(self.broken.theta, self.T)
        if not len(self.roots):
            return {k: None for k in DERIVED}
        roots = self.draws() - est
        lo = _from_scale(est - np.nanquantile(roots, 1 - alpha / 2, axis=0))  # NaN: a refit that over- or underflowed
        hi = _from_scale(est - np.nanquantile(roots, alpha / 2, axis=0))
        out = {k: [float(a), float(b)] for k, a, b in zip(DERIVED, lo, hi)}
        flags = []
        a, b = self.fit_range
        if out["t_d"][0] < a or out["t_d"][1] > b:
            out["t_d"] = [max(out["t_d"][0], a), min(out["t_d"][1], b)]
            flags.append("t_d interval reaches the edge of the fitted range and is clipped there: the data do not pin "
                         "the break down on that side")
        if out["r_d"][0] <= 0:
            flags.append("r_d interval includes values <= 0 (no improvement after t_d)")
        out["flags"] = flags
        return out

    def summary(self) -> str:
        d, ci, t = self.derived(), self.conf_int(), self.test
        p = "n/a" if t.p_value is None else f"{t.p_value:.3g}"
        lines = [f"Loss-curve fit: {self.source}", "=" * 72,
                 f"Verdict:         {t.verdict} (bootstrap p = {p}, {t.draws} draws, alpha = {t.alpha})",
                 f"Smooth null:     {t.null_law.replace('_', ' ')}; SSE null / broken = {t.sse_null / max(t.sse_broken, 1e-300):.3g}",
                 f"Fitted points:   {self.n_points}, steps {self.fit_range[0]:g} .. {self.fit_range[1]:g} "
                 f"({', '.join(f'{k} {v}' for k, v in self.preprocessing.items())})",
                 "-" * 72, f"{'broken fit':<16}{'estimate':>12}   95% interval (bootstrap)"]
        for k in DERIVED[:4]:
            iv = ci.get(k)
            lines.append(f"{k:<16}{d[k]:>12.5g}   " + (f"[{iv[0]:.5g}, {iv[1]:.5g}]" if iv else "-"))
        if "t_d_corrected" in d:
            lines.append(f"{'t_d corrected':<16}{d['t_d_corrected']:>12.5g}   (smoothing bias removed)")
        ratio = "-" if d["slope_ratio"] is None else f"{d['slope_ratio']:.3g}"
        lines += [f"{'c0, c1, f1':<16}{d['c0']:.4g}, {d['c1']:.4g}, {d['f1']:.3g};  slope ratio c0/r_d = {ratio}",
                  f"{'L_T (smoothed)':<16}{self.L_T:>12.5g}", "-" * 72,
                  f"Bootstrap: {len(self.roots)} refits, {self.other_basin:.1%} landed in another basin. {self.bias_note}"]
        lines += [f"Note: {n}" for n in [*self.notes, *ci.get("flags", []), *([t.note] if t.note else [])]]
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
            "preprocessing": self.preprocessing,
            "notes": self.notes,
            "n_points": self.n_points,
            "fit_range": list(self.fit_range),
            "T": self.T,
            "L_T": self.L_T,
            "verdict": self.verdict,
            "break_test": self.test.to_json(),
            "broken_power_law": {
                "params": self.broken.params(), "sse": self.broken.sse,
                "rsle": self.broken.rsle, "derived": {**d, "ci": ci},
                "bootstrap": {"draws": len(self.roots), "other_basin_fraction": self.other_basin,
                              "bias": self.bias_note, "theta_minus_estimate": self.roots.tolist(),
                              "stderr": self.stderr(), "stderr_scale": {k: "log" if LOG_SCALE[k] else "linear" for k in DERIVED}},
            },
            "saturating_power_law": {"params": self.saturating.params(), "sse": self.saturating.sse,
                                     "rsle": self.saturating.rsle, **_saturating_terms(self.saturating.theta)},
            "power_law": {"b": math.exp(pl.theta[0]), "c0": float(pl.theta[1]), "params": pl.params(),
                          "sse": pl.sse, "rsle": pl.rsle},
            "model": law.law,
            "t_d": d["t_d"] if brk else None, "L_d": d["L_d"] if brk else None, "r_d": d["r_d"] if brk else None,
            "c0": d["c0"] if brk else float(pl.theta[1]), "c1": d["c1"] if brk else None, "f1": d["f1"] if brk else None,
            "b": d["b"] if brk else math.exp(pl.theta[0]),
            "L_T_hat": d["L_T_hat"] if brk else float(self.predict(self.T)),
            "rsle": law.rsle,
            "ci": {k: ci[k] if brk else None for k in ("t_d", "L_d", "r_d")},
            "note": _verdict_note(self.verdict),
        }

    @classmethod
    def from_json(cls, j: dict) -> "BrokenPowerLawFit":
        def law(name, params):
            return LawFit(name, np.array([params[k] for k in LAWS[name][1]], float), j[name]["sse"], j["n_points"])

        boot = j["broken_power_law"]["bootstrap"]
        return cls(
            source=j["input"], preprocessing=j["preprocessing"], rows=j.get("rows", {}), n_points=j["n_points"],
            fit_range=tuple(j["fit_range"]), T=j["T"], L_T=j["L_T"],
            broken=law("broken_power_law", j["broken_power_law"]["params"]),
            power_law=law("power_law", j["power_law"]["params"]),
            saturating=law("saturating_power_law", j["saturating_power_law"]["params"]),
            test=BreakTest.from_json(j["break_test"]),
            roots=np.array(boot["theta_minus_estimate"], float).reshape(-1, len(BNSL_PARAMS)),
            other_basin=boot["other_basin_fraction"], bias_note=boot["bias"], notes=list(j.get("notes", [])),
        )

    @classmethod
    def read(cls, path: str | Path) -> "BrokenPowerLawFit":
        import json

        try:
            return cls.from_json(json.loads(Path(path).read_text()))
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


def _noise_models(curve: Curve, idx: np.ndarray, pre: Preprocessing, x, y, broken: LawFit, rng):
    """noise_for(fit) -> the simulator to use under `fit` (noise.py says why each input gets its own)."""
    steps = curve.step
    if pre.raw_input:
        after = np.flatnonzero(steps > pre.transient_steps)
        thin = after[:: max(1, len(after) // MAX_RAW_POINTS)]
        lx, ly = np.log(steps), np.log(curve.loss)
        raw_fit = refine_bnsl(lx[thin], ly[thin], broken.theta)  # the smoothed fit lags the raw points
        sim = CurveSimulator.per_step_sieve(steps, idx, pre.smoothing, ly[after] - raw_fit.log_predict(lx[after]),
                                            "the broken law refitted to the raw per-step losses")
        return lambda fit: sim
    if pre.smoothed_by == "log-ma" and np.all(steps == np.round(steps)) and steps[-1] <= MAX_STEP_GRID:
        grid = np.arange(1, int(steps[-1]) + 1, dtype=float)
        rows = steps[idx].astype(np.int64) - 1
        sd = equivalent_step_sd(grid, rows, y - broken.log_predict(x), broken.log_predict,
                                lambda ys: ys - refine_bnsl(x, ys, broken.theta).log_predict(x), rng)
        sim = CurveSimulator(grid, rows, "log-ma", GaussianNoise(sd), True, "the broken law, at the fitted points")
        return lambda fit: sim
    cache = {}

    def noise_for(fit: LawFit):  # an unknown smoother: model the noise where it is seen, under each null
        if fit.law not in cache:
            cache[fit.law] = CurveSimulator.point_sieve(steps, idx, y - fit.log_predict(x), fit.law.replace("_", " "))
        return cache[fit.law]

    return noise_for


def bias_note(simulator: CurveSimulator, pre: Preprocessing) -> str:
    if simulator.per_step and simulator.smoothing == "log-ma":
        return "Intervals include the log moving average's lag of t_d (every draw is smoothed like the data)."
    if pre.smoothed_by is None:
        return ""
    return ("The input was smoothed in a way that cannot be replayed (unknown smoother, or not on a step axis): "
            "t_d refers to the smoothed curve, and its lag behind the raw curve is not corrected.")


def bootstrap_intervals(x, broken: LawFit, simulator, draws: int, T: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Bootstrap roots theta* - theta (global refits of curves simulated from the broken fit) and
    the share of refits whose global optimum left the home basin (a break elsewhere that fits better)."""
    if broken.rsle < NOISE_FREE or draws <= 0:
        return np.zeros((0, len(BNSL_PARAMS))), 0.0
    roots, other = [], 0
    simulate = simulator.sampler(broken.log_predict)
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
    idx: np.ndarray
    x: np.ndarray
    y: np.ndarray
    smooth: np.ndarray
    null: LawFit
    pl: LawFit
    sat: LawFit
    broken: LawFit
    noise_for: object  # LawFit -> CurveSimulator
    rng: np.random.Generator

    @property
    def T(self) -> float:
        return float(self.curve.step[-1])


def prepare_fit(curve: Curve, options: FitOptions) -> PreparedFit:
    o = options
    pre, notes = Preprocessing(o.smoothing, o.subsample, o.transient_steps, o.input_smoothed).resolve(curve.step)
    idx, y_fit, smooth = fit_points(curve.step, curve.loss, pre)
    if len(idx) < 7:
        raise CurveError(f"{curve.source}: {len(idx)} points remain after preprocessing (transient {pre.transient_steps:g} "
                         f"steps, subsample {pre.subsample!r}); a one-break fit needs at least 7")
    x, y = np.log(curve.step[idx]), np.log(y_fit)
    null, pl, sat = smooth_null(x, y)
    broken = fit_bnsl(x, y)
    rng = np.random.default_rng(options.seed)
    return PreparedFit(curve, pre, notes, idx, x, y, smooth, null, pl, sat, broken,
                       _noise_models(curve, idx, pre, x, y, broken, rng), rng)


def fit_curve(curve: Curve, options: FitOptions | None = None) -> BrokenPowerLawFit:
    options = options or FitOptions.defaults()
    f = prepare_fit(curve, options)
    test = break_test(f.x, f.y, f.null, f.pl, f.sat, f.broken, f.noise_for, options.bootstrap, options.alpha, f.rng)
    simulator = f.noise_for(f.broken)
    roots, other = bootstrap_intervals(f.x, f.broken, simulator, options.bootstrap, f.T, f.rng)
    notes = list(f.notes)
    if other > 0.1:
        notes.append(f"{other:.0%} of bootstrap refits found a better break elsewhere: the break position is unstable")
    rows = {"read": curve.rows_read, "used": int(len(curve.step)), "duplicates": curve.duplicates}
    fit_range = (float(np.exp(f.x[0])), float(np.exp(f.x[-1])))
    return BrokenPowerLawFit(curve.source, f.pre.to_dict(), rows, int(len(f.idx)), fit_range, f.T, float(f.smooth[-1]),
                             f.broken, f.pl, f.sat, test, roots, other, bias_note(simulator, f.pre), notes)


WINDOW_COLUMNS = ["transient_steps", "end_step", "verdict", "p_value", "t_d", "t_d_low", "t_d_high", "slope_ratio", "note"]


def window_sensitivity(curve: Curve, options: FitOptions, ends=(1.0, 2 / 3)) -> list[dict]:
    """The same test and fit with the transient cut at half, once and twice the configured one, over
    the whole run and its first two thirds: a break the training made stays put when the window's
    ends move; one the window made follows them (a t_d near the window's log-midpoint)."""
    rows = []
    for end in ends:
        keep = curve.step <= curve.step[-1] * end
        part = dataclasses.replace(curve, step=curve.step[keep], loss=curve.loss[keep])
        for transient in (options.transient_steps / 2, options.transient_steps, options.transient_steps * 2):
            row = {"transient_steps": transient, "end_step": int(part.step[-1])}
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


def window_sensitivity_file(path, out, options: FitOptions | None = None) -> str:
    options = options or FitOptions.defaults()
    table = pd.DataFrame(window_sensitivity(read_curve_csv(path, options.on_duplicate), options), columns=WINDOW_COLUMNS)
    atomic.write_text(out, table.to_csv(index=False, float_format="%.6g"))
    return table.to_string(index=False)


def fit_curve_file(path, out, options: FitOptions | None = None) -> BrokenPowerLawFit:
    options = options or FitOptions.defaults()
    result = fit_curve(read_curve_csv(path, options.on_duplicate), options)
    atomic.write_json(out, result.to_json())
    return result



