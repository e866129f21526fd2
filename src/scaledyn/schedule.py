"""The learning-rate schedule as a pure function of the update index (docs/method.md section 2).

Training sets the rate from it before every update, the one-step analysis asks it for the rate of
the update it replays, and the fit integrates it into learning-rate time S (stats/lrtime.py). It
lives below both (no torch), so a fit can rebuild a schedule without the training stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    kind: str
    warmup_steps: int
    warmup_start_factor: float
    cooldown_steps: int
    final_lr_factor: float


def lr_factor(s: Schedule, t: int, total: int) -> float:
    """Multiplier of the peak rate for update t + 1 (t updates done). Warm-up is linear from
    warmup_start_factor; then constant, cosine to final_lr_factor, or constant with a linear
    cool-down over the last cooldown_steps (trapezoidal)."""
    if s.warmup_steps and t < s.warmup_steps:
        return s.warmup_start_factor + (1 - s.warmup_start_factor) * t / s.warmup_steps
    if s.kind == "constant":
        return 1.0
    if s.kind == "cosine":
        span = max(1, total - s.warmup_steps)
        progress = min(1.0, (t - s.warmup_steps) / span)
        return s.final_lr_factor + (1 - s.final_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    start = total - s.cooldown_steps
    if s.cooldown_steps and t >= start:
        return 1 - (1 - s.final_lr_factor) * min(1.0, (t - start + 1) / s.cooldown_steps)
    return 1.0


def depends_on_total(s: Schedule) -> bool:
    """Whether extending a run changes the rates already used (so its checkpoints can't be reused)."""
    return s.kind == "cosine" or s.cooldown_steps > 0
