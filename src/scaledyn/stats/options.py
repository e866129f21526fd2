"""The fit's options (config section `fit`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

from ..errors import ConfigError
from ..options import StageOptions

SUBSAMPLE_CAP = 1000  # docs/method.md section 3: every 1,000th step from 10,000 on, however long the run


def fitted_points_per_step(steps: int, transient_steps: float, subsample: str) -> int:
    """How many points of a per-step log of `steps` steps the fit keeps: those after the transient,
    log-subsampled (stats.curve.log_subsample_mask keeps the multiples of each decade's stride on a
    per-step log, and the last step). Counted in closed form, without numpy, because the config
    check that uses it runs where the workflow is parsed (tests check it against the mask)."""
    first = max(math.floor(transient_steps) + 1, 1)
    if first > steps:
        return 0
    if subsample != "log":
        return steps - first + 1
    n, d, last_kept = 0, 1, False
    while 10**d <= steps:
        stride = min(10 ** (d - 1), SUBSAMPLE_CAP)
        lo, hi = max(10**d, first), min(10 ** (d + 1) - 1, steps)
        if lo <= hi:
            n += hi // stride - (lo - 1) // stride
            last_kept = last_kept or (hi == steps and steps % stride == 0)
        d += 1
    return n + (not last_kept)


@dataclass(frozen=True)
class FitOptions(StageOptions):
    SECTION: ClassVar[str] = "fit"
    smoothing: str
    subsample: str
    transient_steps: float
    axis: str
    schedule: dict | None
    schedule_verdict: bool
    x_per_step: float | None
    input_smoothed: str
    on_duplicate: str
    bootstrap: int
    alpha: float
    seed: int

    def __post_init__(self):
        # a bootstrap p-value is at least 1 / (1 + draws): fewer draws could never reach p < alpha
        need = math.floor(1 / self.alpha)
        if self.bootstrap < need:
            raise ConfigError(f"config: fit.bootstrap: {self.bootstrap} draws can never give p < alpha = {self.alpha:g} "
                              f"(the smallest p is 1 / (1 + draws)); need at least {need}")

    def at_revisions(self) -> "FitOptions":
        """For a curve of a few evaluation losses at a suite's revisions (each a mean over the whole
        evaluation set, on an uneven grid): the log moving average and log subsampling assume one
        noisy point per step and would smear such points into a false bend, so both are off."""
        return replace(self, smoothing="none", subsample="none", input_smoothed="no")
