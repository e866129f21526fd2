"""Is there an abrupt break? A bootstrap test of the broken power law against smooth laws.

Null: the better of a single power law and a saturating power law `E + A t^-alpha` (which bends,
but smoothly). Alternative: the one-break BNSL. Statistic: the relative drop in the residual sum
of squares, S = (SSE_null - SSE_broken) / SSE_broken, on the fitted points.

Why a bootstrap and not an F-test: the break position and sharpness do not exist under the null
(Davies' problem), they are chosen from the same data, and the fitted points are strongly
autocorrelated (smoothed). So S is compared with its distribution under the fitted null, obtained
by simulating curves of the null's shape with the observed noise (an AR sieve, see noise.py),
preprocessing them like the data and refitting both laws each time. The p-value is
(1 + #{S* >= S}) / (1 + draws), with sequential stopping. Its error rates are measured in benchmarks/calibrate_breaks.py.

Verdicts:
    deceleration / acceleration  p < alpha, the break lies inside the fitted range, it is abrupt
                                 (f1 <= MAX_SHARPNESS), and it at least halves (doubles) the rate at which
                                 the loss falls (MIN_SLOPE_CHANGE); the sign of c1 says which
    smooth_bend                  the curve departs from a power law, but not by an abrupt break
                                 (a significant bend at the range's edge, spread over decades or
                                 changing the slope by less than 2x, or a saturating law beating the
                                 power law in the same kind of test)
    power_law                    nothing better than a single power law

The slope-change rule is the one that keeps slow, wave-like structure (a real curve's wiggles
that no smooth law has) from passing as a break: the calibration shows such wiggles on a power law
often beat the smooth null, but as small slope changes. The phenomenon studied is large: the
paper's fits have c0 / r_d of 6-15. The method in full: docs/method.md section 5.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .powerlaws import LawFit, fit_bnsl, fit_power_law, fit_saturating

MAX_SHARPNESS = 1.0  # f1 above this spreads the bend over more than ~1.7 decades: not abrupt
MIN_SLOPE_CHANGE = 2.0  # a break changes the log-log slope at least 2x (c0 / r_d >= 2, or r_d >= 2 c0)
EDGE_MARGIN = 0.05  # a break in the outer 5% of the log range is the range's edge, not a break
NOISE_FREE = 1e-9  # residual RMS in log loss below which a curve is treated as exact
SEQUENTIAL_STOP = 10  # exceedances after which a bootstrap p-value stops drawing

RULE = ("deceleration/acceleration: bootstrap p < alpha against the better smooth law (power law or E + A t^-alpha), "
        f"break inside the fitted range (outer {EDGE_MARGIN:.0%} of log steps excluded), abrupt (f1 <= {MAX_SHARPNESS}) "
        f"and changing the slope at least {MIN_SLOPE_CHANGE:g}x; "
        "smooth_bend: a significant departure from a power law that is not such a break; power_law otherwise")


def relative_drop(sse_null: float, sse_alt: float) -> float:
    return max(sse_null - sse_alt, 0.0) / max(sse_alt, 1e-300)


def smooth_null(x: np.ndarray, y: np.ndarray) -> tuple[LawFit, LawFit, LawFit]:
    """(best smooth law, power law, saturating law). The saturating law contains the power law as
    a limit, so it is chosen only when it is actually better."""
    pl, sat = fit_power_law(x, y), fit_saturating(x, y)
    return (sat if sat.sse < pl.sse * (1 - 1e-9) else pl), pl, sat


def break_statistic(x: np.ndarray, y: np.ndarray) -> float:
    return relative_drop(smooth_null(x, y)[0].sse, fit_bnsl(x, y).sse)


def bend_statistic(x: np.ndarray, y: np.ndarray) -> float:
    return relative_drop(fit_power_law(x, y).sse, fit_saturating(x, y).sse)


def bootstrap_pvalue(observed: float, simulate, statistic, draws: int, rng, stop_after: int = SEQUENTIAL_STOP) -> tuple[float, int]:
    """Monte Carlo p-value with Besag & Clifford's (1991) sequential stopping: draw until
    `stop_after` simulated statistics reach the observed one (p = stop_after / draws so far) or
    `draws` are done (p = (1 + exceedances) / (1 + draws)). Exactly valid either way, and a clearly
    insignificant curve stops after a few dozen draws. Returns (p, draws used)."""
    exceed = 0
    for i in range(1, draws + 1):
        exceed += statistic(simulate(rng)) >= observed
        if exceed >= stop_after and i < draws:
            return exceed / i, i
    return (1 + exceed) / (1 + draws), draws


@dataclass
class BreakTest:
    verdict: str
    p_value: float | None
    statistic: float
    null_law: str
    alpha: float
    draws: int
    f1: float
    slope_ratio: float | None
    break_inside_range: bool
    abrupt: bool
    sse_null: float
    sse_broken: float
    p_value_bend: float | None = None
    noise: dict = field(default_factory=dict)
    note: str = ""

    @property
    def has_break(self) -> bool:
        return self.verdict in ("deceleration", "acceleration")

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(has_break=self.has_break, kind=self.verdict if self.has_break else None,
                 sse_ratio=self.sse_null / self.sse_broken if self.sse_broken > 0 else math.inf, rule=RULE)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "BreakTest":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def slope_ratio(theta) -> float | None:
    """c0 / r_d: how much steeper the loss falls before the break than after (None if r_d <= 0)."""
    c0, r_d = theta[1], theta[1] + theta[2]
    return float(c0 / r_d) if r_d > 0 else None


def shape(theta, x) -> tuple[bool, bool, bool]:
    """(break inside the fitted range, abrupt, a large enough slope change) for a broken fit."""
    lo, hi = x[0], x[-1]
    margin = EDGE_MARGIN * (hi - lo)
    c0, r_d = theta[1], theta[1] + theta[2]
    large = r_d <= c0 / MIN_SLOPE_CHANGE if theta[2] < 0 else r_d >= c0 * MIN_SLOPE_CHANGE
    return bool(lo + margin < theta[3] < hi - margin), bool(theta[4] <= MAX_SHARPNESS), bool(large)


def classify(p: float, alpha: float, theta, x) -> tuple[str | None, str]:
    """The verdict once the break p-value is known: a break kind, smooth_bend, or None (not
    significant: the bend test decides between smooth_bend and power_law)."""
    if p >= alpha:
        return None, ""
    inside, abrupt, large = shape(theta, x)
    if inside and abrupt and large:
        return _break_kind(theta), ""
    why = [w for ok, w in ((inside, "at the edge of the fitted range"),
                           (abrupt, f"spread out (f1 = {theta[4]:.2f} > {MAX_SHARPNESS})"),
                           (large, f"a small slope change (less than {MIN_SLOPE_CHANGE:g}x)")) if not ok]
    return "smooth_bend", "significant, but the best break is " + " and ".join(why)


def break_test(x, y, null: LawFit, pl: LawFit, sat: LawFit, broken: LawFit, noise_for, draws: int, alpha: float,
               rng: np.random.Generator) -> BreakTest:
    """`noise_for(fit)` gives the noise simulator to use under the null `fit` (noise.CurveSimulator)."""
    theta = broken.theta
    inside, abrupt, _ = shape(theta, x)
    S = relative_drop(null.sse, broken.sse)
    simulator = noise_for(null)
    common = dict(statistic=S, null_law=null.law, alpha=alpha, draws=draws, f1=float(theta[4]),
                  slope_ratio=slope_ratio(theta), break_inside_range=inside, abrupt=abrupt, sse_null=null.sse,
                  sse_broken=broken.sse, noise=simulator.describe())

    if broken.rsle < NOISE_FREE:  # an exact curve: nothing to test against
        if null.rsle < NOISE_FREE:
            verdict = "power_law" if null.law == "power_law" else "smooth_bend"
            return BreakTest(verdict, 1.0, **common, note="noise-free curve that a smooth law fits exactly")
        verdict, _ = classify(0.0, alpha, theta, x)
        return BreakTest(verdict, 0.0, **common, note="noise-free curve: the broken law fits exactly and the smooth laws do not")

    p, used = bootstrap_pvalue(S, simulator.sampler(null.log_predict), lambda ys: break_statistic(x, ys), draws, rng)
    common["draws"] = used
    verdict, note = classify(p, alpha, theta, x)
    if verdict:
        return BreakTest(verdict, p, **common, note=note)
    if null.law == "power_law":
        return BreakTest("power_law", p, **common, note="the saturating law is no better than the power law")
    bend_noise = noise_for(pl)
    p_bend, _ = bootstrap_pvalue(relative_drop(pl.sse, sat.sse), bend_noise.sampler(pl.log_predict),
                                 lambda ys: bend_statistic(x, ys), draws, rng)
    return BreakTest("smooth_bend" if p_bend < alpha else "power_law", p, **common, p_value_bend=p_bend)


def _break_kind(theta) -> str:
    return "deceleration" if theta[2] < 0 else "acceleration"
