"""The optimizer, and the learning-rate schedule applied to it, as the paper uses them (docs/method.md section 2).

The rate is a pure function of the update index (`scaledyn.schedule`), set into the parameter
groups before every update: nothing about the schedule is stored in a checkpoint, and the one-step
analysis asks `lr_at` for the rate of the update it replays.

Besides the paper's AdamW, the update rules that interventions compare (train.optimizer.name):
SGD with momentum and Muon from PyTorch itself, Lion from `lion-pytorch` (Google's algorithm as its
authors published it; PyTorch has none). Muon orthogonalises the updates of matrices only: the
embedding, and anything not 2-D, takes AdamW (as Muon's authors train), each with the same
scheduled rate (Muon's update is scaled to AdamW's RMS, adjust_lr_fn="match_rms_adamw", so one
peak rate serves both).
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


OPTIMIZERS = ("adamw", "sgd", "lion", "muon")


class Chained:
    """Two optimizers over disjoint parameters stepped as one (Muon for matrices, AdamW for the
    rest): one list of parameter groups for the schedule, one state dict for checkpoints."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]
        self.defaults: dict = {}

    @property
    def state(self) -> dict:
        return {k: v for o in self.optimizers for k, v in o.state.items()}

    def step(self, closure=None) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"chained": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        if len(state.get("chained", ())) != len(self.optimizers):
            raise ValueError(f"a state of {len(state.get('chained', ()))} chained optimizers for {len(self.optimizers)}")
        for o, s in zip(self.optimizers, state["chained"]):
            o.load_state_dict(s)


def make_optimizer(model: torch.nn.Module, spec: RunSpec):
    o = spec.optimizer
    groups = param_groups(model, o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr, betas=o.betas, eps=o.eps)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=o.momentum)
    if o.name == "lion":
        from lion_pytorch import Lion

        return Lion(groups, lr=spec.lr, betas=o.betas)
    if o.name == "muon":
        matrices, rest = groups
        return Chained(torch.optim.Muon([matrices], lr=spec.lr, momentum=o.momentum, adjust_lr_fn="match_rms_adamw"),
                       torch.optim.AdamW([rest], lr=spec.lr, betas=o.betas, eps=o.eps))
    raise ValueError(f"train.optimizer.name: {o.name!r} is not one of {OPTIMIZERS}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = lr
    return lr
