"""The one checkpoint format, and the Checkpointer that writes, marks, prunes and restores it.

    runs/<run>/checkpoints/step_<t>/        written to a temporary directory, then renamed
        config.json, model.safetensors      save_pretrained: opens with AutoModelForCausalLM
        optimizer.pt                        optimizer state (may be pruned, see Checkpointer.prune)
        rng.pt                              RNG states of the saving process
        trainer_state.json                  step, tokens seen, kind, run spec, parameter counts
        COMPLETE                            written last: a directory without it is ignored
    runs/<run>/checkpoints/step_<t>.json    the workflow's marker for checkpoint t (a copy of
                                            trainer_state.json, its mtime = the checkpoint's)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from . import atomic
from .errors import CheckpointError
from .layout import RunPaths
from .optim import depends_on_total
from .options import RunSpec

COMPLETE = "COMPLETE"


class SpecMismatch(CheckpointError):
    """A checkpoint made by a different run spec: resuming from it would silently change the run."""


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).exists()


def complete_steps(paths: RunPaths) -> list[int]:
    return [s for s in paths.checkpoint_steps() if is_complete(paths.checkpoint(s))]


def read_state(path: Path) -> dict:
    try:
        return json.loads((path / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: trainer_state.json is unreadable ({e})") from None


def json_norm(v):
    """Tuples become lists, as they are in a checkpoint's JSON."""
    return json.loads(json.dumps(v))


def load_training_state(path: Path) -> tuple[dict, dict, dict]:
    """(trainer state, optimizer state, rng payload); raises CheckpointError if damaged."""
    state = read_state(path)
    try:
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises RuntimeError, EOFError, pickle errors on damaged files
        raise CheckpointError(f"checkpoint {path}: optimizer or RNG state is unreadable ({e})") from None
    return state, opt["optimizer"], rng


def check_compatible(spec: RunSpec, state: dict, path: Path) -> None:
    old, new = state["spec"], json_norm(asdict(spec))
    changed = [k for k in new if k not in RunSpec.RESUMABLE and new[k] != old.get(k)]
    if old["steps"] != spec.steps and depends_on_total(spec.schedule):
        changed.append("steps (the schedule depends on the total)")
    if changed:
        raise SpecMismatch(f"checkpoint {path} was made by a different run spec (changed: {', '.join(changed)}); "
                           f"delete {spec.run_dir} to start this run afresh")


def warn_skip(path: Path, err: Exception) -> None:
    warnings.warn(f"skipping damaged checkpoint {path}: {err}", stacklevel=2)


class Checkpointer:
    """A run's checkpoints: `save` (on the main process), `restore` the newest intact one."""

    def __init__(self, spec: RunSpec, counts: dict):
        """`counts`: the model's parameter counts, recorded in every checkpoint's trainer state."""
        self.spec, self.paths, self.counts = spec, RunPaths(spec.run_dir), counts
        self.scheduled = set(spec.checkpoint_steps)

    def save(self, step: int, kind: str, model, optimizer) -> Path:
        """Write checkpoint `step` atomically, mark it if scheduled, prune what is no longer needed."""
        state = {"step": step, "tokens_seen": step * self.spec.batch_size * self.spec.seq_len, "kind": kind,
                 "run": self.spec.name, "spec": json_norm(asdict(self.spec)), **self.counts}
        path = self.paths.checkpoint(step)
        with atomic.atomic_dir(path) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            torch.save({"optimizer": optimizer.state_dict()}, tmp / "optimizer.pt")
            torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
                       tmp / "rng.pt")
            atomic.write_json(tmp / "trainer_state.json", state)
            (tmp / COMPLETE).write_text("")
        if step in self.scheduled:
            self.mark(step)
        self.prune(step)
        return path

    def mark(self, step: int) -> None:
        """(Re)write the workflow marker; its mtime is the checkpoint's, so downstream jobs stay valid."""
        path, marker = self.paths.checkpoint(step), self.paths.marker(step)
        atomic.write_text(marker, (path / "trainer_state.json").read_text())
        t = (path / COMPLETE).stat().st_mtime
        os.utime(marker, (t, t))

    def mark_all(self) -> None:
        """Markers of every scheduled checkpoint present, including those made before a restart."""
        for s in self.spec.checkpoint_steps:
            if is_complete(self.paths.checkpoint(s)):
                self.mark(s)

    def prune(self, newest: int) -> None:
        """After checkpoint `newest` is complete: drop older unscheduled (pre-emption) checkpoints and
        the optimizer state that neither resuming nor the one-step analysis needs."""
        for s in complete_steps(self.paths):
            if s >= newest:
                continue
            path = self.paths.checkpoint(s)
            if s not in self.scheduled:
                shutil.rmtree(path, ignore_errors=True)
            elif not self.spec.keeps_optimizer(s) and (path / "optimizer.pt").exists():
                (path / "optimizer.pt").unlink()

    def resumable(self) -> list[Path]:
        """Complete checkpoints that still hold optimizer state, newest first."""
        return [self.paths.checkpoint(s) for s in reversed(complete_steps(self.paths))
                if (self.paths.checkpoint(s) / "optimizer.pt").exists()]

    def restore(self, path: Path, model, optimizer) -> int:
        """Load checkpoint `path` into model and optimizer; returns its step. Raises SpecMismatch,
        or CheckpointError for a damaged checkpoint."""
        state, opt_state, rng = load_training_state(path)
        check_compatible(self.spec, state, path)
        try:
            weights = load_file(path / "model.safetensors")
        except Exception as e:
            raise CheckpointError(f"checkpoint {path}: model.safetensors is unreadable ({e})") from None
        model.load_state_dict(weights, strict=False)
        optimizer.load_state_dict(opt_state)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        return state["step"]
