"""Loss deceleration: a broken power law (BNSL) fitted to a training-loss curve in log-log space.

    log L(t) = log b - c0 log t - sum_i c_i f_i log(1 + exp((log t - log d_i) / f_i))

One break (the paper's model): slope -c0 before d1, -(c0 + c1) after; f1 is the sharpness.
Preprocessing and the least-squares objective follow the paper's reference analysis
(methodology.md section 3). Unlike the reference, no break guess is needed: the solver starts from
a grid of break positions across the observed range and keeps the best solution.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import optimize, stats

from . import atomic
from .errors import CurveError


# ----------------------------------------------------------------------------- input


def validate_curve(steps, loss, source: str = "curve") -> tuple[np.ndarray, np.ndarray]:
    """Reject what would silently corrupt a fit. Rows are numbered as in a CSV with a header (data row 1 = line 2)."""
    steps = np.asarray(steps, dtype=float)
    loss = np.asarray(loss, dtype=float)
    if steps.shape != loss.shape or steps.ndim != 1:
        raise CurveError(f"{source}: step and loss columns differ in length")
    for name, col in (("step", steps), ("loss", loss)):
        bad = np.flatnonzero(~np.isfinite(col))
        if bad.size:
            i = bad[0]
            raise CurveError(f"{source}: row {i + 1} (line {i + 2}): {name} is {col[i]} (NaN or infinite values cannot be fitted)")
    bad = np.flatnonzero(loss <= 0)
    if bad.size:
        i = bad[0]
        raise CurveError(f"{source}: row {i + 1} (line {i + 2}, step {steps[i]:g}): loss {loss[i]:g} is not positive; a power law needs log(loss)")
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        i = bad[0]
        raise CurveError(f"{source}: row {i + 1} (line {i + 2}): step {steps[i]:g} is not positive; a power law needs log(step)")
    d = np.diff(steps)
    if np.any(d == 0):
        i = int(np.flatnonzero(d == 0)[0]) + 1
        raise CurveError(f"{source}: row {i + 1} (line {i + 2}): step {steps[i]:g} is duplicated")
    if np.any(d < 0):
        i = int(np.flatnonzero(d < 0)[0]) + 1
        raise CurveError(f"{source}: row {i + 1} (line {i + 2}): step {steps[i]:g} comes after step {steps[i - 1]:g}; steps must increase")
    return steps, loss


def read_curve_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise CurveError(f"{path}: file not found") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        raise CurveError(f"{path}: not a readable CSV ({e})") from None
    missing = [c for c in ("step", "loss") if c not in df.columns]
    if missing:
        raise CurveError(f"{path}: missing column(s) {missing}; found {list(df.columns)} (need step,loss)")
    for c in ("step", "loss"):
        num = pd.to_numeric(df[c], errors="coerce")
        bad = np.flatnonzero(num.isna() & df[c].notna())
        if bad.size:
            i = bad[0]
            raise CurveError(f"{path}: row {i + 1} (line {i + 2}): {c} {df[c].iloc[i]!r} is not a number")
        df[c] = num
    return validate_curve(df["step"].to_numpy(), df["loss"].to_numpy(), str(path))


# ----------------------------------------------------------------------------- preprocessing


def log_moving_average(y: np.ndarray, factor: float = 1.2) -> np.ndarray:
    """y_s[j] = mean(y[floor(j / factor) .. j]): the window grows with j, as in the reference."""
    j = np.arange(len(y))
    lo = np.floor(j / factor).astype(int)
    c = np.concatenate([[0.0], np.cumsum(y)])
    return (c[j + 1] - c[lo]) / (j + 1 - lo)


def log_subsample_mask(steps: np.ndarray) -> np.ndarray:
    """Every step in [10, 100), every 10th in [100, 1e3), every 100th in [1e3, 1e4), ..., plus the last."""
    s = np.round(steps).astype(np.int64)
    keep = np.zeros(len(s), dtype=bool)
    keep |= (s >= 10) & (s < 100)
    decade = 100
    while decade <= max(s.max(), 100):
        stride = decade // 10
        keep |= (s >= decade) & (s < decade * 10) & (s % stride == 0)
        decade *= 10
    keep[-1] = True
    return keep


@dataclass(frozen=True)
class Preprocessing:
    smoothing: str = "log-ma"  # or "none"
    subsample: str = "log"  # or "none"
    transient_steps: int = 100


def preprocess(steps, loss, pre: Preprocessing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y) to fit, and the smoothed full curve (for L_T)."""
    smooth = log_moving_average(loss) if pre.smoothing == "log-ma" else np.asarray(loss, float)
    keep = log_subsample_mask(steps) if pre.subsample == "log" else np.ones(len(steps), bool)
    keep &= steps > pre.transient_steps
    return steps[keep], smooth[keep], smooth


# ----------------------------------------------------------------------------- models


def bnsl_log(logx: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """theta = [log b, c0, (c_i, log d_i, f_i) per break]."""
    out = theta[0] - theta[1] * logx
    for i in range(2, len(theta), 3):
        c, logd, f = theta[i : i + 3]
        out = out - c * f * np.logaddexp(0.0, (logx - logd) / f)
    return out


def bnsl_jac(logx: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Analytic Jacobian of bnsl_log (columns in theta's order); several times faster than differences."""
    cols = [np.ones_like(logx), -logx]
    for i in range(2, len(theta), 3):
        c, logd, f = theta[i : i + 3]
        z = (logx - logd) / f
        sp, sig = np.logaddexp(0.0, z), 0.5 * (1 + np.tanh(z / 2))
        cols += [-f * sp, c * sig, -c * (sp - z * sig)]
    return np.column_stack(cols)


def _finite_slope(logx, logy, lo, hi) -> float:
    m = (logx >= lo) & (logx <= hi)
    if m.sum() < 2:
        return float((logy[-1] - logy[0]) / max(logx[-1] - logx[0], 1e-12))
    return float(np.polyfit(logx[m], logy[m], 1)[0])


def initial_guess(logx, logy, logd: list[float], f: float = 0.3) -> np.ndarray:
    """Slopes by finite differences between the guessed breaks, as the reference initialises."""
    edges = [logx[0], *logd, logx[-1]]
    slopes = [_finite_slope(logx, logy, edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    c0 = -slopes[0]
    theta = [logy[0] + c0 * logx[0], c0]
    prev = c0
    for i, ld in enumerate(logd):
        c = -slopes[i + 1] - prev
        prev += c
        theta += [c, ld, f]
    return np.array(theta, dtype=float)


@dataclass
class Solution:
    theta: np.ndarray
    cov: np.ndarray | None
    sse: float
    n: int

    @property
    def k(self) -> int:
        return len(self.theta)


MAX_TEST_POINTS = 20000  # unsmoothed points used by the break test
MAX_EVALUATIONS = 1000  # per start: a start that has not converged by then is not the best one


def _solve(logx, logy, theta0, bounds) -> Solution | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            theta, cov = optimize.curve_fit(
                lambda lx, *t: bnsl_log(lx, np.array(t)), logx, logy, p0=theta0, bounds=bounds, method="dogbox",
                jac=lambda lx, *t: bnsl_jac(lx, np.array(t)), maxfev=MAX_EVALUATIONS,
            )
        except (RuntimeError, ValueError, np.linalg.LinAlgError):
            return None
    r = logy - bnsl_log(logx, theta)
    if not np.all(np.isfinite(r)):
        return None
    return Solution(theta, cov if np.all(np.isfinite(cov)) else None, float(r @ r), len(logx))


def _bounds(logx, n_breaks):
    """Breaks stay inside the fitted range: outside it a break is not identified by the data."""
    lo = [-np.inf, -np.inf] + [-np.inf, logx[0], 1e-3] * n_breaks
    hi = [np.inf, np.inf] + [np.inf, logx[-1], 10.0] * n_breaks
    return lo, hi


def fit_power_law(x, y) -> Solution:
    """Single power law log L = log b - c0 log t: ordinary least squares, exact."""
    logx, logy = np.log(x), np.log(y)
    A = np.column_stack([np.ones_like(logx), -logx])
    theta, *_ = np.linalg.lstsq(A, logy, rcond=None)
    r = logy - A @ theta
    sse = float(r @ r)
    dof = max(len(x) - 2, 1)
    cov = np.linalg.inv(A.T @ A) * sse / dof
    return Solution(theta, cov, sse, len(x))


def fit_bnsl(x, y, n_breaks: int = 1, grid: int = 12, sharpness=(0.1, 0.3, 1.0)) -> Solution:
    """Multi-start least squares: breaks on a log grid across the data, several sharpnesses."""
    logx, logy = np.log(x), np.log(y)
    if len(x) < 2 + 3 * n_breaks + 1:
        raise CurveError(
            f"curve: {len(x)} points after preprocessing, fewer than the {2 + 3 * n_breaks + 1} a {n_breaks}-break fit needs "
            "(lower --transient-steps or use --subsample none)"
        )
    positions = np.linspace(logx[0], logx[-1], grid + 2)[1:-1]
    bounds = _bounds(logx, n_breaks)
    best = None
    for combo in combinations(positions, n_breaks):
        for f in sharpness:
            sol = _solve(logx, logy, initial_guess(logx, logy, list(combo), f), bounds)
            if sol is not None and (best is None or sol.sse < best.sse - 1e-15):
                best = sol
    if best is None:
        raise CurveError("curve: no start of the broken-power-law fit converged")
    return best


def fit_reference(x, y, d1_est: float = 6000.0) -> Solution | None:
    """The paper's reference procedure (one start from a hand-set break guess); for comparison."""
    logx, logy = np.log(x), np.log(y)
    theta0 = initial_guess(logx, logy, [math.log(d1_est)], 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            theta, cov = optimize.curve_fit(lambda lx, *t: bnsl_log(lx, np.array(t)), logx, logy, p0=theta0, method="dogbox")
        except (RuntimeError, ValueError):
            return None
    r = logy - bnsl_log(logx, theta)
    return Solution(theta, cov, float(r @ r), len(x))


# ----------------------------------------------------------------------------- derived quantities


def derived(theta: np.ndarray, last_step: float) -> dict:
    logb, c0, c1, logd1, f1 = theta[:5]
    t_d = math.exp(logd1)
    L_d = math.exp(logb - c0 * logd1)
    r_d = c0 + c1
    return {"t_d": t_d, "L_d": L_d, "r_d": r_d, "L_T_hat": L_d * (last_step / t_d) ** (-r_d),
            "b": math.exp(logb), "c0": c0, "c1": c1, "f1": f1, "d1": t_d}


def _delta_interval(theta, cov, fn, z=1.959964) -> list[float] | None:
    """Normal interval of fn(theta) by the delta method with a numerical gradient."""
    if cov is None:
        return None
    eps = 1e-6
    g = np.array([(fn(theta + eps * e) - fn(theta - eps * e)) / (2 * eps) for e in np.eye(len(theta))])
    se = float(np.sqrt(max(g @ cov @ g, 0.0)))
    v = fn(theta)
    return [v - z * se, v + z * se]


def effective_n(resid: np.ndarray) -> float:
    """Sample size corrected for lag-1 autocorrelation, n (1 - rho) / (1 + rho).

    Smoothing makes neighbouring residuals correlate strongly; counting them as independent would
    make any noise wiggle look like a significant break.
    """
    n = len(resid)
    r = resid - resid.mean()
    denom = float(r @ r)
    rho = float(r[1:] @ r[:-1]) / denom if denom > 0 else 0.0
    rho = min(max(rho, 0.0), 0.99)
    return max(n * (1 - rho) / (1 + rho), 2.0)


def break_test(x: np.ndarray, y_raw: np.ndarray, theta: np.ndarray, fit_range: tuple[float, float]) -> dict:
    """Is there a break? Both models are refitted to the *unsmoothed* losses at every step after
    the transient, whose batch-to-batch noise is close to independent (fitted to smoothed points,
    every wiggle would look significant), starting from the main fit `theta`, and compared by an
    F-test and BIC on the autocorrelation-corrected sample size. A break at the edge of the fitted
    range is no break."""
    logx, logy = np.log(x), np.log(y_raw)
    pl = fit_power_law(x, y_raw)
    # Start from the main fit and from the power law itself (c1 = 0), so the nested break model
    # never ends up worse than the power law through a poor local optimum.
    starts = [theta, np.array([pl.theta[0], pl.theta[1], 0.0, theta[3], theta[4]])]
    sols = [s for s in (_solve(logx, logy, t0, _bounds(logx, 1)) for t0 in starts) if s is not None]
    bn = min(sols, key=lambda s: s.sse) if sols else Solution(starts[1], None, pl.sse, len(x))
    logd1 = theta[3]
    n_eff = effective_n(logy - bnsl_log(logx, bn.theta))
    df1, df2 = bn.k - pl.k, n_eff - bn.k
    if bn.sse <= 0:
        F, p = float("inf"), 0.0
    elif df2 <= 0:
        F, p = float("nan"), 1.0
    else:
        F = ((pl.sse - bn.sse) / df1) / (bn.sse / df2)
        p = float(stats.f.sf(F, df1, df2)) if F > 0 else 1.0

    def bic(sol):
        return n_eff * math.log(max(sol.sse, 1e-300) / sol.n) + sol.k * math.log(n_eff)

    lo, hi = math.log(fit_range[0]), math.log(fit_range[1])
    margin = 0.05 * (hi - lo)
    inside = bool(lo + margin < logd1 < hi - margin)
    delta_bic = bic(pl) - bic(bn)
    has_break = bool(inside and delta_bic > 10 and p < 0.01)
    return {
        "has_break": has_break,
        "kind": ("deceleration" if bn.theta[2] < 0 else "acceleration") if has_break else None,
        "data": "unsmoothed losses at every step after the transient",
        "break_inside_range": inside,
        "n_points": bn.n,
        "n_effective": n_eff,
        "f_statistic": float(F),
        "f_pvalue": p,
        "bic_power_law": bic(pl),
        "bic_broken": bic(bn),
        "delta_bic": delta_bic,
        "sse_ratio": pl.sse / bn.sse if bn.sse > 0 else float("inf"),
        "rule": "break if, on the unsmoothed losses after the transient, F-test p < 0.01 and BIC(power law) - BIC(broken) > 10 "
        "(both on the autocorrelation-corrected sample size), and the fitted break lies inside the fitted range",
    }


def _bootstrap(logx, logy, sol: Solution, last_step: float, n: int, seed: int, block: int | None = None) -> dict:
    """Moving-block bootstrap of log-space residuals (blocks keep the smoothing's autocorrelation)."""
    if n <= 0:
        return {}
    rng = np.random.default_rng(seed)
    fitted = bnsl_log(logx, sol.theta)
    resid = logy - fitted
    m = len(resid)
    block = block or max(1, int(round(m ** (1 / 3))))
    bounds = _bounds(logx, 1)
    draws = []
    for _ in range(n):
        starts = rng.integers(0, m - block + 1, size=-(-m // block))
        r = np.concatenate([resid[s : s + block] for s in starts])[:m]
        s2 = _solve(logx, fitted + r, sol.theta, bounds)
        if s2 is not None:
            d = derived(s2.theta, last_step)
            draws.append((d["t_d"], d["L_d"], d["r_d"]))
    if not draws:
        return {}
    a = np.array(draws)
    q = lambda col: [float(np.quantile(a[:, col], 0.025)), float(np.quantile(a[:, col], 0.975))]  # noqa: E731
    return {"t_d": q(0), "L_d": q(1), "r_d": q(2), "method": f"moving-block residual bootstrap, {len(a)}/{n} refits, block {block}", "seed": seed}


def fit_curve(steps, loss, pre: Preprocessing = Preprocessing(), bootstrap: int = 200, seed: int = 0,
              n_breaks: int = 1, source: str = "curve") -> dict:
    """Everything FIT.json holds, for one loss curve."""
    steps, loss = validate_curve(steps, loss, source)
    x, y, smooth = preprocess(steps, loss, pre)
    raw = np.flatnonzero(steps > pre.transient_steps)
    raw = raw[:: max(1, len(raw) // MAX_TEST_POINTS)]  # evenly thinned: enough power, bounded cost
    if len(x) < 7:
        raise CurveError(
            f"{source}: {len(x)} points remain after preprocessing (transient {pre.transient_steps} steps, "
            f"subsample {pre.subsample!r}); a one-break fit needs at least 7"
        )
    logx, logy = np.log(x), np.log(y)
    T = float(steps[-1])
    L_T = float(smooth[-1])
    pl = fit_power_law(x, y)
    bn = fit_bnsl(x, y, n_breaks=n_breaks)
    test = break_test(steps[raw], loss[raw], bn.theta, (x[0], x[-1]))
    se = np.sqrt(np.diag(bn.cov)).tolist() if bn.cov is not None else None
    names = ["log_b", "c0"] + [f"{p}{i + 1}" for i in range(n_breaks) for p in ("c", "log_d", "f")]
    out = {
        "input": source,
        "preprocessing": {"smoothing": pre.smoothing, "subsample": pre.subsample, "transient_steps": pre.transient_steps},
        "n_points": int(len(x)),
        "fit_range": [float(x[0]), float(x[-1])],
        "T": T,
        "L_T": L_T,
        "break_test": test,
        "broken_power_law": {"params": dict(zip(names, bn.theta.tolist())), "stderr": dict(zip(names, se)) if se else None,
                             "sse": bn.sse, "rsle": math.sqrt(bn.sse / bn.n)},
        "power_law": {"b": math.exp(pl.theta[0]), "c0": float(pl.theta[1]),
                      "stderr": {"log_b": float(np.sqrt(pl.cov[0, 0])), "c0": float(np.sqrt(pl.cov[1, 1]))},
                      "sse": pl.sse, "rsle": math.sqrt(pl.sse / pl.n)},
    }
    if n_breaks != 1:
        out["model"] = f"{n_breaks}-break broken power law"
        return out
    if not test["has_break"]:
        out.update({"model": "power_law", "t_d": None, "L_d": None, "r_d": None, "c0": float(pl.theta[1]), "c1": None,
                    "f1": None, "b": math.exp(pl.theta[0]), "rsle": math.sqrt(pl.sse / pl.n),
                    "L_T_hat": math.exp(pl.theta[0]) * T ** (-pl.theta[1]),
                    "ci": {"t_d": None, "L_d": None, "r_d": None},
                    "note": "no break detected: the single power law is reported"})
        return out
    d = derived(bn.theta, T)
    ci = {
        "t_d": [math.exp(bn.theta[3] - 1.959964 * se[3]), math.exp(bn.theta[3] + 1.959964 * se[3])] if se else None,
        "L_d": _delta_interval(bn.theta, bn.cov, lambda t: math.exp(t[0] - t[1] * t[3])),
        "r_d": _delta_interval(bn.theta, bn.cov, lambda t: t[1] + t[2]),
        "method": "95% normal intervals from the fit covariance (t_d from the standard error of log d1)",
    }
    boot = _bootstrap(logx, logy, bn, T, bootstrap, seed)
    out.update({"model": "broken_power_law", **{k: d[k] for k in ("t_d", "L_d", "r_d", "c0", "c1", "f1", "b", "L_T_hat")},
                "rsle": math.sqrt(bn.sse / bn.n), "ci": boot or ci, "ci_covariance": ci})
    return out


def fit_curve_file(path, out, smoothing="log-ma", subsample="log", transient_steps=100, bootstrap=200, seed=0) -> dict:
    steps, loss = read_curve_csv(path)
    result = fit_curve(steps, loss, Preprocessing(smoothing, subsample, transient_steps), bootstrap, seed, source=str(path))
    atomic.write_json(out, result)
    return result
