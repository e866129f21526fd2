"""The optimizer and the learning-rate schedule, as the paper uses them (docs/method.md section 2).

The rate is a pure function of the update index, set into the parameter groups before every
update: nothing about the schedule is stored in a checkpoint, and the one-step analysis asks
`lr_at` for the rate of the update it replays.
"""

from __future__ import annotations

import math

import torch

from .spec import RunSpec, Schedule


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


def lr_at(spec: RunSpec, step: int) -> float:
    """The learning rate of update `step` (1-based)."""
    return spec.lr * lr_factor(spec.schedule, step - 1, spec.steps)


def depends_on_total(s: Schedule) -> bool:
    """Whether extending a run changes the rates already used (so its checkpoints can't be reused)."""
    return s.kind == "cosine" or s.cooldown_steps > 0


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on the (tied) embedding, and norms are frozen anyway."""
    emb = model.get_input_embeddings().weight
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p is emb or p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, spec: RunSpec) -> torch.optim.AdamW:
    o = spec.optimizer
    return torch.optim.AdamW(param_groups(model, o.weight_decay), lr=spec.lr, betas=o.betas, eps=o.eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = lr
    return lr
