"""The fit's options (config section `fit`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

from ..errors import ConfigError
from ..options import StageOptions


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
