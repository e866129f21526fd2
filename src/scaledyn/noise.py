"""Noise models for simulating loss curves like the one observed.

Wherever the smoother is known (raw per-step logs, or curves smoothed with the reference log
moving average), noise is simulated per step and every simulated curve is smoothed and
subsampled exactly as the data were: the smoothing's autocorrelation, its shrinking variance and
its lag are then reproduced rather than modelled.

- Raw logs: an AR sieve bootstrap (Bühlmann 1997) of the per-step log residuals: an
  autoregression of AIC-chosen order, driven by the residuals' own resampled innovations, which
  keeps their autocorrelation and heavy tails (loss spikes). Yule-Walker estimates are always
  stationary.
- Curves smoothed with the log moving average: only the fitted points exist, so the per-step
  noise is taken as iid normal with the sd that reproduces the observed residuals (estimated,
  then de-biased by simulation).
- Curves smoothed some other way: an AR sieve of the residuals at the fitted points, divided by
  their running RMS so the noise keeps its changing size.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import signal
from statsmodels.tsa.stattools import levinson_durbin

from .curve import MA_FACTOR

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

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        e = rng.choice(self.innov, n + BURN_IN)
        z = signal.lfilter([1.0], np.r_[1.0, -self.phi], e)[BURN_IN:] if len(self.phi) else e[BURN_IN:]
        return z * self.level * (1.0 if self.scale is None else self.scale)

    def describe(self) -> dict:
        return {"model": "AR sieve bootstrap", "ar_order": len(self.phi),
                "ar_coefficients": [round(float(c), 6) for c in self.phi], "innovations": len(self.innov), "sd": self.level}


class GaussianNoise:
    """iid normal per-step noise of a given sd."""

    def __init__(self, sd: float):
        self.sd = sd

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.normal(0.0, self.sd, n)

    def describe(self) -> dict:
        return {"model": "iid normal per step, sd matched to the smoothed residuals", "sd": self.sd}


def local_scale(resid: np.ndarray, half_width: int) -> np.ndarray:
    """Running RMS over +-half_width points (shorter windows at the ends)."""
    k = np.ones(2 * half_width + 1)
    num = np.convolve(resid * resid, k, mode="same")
    den = np.convolve(np.ones(len(resid)), k, mode="same")
    s = np.sqrt(num / den)
    return np.maximum(s, max(float(s.max()), 1e-300) * 1e-6)


def first_needed(idx: np.ndarray, smoothing: str) -> int:
    """The first per-step row that any fitted point depends on (its smoothing window's start)."""
    return int(np.floor(idx[0] / MA_FACTOR)) if smoothing == "log-ma" else int(idx[0])


class CurveSimulator:
    """Simulated fitted points (log loss) around a given curve shape, with the observed noise.

    Per-step mode: noise lives on every row of `steps` (the per-step grid); the simulated curve is
    smoothed with the log moving average when `smoothing` is "log-ma" and read at the fitted rows
    `idx`. Point mode (`per_step=False`): noise is drawn directly at the fitted points."""

    def __init__(self, steps: np.ndarray, idx: np.ndarray, smoothing: str, noise, per_step: bool, residuals_of: str):
        self.steps, self.idx, self.smoothing, self.noise = steps, idx, smoothing, noise
        self.per_step, self.residuals_of = per_step, residuals_of
        self.first = first_needed(idx, smoothing) if per_step else 0

    @classmethod
    def per_step_sieve(cls, steps, idx, smoothing, resid, residuals_of: str) -> "CurveSimulator":
        return cls(steps, idx, smoothing, ARSieve(resid, RAW_MAX_ORDER), True, residuals_of)

    @classmethod
    def point_sieve(cls, steps, idx, resid, residuals_of: str) -> "CurveSimulator":
        scale = local_scale(resid, max(3, len(idx) // 12))
        return cls(steps, idx, "none", ARSieve(resid, POINTS_MAX_ORDER, scale), False, residuals_of)

    def sampler(self, shape_log):
        """A function rng -> simulated fitted points (log loss) around the noiseless `shape_log`."""
        if not self.per_step:
            base = shape_log(np.log(self.steps[self.idx]))
            return lambda rng: base + self.noise.draw(rng, len(base))
        base = shape_log(np.log(self.steps[self.first :]))
        if self.smoothing != "log-ma":
            pick = self.idx - self.first
            return lambda rng: base[pick] + self.noise.draw(rng, len(base))[pick]
        # the log moving average at the fitted points only: mean of y over rows [floor(j / 1.2), j]
        lo = np.floor(self.idx / MA_FACTOR).astype(np.int64)
        stop, start, width = self.idx + 1 - self.first, lo - self.first, self.idx + 1 - lo

        def draw(rng):
            c = np.concatenate([[0.0], np.cumsum(np.exp(base + self.noise.draw(rng, len(base))))])
            return np.log((c[stop] - c[start]) / width)

        return draw

    def describe(self) -> dict:
        where = ("per step; each simulated curve is smoothed and subsampled like the data" if self.per_step
                 else "at the fitted points, scaled by their running RMS")
        return {"simulated": where, "residuals_of": self.residuals_of, **self.noise.describe()}


def equivalent_step_sd(steps: np.ndarray, idx: np.ndarray, resid: np.ndarray, shape_log, refit_resid, rng,
                       draws: int = 20) -> float:
    """The sd of iid per-step noise that, smoothed with the log moving average, leaves residuals as
    large as `resid` at the fitted rows `idx` of the per-step grid `steps`.

    The window at row j holds w_j = j + 1 - floor(j / 1.2) steps, so a smoothed point's noise
    variance is about sd^2 / w_j and mean(resid^2 w) estimates sd^2. Refitting absorbs part of the
    noise, so the estimate is divided by what the same procedure gives for sd = 1 (simulated
    around `shape_log`, refitted by `refit_resid`)."""
    w = idx + 1 - np.floor(idx / MA_FACTOR)
    observed = float(np.mean(resid * resid * w))
    unit = CurveSimulator(steps, idx, "log-ma", GaussianNoise(1.0), True, "").sampler(shape_log)
    ratio = float(np.mean([np.mean(refit_resid(unit(rng)) ** 2 * w) for _ in range(draws)]))
    return math.sqrt(observed / ratio) if ratio > 0 else 0.0
