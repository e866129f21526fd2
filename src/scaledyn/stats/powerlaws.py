"""The three laws a loss curve is compared against, fitted by least squares on log loss vs log step.

    power law              log L = a - c0 x                                   x = log t
    saturating power law   log L = a + softplus(-alpha (x - m))               L = E + A t^-alpha
    broken power law       log L = a - c0 x - c1 f1 softplus((x - log d1) / f1)   (BNSL, one break)

The saturating law is the BNSL with c1 = -c0 and f1 = 1 / c0: a bend to a flat asymptote that is
fixed by the curve's own slope, never abrupt. The power law is its limit m -> infinity.

Fitting uses variable projection: for fixed nonlinear parameters (the break position and
sharpness; the exponent and bend point) the rest enter linearly, so a whole grid of starts costs
one vectorised least-squares solve, and only the best few are refined with scipy's
`least_squares`. That finds the same optimum as the reference's `curve_fit(method="dogbox")`
where the reference converges, without a hand-set break guess, about 200 times faster, which is
what makes a bootstrap of a few hundred refits affordable.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from ..errors import CurveError

BNSL_PARAMS = ("log_b", "c0", "c1", "log_d1", "f1")
SAT_PARAMS = ("log_E", "alpha", "log_t_star")
PL_PARAMS = ("log_b", "c0")

SHARPNESS_GRID = np.array([0.04, 0.1, 0.2, 0.35, 0.6, 1.0, 2.0, 4.0, 10.0])
SHARPNESS_BOUNDS = (1e-3, 20.0)
BREAK_GRID = 32  # break positions tried across the fitted range
REFINE_STARTS = 3  # best distinct grid minima refined
EXPONENT_GRID = np.geomspace(0.01, 3.0, 18)
MAX_EVALUATIONS = 100


def softplus(z):
    return np.logaddexp(0.0, z)


def sigmoid(z):
    return 0.5 * (1 + np.tanh(z / 2))


def bnsl_log(x: np.ndarray, theta) -> np.ndarray:
    a, c0, c1, logd, f = theta
    return a - c0 * x - c1 * f * softplus((x - logd) / f)


def sat_log(x: np.ndarray, theta) -> np.ndarray:
    a, alpha, m = theta
    return a + softplus(-alpha * (x - m))


def pl_log(x: np.ndarray, theta) -> np.ndarray:
    return theta[0] - theta[1] * x


@dataclass(frozen=True)
class LawFit:
    """One least-squares fit: its law, parameters, residual sum of squares and number of points.

    No covariance: the fitted points are smoothed and strongly autocorrelated, so an iid
    covariance would be far too narrow; uncertainty comes from the bootstrap (fit.py)."""

    law: str  # power_law | saturating_power_law | broken_power_law
    theta: np.ndarray
    sse: float
    n: int

    def log_predict(self, x: np.ndarray) -> np.ndarray:
        return LAWS[self.law][0](np.asarray(x, float), self.theta)

    @property
    def k(self) -> int:
        return len(self.theta)

    @property
    def rsle(self) -> float:
        return math.sqrt(self.sse / self.n)

    def params(self) -> dict:
        return dict(zip(LAWS[self.law][1], self.theta.tolist()))


LAWS = {"power_law": (pl_log, PL_PARAMS), "saturating_power_law": (sat_log, SAT_PARAMS),
        "broken_power_law": (bnsl_log, BNSL_PARAMS)}


def _finish(law: str, x, y, theta) -> LawFit:
    r = y - LAWS[law][0](x, theta)
    return LawFit(law, np.asarray(theta, float), float(r @ r), len(x))


def varpro_lm(residual_and_jac, theta0, lower, upper, max_iter: int = MAX_EVALUATIONS) -> np.ndarray:
    """Levenberg-Marquardt over the nonlinear parameters of a separable least-squares problem
    (variable projection, Kaufman's Jacobian), with box bounds.

    `residual_and_jac(theta)` returns the projected residual and its Jacobian. Two or so
    parameters, a few hundred points: a hand-written loop is ~10x faster than scipy's bounded
    solvers here, whose per-iteration overhead dominates at this size. A parameter that sits on a
    bound and whose descent direction points out of the box is held there (an active set):
    solving for it anyway and clipping the step makes the free parameters crawl."""
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    theta = np.clip(np.asarray(theta0, float), lower, upper)
    r, J = residual_and_jac(theta)
    sse, lam = float(r @ r), 1e-3
    for _ in range(max_iter):
        g, H = J.T @ r, J.T @ J
        held = ((theta <= lower) & (g > 0)) | ((theta >= upper) & (g < 0))
        free = ~held
        if not free.any():
            break
        Hf, gf = H[np.ix_(free, free)], g[free]
        while lam < 1e12:
            step = np.zeros_like(theta)
            try:
                step[free] = np.linalg.solve(Hf + lam * np.diag(np.diag(Hf) + 1e-12), -gf)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            trial = np.clip(theta + step, lower, upper)
            r_t, J_t = residual_and_jac(trial)
            sse_t = float(r_t @ r_t)
            if sse_t <= sse:
                break
            lam *= 10
        else:
            break
        moved = np.abs(trial - theta).max()
        done = sse - sse_t <= 1e-14 * max(sse, 1e-300) or moved < 1e-10
        theta, r, J, sse, lam = trial, r_t, J_t, sse_t, max(lam / 10, 1e-12)
        if done:
            break
    return theta


def fit_power_law(x: np.ndarray, y: np.ndarray) -> LawFit:
    """Exact: ordinary least squares of log loss on log step."""
    A = np.column_stack([np.ones_like(x), -x])
    theta, *_ = np.linalg.lstsq(A, y, rcond=None)
    return _finish("power_law", x, y, theta)


def fit_saturating(x: np.ndarray, y: np.ndarray) -> LawFit:
    """E + A t^-alpha (E >= 0) in log space: a grid over (alpha, bend point) with the level profiled
    out, then refinement. Bend points far beyond the data reproduce the power law."""
    lo, hi = float(x[0]), float(x[-1])
    M = np.linspace(lo - 2.0, hi + 8.0, 24)
    s = softplus(-EXPONENT_GRID[:, None, None] * (x[None, None, :] - M[None, :, None]))
    r = y - s
    r -= r.mean(-1, keepdims=True)
    sse = np.einsum("ijk,ijk->ij", r, r)
    j, i = np.unravel_index(np.argmin(sse), sse.shape)

    def residual_and_jac(nl):
        alpha, m = nl
        z = -alpha * (x - m)
        sig = sigmoid(z)
        res = y - softplus(z)
        res -= res.mean()
        d = np.column_stack([(x - m) * sig, -alpha * sig])  # d(residual)/d(alpha, m) before centring
        return res, d - d.mean(0)

    alpha, m = varpro_lm(residual_and_jac, [EXPONENT_GRID[j], M[i]], [1e-4, lo - 50.0], [50.0, hi + 500.0])
    a = float((y - softplus(-alpha * (x - m))).mean())
    return _finish("saturating_power_law", x, y, [a, alpha, m])


def _profiled_bnsl(x, y, logd: np.ndarray, f: np.ndarray):
    """SSE and linear coefficients (a, c0, c1) for every (f, log d1) pair, solved in one batch."""
    u = -f[:, None, None] * softplus((x[None, None, :] - logd[None, :, None]) / f[:, None, None])
    shape = u.shape[:2]
    G = np.empty(shape + (3, 3))
    G[..., 0, 0] = len(x)
    G[..., 0, 1] = G[..., 1, 0] = -x.sum()
    G[..., 1, 1] = x @ x
    G[..., 0, 2] = G[..., 2, 0] = u.sum(-1)
    G[..., 1, 2] = G[..., 2, 1] = -(u @ x)
    G[..., 2, 2] = np.einsum("ijk,ijk->ij", u, u)
    rhs = np.stack([np.full(shape, y.sum()), np.full(shape, -(x @ y)), u @ y], -1)
    with np.errstate(all="ignore"):
        beta = np.linalg.solve(G + 1e-12 * np.eye(3), rhs[..., None])[..., 0]
    sse = y @ y - np.einsum("ijk,ijk->ij", beta, rhs)
    return sse, beta


class _CentredBNSL:
    """The broken law's linear part solved in closed form for one curve: with x and y centred, the
    intercept drops out and (c0, c1) solve a 2 x 2 system, so one variable-projection iteration is
    a handful of dot products instead of two `lstsq` calls (the refits dominate the bootstrap)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y
        self.xm, self.ym = float(x.mean()), float(y.mean())
        self.xc, self.yc = x - self.xm, y - self.ym
        self.sxx, self.sxy = float(self.xc @ self.xc), float(self.xc @ self.yc)

    def solve(self, logd: float, f: float):
        """(a, c0, c1), the residual, and what the Jacobian needs, at break logd and sharpness f.

        Model y = a - c0 x + c1 u with u = -f softplus((x - log d1) / f)."""
        z = (self.x - logd) / f
        sp = softplus(z)
        u = -f * sp
        um = float(u.mean())
        uc = u - um
        sxu, suu, suy = float(self.xc @ uc), float(uc @ uc), float(uc @ self.yc)
        det = self.sxx * suu - sxu * sxu
        if not det > 1e-12 * self.sxx * max(suu, 1e-300):  # u is (nearly) affine in x: no break to resolve
            c0, c1 = -self.sxy / self.sxx, 0.0
        else:
            c0 = (-suu * self.sxy + sxu * suy) / det
            c1 = (-sxu * self.sxy + self.sxx * suy) / det
        a = self.ym + c0 * self.xm - c1 * um
        r = self.yc + c0 * self.xc - c1 * uc
        return (a, c0, c1), r, (z, sp, uc, sxu, suu, det)

    def project_out(self, v: np.ndarray, parts) -> np.ndarray:
        """Columns of v minus their least-squares projection on (1, x, u)."""
        _, _, uc, sxu, suu, det = parts
        vc = v - v.mean(0)
        bx, bu = self.xc @ vc, uc @ vc
        if not det > 1e-12 * self.sxx * max(suu, 1e-300):
            return vc - np.outer(self.xc, bx / self.sxx)
        gx = (suu * bx - sxu * bu) / det  # coefficients on xc and uc of the projection
        gu = (self.sxx * bu - sxu * bx) / det
        return vc - np.outer(self.xc, gx) - np.outer(uc, gu)


def _bnsl_linear(x, y, logd, f) -> np.ndarray:
    (a, c0, c1), _, _ = _CentredBNSL(x, y).solve(logd, f)
    return np.array([a, c0, c1, logd, f])


def refine_bnsl(x: np.ndarray, y: np.ndarray, theta0) -> LawFit:
    """Local least squares from `theta0` over the break position (kept inside the fitted range:
    outside it the data cannot identify a break) and the log sharpness, with a, c0, c1 profiled."""
    lo, hi = float(x[0]), float(x[-1])
    lin = _CentredBNSL(x, y)

    def residual_and_jac(nl):
        logd, logf = nl
        f = math.exp(logf)
        (_, _, c1), r, parts = lin.solve(logd, f)
        z, sp = parts[0], parts[1]
        sig = sigmoid(z)
        du = np.column_stack([sig, f * (z * sig - sp)])  # d u / d(log d1, log f1)
        return r, -lin.project_out(c1 * du, parts)

    logd, logf = varpro_lm(residual_and_jac, [theta0[3], math.log(max(theta0[4], SHARPNESS_BOUNDS[0]))],
                           [lo, math.log(SHARPNESS_BOUNDS[0])], [hi, math.log(SHARPNESS_BOUNDS[1])])
    return _finish("broken_power_law", x, y, _bnsl_linear(x, y, logd, math.exp(logf)))


def fit_bnsl(x: np.ndarray, y: np.ndarray) -> LawFit:
    """Global fit: the profiled SSE over a grid of break positions and sharpnesses, then the best
    few distinct local minima (along the break position) refined; the lowest SSE wins."""
    if len(x) < 7:
        raise CurveError(f"{len(x)} points to fit; a broken power law needs at least 7 (lower --transient-steps "
                         "or use --subsample none)")
    logd = np.linspace(x[0], x[-1], BREAK_GRID + 2)[1:-1]
    sse, beta = _profiled_bnsl(x, y, logd, SHARPNESS_GRID)
    profile, best_f = sse.min(0), sse.argmin(0)
    left = np.r_[True, profile[1:] <= profile[:-1]]
    right = np.r_[profile[:-1] <= profile[1:], True]
    minima = sorted(np.flatnonzero(left & right), key=lambda i: profile[i])[:REFINE_STARTS]
    best = None
    for i in minima:
        j = best_f[i]
        fit = refine_bnsl(x, y, [*beta[j, i], logd[i], SHARPNESS_GRID[j]])
        if np.isfinite(fit.sse) and (best is None or fit.sse < best.sse):
            best = fit
    if best is None:
        raise CurveError("no start of the broken-power-law fit converged")
    return best


def fit_reference(x: np.ndarray, y: np.ndarray, d1_est: float = 6000.0) -> LawFit | None:
    """The paper's reference procedure: one dogbox start from finite-difference slopes around a
    hand-set break guess. Kept to show that the platform's fit agrees with it."""
    logd = math.log(d1_est)
    before, after = x <= logd, x > logd
    slope = lambda m: float(np.polyfit(x[m], y[m], 1)[0]) if m.sum() >= 2 else 0.0  # noqa: E731
    c0 = -slope(before)
    theta0 = [y[0] + c0 * x[0], c0, -slope(after) - c0, logd, 0.3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            theta, _ = optimize.curve_fit(lambda lx, *t: bnsl_log(lx, t), x, y, p0=theta0, method="dogbox")
        except (RuntimeError, ValueError):
            return None
    return _finish("broken_power_law", x, y, theta)
