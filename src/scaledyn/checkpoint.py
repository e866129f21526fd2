"""The one checkpoint format.

    runs/<run>/checkpoints/step_<t>/        written to a temporary directory, then renamed
        config.json, model.safetensors      save_pretrained: opens with AutoModelForCausalLM
        optimizer.pt                        optimizer + scheduler state (may be pruned, see below)
        rng.pt                              RNG states of the saving process
        trainer_state.json                  step, tokens seen, kind, run spec
        COMPLETE                            written last: a directory without it is ignored
    runs/<run>/checkpoints/step_<t>.json    the workflow's marker for checkpoint t (a copy of
                                            trainer_state.json, its mtime = the checkpoint's)

Markers live outside the checkpoint so that Snakemake, which deletes a failed job's declared
outputs, never deletes the checkpoints that a retry resumes from.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from . import atomic
from .errors import CheckpointError

COMPLETE = "COMPLETE"


def directory(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step}"


def marker(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step}.json"


def complete_steps(run_dir: str | Path) -> list[int]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    steps = []
    for d in root.glob("step_*"):
        if d.is_dir() and (d / COMPLETE).exists() and d.name[5:].isdigit():
            steps.append(int(d.name[5:]))
    return sorted(steps)


def save(run_dir, step: int, model, optimizer, scheduler, state: dict, with_optimizer: bool = True) -> Path:
    path = directory(run_dir, step)
    with atomic.atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if with_optimizer:
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        torch.save(
            {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            tmp / "rng.pt",
        )
        atomic.write_json(tmp / "trainer_state.json", state)
        (tmp / COMPLETE).write_text("")
    return path


def read_state(path: Path) -> dict:
    try:
        return json.loads((path / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: trainer_state.json is unreadable ({e})") from None


def load_training_state(path: Path) -> tuple[dict, dict, dict]:
    """(trainer state, optimizer+scheduler payload, rng payload); raises CheckpointError if damaged."""
    state = read_state(path)
    try:
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises RuntimeError, EOFError, pickle errors on damaged files
        raise CheckpointError(f"checkpoint {path}: optimizer or RNG state is unreadable ({e})") from None
    return state, opt, rng


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])


def resumable(run_dir) -> list[Path]:
    """Complete checkpoints that still hold optimizer state, newest first."""
    return [
        directory(run_dir, s)
        for s in reversed(complete_steps(run_dir))
        if (directory(run_dir, s) / "optimizer.pt").exists()
    ]


def write_marker(run_dir, step: int) -> None:
    """(Re)write the workflow marker; its mtime is the checkpoint's, so downstream jobs stay valid."""
    path = directory(run_dir, step)
    m = marker(run_dir, step)
    atomic.write_text(m, (path / "trainer_state.json").read_text())
    t = (path / COMPLETE).stat().st_mtime
    os.utime(m, (t, t))


def prune(run_dir, newest: int, scheduled: set[int], keep_optimizer) -> None:
    """After checkpoint `newest` is complete: drop older unscheduled (pre-emption) checkpoints and
    the optimizer state that neither resuming nor the one-step analysis needs."""
    for s in complete_steps(run_dir):
        if s >= newest:
            continue
        path = directory(run_dir, s)
        if s not in scheduled:
            shutil.rmtree(path, ignore_errors=True)
        elif not keep_optimizer(s) and (path / "optimizer.pt").exists():
            (path / "optimizer.pt").unlink()


def warn_skip(path: Path, err: Exception) -> None:
    warnings.warn(f"skipping damaged checkpoint {path}: {err}", stacklevel=2)
