"""Noise models for simulating loss curves like the one observed.

- Raw logs (a loss per logged step): an AR sieve bootstrap (Bühlmann 1997) of the per-step log
  residuals: an autoregression of AIC-chosen order, driven by the residuals' own resampled
  innovations, which keeps their autocorrelation and heavy tails (loss spikes). Yule-Walker
  estimates are always stationary. Where the fit smooths the log itself, every simulated curve
  is smoothed and subsampled exactly as the data were, so the smoothing's autocorrelation, its
  shrinking variance and its lag are reproduced rather than modelled. The smoother averages
  losses, not log losses, so the simulated per-step noise is scaled to mean one in the loss:
  without that, exp(noise) averaged over a window is biased upward (by exp(sd^2 / 2) for normal
  noise), and the level of every simulated curve with it.
- Curves that arrive smoothed (published curves, with no raw log behind them): only the fitted
  points exist, and their residuals are mostly the smoother's autocorrelated echo of the noise and
  the model's lack of fit. They are resampled where they live: an AR sieve of the residuals at the
  fitted points, divided by their running RMS so the noise keeps its changing size, added to the
  law in log space. No per-step noise scale is guessed.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import signal
from statsmodels.tsa.stattools import levinson_durbin

from .curve import WindowMeans

BURN_IN = 200
RAW_MAX_ORDER = 8
POINTS_MAX_ORDER = 10


def yule_walker(z: np.ndarray, max_order: int) -> tuple[np.ndarray, float]:
    """AR coefficients of the AIC-best order <= max_order (Levinson-Durbin on the sample ACF)."""
    n = len(z)
    z = z - z.mean()
    acov = np.array([z[: n - k] @ z[k:] / n for k in range(max_order + 1)])
    if acov[0] <= 0:
        return np.array([]), 0.0
    best = (n * math.log(acov[0]), np.array([]), float(acov[0]))
    for p in range(1, max_order + 1):
        sigma2, phi, *_ = levinson_durbin(acov[: p + 1], nlags=p, isacov=True)
        if not sigma2 > 0:
            break
        aic = n * math.log(sigma2) + 2 * p
        if aic < best[0]:
            best = (aic, np.asarray(phi, float), float(sigma2))
    return best[1], best[2]


class ARSieve:
    """AR(p) sieve bootstrap of a residual series, optionally with a local scale profile."""

    def __init__(self, resid: np.ndarray, max_order: int, scale: np.ndarray | None = None):
        resid = np.asarray(resid, float)
        self.n = len(resid)
        self.scale = scale
        z = resid if scale is None else resid / scale
        self.level = float(z.std()) or 1.0
        z = (z - z.mean()) / self.level
        self.phi, _ = yule_walker(z, max(0, min(max_order, self.n // 4)))
        p = len(self.phi)
        if p:
            lagged = np.column_stack([z[p - k - 1 : self.n - k - 1] for k in range(p)])
            innov = z[p:] - lagged @ self.phi
        else:
            innov = z
        self.innov = innov - innov.mean()
        # log E[exp(noise)], from the centred residuals themselves (their marginal law is what the
        # sieve reproduces): subtracted wherever the noise is exponentiated and averaged
        self.log_mean_exp = float(np.log(np.mean(np.exp(z * self.level)))) if scale is None else 0.0

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        e = rng.choice(self.innov, n + BURN_IN)
        z = signal.lfilter([1.0], np.r_[1.0, -self.phi], e)[BURN_IN:] if len(self.phi) else e[BURN_IN:]
        return z * self.level * (1.0 if self.scale is None else self.scale)

    def describe(self) -> dict:
        return {"model": "AR sieve bootstrap", "ar_order": len(self.phi),
                "ar_coefficients": [round(float(c), 6) for c in self.phi], "innovations": len(self.innov), "sd": self.level}


def local_scale(resid: np.ndarray, half_width: int) -> np.ndarray:
    """Running RMS over +-half_width points (shorter windows at the ends)."""
    k = np.ones(2 * half_width + 1)
    num = np.convolve(resid * resid, k, mode="same")
    den = np.convolve(np.ones(len(resid)), k, mode="same")
    s = np.sqrt(num / den)
    return np.maximum(s, max(float(s.max()), 1e-300) * 1e-6)


class CurveSimulator:
    """Simulated fitted points (log loss) around a given curve shape, with the observed noise.

    Per-step mode: noise lives on every row of the grid (`grid_steps`, fitted axis `grid_x`); the
    simulated curve is smoothed with the log moving average when `smooth` is set and read at the
    fitted rows `idx`. Point mode (`per_step=False`): noise is drawn directly at the fitted points."""

    def __init__(self, grid_steps: np.ndarray, grid_x: np.ndarray, idx: np.ndarray, smooth: bool, noise: ARSieve,
                 per_step: bool, residuals_of: str):
        self.grid_x, self.idx, self.smooth, self.noise = grid_x, idx, smooth, noise
        self.per_step, self.residuals_of = per_step, residuals_of
        self.means = WindowMeans(grid_steps, idx) if per_step and smooth else None
        self.first = self.means.first if self.means else (int(idx[0]) if per_step else 0)

    @classmethod
    def per_step_sieve(cls, steps, x, idx, smooth: bool, resid, residuals_of: str) -> "CurveSimulator":
        return cls(steps, x, idx, smooth, ARSieve(resid, RAW_MAX_ORDER), True, residuals_of)

    @classmethod
    def point_sieve(cls, steps, x, idx, resid, residuals_of: str) -> "CurveSimulator":
        scale = local_scale(resid, max(3, len(idx) // 12))
        return cls(steps, x, idx, False, ARSieve(resid, POINTS_MAX_ORDER, scale), False, residuals_of)

    def sampler(self, shape_log):
        """A function rng -> simulated fitted points (log loss) around the noiseless `shape_log`
        (a function of log x; for smoothed per-step draws, the log of the per-step mean loss)."""
        if not self.per_step:
            base = shape_log(np.log(self.grid_x[self.idx]))
            return lambda rng: base + self.noise.draw(rng, len(base))
        base = shape_log(np.log(self.grid_x[self.first :]))
        if self.means is None:
            pick = self.idx - self.first
            return lambda rng: base[pick] + self.noise.draw(rng, len(base))[pick]
        shifted = base - self.noise.log_mean_exp  # the noise has mean one in the loss
        return lambda rng: np.log(self.means(np.exp(shifted + self.noise.draw(rng, len(base)))))

    def describe(self) -> dict:
        where = ("per step; each simulated curve is smoothed and subsampled like the data" if self.per_step
                 else "at the fitted points, scaled by their running RMS")
        return {"simulated": where, "residuals_of": self.residuals_of, **self.noise.describe()}
