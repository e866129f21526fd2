"""Learning-rate schedules as multipliers of the peak rate, indexed by completed updates."""

from __future__ import annotations

import math

from .config import Schedule


def lr_factor(s: Schedule, t: int, total: int) -> float:
    """Multiplier for update t+1 (t updates done). Warm-up is linear from warmup_start_factor."""
    if s.warmup_steps and t < s.warmup_steps:
        return s.warmup_start_factor + (1 - s.warmup_start_factor) * t / s.warmup_steps
    if s.kind == "constant":
        return 1.0
    if s.kind == "cosine":
        span = max(1, total - s.warmup_steps)
        progress = min(1.0, (t - s.warmup_steps) / span)
        return s.final_lr_factor + (1 - s.final_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    start = total - s.cooldown_steps  # trapezoidal: constant, then an optional linear cool-down
    if s.cooldown_steps and t >= start:
        return 1 - (1 - s.final_lr_factor) * min(1.0, (t - start + 1) / s.cooldown_steps)
    return 1.0


def depends_on_total(s: Schedule) -> bool:
    """Whether extending a run changes the rates already used (so its checkpoints can't be reused)."""
    return s.kind == "cosine" or s.cooldown_steps > 0
