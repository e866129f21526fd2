"""The optimizer, and the learning-rate schedule applied to it, as the paper uses them (docs/method.md section 2).

The rate is a pure function of the update index (`scaledyn.schedule`), set into the parameter
groups before every update: nothing about the schedule is stored in a checkpoint, and the one-step
analysis asks `lr_at` for the rate of the update it replays.
"""

from __future__ import annotations

import torch

from ..schedule import lr_factor
from .spec import RunSpec


def lr_at(spec: RunSpec, step: int) -> float:
    """The learning rate of update `step` (1-based)."""
    return spec.lr * lr_factor(spec.schedule, step - 1, spec.steps)


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
